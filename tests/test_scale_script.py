"""scripts/benchmark_scale.py on a tiny generated category: every stage runs and their counts agree; the large-catalog
training benchmark on two tiny catalogs."""

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_scale.py"


def load_script(path: Path = SCRIPT):
    sys.path.insert(0, str(path.parent))  # the script imports its runner as a sibling module
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_tiny_run_reports_every_stage_with_consistent_counts(tmp_path):
    script = load_script()
    argv = ["--interactions", "3000", "--items", "500", "--k", "3", "--same_process"]
    argv += ["--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path / "results")]
    assert script.main(argv) == 0

    table = (tmp_path / "results" / "scale.md").read_text()
    for stage in ("imports", *script.STAGES):
        assert f"\n| {stage} | " in table
    payload = json.loads((tmp_path / "results" / "scale.json").read_text())
    assert payload["command"].startswith("python scripts/benchmark_scale.py --interactions 3000")
    assert payload["machine"]["cores"] >= 1
    results = payload["results"]
    assert all(result["seconds"] >= 0 and result["peak_rss_bytes"] > 0 for result in results.values())

    generated, prepared, loaded, split, inputs = (results[stage] for stage in script.STAGES)
    raw = tmp_path / "work" / "raw"
    with gzip.open(raw / "Office_Products.jsonl.gz", "rt") as lines:
        assert sum(1 for _ in lines) == generated["review_lines"] == prepared["raw_reviews"] == 3000
    with gzip.open(raw / "meta_Office_Products.jsonl.gz", "rt") as lines:
        assert sum(1 for _ in lines) == generated["meta_lines"] == prepared["meta_lines"] == 495  # 1 % undescribed
    dropped = prepared["interactions_dropped"]
    kept = 3000 - prepared["duplicate_reviews"] - dropped["no_metadata"] - dropped["no_title"] - dropped["k_core"]
    assert 0 < prepared["interactions"] == kept == loaded["interactions"]
    assert prepared["users"] == loaded["users"] == loaded["users_kept"] == split["valid_cases"] == split["test_cases"]
    assert prepared["items"] == loaded["items"] == inputs["items"] <= generated["items_reviewed"]
    # training windows hold >= 2 items, from all but each user's last 2, consecutive windows sharing one
    windows, window_items = split["train_sequences"], split["train_items"]
    assert 2 * windows <= window_items <= kept - 2 * loaded["users"] + windows


def test_large_catalog_training_script_runs_pretraining_and_reports_its_runtime(tmp_path):
    script = load_script(SCRIPT.with_name(SCRIPT.stem + "_training.py"))
    argv = ["--sizes", "300", "600", "--users", "40", "--per_user", "6", "--processes", "1"]
    argv += ["--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path / "results")]
    assert script.main(argv) == 0

    payload = json.loads((tmp_path / "results" / "scale_training.json").read_text())
    assert [(row["items"], row["processes"]) for row in payload["results"]] == [(300, 1), (600, 1)]
    folder = tmp_path / "work" / "data" / "synthetic" / "scale-600"
    assert pq.read_table(folder / "items.parquet").num_rows == 600
    assert pq.read_table(folder / "interactions.parquet").num_rows == 40 * 6
    for row in payload["results"]:
        metrics = json.loads(
            (tmp_path / "work" / "runs" / f"{row['items']}-items-1-processes" / "metrics.json").read_text()
        )
        assert row["runtime"] == metrics["runtime"] and row["runtime"]["steps"] >= 1 and row["peak_rss_mib"] > 100
        assert 0 < row["runtime"]["encode_s"] < row["runtime"]["prepare_s"]  # the catalog's part of the preparation
        assert 0 < payload["generated"][str(row["items"])]["items_interacted"] <= row["items"]
    table = (tmp_path / "results" / "scale_training.md").read_text()
    assert "\n| 300 | " in table and "\n| 600 | " in table and "Growth from 300 to 600 items (2x the catalog)" in table

    # every finished run is a record; a re-run skips them and writes the same report from them
    records = sorted((tmp_path / "results" / "scale_training").glob("*.json"))
    assert [path.name for path in records] == ["300-items-1-processes.json", "600-items-1-processes.json"]
    before = {path: path.read_bytes() for path in records}
    shutil.rmtree(tmp_path / "work" / "runs")
    assert script.main(argv) == 0
    assert {path: path.read_bytes() for path in records} == before and not (tmp_path / "work" / "runs").exists()
    assert (tmp_path / "results" / "scale_training.md").read_text() == table
