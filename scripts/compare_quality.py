"""Checks a re-run of the quality benchmark against a reference report: does every row land within the reference's
standard deviation?

    git show HEAD:results/quality_ml100k.json > outputs/quality_reference.json   # the committed numbers
    make quality                                                                 # re-run (rewrites results/)
    python scripts/compare_quality.py outputs/quality_reference.json results/quality_ml100k.json

Compares test NDCG@10 and HR@10 (`--metrics`) of every row on the standard split, of its warm and cold targets on
the cold-start split, and of the genre-transfer rows, on the seeds both runs have (all of either when they share
none: a partial re-run is checked as far as it got). A cell is `identical` when both means agree to the 4 decimals
the tables print, `within` when the difference is at most the reference's sample standard deviation (or the re-run's,
when the reference ran one seed), `outside` otherwise, and `no std` when neither side has one (a single seed on
both). Arguments that differ between the two runs are listed first: a row they change is expected to move. Prints a
markdown table (and writes it with `--output`); exits 1 when a cell is `outside`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmark_quality import DOMAIN, cell, not_run, stats  # scripts/ is on the path of a script run from there

SLICES = (("main", "all", "standard"), ("cold", f"{DOMAIN} warm", "cold split, warm targets"))
SLICES += (("cold", f"{DOMAIN} cold", "cold split, cold targets"),)
EXACT = 5e-5  # the tables print 4 decimals


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "reference", type=Path, help="quality_ml100k.json to compare against (e.g. the committed one)."
    )
    parser.add_argument("rerun", type=Path, help="quality_ml100k.json of the re-run.")
    parser.add_argument("--metrics", nargs="+", default=["ndcg@10", "hr@10"], help="Test metrics to compare.")
    parser.add_argument("--output", type=Path, default=None, help="Also write the markdown table there.")
    return parser.parse_args(argv)


def load(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: cannot read {path}: {err}") from err
    if "records" not in report:
        raise SystemExit(f"error: {path} has no 'records': expected a quality_ml100k.json of benchmark_quality.py")
    return report


def per_seed_values(per_seed: dict, key: str, metric: str) -> dict[str, float]:
    """`{seed: metric}` of a row that ran (empty when it did not)."""
    if not_run(per_seed):
        return {}
    return {seed: record["test"][key][metric] for seed, record in per_seed.items() if key in record["test"]}


def slices(report: dict) -> dict[tuple[str, str], tuple[dict, str]]:
    """`{(row label, slice): (per-seed records, test key)}` of every row and slice, genre-transfer rows included."""
    found = {}
    for name, per_split in report["records"].items():
        label = report.get("labels", {}).get(name, name)
        for split, key, where in SLICES:
            found[(label, where)] = (per_split.get(split, {}), key)
    for name, per_seed in ((report.get("transfer") or {}).get("rows") or {}).items():
        found[(f"genre transfer: {name}", "genre groups")] = (per_seed, "all")
    return found


def verdict(ref: list[float], new: list[float]) -> tuple[str, float]:
    (ref_mean, ref_std), (new_mean, new_std) = stats(ref), stats(new)
    delta = new_mean - ref_mean
    if abs(delta) < EXACT:
        return "identical", delta
    std = ref_std if not math.isnan(ref_std) else new_std
    if math.isnan(std):
        return "no std", delta
    return ("within" if abs(delta) <= std else f"outside ({abs(delta) / std:.1f} std)"), delta


def counted(values: list[float]) -> str:
    return f"{cell(*stats(values))} (n={len(values)})"


def changed_arguments(reference: dict, rerun: dict) -> list[str]:
    old, new = reference.get("arguments", {}), rerun.get("arguments", {})
    ignored = {"output_dir", "feature_cache_dir", "data_dir", "posters", "recbole_python"}  # where, not what
    return [
        f"`{key}`: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in ignored and old.get(key) != new.get(key)
    ]


def compare(reference: dict, rerun: dict, metrics: list[str], names: tuple[str, str] = ("", "")) -> tuple[str, int]:
    """The markdown report and the number of cells outside the reference's standard deviation (`names`: how the
    header calls the two files)."""
    lines = ["# Re-run check of the quality benchmark", ""]
    for role, name, report in (("Reference", names[0], reference), ("Re-run", names[1], rerun)):
        lines += [f"{role}: {name + ', made by ' if name else ''}`{report.get('command', '?')}`", ""]
    changed = changed_arguments(reference, rerun)
    if changed:
        lines += ["Arguments that differ (rows they touch are expected to move):", ""]
        lines += [f"- {item}" for item in changed] + [""]
    lines += ["| row | slice | metric | reference | re-run | difference | verdict |", "|---|---|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    ours = slices(rerun)
    for (label, where), (ref_seeds, key) in slices(reference).items():
        new_seeds = ours.get((label, where), ({}, key))[0]
        for metric in metrics:
            by_seed = per_seed_values(ref_seeds, key, metric), per_seed_values(new_seeds, key, metric)
            seeds = by_seed[0].keys() & by_seed[1].keys()  # a partial re-run is compared on the seeds it has run
            ref, new = ([v for seed, v in values.items() if seed in seeds or not seeds] for values in by_seed)
            if not ref or not new:
                continue
            result, delta = verdict(ref, new)
            kind = result.split(" (")[0]  # "outside (2.1 std)" counts as "outside"
            counts[kind] = counts.get(kind, 0) + 1
            lines.append(
                f"| {label} | {where} | {metric} | {counted(ref)} | {counted(new)} | {delta:+.4f} | {result} |"
            )
    lines += ["", "Cells: " + ", ".join(f"{count} {name}" for name, count in sorted(counts.items())), ""]
    return "\n".join(lines), counts.get("outside", 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = tuple(str(path) if not path.is_absolute() else path.name for path in (args.reference, args.rerun))
    text, outside = compare(load(args.reference), load(args.rerun), args.metrics, names)
    print(text)
    if args.output is not None:
        from mmsr_peft.io import atomic_write_text

        atomic_write_text(args.output, text)
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
