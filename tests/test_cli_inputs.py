"""What the commands say about input a user can fix: one `error:` line and exit status 2, before any work or write."""

import math

import pytest

from mmsr_peft.arguments import AdaptArguments, AppArguments, RecommendArguments
from mmsr_peft.cli import baseline_main, data_main, pretrain_main
from mmsr_peft.configuration import MMSRConfig
from mmsr_peft.training import TrainingArguments


def test_an_output_path_under_a_file_is_an_error_line_not_a_traceback(data_dir, tmp_path, capsys):
    (tmp_path / "afile").touch()
    argv = ["--domains", "food", "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "afile" / "run")]
    assert baseline_main(argv) == 2
    assert "error: [Errno 20] Not a directory" in capsys.readouterr().err
    assert data_main(["synthetic", "--data_dir", str(tmp_path / "afile")]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_domain_the_source_does_not_have_is_refused_before_anything_is_written(tmp_path, capsys):
    argv = ["--domains", "ml-100k", "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run")]
    assert pretrain_main(argv) == 2  # --data_source movielens forgotten
    assert "--domains 'ml-100k': source 'synthetic' has no domain 'ml-100k'" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()  # no synthetic domain written first


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"learning_rate": math.nan}, "--learning_rate must be > 0 and finite, got nan"),
        ({"learning_rate": math.inf}, "--learning_rate must be > 0 and finite, got inf"),
        ({"max_grad_norm": math.nan}, "--max_grad_norm must be >= 0 (0: off) and finite, got nan"),
        ({"text_learning_rate": math.nan}, "--text_learning_rate must be > 0 and finite, got nan"),
        ({"eval_batch_size": 0}, "--eval_batch_size must be >= 1, got 0"),
    ],
)
def test_training_numbers_that_are_not_finite_are_refused(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainingArguments(**flags)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", math.nan, "temperature > 0 and finite"),
        ("new_item_boost", math.nan, "new_item_boost must be >= 0 and finite, got nan"),
        ("itc_weight", math.inf, "itc_weight must be >= 0"),
    ],
)
def test_model_numbers_that_are_not_finite_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MMSRConfig(item_tower="id", num_items=3, **{field: value})


def test_arguments_checked_before_the_base_is_loaded(tmp_path):
    with pytest.raises(ValueError, match=r"adapter name 'my\.adapter'"):
        AdaptArguments(target="office", adapter_name="my.adapter")
    with pytest.raises(ValueError, match=r"--output .* is a folder: expected the path of a JSONL file"):
        RecommendArguments(model="m", domain="office", input="in.jsonl", output=str(tmp_path))
    (tmp_path / "afile").touch()
    with pytest.raises(ValueError, match=r"afile, which is a file: expected the path of a JSONL file"):
        RecommendArguments(model="m", domain="office", input="in.jsonl", output=str(tmp_path / "afile" / "top.jsonl"))
    with pytest.raises(ValueError, match=r"--port must be in \[1, 65535\], got 70000"):
        AppArguments(model="m", domain="office", port=70000)


def test_stats_of_a_domain_not_prepared_says_how_to_prepare_it(tmp_path, capsys):
    assert data_main(["stats", "ml-100k", "--data_dir", str(tmp_path)]) == 2
    assert f"prepare it with:\n  mmsr-data movielens --data_dir {tmp_path}" in capsys.readouterr().err


def test_help_of_a_negative_flag_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        pretrain_main(["--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "--no_logq, --no-logq Turn off --logq." in printed


def test_an_image_size_below_one_is_refused_by_name():
    from mmsr_peft.builder import ModelArguments, build_model

    with pytest.raises(ValueError, match=r"--image_size must be >= 1 \(or left out: the tower's own size\), got 0"):
        build_model(ModelArguments(item_tower="image", vision_model="micro-vit", image_size=0, hidden_size=16))


@pytest.mark.parametrize(
    "name, message",
    [
        ("gpu", "--device 'gpu': not a device; expected auto, cpu, cuda, cuda:N or mps"),
        ("meta", "--device 'meta': not a device"),
        ("cuda:99", "--device cuda:99: this machine has"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_before_the_model_loads(name, message, tmp_path, capsys):
    from mmsr_peft.cli import recommend_main

    (tmp_path / "in.jsonl").write_text('{"user_id": "u", "history": []}\n')
    argv = ["--model", str(tmp_path / "no-model"), "--domain", "office", "--input", str(tmp_path / "in.jsonl")]
    assert recommend_main([*argv, "--output", str(tmp_path / "out.jsonl"), "--device", name]) == 2
    assert message in capsys.readouterr().err  # not the missing model: the device is checked first


def test_auto_is_the_gpu_when_there_is_one():
    import torch

    from mmsr_peft.arguments import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
