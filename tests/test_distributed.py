"""Two-process DDP on CPU (gloo) through Accelerate's debug launcher: pretraining runs and writes one base."""

import json
import os

from conftest import TINY_MODEL_FLAGS, TINY_TRAIN_FLAGS

from mmsr_peft import MMSRModel


def _pretrain_in_each_process():
    from mmsr_peft.cli import pretrain_main

    argv = [
        *TINY_MODEL_FLAGS,
        *TINY_TRAIN_FLAGS,
        "--domains",
        "food",
        "--num_epochs",
        "2",
        "--fusion",
        "merge_attention",
    ]
    code = pretrain_main(
        [*argv, "--data_dir", os.environ["MMSR_TEST_DATA"], "--output_dir", os.environ["MMSR_TEST_OUT"]]
    )
    assert code == 0


def test_two_process_ddp_pretraining_with_a_token_level_fusion(data_dir, tmp_path, monkeypatch):
    from accelerate import debug_launcher

    monkeypatch.setenv("MMSR_TEST_DATA", str(data_dir))
    monkeypatch.setenv("MMSR_TEST_OUT", str(tmp_path / "ddp"))
    debug_launcher(_pretrain_in_each_process, num_processes=2)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    # each process saw half of the sequences: 50 users / (16 per batch x 2 processes) = 2 steps per epoch
    assert metrics["history"][-1]["step"] == 4
    assert MMSRModel.from_pretrained(tmp_path / "ddp").config.fusion.type == "merge_attention"
