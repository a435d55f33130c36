"""The quality benchmark's runner on a tiny plan: rows as data, one process and one record per run, resumable, a
failed run reported while the others go on, a recorded run reproduced by `--verify`."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from testing_utils import KILLABLE_RUN, run_until

from mmsr_peft.parsing import parse_args

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY_PLAN = {
    "name": "tiny_quality",
    "title": "tiny synthetic",
    "data": {"domains": ["food"], "data_source": "synthetic"},
    "seeds": [0],
    "splits": {"main": {}, "cold": {"cold_start_fraction": 0.2}},
    "model": {
        "text_model": "tiny-bert",
        "vision_model": "micro-vit",
        "image_size": 32,
        "hidden_size": 32,
        "max_len": 12,
        "text_max_length": 24,
    },
    "training": {"num_epochs": 3, "patience": 1, "batch_size": 16, "num_negatives": 16, "save_steps": 10**9},
    "rows": {
        "popularity": {"label": "popularity", "command": "baseline", "args": {"baseline": "popularity"}},
        "id": {"label": "ID SASRec", "command": "pretrain", "args": {"item_tower": "id"}},
        "text": {"label": "text, frozen", "command": "pretrain", "args": {"item_tower": "text"}},
        "broken": {"label": "broken", "command": "pretrain", "splits": ["main"], "args": {"fusion": "nonsense"}},
        "text_lora": {
            "label": "text + LoRA on its encoder",
            "command": "adapt",
            "init": "text",
            "splits": ["main"],
            "args": {"method": "lora", "components": ["text"], "evaluate_start": True},
        },
        # transfer: a base pretrained once on another domain, adapted on each split of the plan's domain
        "home_text": {
            "label": "text, on home",
            "command": "pretrain",
            "data": {"domains": ["home"]},
            "splits": ["main"],
            "args": {"item_tower": "text"},
        },
        "from_home": {
            "label": "home base, frozen encoders, adapted",
            "command": "adapt",
            "init": "home_text",
            "init_split": "main",
            "splits": ["cold"],
            "args": {"method": "frozen"},
        },
    },
}


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(SCRIPTS))  # the script imports its runner as a sibling module
    spec = importlib.util.spec_from_file_location("benchmark_quality", SCRIPTS / "benchmark_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.path.remove(str(SCRIPTS))


def write_record(records: Path, row: str, split: str, seed: int, ndcg: float, **extra) -> None:
    """A run's record with every test metric and its validation NDCG@10 at `ndcg`: best epoch 2 of 3, stopped by
    patience."""
    metrics = {m: ndcg for m in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")}
    record = {"row": row, "split": split, "seed": seed, "test": {"all": metrics}, "test_window": metrics}
    record.update(test_none=metrics, wall_s=60.0, best_epoch=2, epochs_run=3, stopped_by="patience")
    path = records / row / f"{split}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "valid_ndcg_at_10": ndcg, **extra}))


def report_of(benchmark, tmp_path: Path, plan: dict) -> str:
    """The report that `--report_only` writes for `plan` from the records under `tmp_path/records`."""
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    argv = ["--plan", str(tmp_path / "plan.yaml"), "--records_dir", str(tmp_path / "records"), "--report_only"]
    assert benchmark.main([*argv, "--output_dir", str(tmp_path / "results")]) == 0
    return (tmp_path / "results" / f"{plan['name']}.md").read_text()


@pytest.mark.slow
def test_runs_are_processes_with_records_resumable_and_reproducible(benchmark, data_dir, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(TINY_PLAN))
    records = tmp_path / "records"
    argv = ["--plan", str(plan), "--data_dir", str(data_dir), "--records_dir", str(records), "--jobs", "2"]
    argv += ["--output_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work")]
    argv += ["--feature_cache_dir", str(tmp_path / "cache")]

    assert benchmark.main(argv) == 1  # the broken row fails; the other nine runs are recorded
    assert "broken/main-seed0" in capsys.readouterr().err
    assert sorted(str(p.relative_to(records)) for p in records.rglob("*.json")) == [
        "from_home/cold-seed0.json",
        "home_text/main-seed0.json",
        *(f"{row}/{split}-seed0.json" for row in ("id", "popularity", "text") for split in ("cold", "main")),
        "text_lora/main-seed0.json",
    ]
    transfer = json.loads((records / "from_home" / "cold-seed0.json").read_text())
    command = " ".join(transfer["command"])
    assert "--target food" in command and "work/home_text/main-seed0" in command and "--cold_start_fraction" in command
    source = json.loads((records / "home_text" / "main-seed0.json").read_text())["command"]
    assert source[source.index("--domains") + 1] == "home"  # the row's own data, not the plan's
    assert transfer["zero_shot"]["ndcg@10"] >= 0 and "cold, among cold items" in transfer["test"]
    lora = json.loads((records / "text_lora" / "main-seed0.json").read_text())
    assert lora["command"][0].endswith("mmsr-adapt") and "work/text/main-seed0" in " ".join(lora["command"])
    start = json.loads((records / "text" / "main-seed0.json").read_text())["valid_ndcg_at_10"]
    assert lora["valid_curve"][0] == pytest.approx(start, abs=1e-6)  # epoch 0: the text row's best model
    run = json.loads((records / "text" / "cold-seed0.json").read_text())
    assert run["command"][0].endswith("mmsr-pretrain") and "--cold_start_fraction" in run["command"]
    assert {"all", "warm", "cold", "cold, among cold items"} <= set(run["test"])
    assert {"ndcg@10", "hr@10"} <= set(run["test_window"])
    assert any(key.startswith("popularity ") for key in run["test"])
    assert run["stopped_by"] in ("patience", "ceiling") and len(run["valid_curve"]) == run["epochs_run"] <= 3
    assert run["valid_ndcg_at_10"] == run["valid_curve"][run["best_epoch"] - 1]
    assert run["wall_s"] > 0 and run["peak_rss_mib"] > 100 and run["trainable_parameters"] > 0
    assert json.loads((records / "popularity" / "main-seed0.json").read_text()).get("epochs_run") is None

    # resumable: a second call runs only what has no record (popularity with seed 1)
    recorded = (records / "popularity" / "main-seed0.json").stat().st_mtime_ns
    assert benchmark.main([*argv, "--rows", "popularity", "--seeds", "0", "1"]) == 0
    assert "2 of 4 runs already recorded; 2 to run" in capsys.readouterr().out
    assert (records / "popularity" / "main-seed0.json").stat().st_mtime_ns == recorded
    assert (records / "popularity" / "cold-seed1.json").is_file() and not (records / "id" / "main-seed1.json").exists()

    # an adapt run whose starting model is gone (a fresh checkout) runs its init row again first, and says so when
    # the re-run scores otherwise than the record (as on another machine: here, a record edited by hand)
    shutil.rmtree(tmp_path / "work" / "text" / "main-seed0")
    (records / "text_lora" / "main-seed0.json").unlink()
    text_record = json.loads((records / "text" / "main-seed0.json").read_text())
    edited = {**text_record, "test": {**text_record["test"], "all": {**text_record["test"]["all"], "ndcg@10": 0.5}}}
    (records / "text" / "main-seed0.json").write_text(json.dumps(edited))
    assert benchmark.main([*argv, "--rows", "text_lora"]) == 0
    assert "note: text/main-seed0 ran again here" in capsys.readouterr().err
    (records / "text" / "main-seed0.json").write_text(json.dumps(text_record))
    assert (tmp_path / "work" / "text" / "main-seed0" / "model.safetensors").is_file()
    again = json.loads((records / "text_lora" / "main-seed0.json").read_text())
    assert again["test"] == lora["test"]  # exact: the same seeded runs on one machine

    report = (tmp_path / "results" / "tiny_quality.md").read_text()
    assert "| ID SASRec | 1 |" in report and "| popularity | 2 |" in report and "broken" not in report
    assert (tmp_path / "results" / "tiny_quality.png").is_file()

    # a recorded run, run again from its record, gives the same numbers (seeded, one thread, same machine)
    assert benchmark.main([*argv, "--verify", "id/main-seed0"]) == 0
    assert "re-run identical" in capsys.readouterr().out

    # a record keeps every test case's rank; --add_ranks gives them to a record without (the run's saved model
    # evaluated again, with its adapter; a baseline run again), checking the model's test NDCG@10 against the record
    ranks = {}
    for row in ("id", "text_lora", "popularity"):
        path = records / row / "main-seed0.json"
        record = json.loads(path.read_text())
        ranks[row] = record.pop("test_ranks")
        assert len(ranks[row]) == 50  # the food domain's users
        path.write_text(json.dumps(record))
    assert benchmark.main([*argv, "--add_ranks", "--splits", "main", "--seeds", "0"]) == 0
    assert capsys.readouterr().out.count("ranks of 50 test cases added") == 3  # the others kept theirs
    for row in ranks:
        again = json.loads((records / row / "main-seed0.json").read_text())["test_ranks"]
        assert sum(a == b for a, b in zip(again, ranks[row], strict=True)) >= 48  # a float tie may break otherwise


@pytest.mark.slow
def test_a_run_whose_sitting_ended_goes_on_from_its_last_training_state(benchmark, data_dir, tmp_path, capsys):
    """An adapt row (LoRA from the `text` row's model), killed mid-run and run again, ends as an uninterrupted run."""
    rows = {row: TINY_PLAN["rows"][row] for row in ("text", "text_lora")}
    training = {**TINY_PLAN["training"], "patience": 3}  # all 3 epochs: a training state at the end of each
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({**TINY_PLAN, "rows": rows, "training": training}))

    def argv(name: str) -> list[str]:
        folders = {folder: str(tmp_path / name / folder) for folder in ("records", "work", "results", "cache")}
        return [
            *("--plan", str(plan), "--data_dir", str(data_dir), "--splits", "main", "--jobs", "1"),
            *("--records_dir", folders["records"], "--work_dir", folders["work"], "--output_dir", folders["results"]),
            *("--feature_cache_dir", folders["cache"]),
        ]

    assert benchmark.main(argv("straight")) == 0
    # a sitting that ended mid-run: the LoRA run's own command, killed after its second training state was written
    # but before it was marked complete, so the last complete state is epoch 1's
    assert benchmark.main([*argv("resumed"), "--rows", "text"]) == 0
    (args,) = parse_args([benchmark.QualityArguments], argv("resumed"))
    bench, run = benchmark.Benchmark(args), benchmark.Run("text_lora", "main", 0)
    out = bench.folder(run)
    out.parent.mkdir(parents=True)
    command = [str(part) for part in bench.command(run, out)]
    assert command[0].endswith("mmsr-adapt")
    run_until(KILLABLE_RUN, ["2", "adapt_main", *command[1:]], "SAVED", out.parent / "main-seed0.log")
    first_sitting = (out.parent / "main-seed0.log").read_text()
    capsys.readouterr()

    assert benchmark.main(argv("resumed")) == 0
    assert "text_lora/main-seed0: going on from the training state of epoch 1" in capsys.readouterr().out
    straight, resumed = (
        json.loads((tmp_path / name / "records" / "text_lora" / "main-seed0.json").read_text())
        for name in ("straight", "resumed")
    )
    assert resumed["resumed_at_epoch"] == 1 and "resumed_at_epoch" not in straight
    assert "--resume" not in resumed["command"] and "--overwrite_output_dir" in resumed["command"]  # one sitting's
    assert resumed["epochs_run"] == straight["epochs_run"] == 3 and resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["valid_curve"] == pytest.approx(straight["valid_curve"], abs=1e-6)  # epoch 0 (the start) too
    for target, metrics in straight["test"].items():
        assert resumed["test"][target] == pytest.approx(metrics, abs=1e-6), target
    log = (out.parent / "main-seed0.log").read_text()
    assert log.startswith(first_sitting) and "resumed at epoch 1" in log[len(first_sitting) :]
    assert not (out / "checkpoints").exists()  # a finished run keeps its adapter, not its training states


