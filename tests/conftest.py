"""Shared fixtures: a tiny synthetic world and a tiny pretrained base, built once per test session, offline.

The huggingface_hub client reads HF_ENDPOINT when it is imported, so a local Hub-compatible server
(tests/hub_server.py) is started, and the environment pointed at it, before anything imports it: every Hub
call of the suite goes to 127.0.0.1, never to the internet.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from hub_server import LocalHub

HUB = LocalHub(token="test-token")
HUB.start()
atexit.register(HUB.stop)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.update(HUB.env())
os.environ.update(HF_HOME=tempfile.mkdtemp(prefix="mmsr-test-hf-"), TOKENIZERS_PARALLELISM="false")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)

import pytest  # noqa: E402

from mmsr_peft.data.synthetic import SyntheticWorldConfig, generate_world  # noqa: E402

TINY_WORLD = SyntheticWorldConfig(num_items=60, num_users=50, min_len=4, max_len=12, image_size=32)
TINY_MODEL_FLAGS = [
    "--text_model", "tiny-bert",
    "--vision_model", "micro-vit",
    "--image_size", "32",
    "--hidden_size", "32",
    "--max_len", "12",
    "--text_max_length", "24",
]  # fmt: skip
TINY_TRAIN_FLAGS = ["--batch_size", "16", "--num_negatives", "16", "--learning_rate", "3.0e-3", "--seed", "0"]
# Real posters of the ML-100k items, beside the repository (shared/ is there for every session and CI).
POSTERS = Path(os.environ.get("MMSR_POSTERS", Path(__file__).resolve().parents[2] / "shared/data/ml100k-posters"))


def tiny_pretrain_argv(data_dir, *extra: str) -> list[str]:
    """Flags of a tiny pretraining run on the synthetic `food` domain (50 users: 4 steps of 16 per epoch)."""
    return [*TINY_MODEL_FLAGS, *TINY_TRAIN_FLAGS, "--domains", "food", "--data_dir", str(data_dir), *extra]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A processed synthetic world (all six domains, tiny) under `<data_dir>/synthetic/`."""
    root = tmp_path_factory.mktemp("data")
    generate_world(root / "synthetic", config=TINY_WORLD)
    return root


@pytest.fixture(scope="session")
def base_dir(data_dir, tmp_path_factory):
    """A tiny base model pretrained on the synthetic source domains through the recipe's `main`."""
    from mmsr_peft.cli import pretrain_main

    out = tmp_path_factory.mktemp("base")
    argv = [
        *TINY_MODEL_FLAGS,
        *TINY_TRAIN_FLAGS,
        "--num_epochs",
        "2",
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
    ]
    assert pretrain_main(argv) == 0
    return out
