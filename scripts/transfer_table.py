"""The transfer table: every way of moving a base model to a target domain, on the same target and split.

Rows: zero-shot base, LoRA on text + vision + fusion, LoRA on each single component, QLoRA (the same LoRA on
encoders stored in 4 bits), full fine-tuning, frozen encoders (only fusion and sequence encoder train) and the
same architecture trained from scratch on the target. Each row is one `mmsr-adapt` run in its own process, so its
wall time and peak memory (RSS) are its own.

    python scripts/transfer_table.py --target office --base outputs/demo/base
    python scripts/transfer_table.py --target office --base outputs/demo/base --rows lora full -- --num_epochs 5

Arguments after `--` go to every `mmsr-adapt` run. Writes `<output_dir>/transfer_<target>.{md,json}` (default
`results/`) with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner import ChildPeak

ADAPT = Path(__file__).resolve().parents[1] / "recipes" / "adapt.py"
# row name -> mmsr-adapt flags
ROWS = {
    "lora": ["--method", "lora"],
    "side": ["--method", "side"],
    "lora-text": ["--method", "lora", "--components", "text"],
    "lora-vision": ["--method", "lora", "--components", "vision"],
    "lora-fusion": ["--method", "lora", "--components", "fusion"],
    "lora+sequence": ["--method", "lora", "--components", "text", "vision", "fusion", "sequence"],
    "qlora-4bit": ["--method", "lora", "--quantize", "4bit"],
    "full": ["--method", "full"],
    "frozen": ["--method", "frozen"],
    "scratch": ["--method", "scratch"],
}
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def run_row(name: str, args, extra: list[str]) -> dict:
    """One `mmsr-adapt` run in a child process; returns its metrics, size on disk, wall time and peak RSS."""
    out = Path(args.work_dir) / name
    command = [sys.executable, str(ADAPT), "--target", args.target, "--base", args.base, "--output_dir", str(out)]
    command += ["--data_dir", args.data_dir, "--overwrite_output_dir", *ROWS[name], *extra]
    began = time.perf_counter()
    child = subprocess.Popen(command)
    peak = ChildPeak(child.pid)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"row {name!r} failed: {' '.join(command)}")
    metrics = json.loads((out / "metrics.json").read_text())
    files = {"lora": "adapter_model.safetensors", "side": "side_adapter_model.safetensors"}
    weights = out / files.get(ROWS[name][1], "model.safetensors")
    return {
        "row": name,
        "test": metrics["test"],
        "trainable_parameters": metrics["trainable_parameters"],
        "total_parameters": metrics["total_parameters"],
        "weights_bytes": weights.stat().st_size,
        "wall_s": wall,
        "peak_rss_gib": peak.peak_mib(usage) / 1024,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| row | HR@10 | NDCG@10 | MRR@10 | trainable (count, %) | adapter / model on disk | peak RSS (GiB) | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = results[0]["test"]
    for label in ("random", "zero-shot base"):
        lines.append(f"| {label} | " + " | ".join(f"{first[label][m]:.4f}" for m in METRICS) + " | 0 | - | - | - |")
    for r in results:
        trained = r["test"][next(reversed(r["test"]))]
        share = 100 * r["trainable_parameters"] / r["total_parameters"]
        lines.append(
            f"| {r['row']} | "
            + " | ".join(f"{trained[m]:.4f}" for m in METRICS)
            + f" | {r['trainable_parameters']:,} ({share:.2f} %) | {r['weights_bytes'] / 2**20:.2f} MiB"
            f" | {r['peak_rss_gib']:.2f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def checks(results: list[dict]) -> list[str]:
    """The claims the table is made to check, stated with the numbers (only for the rows that ran)."""
    rows = {r["row"]: r for r in results}
    ndcg = {name: r["test"][next(reversed(r["test"]))]["ndcg@10"] for name, r in rows.items()}
    lines = []
    if "lora" in rows:
        share = 100 * rows["lora"]["trainable_parameters"] / rows["lora"]["total_parameters"]
        lines.append(f"LoRA trains {share:.2f} % of the parameters ({'under' if share < 2 else 'NOT under'} 2 %).")
    if "lora" in rows and "scratch" in rows:
        verdict = "beats" if ndcg["lora"] > ndcg["scratch"] else "does NOT beat"
        lines.append(
            f"Pretrain + LoRA {verdict} from-scratch training on the target: NDCG@10 {ndcg['lora']:.4f} vs "
            f"{ndcg['scratch']:.4f}."
        )
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="office", help="Target domain.")
    parser.add_argument("--base", default="outputs/demo/base", help="Base model folder or Hub repo id.")
    parser.add_argument("--data_dir", default="data", help="Root of processed domain folders.")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="Rows to run.")
    parser.add_argument("--work_dir", default=None, help="Where each run writes (default outputs/transfer/<target>).")
    parser.add_argument("--output_dir", default="results", help="Where transfer_<target>.md/json go.")
    parser.add_argument(
        "--append",
        action="store_true",
        help="Add the rows to the table already in --output_dir (same target, base and run arguments), replacing "
        "rows of the same name; both commands are recorded.",
    )
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.work_dir = args.work_dir or f"outputs/transfer/{args.target}"
    args.extra = extra
    command = "python scripts/transfer_table.py " + " ".join(argv)
    results = []
    if args.append:
        results, command = previous_rows(args, extra, command)
    for name in args.rows:  # the files are rewritten after each row: a failure late in the run keeps the others
        results.append(run_row(name, args, extra))
        text = write(results, args, command)
    print("\n" + text)
    return 0


def previous_rows(args, extra: list[str], command: str) -> tuple[list[dict], str]:
    """The rows of the existing table that this run keeps, and the commands of both runs."""
    path = Path(args.output_dir) / f"transfer_{args.target}.json"
    if not path.is_file():
        raise SystemExit(f"--append: {path} does not exist")
    previous = json.loads(path.read_text())
    same = previous.get("base") == args.base and previous.get("extra") == extra
    if not same:
        raise SystemExit(
            f"--append: {path} was made with --base {previous.get('base')} and run arguments {previous.get('extra')}, "
            f"not {args.base} and {extra}"
        )
    kept = [row for row in previous["rows"] if row["row"] not in args.rows]
    return kept, f"{previous['command']}` then `{command}"


def write(results: list[dict], args, command: str) -> str:
    protocol = "full ranking over the target catalog, leave-one-out, history excluded, ties pessimistic"
    machine = f"{os.cpu_count()} CPU cores, torch {_torch_version()}, one process per row"
    text = (
        f"Transfer to `{args.target}` from `{args.base}` (test split; {protocol}; trainable share of the whole "
        f"model; on disk: the adapter file for LoRA rows, the model file otherwise; peak RSS of the run's process; "
        f"{machine}).\n\nCommand: `{command}`\n\n{table(results)}\n\n" + "\n".join(checks(results)) + "\n"
    )
    from mmsr_peft.files import atomic_write_text

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"transfer_{args.target}.md", text)
    summary = {"command": command, "machine": machine, "protocol": protocol, "base": args.base, "extra": args.extra}
    summary["rows"] = results
    summary["checks"] = checks(results)
    atomic_write_text(out / f"transfer_{args.target}.json", json.dumps(summary, indent=2) + "\n")
    return text


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