LORA = {"method": "lora", "modules_to_save": ["sequence_encoder"]}
FULL = {"group": "adapted", "command": "adapt", "init": "scratch"}


def test_a_curve_plan_reports_each_share_the_zero_shot_base_and_the_transfer_goal(benchmark, tmp_path):
    plan = {
        "name": "tiny_curve",
        "title": "tiny transfer",
        "data": {"domains": ["food"], "data_source": "synthetic"},
        "seeds": [0, 1],
        "splits": {"f10": {"train_user_fraction": 0.1}, "f100": {}},
        "curve": {"splits": ["f10", "f100"]},
        "training": {"num_epochs": 5, "patience": 1},
        "rows": {
            "scratch": {"group": "scratch", "label": "from scratch", "command": "pretrain", "args": {}},
            "frozen": {"group": "adapted", "label": "adapted", "command": "adapt", "init": "scratch", "args": {}},
            "other": {"group": "source", "label": "other base", "command": "pretrain", "args": {}},
            "from_other": {"group": "adapted", "label": "from other", "command": "adapt", "init": "other", "args": {}},
            "lora": {"group": "adapted", "label": "LoRA", "command": "adapt", "init": "scratch", "args": LORA},
            # full fine-tuning of the parts LoRA trains (its defaults and the sequence encoder it saves), from the
            # same start: compared with LoRA; at another rate, or of other parts: not
            "full": {**FULL, "label": "full", "args": {"method": "full"}},
            "full_slow": {**FULL, "label": "full slow", "args": {"method": "full", "learning_rate": 1e-5}},
            "full_text": {
                **FULL,
                "label": "full text",
                "args": {"method": "full", "components": ["text", "sequence"]},
            },
        },
    }

    def record(row, split, seed, ndcg, zero_shot=None):
        write_record(
            tmp_path / "records",
            row,
            split,
            seed,
            ndcg,
            **({"zero_shot": {"ndcg@10": zero_shot}} if zero_shot else {}),
        )

    for seed in (0, 1):  # adapted: 1.5x scratch with 10 % of the users, 0.9x with all of them
        record("scratch", "f10", seed, 0.04 + 0.002 * seed)
        record("frozen", "f10", seed, 0.06 + 0.003 * seed, zero_shot=0.02)
        record("scratch", "f100", seed, 0.10)
        record("frozen", "f100", seed, 0.09, zero_shot=0.02)
        record("from_other", "f10", seed, 0.03, zero_shot=0.01 + 0.002 * seed)  # a second base, one share only
    # one seed of two: in the curve, not yet a candidate for the goal (its validation is the best)
    # started from another run of the same base (one run again on another machine): its own zero-shot score
    write_record(tmp_path / "records", "lora", "f10", 0, 0.2, valid_ndcg_at_10=0.5, zero_shot={"ndcg@10": 0.03})
    for row, seed, ndcg in (("full", 0, 0.25), ("full_slow", 0, 0.2), ("full_text", 0, 0.2)):
        write_record(tmp_path / "records", row, "f10", seed, ndcg)
    report = report_of(benchmark, tmp_path, plan)
    assert "| row | 10 % of users | 100 % of users |" in report
    assert "| adapted | 0.0615 ± 0.0021 | 0.0900 ± 0.0000 |" in report
    # one score per run of a base, whatever share trains: the mean over the three runs of `scratch`
    assert "| zero-shot: from scratch, as it is | 0.0233 ± 0.0058 | 0.0233 ± 0.0058 |" in report
    assert (
        "Zero-shot test NDCG@10 by seed (the rows that started from each run): seed 0: 0.0200 (frozen), 0.0300 (lora)."
        in report
    )
    assert "| zero-shot: other base, as it is | 0.0110 ± 0.0014 | 0.0110 ± 0.0014 |" in report  # its own seeds
    assert "The base `other`" not in report
    assert "10 % of users: adapted 0.0615 / from scratch 0.0410 = **1.50x** (goal >= 1.2x: met)" in report
    assert "| LoRA | 0.2000 | - |" in report and "LoRA 0.2000 /" not in report
    # LoRA against full fine-tuning on the seeds both have
    assert "- 10 % of users, 1 seed: LoRA / full = **0.800x** (goal >= 0.97x: missed)" in report
    assert "/ full slow" not in report and "/ full text" not in report and "100 % of users, 1 seed" not in report
    assert "100 % of users: adapted 0.0900 / from scratch 0.1000 = **0.90x** (goal >= 1.0x: missed)" in report
    assert (tmp_path / "results" / "tiny_curve_curve.png").stat().st_size > 1000


