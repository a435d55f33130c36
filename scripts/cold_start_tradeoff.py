"""What a prior for new items buys on a cold-start split, and what it costs on known items.

Trained models learn popularity, which an item nobody has interacted with cannot have, so new items lose the top
slots to popular known ones. `new_item_boost` (a model option) adds a constant to the cosine score of every item
without training interactions. This script evaluates the trained run folders of the quality benchmark's `cold`
split again with a range of boosts (the library's `evaluate`, the benchmark's protocol) and writes
`results/cold_start_ml100k.{md,json}`: warm, cold and new-arrivals HR@10 per boost, and the boost a user would pick on
validation (the largest gain on cold targets while warm HR@10 keeps 97 % of the plain row's), scored on test.

    python scripts/cold_start_tradeoff.py                       # gated and gated_feature_dropout, every seed on disk
    python scripts/cold_start_tradeoff.py --rows gated --boosts 0 0.05 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from runner import REPO, mean_std, relative, write_json

BOOSTS = (0.0, 0.02, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15)
PARTS = ("warm", "cold", "cold, among cold items")


def evaluate_boosts(folder: Path, boosts, cache_dir: str) -> dict:
    """`{stage: {boost: {part: metrics}}}` of the run in `folder` on its own split, for each boost."""
    from mmsr_peft.domains import build_corpus, load_domain
    from mmsr_peft.evaluation import evaluate
    from mmsr_peft.model import MMSRModel
    from mmsr_peft.training import precompute_frozen_states

    run = json.loads((folder / "run_args.json").read_text())
    model = MMSRModel.from_pretrained(folder).eval().requires_grad_(False)
    domains = [load_domain(name, run["data_source"], run["data_dir"]) for name in run["domains"]]
    corpus = build_corpus(domains, model.config.sequence.max_len, run["cold_start_fraction"], run["seed"])
    inputs = model.processor(corpus.catalog.records(range(len(corpus.catalog))), image_cache_dir=cache_dir)
    inputs = precompute_frozen_states(model, inputs, cache_dir=cache_dir)
    (name,) = run["domains"]
    out = {}
    for stage, sets in (("valid", corpus.valid), ("test", corpus.test)):
        out[stage] = {}
        for boost in boosts:
            model.config.new_item_boost = boost
            metrics = evaluate(model, inputs, sets, progress=False)
            out[stage][boost] = {"all": metrics["all"], **{p: metrics[f"{name} {p}"] for p in PARTS}}
    return out


def chosen_boost(valid: dict, reference_warm: float) -> float:
    """The boost with the best validation cold HR@10 among those keeping validation warm HR@10 >= 0.97x the
    reference (the plain row's at no boost); ties: the smaller boost. 0 when even no boost keeps that."""
    allowed = [b for b, m in valid.items() if m["warm"]["hr@10"] >= 0.97 * reference_warm] or [0.0]
    return max(allowed, key=lambda b: (valid[b]["cold"]["hr@10"], -b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["gated", "gated_feature_dropout"], help="Rows of the plan.")
    parser.add_argument("--reference", default="gated", help="The plain row whose warm HR@10 bounds the cost.")
    parser.add_argument("--boosts", nargs="+", type=float, default=list(BOOSTS), help="Boosts to evaluate.")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "quality_ml100k"), help="The runs' folders.")
    parser.add_argument("--records_dir", default=str(REPO / "results" / "quality_ml100k" / "runs"))
    parser.add_argument("--feature_cache_dir", default="outputs/feature_cache", help="Frozen encoder outputs.")
    parser.add_argument("--output_dir", default="results", help="Where cold_start_ml100k.md/json go.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for row in dict.fromkeys([args.reference, *args.rows]):
        for folder in sorted(Path(args.work_dir, row).glob("cold-seed*")):
            if (folder / "metrics.json").is_file():  # a finished run
                print(f"{row}/{folder.name}", flush=True)
                results.setdefault(row, {})[folder.name] = evaluate_boosts(folder, args.boosts, args.feature_cache_dir)
    if args.reference not in results:
        print(f"error: no finished cold-split run of {args.reference} under {args.work_dir}", file=sys.stderr)
        return 2
    knn = {}
    for path in sorted(Path(args.records_dir).glob("knn_*/cold-seed*.json")):
        record = json.loads(path.read_text())
        knn.setdefault(record["row"], []).append(record["test"]["cold"]["hr@10"])
    lines = [
        "# MovieLens-100k cold start: what a prior for new items buys and costs",
        "",
        "The quality benchmark's `cold` split (10 % of the movies, drawn with the run's seed, never in training); its "
        "trained run folders evaluated again with `new_item_boost` b (added to the cosine score of every item without "
        "training interactions), under the benchmark's protocol (full ranking, whole history excluded). HR@10, mean "
        "± std over seeds.",
        f"Command: `python scripts/cold_start_tradeoff.py {' '.join(argv or sys.argv[1:])}`".rstrip() + ".",
        "",
    ]
    for row, seeds in results.items():
        lines += [f"## `{row}` ({len(seeds)} seeds), test", "", "| b | warm | cold | cold, among cold items | all |"]
        lines.append("|---|---|---|---|---|")
        for boost in args.boosts:
            cells = []
            for part in (*PARTS, "all"):
                mean, std = mean_std([s["test"][boost][part]["hr@10"] for s in seeds.values()])
                cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if len(seeds) > 1 else ""))
            lines.append(f"| {boost:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## The boost chosen on validation, scored on test", ""]
    reference = results[args.reference]
    bar_row, bar = max(((r, mean_std(v)[0]) for r, v in knn.items()), key=lambda x: x[1], default=(None, float("nan")))
    plain_warm = mean_std([s["test"][0.0]["warm"]["hr@10"] for s in reference.values()])[0]
    for row, seeds in results.items():
        picks = {
            seed: chosen_boost(s["valid"], reference[seed]["valid"][0.0]["warm"]["hr@10"])
            for seed, s in seeds.items()
            if seed in reference
        }
        cold = mean_std([seeds[seed]["test"][b]["cold"]["hr@10"] for seed, b in picks.items()])[0]
        warm = mean_std([seeds[seed]["test"][b]["warm"]["hr@10"] for seed, b in picks.items()])[0]
        lines.append(
            f"- `{row}`: b = {', '.join(f'{b:g}' for b in picks.values())} (per seed); test cold HR@10 {cold:.4f} "
            f"= **{cold / bar:.2f}x** the best untrained content-kNN's ({bar_row}, {bar:.4f}; goal >= 1.5x: "
            f"{'met' if cold >= 1.5 * bar else 'missed'}); warm HR@10 {warm:.4f} = **{warm / plain_warm:.3f}x** the "
            f"plain `{args.reference}` row's (goal >= 0.97x: {'met' if warm >= 0.97 * plain_warm else 'missed'})"
        )
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    base = Path(args.output_dir) / "cold_start_ml100k"
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    write_json(base.with_suffix(".json"), {"boosts": args.boosts, "runs": results, "knn_cold_hr@10": knn})
    print(f"wrote {relative(base)}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
