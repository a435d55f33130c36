"""The whole product path: pretrain (recipe main) -> adapt (mmsr-adapt main) -> load in a new process -> recommend."""

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_FLAGS, tiny_pretrain_argv
from safetensors.torch import load_file
from testing_utils import assert_topk_agree

from mmsr_peft import MMSRModel, load_domain
from mmsr_peft.adaptation import AdaptArguments, adapt
from mmsr_peft.cli import adapt_main, evaluate_main
from mmsr_peft.evaluation import rank_metrics
from mmsr_peft.training import TrainingArguments


def test_pretrain_writes_a_loadable_base_with_card_metrics_and_run_args(base_dir):
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (base_dir / name).is_file(), name
    config = json.loads((base_dir / "config.json").read_text())
    assert "learning_rate" not in json.dumps(config)  # run arguments stay out of the architecture
    assert "_name_or_path" not in json.dumps(config) and "site-packages" not in json.dumps(config)  # no local path
    run_args = json.loads((base_dir / "run_args.json").read_text())
    assert run_args["learning_rate"] == 3.0e-3 and run_args["domains"] == ["food", "home", "movies"]
    metrics = json.loads((base_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"food", "home", "movies", "all", "random"}
    buckets = metrics["test_by_popularity"]  # by the target's training count, kept out of the table
    assert buckets and all(key.split(" popularity ")[0] in ("food", "home", "movies") for key in buckets)
    # how training ended: the epochs run, the best one, and why it stopped (the ceiling: the run may not converge)
    assert metrics["epochs_run"] == len(metrics["history"]) and 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    assert metrics["stopped_by"] == ("ceiling" if metrics["epochs_run"] == run_args["num_epochs"] else "patience")
    runtime = metrics["runtime"]  # where the time went (wall seconds), like transformers' train_runtime
    assert set(runtime) == {"prepare_s", "encode_s", "train_s", "valid_s", "test_s", "steps", "steps_per_second"}
    assert runtime["encode_s"] < runtime["prepare_s"]  # the catalog's part of the preparation
    assert runtime["steps"] == metrics["history"][-1]["step"] and all(runtime[k] > 0 for k in runtime)
    assert runtime["steps_per_second"] == pytest.approx(runtime["steps"] / runtime["train_s"], rel=1e-2)
    # the secondary columns: fewer items excluded, so every target has as many competitors or more
    other = metrics["test_other_exclusions"]
    assert set(other) == {"window", "none"}
    assert other["none"]["all"]["hr@20"] <= other["window"]["all"]["hr@20"] <= metrics["test"]["all"]["hr@20"]
    # every test case's rank, the table's "all" row case by case (for paired comparisons of two runs)
    ranks = np.load(base_dir / metrics["test_ranks"])
    assert len(ranks) == sum(domain["users_kept"] for domain in metrics["data"].values())
    assert rank_metrics(ranks) == pytest.approx(metrics["test"]["all"])
    card = (base_dir / "README.md").read_text()
    assert "library_name: mmsr_peft" in card and "synthetic" in card and "| all |" in card
    assert "AdamW lr 0.003 (linear schedule)" in card
    assert "More Information Needed" not in card
    model = MMSRModel.from_pretrained(base_dir)
    assert model.config.item_tower == "multimodal"


def test_mmsr_adapt_main_prints_table_and_writes_peft_adapter(base_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "office"
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    assert adapt_main([*argv, *TINY_TRAIN_FLAGS, "--num_epochs", "1"]) == 0
    printed = capsys.readouterr().out
    for row in ("| random |", "| zero-shot base |", "| LoRA (text+vision+fusion) |", "NDCG@10", "MRR@10"):
        assert row in printed
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["base_model_name_or_path"] == str(base_dir)
    assert "base_model:" in (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert rank_metrics(np.load(out / metrics["test_ranks"])) == pytest.approx(metrics["test_adapted"]["all"])


def test_new_process_loads_base_and_adapter_and_recommends_identically(base_dir, data_dir, tmp_path):
    out = tmp_path / "arts"
    adapt_args = AdaptArguments(target="arts", base=str(base_dir), data_dir=str(data_dir))
    model, results = adapt(adapt_args, TrainingArguments(output_dir=str(out), num_epochs=2, batch_size=16, seed=0))
    assert set(results) == {"random", "zero-shot base", "LoRA (text+vision+fusion)"}
    catalog = load_domain("arts", data_dir=str(data_dir)).catalog
    histories = [catalog.item_ids[:5], catalog.item_ids[10:13], [catalog.item_ids[30]]]
    expected = model.recommend(histories, catalog, k=10)

    script = textwrap.dedent(f"""
        import json
        from mmsr_peft import MMSRModel, load_domain
        model = MMSRModel.from_pretrained({str(base_dir)!r})
        model.load_adapter({str(out)!r}, adapter_name="arts")
        catalog = load_domain("arts", data_dir={str(data_dir)!r}).catalog
        top = model.recommend({histories!r}, catalog, k=10)
        print(json.dumps({{"ids": top.item_ids, "scores": top.scores.tolist()}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["ids"] == expected.item_ids  # exact: the same forward on identical weights (base + saved adapter)
    assert torch.allclose(torch.tensor(loaded["scores"]), expected.scores, atol=1e-5)

    model.disable_adapters()
    base_only = MMSRModel.from_pretrained(base_dir).recommend(histories, catalog, k=11)  # 11: near-ties at the cut
    disabled = model.recommend(histories, catalog, k=10)
    # the peft-wrapped modules and the plain ones compute alike only up to float32 rounding on some CPUs
    assert_topk_agree(disabled.scores, disabled.item_ids, base_only.scores, base_only.item_ids, atol=1e-5)


def test_adapt_help_prints_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        adapt_main(["--help"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    for option, help_words in [
        ("--target", "Target domain"),
        ("--base", "local folder or Hub repo id"),
        ("--components", "Components that get LoRA"),
        ("--lora_r", "LoRA rank"),
        ("--learning_rate", "Peak AdamW learning rate"),
        ("--resume", "Resume from the latest training state"),
        ("--config", "YAML file"),
    ]:
        assert option in printed and help_words in printed, option


def test_unknown_target_exits_non_zero_listing_valid_targets(capsys):
    assert adapt_main(["--target", "nonsense"]) != 0
    error = capsys.readouterr().err
    assert "'nonsense'" in error and "office" in error and "scientific" in error


def test_missing_target_data_says_the_command_that_prepares_it(base_dir, tmp_path, capsys):
    empty = tmp_path / "nodata"
    assert adapt_main(["--target", "office", "--base", str(base_dir), "--data_dir", str(empty)]) != 0
    error = capsys.readouterr().err
    assert f"mmsr-data synthetic --data_dir {empty} --domains office" in error


def test_unknown_component_is_refused(capsys):
    assert adapt_main(["--target", "office", "--components", "text", "audio"]) != 0
    assert "'audio'" in capsys.readouterr().err


def test_pretrain_config_file_fills_arguments_and_rejects_unknown_keys(tmp_path, capsys):
    from mmsr_peft.arguments import DataArguments, parse_args
    from mmsr_peft.builder import ModelArguments

    good = tmp_path / "good.yaml"
    good.write_text("fusion: merge_attention\nhidden_size: 48\ndomains: [food]\n")
    model_args, data_args = parse_args((ModelArguments, DataArguments), ["--config", str(good), "--hidden_size", "40"])
    assert (model_args.fusion, model_args.hidden_size, data_args.domains) == ("merge_attention", 40, ["food"])
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("hiden_size: 48\n", "unknown keys ['hiden_size']"),
        ("hidden_size: 4.7\n", f"{bad}: key 'hidden_size': invalid int value '4.7'"),  # typed like a flag
        ("fusion: [concat\n", f"--config {bad}: not valid YAML at line 2"),
        ("fusion: {type: concat}\n", "key 'fusion' holds a mapping"),
        ("hidden_size: [48, 64]\n", f"{bad}: key 'hidden_size': a list [48, 64]; expected a single value"),
        ("fusion: no\n", f"{bad}: key 'fusion': False is a boolean; quote a text value"),  # YAML's no: False
    ]:
        bad.write_text(text)
        with pytest.raises(SystemExit):
            parse_args((ModelArguments, DataArguments), ["--config", str(bad)])
        assert message in capsys.readouterr().err, text
    bad.write_text("logq: maybe\n")
    with pytest.raises(SystemExit):
        parse_args((TrainingArguments,), ["--config", str(bad)])
    assert f"{bad}: key 'logq': invalid string_to_bool value 'maybe'" in capsys.readouterr().err
    bad.write_text("learning_rate: 1e-4\nresume: true\n")  # PyYAML reads 1e-4 as a string: parsed as a flag is
    (training,) = parse_args((TrainingArguments,), ["--config", str(bad)])
    assert training.learning_rate == 1e-4 and training.resume is True


def test_pretrain_resumes_from_saved_state(data_dir, tmp_path, capsys):
    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--output_dir", str(tmp_path))
    assert pretrain_main([*argv, "--num_epochs", "1"]) == 0
    assert (tmp_path / "checkpoints").is_dir()
    capsys.readouterr()
    assert pretrain_main([*argv, "--num_epochs", "2", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed at epoch 1" in printed and "epoch 2:" in printed and "epoch 1:" not in printed
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_missing_base_names_it(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert adapt_main(["--target", "office", "--base", "outputs/no-such-base", "--data_dir", str(data_dir)]) != 0
    # the folder it looked for, by its full path, before the Hub is mentioned
    assert f"no local folder {tmp_path.resolve() / 'outputs' / 'no-such-base'}, and" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (Path(__file__).parents[1] / "recipes" / "configs").glob("*.yaml"))
)
def test_every_recipe_config_parses_and_builds(config):
    from mmsr_peft.arguments import DataArguments, parse_args
    from mmsr_peft.builder import ModelArguments, build_model

    path = Path(__file__).parents[1] / "recipes" / "configs" / config
    model_args, data_args, training_args = parse_args(
        (ModelArguments, DataArguments, TrainingArguments), ["--config", str(path)]
    )
    model = build_model(model_args, item_vocab=[f"item-{i}" for i in range(10)])
    assert model.config.item_tower == model_args.item_tower and training_args.output_dir.startswith("outputs/")


@pytest.mark.parametrize(
    "method, row", [("full", "full fine-tuning"), ("frozen", "frozen encoders"), ("scratch", "from scratch")]
)
def test_adapt_methods_other_than_lora_write_a_model(method, row, base_dir, data_dir, tmp_path, capsys):
    out = tmp_path / method
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    assert adapt_main([*argv, "--method", method, *TINY_TRAIN_FLAGS, "--num_epochs", "1"]) == 0
    assert f"| {row} |" in capsys.readouterr().out
    trained, base = MMSRModel.from_pretrained(out), MMSRModel.from_pretrained(base_dir)
    # exact: a weight that did not train is saved as it was loaded
    text_changed = not torch.equal(
        trained.item_tower.text.backbone.embeddings.word_embeddings.weight,
        base.item_tower.text.backbone.embeddings.word_embeddings.weight,
    )
    sequence_changed = not torch.equal(trained.sequence_encoder.position.weight, base.sequence_encoder.position.weight)
    assert (text_changed, sequence_changed) == {
        "full": (True, True),
        "frozen": (False, True),
        "scratch": (True, True),
    }[method]
    assert "| zero-shot base |" in (out / "README.md").read_text()


@pytest.mark.parametrize("ema_decay", ["0", "0.5"])  # with a moving average, the state carries it too
def test_run_killed_mid_epoch_then_resumed_equals_an_uninterrupted_run(ema_decay, data_dir, tmp_path, monkeypatch):
    from mmsr_peft import training
    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "3", "--save_steps", "5")  # a state after epoch 2's 1st step
    argv += ["--ema_decay", ema_decay]
    assert pretrain_main([*argv, "--output_dir", str(tmp_path / "straight")]) == 0

    collate, calls = training.TrainCollator.__call__, []

    def dies_in_epoch_two(self, sequences):  # 4 batches per epoch: the 6th is the second batch of epoch 2
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt("simulated kill")
        return collate(self, sequences)

    monkeypatch.setattr(training.TrainCollator, "__call__", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain_main([*argv, "--output_dir", str(tmp_path / "resumed")])
    monkeypatch.undo()
    assert pretrain_main([*argv, "--output_dir", str(tmp_path / "resumed"), "--resume"]) == 0

    straight, resumed = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("straight", "resumed"))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # epoch 2's mean loss counts the step before the kill, carried in the training state
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]]
    )
    assert resumed["test"]["all"] == pytest.approx(straight["test"]["all"], abs=1e-6)
    a, b = MMSRModel.from_pretrained(tmp_path / "straight"), MMSRModel.from_pretrained(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_ema_decay_validates_and_keeps_the_moving_average_and_trains_as_without_it(data_dir, tmp_path, monkeypatch):
    """`--ema_decay`: the saved model is the moving average of the trained weights at its best epoch (computed here
    from the weights after every step), and the weights trained step by step are those of the same run without it."""
    from mmsr_peft import training
    from mmsr_peft.cli import pretrain_main

    update, runs = training.Trainer.training_step, {}

    def spy(self, *args, **kwargs):  # the trained weights: first the starting ones, then after every step
        trajectory = runs.setdefault(self.args.ema_decay, [])
        if not trajectory:
            trajectory.append({name: weight.detach().clone() for name, weight in self.trainable.items()})
        loss = update(self, *args, **kwargs)
        trajectory.append({name: weight.detach().clone() for name, weight in self.trainable.items()})
        return loss

    monkeypatch.setattr(training.Trainer, "training_step", spy)
    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "3", "--patience", "3")  # 4 steps an epoch
    for decay in ("0", "0.5"):
        assert pretrain_main([*argv, "--ema_decay", decay, "--output_dir", str(tmp_path / decay)]) == 0
    plain, averaged = runs[0.0], runs[0.5]
    assert len(plain) == len(averaged) == 13
    for before, after in zip(plain, averaged, strict=True):  # validating the average left the training alone
        assert all(torch.equal(before[name], after[name]) for name in before)

    average, by_epoch = dict(averaged[0]), {}
    for updates, weights in enumerate(averaged[1:]):
        decay = min(0.5, (1 + updates) / (10 + updates))  # warmed up: 0.1, 0.18, 0.25, ... then 0.5 from the 9th
        average = {name: decay * average[name] + (1 - decay) * weights[name] for name in average}
        if (updates + 1) % 4 == 0:
            by_epoch[(updates + 1) // 4] = average
    metrics = json.loads((tmp_path / "0.5" / "metrics.json").read_text())
    saved = load_file(tmp_path / "0.5" / "model.safetensors")
    best = metrics["best_epoch"]
    for name, expected in by_epoch[best].items():
        torch.testing.assert_close(saved[name], expected, rtol=0, atol=1e-6)
    trained = averaged[4 * best]
    assert not all(torch.allclose(saved[name], trained[name], atol=1e-4) for name in trained)  # not the last step's
    with pytest.raises(ValueError, match=r"--ema_decay must be in \[0, 1\) \(0: off\), got 1.0"):
        TrainingArguments(ema_decay=1.0)


def test_ema_decay_is_refused_where_each_process_holds_a_shard_of_the_weights():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from mmsr_peft.training import check_averaging

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=2)
    with pytest.raises(ValueError, match="--ema_decay is not supported with FSDP over 2 processes"):
        check_averaging(TrainingArguments(ema_decay=0.99), fsdp)
    check_averaging(TrainingArguments(), fsdp)  # without an average, and with replicated weights: fine
    check_averaging(
        TrainingArguments(ema_decay=0.99), SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2)
    )


def test_resume_with_ema_decay_refuses_a_state_without_an_average(data_dir, tmp_path, capsys):
    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "1", "--output_dir", str(tmp_path))
    assert pretrain_main(argv) == 0
    capsys.readouterr()
    assert pretrain_main([*argv, "--num_epochs", "2", "--resume", "--ema_decay", "0.9"]) != 0
    error = capsys.readouterr().err
    assert "ema_weights.safetensors: --ema_decay, but the training state has no moving average of" in error
    assert "saved by a run without --ema_decay" in error


def test_resume_names_the_training_arguments_that_changed_and_trains_with_the_new_ones(data_dir, tmp_path, caplog):
    from mmsr_peft import training
    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "1", "--output_dir", str(tmp_path), "--ema_decay", "0.5")
    argv += ["--lr_scheduler_type", "constant", "--warmup_ratio", "0"]  # the learning rate is the argument's
    assert pretrain_main(argv) == 0
    saved = json.loads(max((tmp_path / "checkpoints").glob("checkpoint_*/trainer_state.json")).read_text())
    assert saved["args"]["ema_decay"] == 0.5 and "output_dir" not in saved["args"]  # where it runs: not recorded
    assert saved["processes"] == 1

    update, seen = training.Trainer.training_step, []

    def spy(self, *args, **kwargs):  # the optimizer's settings at every resumed step
        seen.append({(group["lr"], group["weight_decay"]) for group in self.optimizer.param_groups})
        return update(self, *args, **kwargs)

    # a changed average and schedule are named, saved -> now; a neutral argument (evaluation batch) is not
    changes = ["--num_epochs", "2", "--ema_decay", "0.9", "--learning_rate", "5e-4", "--weight_decay", "0.1"]
    with caplog.at_level(logging.WARNING, logger="mmsr_peft.training"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Trainer, "training_step", spy)
        assert pretrain_main([*argv, "--resume", *changes, "--eval_batch_size", "7"]) == 0
    warned = [r.getMessage() for r in caplog.records if "other training arguments" in r.getMessage()]
    assert len(warned) == 1 and "trainer_state.json was saved with other training arguments" in warned[0]
    expected = "(num_epochs 1 -> 2; learning_rate 0.003 -> 0.0005; weight_decay 0.01 -> 0.1; ema_decay 0.5 -> 0.9)"
    assert expected in warned[0]
    # the run goes on with the new values (Accelerate's load_state would bring back the saved optimizer's)
    assert seen and all(settings == {(5e-4, 0.1)} for settings in seen)
    caplog.clear()  # the states saved by the resumed run record its arguments: resuming with them again is quiet
    with caplog.at_level(logging.WARNING, logger="mmsr_peft.training"):
        assert pretrain_main([*argv, "--resume", *changes]) == 0
    assert not [r for r in caplog.records if "other training arguments" in r.getMessage()]


def test_resume_refuses_a_state_saved_over_another_number_of_processes(data_dir, tmp_path, capsys):
    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "1", "--output_dir", str(tmp_path))
    assert pretrain_main(argv) == 0
    path = max((tmp_path / "checkpoints").glob("checkpoint_*/trainer_state.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "processes": 2}))
    capsys.readouterr()
    assert pretrain_main([*argv, "--num_epochs", "2", "--resume"]) != 0
    assert f"{path}: saved by a run over 2 processes, resumed over 1" in capsys.readouterr().err


def test_config_file_can_fill_required_arguments(tmp_path):
    from mmsr_peft.arguments import parse_args

    path = tmp_path / "adapt.yaml"
    path.write_text("target: arts\nmethod: frozen\n")
    adapt_args, training_args = parse_args((AdaptArguments, TrainingArguments), ["--config", str(path)])
    assert (adapt_args.target, adapt_args.method) == ("arts", "frozen")


def test_max_steps_stops_a_run_in_the_steps_asked_and_evaluates_there(data_dir, tmp_path):
    from mmsr_peft.cli import pretrain_main

    # 4 steps an epoch: 6 steps are one epoch and half of the next, which ends early and is evaluated
    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "5", "--max_steps", "6", "--save_steps", "100")
    assert pretrain_main([*argv, "--output_dir", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["epochs_run"], metrics["stopped_by"], len(metrics["history"])) == (2, "max_steps", 2)
    states = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    assert json.loads((states[-1] / "trainer_state.json").read_text())["step"] == 6
    assert pretrain_main([*tiny_pretrain_argv(data_dir, "--max_steps", "0"), "--output_dir", str(tmp_path / "x")]) == 2


def same_ranks(a: Path, b: Path) -> float:
    """The share of test cases ranked the same in two runs' `test_ranks.npy` (a float tie may break either way)."""
    return float(np.mean(np.load(a / "test_ranks.npy") == np.load(b / "test_ranks.npy")))


def test_mmsr_evaluate_gives_a_saved_run_its_own_test_numbers_back(base_dir, data_dir, tmp_path, capsys):
    # the base, on its pretraining domains and seed (the run evaluated it in memory, this from its folder)
    out = tmp_path / "base_again"
    argv = ["--model", str(base_dir), "--domains", "food", "home", "movies", "--data_dir", str(data_dir)]
    assert evaluate_main([*argv, "--seed", "0", "--output_dir", str(out)]) == 0
    trained, again = (json.loads((folder / "metrics.json").read_text()) for folder in (base_dir, out))
    assert again["test"]["all"] == pytest.approx(trained["test"]["all"], abs=1e-3)
    for exclude in ("window", "none"):
        assert again["test_other_exclusions"][exclude]["all"] == pytest.approx(
            trained["test_other_exclusions"][exclude]["all"], abs=1e-3
        )
    assert same_ranks(out, base_dir) >= 0.97
    assert "Protocol: leave-one-out" in capsys.readouterr().out
    # an adapter, on its target with a cold-start split (the seed draws the cold items)
    adapter = tmp_path / "office"
    split = ["--data_dir", str(data_dir), "--cold_start_fraction", "0.2"]
    adapt_argv = ["--target", "office", "--base", str(base_dir), "--output_dir", str(adapter), *split]
    assert adapt_main([*adapt_argv, *TINY_TRAIN_FLAGS, "--max_steps", "2"]) == 0
    out = tmp_path / "adapter_again"
    argv = ["--model", str(base_dir), "--adapter", str(adapter), "--domains", "office", "--seed", "0", *split]
    assert evaluate_main([*argv, "--output_dir", str(out)]) == 0
    trained, again = (json.loads((folder / "metrics.json").read_text()) for folder in (adapter, out))
    assert {"office warm", "office cold"} <= set(again["test"])
    for key in ("all", "office warm", "office cold"):
        assert again["test"][key] == pytest.approx(trained["test_adapted"][key], abs=1e-3), key
    assert same_ranks(out, adapter) >= 0.97
    # an adapter folder passed as the model is refused with what to pass instead
    assert evaluate_main(["--model", str(adapter), "--domains", "office", "--output_dir", str(tmp_path / "x")]) == 2
    assert "is an adapter folder: pass the base it was trained on as --model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything is written
    # it never writes over the run it reads, nor over earlier results unless told to
    assert evaluate_main([*argv, "--output_dir", str(adapter)]) == 2
    assert evaluate_main([*argv, "--output_dir", str(out)]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert evaluate_main([*argv, "--output_dir", str(out), "--overwrite_output_dir"]) == 0