FINE_TUNED = {"group": "fine-tuned", "command": "adapt", "init": "frozen"}


def goals_plan(name: str, seeds: list[int], **rows) -> dict:
    """A quality plan of the rows the goals compare: an ID SASRec, a frozen text + image start, LoRA and full
    fine-tuning from it, and `rows`."""
    return {
        "name": name,
        "title": name,
        "data": {"domains": ["food"], "data_source": "synthetic"},
        "seeds": seeds,
        "splits": {"main": {}},
        "training": {"num_epochs": 200, "patience": 10},
        "rows": {
            "id": {"group": "id", "label": "ID", "command": "pretrain", "args": {"item_tower": "id"}},
            "frozen": {"group": "text+image", "label": "frozen", "command": "pretrain", "args": {}},
            "lora": {**FINE_TUNED, "label": "LoRA", "args": LORA},
            "full": {**FINE_TUNED, "label": "full", "args": {"method": "full"}},
            **rows,
        },
    }


def test_the_goals_compare_fine_tuning_with_its_start_and_lora_with_full_fine_tuning(benchmark, tmp_path):
    # another recipe: compared with its start, not with the LoRA row of the first recipe
    calm = {**FINE_TUNED, "label": "full calm", "args": {"method": "full", "encoder_dropout": 0.0}}
    control = {**FINE_TUNED, "label": "trained on", "args": {"method": "frozen"}}  # the adapters' control
    # the same two keeping the start as a candidate: compared with each other only
    kept = {**FINE_TUNED, "label": "LoRA kept", "args": {"method": "lora", "evaluate_start": True}}
    control_kept = {**FINE_TUNED, "label": "trained on kept", "args": {"method": "frozen", "evaluate_start": True}}
    extra = {"full_calm": calm, "continued": control, "lora_kept": kept, "continued_kept": control_kept}
    plan = goals_plan("tiny_goals", [0], **extra)
    scores = {"id": 0.08, "frozen": 0.10, "lora": 0.11, "full": 0.1125, "full_calm": 0.105, "continued": 0.1}
    for row, ndcg in {**scores, "lora_kept": 0.1, "continued_kept": 0.1}.items():
        write_record(tmp_path / "records", row, "main", 0, ndcg)
    # a seed the fine-tuned rows do not have yet: they are compared with their start on the seeds they share
    write_record(tmp_path / "records", "frozen", "main", 1, 0.20, valid_ndcg_at_10=0.05)
    report = report_of(benchmark, tmp_path, plan)
    # a fine-tuned row is a text + image model: the best one by validation, here full fine-tuning
    assert "row (by validation NDCG@10) full (0.1125, 1 seed) / the stronger ID baseline ID (0.0800, 1 seed)" in report
    assert "- LoRA (0.1100, 1 seed) / its start frozen (0.1000, 1 seed) = 1.100x (goal > 1x: met)" in report
    assert "- full (0.1125, 1 seed) / its start frozen (0.1000, 1 seed) = 1.125x\n" in report
    assert "- LoRA (0.1100, 1 seed) / full (0.1125, 1 seed) = **0.978x** (goal >= 0.97x: met)" in report
    assert "- full calm (0.1050, 1 seed) / its start frozen (0.1000, 1 seed) = 1.050x\n" in report
    assert "/ full calm" not in report
    assert (
        "- LoRA (0.1100, 1 seed) / the same start trained on with frozen encoders, trained on (0.1000, 1 seed) = "
        "1.100x\n" in report
    )
    assert "- full calm (0.1050, 1 seed) / the same start trained on with frozen encoders, trained on" in report
    assert "- trained on (0.1000, 1 seed) / its start frozen (0.1000, 1 seed) = 1.000x\n" in report
    assert "- trained on (0.1000, 1 seed) / the same start trained on" not in report
    assert "- LoRA kept (0.1000, 1 seed) / the same start trained on with frozen encoders, trained on kept" in report
    assert "- LoRA (0.1100, 1 seed) / the same start trained on with frozen encoders, trained on kept" not in report


