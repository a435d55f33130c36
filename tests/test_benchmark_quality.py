"""The MovieLens-100k quality benchmark end to end on a tiny setting: its report files and their structure."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL_FLAGS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_quality.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_run_writes_tables_and_per_seed_numbers(benchmark, tmp_path):
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("MovieLens-100k comes with the recbole wheel (pip install --no-deps recbole==1.2.1)")
    out = tmp_path / "results"
    argv = [
        *TINY_MODEL_FLAGS,
        "--rows", "id", "text", "recbole",
        "--seeds", "3",
        "--epochs", "1",
        "--max_users", "40",
        "--data_dir", str(tmp_path / "data"),
        "--posters", str(tmp_path / "no-posters"),  # the rows need no image
        "--output_dir", str(out),
        "--feature_cache_dir", str(tmp_path / "cache"),
        "--recbole_python", str(tmp_path / "missing-python"),
    ]  # fmt: skip
    assert benchmark.main(argv) == 0

    report = json.loads((out / "quality_ml100k.json").read_text())
    assert report["command"].startswith("python scripts/benchmark_quality.py --text_model tiny-bert")
    assert "full ranking" in report["protocol"] and report["machine"]["cpu_count"] >= 1
    assert list(report["records"]) == list(benchmark.ROWS)
    assert report["records"]["image"]["main"] == {"not_run": "not in --rows"}
    for name in ("id", "text"):
        for split in ("main", "cold"):
            run = report["records"][name][split]["3"]  # per seed
            assert set(benchmark.METRICS) <= set(run["test"]["all"])
            assert run["epochs_run"] == 1 and run["steps"] >= 1
        assert {"ml-100k warm", "ml-100k cold"} <= set(report["records"][name]["cold"]["3"]["test"])
    assert "missing-python not found" in report["records"]["recbole"]["main"]["3"]["not_run"]
    assert report["cold"]["cold_cases"] + report["cold"]["warm_cases"] == 40 and report["cold"]["cold_items"] > 0
    assert report["finished"] and not report["transfer"]

    text = (out / "quality_ml100k.md").read_text()
    for heading in ("## Standard split", "## Cold start", "## Targets of the issue", "## Per-seed test NDCG@10"):
        assert heading in text
    assert "| ID SASRec (ours, id tower) | 1 |" in text
    assert "| RecBole SASRec (id) | 0 | not run:" in text
    assert "| text: tiny-bert, frozen | 1 |" in text
    assert "| text+image: gated, frozen | 0 | not run: not in --rows |" in text
    assert (out / "quality_ml100k.png").read_bytes().startswith(b"\x89PNG")


def test_rows_bring_their_starting_rows_and_bad_rows_fail(benchmark):
    assert benchmark.expand_rows(["text_lora"]) == ["text", "text_lora"]
    assert benchmark.expand_rows(["best_full"]) == ["concat_mlp", "gated", "merge_attention", "best_full"]
    assert benchmark.expand_rows(["gated", "best_lora"]) == ["gated", "best_lora"]
    with pytest.raises(ValueError, match="valid rows: id, recbole"):
        benchmark.QualityArguments(rows=["sasrec"])