def test_goals_of_rows_whose_records_keep_their_ranks_get_a_paired_interval(benchmark, tmp_path):
    recbole = {"group": "id", "label": "RecBole", "command": "recbole", "args": {}}
    plan = goals_plan("tiny_paired", [0, 1], recbole=recbole)
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        write_record(tmp_path / "records", "recbole", "main", seed, 0.08)  # the stronger ID baseline, no ranks
        write_record(tmp_path / "records", "id", "main", seed, 0.05, test_ranks=rng.integers(0, 60, 400).tolist())
        start = rng.integers(0, 30, size=400)
        better = np.maximum(start - 2 * (rng.random(400) < 0.5), 0)  # two places higher for half of the users
        write_record(tmp_path / "records", "frozen", "main", seed, 0.10, test_ranks=start.tolist())
        write_record(tmp_path / "records", "lora", "main", seed, 0.11, test_ranks=better.tolist())
        write_record(tmp_path / "records", "full", "main", seed, 0.105)  # no ranks: no interval
    report = report_of(benchmark, tmp_path, plan)
    line = next(line for line in report.splitlines() if line.startswith("- LoRA (0.1100, 2 seeds) / its start"))
    low, high = (float(x) for x in line.split(" = 1.100x [")[1].split("]")[0].split(", "))
    assert 1 < low < high and "(paired bootstrap, 400 users) (goal > 1x: met)" in line
    assert "- full (0.1050, 2 seeds) / its start frozen (0.1000, 2 seeds) = 1.050x\n" in report
    assert "the stronger ID baseline RecBole (0.0800, 2 seeds) = **1.375x** (goal" in report  # RecBole: no interval
    # the best row against our ID row instead, with an interval: ranks of 0-59 against 0-29, far better
    assert "- the same row / ID (0.0500, 2 seeds) = 2.200x [" in report
    assert "Intervals: 95 % paired bootstrap of the ratio" in report


def test_a_plan_extends_another_and_reports_its_comparisons(benchmark, tmp_path):
    parent = {
        "name": "tiny_parent",
        "title": "parent",
        "data": {"domains": ["food"], "data_source": "synthetic"},
        "seeds": [0],
        "splits": {"main": {}, "cold": {"cold_start_fraction": 0.2}},
        "model": {"hidden_size": 32},
        "training": {"num_epochs": 5, "patience": 1},
        "rows": {"id": {"group": "id", "label": "ID", "command": "pretrain", "args": {"item_tower": "id"}}},
    }
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(parent))
    child = {
        "extends": "parent.yaml",
        "replace": ["rows", "splits"],  # replaced whole; everything else merged key by key
        "name": "tiny_child",
        "splits": {"main": {}},
        "model": {"fusion": "gated"},
        "rows": {
            "ours": {"group": "ours", "label": "ours", "command": "pretrain", "args": {}},
            "paper": {"group": "paper", "label": "the paper's", "command": "pretrain", "args": {}},
        },
        "comparisons": [{"title": "Paper against ours", "pairs": [["ours", "paper"], ["ours", "missing"]]}],
    }
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    plan = benchmark.load_plan(tmp_path / "child.yaml")
    assert plan["model"] == {"hidden_size": 32, "fusion": "gated"} and list(plan["splits"]) == ["main"]
    assert list(plan["rows"]) == ["ours", "paper"] and plan["title"] == "parent" and "extends" not in plan

    for row, seed, ndcg in (("ours", 0, 0.10), ("paper", 0, 0.08), ("ours", 1, 0.20)):  # compared on seed 0 only
        write_record(tmp_path / "records", row, "main", seed, ndcg)
    page = tmp_path / "page.md"  # a docs page holding a copy of another report's table: left alone
    other = (
        "Intro.\n<!-- results table: filled from results/x.md -->\n| stale |\n<!-- end of results table -->\nEnd.\n"
    )
    page.write_text(other)
    argv = ["--plan", str(tmp_path / "child.yaml"), "--records_dir", str(tmp_path / "records"), "--report_only"]
    with pytest.raises(SystemExit, match="no `<!-- results table: filled from .*tiny_child.md -->`"):
        benchmark.main([*argv, "--output_dir", str(tmp_path / "results"), "--fill_docs", str(page)])
    assert page.read_text() == other
    # this report's copy, refilled by --fill_docs
    page.write_text(other.replace("results/x.md", str(tmp_path / "results" / "tiny_child.md")))
    assert benchmark.main([*argv, "--output_dir", str(tmp_path / "results"), "--fill_docs", str(page)]) == 0
    assert page.read_text().splitlines()[2:6] == [
        "| row | seeds | NDCG@10 | HR@10 | NDCG@20 | NDCG@10 `window` | epochs (best/run) |",
        "|---|---|---|---|---|---|---|",
        "| ours | 2 | 0.1500 ± 0.0707 | 0.1500 ± 0.0707 | 0.1500 ± 0.0707 | 0.1500 ± 0.0707 | 2/3, 2/3 |",
        "| the paper's | 1 | 0.0800 | 0.0800 | 0.0800 | 0.0800 | 2/3 |",
    ]
    assert page.read_text().endswith("<!-- end of results table -->\nEnd.\n") and "stale" not in page.read_text()
    report = (tmp_path / "results" / "tiny_child.md").read_text()
    assert report.splitlines()[2] == f"`python scripts/benchmark_quality.py --plan {tmp_path / 'child.yaml'}`"
    assert "## Paper against ours (standard split, test NDCG@10)" in report
    assert "| ours | 0.1000 | the paper's | 0.0800 | 0.800x | 1 |" in report
    assert "missing" not in report and "## Goals" not in report  # no ID row: the quality goals do not apply


def test_the_papers_findings_are_judged_on_this_plans_records_and_another_plans(benchmark, tmp_path):
    """Each finding compares its `first` row with rows of this plan or `plan/row` of another (records beside this
    plan's), and says `holds` only when every difference goes the paper's way beyond twice its standard error."""
    other = {"name": "tiny_other", "rows": {"id": {"label": "ID", "command": "pretrain", "args": {}}}}
    (tmp_path / "tiny_other.yaml").write_text(yaml.safe_dump(other))
    rows = {
        name: {"label": name, "command": "pretrain", "args": {}} for name in ("ours", "noisy", "weak", "unrun", "once")
    }
    plan = {
        "name": "tiny_findings",
        "title": "findings",
        "data": {"domains": ["food"], "data_source": "synthetic"},
        "seeds": [0, 1, 2],
        "splits": {"main": {}, "cold": {}},
        "training": {"num_epochs": 5, "patience": 1},
        "rows": rows,
        "findings": [
            {"question": "Q1", "paper": "beats ID", "first": "ours", "against": ["tiny_other/id"]},
            {"question": "Q2", "paper": "beats noisy", "first": "ours", "against": ["noisy", "tiny_other/id"]},
            {
                "question": "Q3",
                "paper": "weak is enough",
                "first": "weak",
                "against": ["ours"],
                "expects": "not worse",
            },
            {"question": "Q4", "paper": "needs a GPU", "not_measured": "the GPU rows wait"},
            {"question": "Q5", "paper": "never ran", "first": "unrun", "against": ["ours"]},
            {"question": "Q6", "paper": "cold", "first": "ours", "against": ["weak"], "split": "cold", "part": "cold"},
            {"question": "Q7", "paper": "once", "first": "once", "against": ["ours"]},
            {"question": "Q8", "paper": "partly", "first": "ours", "against": ["once", "tiny_other/id"]},
        ],
    }
    (tmp_path / "tiny_findings.yaml").write_text(yaml.safe_dump(plan))
    values = {
        ("tiny_findings", "ours"): (0.10, 0.11, 0.12),
        ("tiny_findings", "noisy"): (0.08, 0.12, 0.16),
        ("tiny_findings", "weak"): (0.05, 0.05, 0.05),
        ("tiny_other", "id"): (0.05, 0.06, 0.07),
        ("tiny_findings", "once"): (0.02,),  # one seed: no spread to judge by
    }
    for (plan_name, row), ndcgs in values.items():
        for seed, ndcg in enumerate(ndcgs):
            for split in ("main", "cold"):
                metrics = {m: ndcg for m in ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@20")}
                cold = {m: ndcg if row == "ours" else 0.0 for m in metrics}
                out = {"row": row, "split": split, "seed": seed, "test": {"all": metrics, "cold": cold}}
                out.update(test_window=metrics, test_none=metrics, wall_s=60.0, valid_ndcg_at_10=ndcg)
                out.update(best_epoch=2, epochs_run=3, stopped_by="patience")
                path = tmp_path / "results" / plan_name / "runs" / row / f"{split}-seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(out))
    records = tmp_path / "results" / "tiny_findings" / "runs"
    argv = ["--plan", str(tmp_path / "tiny_findings.yaml"), "--records_dir", str(records), "--report_only"]
    assert benchmark.main([*argv, "--output_dir", str(tmp_path / "results")]) == 0
    report = (tmp_path / "results" / "tiny_findings.md").read_text()
    lines = {line.split(" | ")[0][2:]: line for line in report.splitlines() if line.startswith("| Q")}
    assert lines["Q1"] == (
        "| Q1 | beats ID | ndcg@10: ours: 0.1100 ± 0.0100; vs ID: 0.0600 ± 0.0100 (better, 1.83x) | holds |"
    )
    assert "vs noisy: 0.1200 ± 0.0400 (within noise, 0.92x)" in lines["Q2"]
    assert lines["Q2"].endswith("| not shown (within noise) |")
    assert "vs ours: 0.1100 ± 0.0100 (worse, 0.45x)" in lines["Q3"] and lines["Q3"].endswith("| does not hold |")
    assert lines["Q4"] == "| Q4 | needs a GPU | the GPU rows wait | not measured |"
    assert lines["Q5"] == "| Q5 | never ran | unrun: no run recorded yet | not measured yet |"
    assert lines["Q7"].endswith("vs ours: 0.1100 ± 0.0100 (one seed, not judged, 0.18x) | not judged yet (one seed) |")
    assert "vs once: 0.0200 (one seed, not judged, 5.50x)" in lines["Q8"]
    assert lines["Q8"].endswith("(better, 1.83x) | holds where judged |")
    assert (
        "ndcg@10, cold targets, split `cold`: ours: 0.1100 ± 0.0100; vs weak: 0.0000 ± 0.0000 (better) |"
        in lines["Q6"]
    )


def test_a_run_that_finishes_after_an_interrupt_is_filed_and_a_split_typo_is_refused(benchmark, tmp_path):
    import threading
    import time

    started = threading.Event()

    def do(run):
        if run.seed == 0:
            started.wait(10)
            raise KeyboardInterrupt  # Ctrl-C while the other run is still going
        started.set()
        time.sleep(0.5)
        return {"test": {"all": {"ndcg@10": 0.1, "hr@10": 0.2}}, "wall_s": 1.0}

    runs = [benchmark.Run("row", "main", seed) for seed in (0, 1)]
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_all(runs, lambda run: tmp_path / f"{run.seed}.json", do, jobs=2)
    assert json.loads((tmp_path / "1.json").read_text())["wall_s"] == 1.0  # its record, not its work, is kept
    assert not (tmp_path / "0.json").exists()

    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(TINY_PLAN))
    with pytest.raises(SystemExit, match=r"unknown --splits \['mian'\]; the plan's splits: cold, main"):
        benchmark.main(["--plan", str(tmp_path / "plan.yaml"), "--splits", "mian", "--report_only"])
    typo = {**TINY_PLAN, "rows": {**TINY_PLAN["rows"], "id": {**TINY_PLAN["rows"]["id"], "splits": ["cold", "mian"]}}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(typo))
    with pytest.raises(SystemExit, match=r"unknown row id: splits \['mian'\]"):
        benchmark.main(["--plan", str(tmp_path / "plan.yaml"), "--report_only"])
