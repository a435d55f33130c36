"""Large catalogs end to end: pretraining and evaluation on generated catalogs of 10k, 100k and 1M items.

For each catalog size, a processed domain `scale-<size>` is generated (items with a short generated title and no
image; `--users` users with `--per_user` interactions each, items drawn with Zipf-like popularity, exponent 0.9),
then trained for `--epochs` epochs and evaluated through `mmsr-pretrain` in a fresh process: the entry point users
run, with one torch thread per process. The item tower is text-only with a frozen text encoder (`--text_model`,
tiny-bert by default: the subject is the training loop, the feature cache and the ranking, not the encoder), whose
outputs are computed once over the catalog into a fresh feature cache; training uses the sampled softmax. With
`--processes 1 2`, each size also runs under `accelerate launch --num_processes 2` (DDP over gloo on the CPU):
the catalog encoding and the evaluations are shared between the processes.

Reported per run, from its `metrics.json` (`runtime`) and the process: preparation (data, model, and the catalog's
encoding: tokenising, hashing and the frozen encoder over the whole catalog, also reported alone), training steps
per second and seconds, validation and test seconds (full ranking of every user over the whole catalog), peak RSS
of the largest process, wall time.

    python scripts/benchmark_scale_training.py                                     # 10k, 100k, 1M items; 1 and 2 processes
    python scripts/benchmark_scale_training.py --sizes 2000 --users 500 --processes 1   # smoke run, under a minute

Each finished run is a record, `<output_dir>/scale_training/<size>-items-<n>-processes.json` (its runtime, peak RSS,
wall time, the generated catalog's counts, the machine); a re-run skips recorded runs (`--force` runs them again),
so the benchmark can span sittings. After every run, `<output_dir>/scale_training.{md,json}` is written from the
records (with the command). The generated data and run folders go to `--work_dir` (default: a temporary folder,
removed at the end).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from runner import console_script, execute, free_port, machine

from mmsr_peft.data.folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from mmsr_peft.files import atomic_write_text

ITEM_ALPHA = 0.9  # item popularity: P(rank r) proportional to r^-0.9
WORDS = {
    "brand": "Acme Borealis Clipstone Deskwell Inkbright Notara Officio Papyra Quillon Stratos".split(),
    "color": "red blue green black white amber teal violet silver golden".split(),
    "style": "striped plain dotted checkered lined solid matte glossy rugged compact".split(),
    "noun": "stapler binder notebook folder pen lamp calculator organizer marker planner".split(),
}


def generate_domain(folder: Path, items: int, users: int, per_user: int, seed: int = 0) -> dict:
    """Writes the processed domain `folder`: `items` items, `users` users with `per_user` interactions each."""
    rng = np.random.default_rng(seed)
    item_ids = np.char.add("s", np.char.zfill(np.arange(items).astype(str), 7))
    text = np.char.add(np.array(WORDS["brand"])[rng.integers(0, 10, items)], " ")
    for part in ("color", "style", "noun"):
        text = np.char.add(np.char.add(text, np.array(WORDS[part])[rng.integers(0, 10, items)]), " ")
    text = np.char.add(np.char.add(text, "no. "), rng.integers(1, 1000, items).astype(str))
    weights = np.cumsum(1.0 / np.arange(1, items + 1) ** ITEM_ALPHA)
    rank_to_item = rng.permutation(items)
    draws = rank_to_item[np.searchsorted(weights, rng.random(users * per_user) * weights[-1])]
    user_ids = np.repeat(np.char.add("u", np.arange(users).astype(str)), per_user)
    timestamps = np.tile(np.arange(per_user, dtype=np.int64), users) + 1_600_000_000
    with new_domain_folder(folder, overwrite=True) as tmp:
        write_table(tmp / "items.parquet", {"item_id": item_ids, "text": text, "image": [None] * items}, ITEM_SCHEMA)
        columns = {"user_id": user_ids, "item_id": item_ids[draws], "timestamp": timestamps}
        write_table(tmp / "interactions.parquet", columns, INTERACTION_SCHEMA)
        counts = {"items": items, "users": users, "interactions": users * per_user}
        preprocessing = {"generator": "scripts/benchmark_scale_training.py", "item_alpha": ITEM_ALPHA, "seed": seed}
        write_manifest(tmp, folder.name, "synthetic", "1", counts, preprocessing, "generated for the scale benchmark")
    return {**counts, "items_interacted": int(len(np.unique(draws)))}


def pretrain_command(processes: int) -> list[str]:
    """`mmsr-pretrain` of this interpreter's environment, under `accelerate launch` for several processes."""
    pretrain = str(console_script("mmsr-pretrain"))
    if processes == 1:
        return [pretrain]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), pretrain]


def run(work_dir: Path, size: int, processes: int, args) -> dict:
    """One pretraining run (fresh feature cache and run folder); its runtime, peak RSS and wall time."""
    name = f"{size}-items-{processes}-processes"
    output_dir, cache_dir = work_dir / "runs" / name, work_dir / "cache" / name
    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    flags = ["--domains", f"scale-{size}", "--data_dir", str(work_dir / "data"), "--item_tower", "text"]
    flags += ["--text_model", args.text_model, "--text_max_length", "16", "--hidden_size", "64", "--max_len", "50"]
    flags += ["--num_epochs", str(args.epochs), "--batch_size", "256", "--num_negatives", "256"]
    flags += ["--eval_batch_size", "1024", "--feature_cache_dir", str(cache_dir), "--output_dir", str(output_dir)]
    flags += ["--report_to", "none", "--save_steps", "1000000000", "--seed", "0"]
    log = work_dir / "runs" / f"{name}.log"
    env = {"ACCELERATE_USE_CPU": "1", "TOKENIZERS_PARALLELISM": "false"}
    measured = execute([*pretrain_command(processes), *flags], log, threads=1, env=env, check=False)
    metrics_path = output_dir / "metrics.json"
    if not metrics_path.is_file():  # multi-process CPU runs may abort at exit after their work: judge by the output
        raise RuntimeError(f"{name}: no metrics.json; log tail:\n{log.read_text()[-3000:]}")
    metrics = json.loads(metrics_path.read_text())
    return {
        "items": size,
        "processes": processes,
        "runtime": metrics["runtime"],
        "test_ndcg@10": metrics["test"]["all"]["ndcg@10"],
        "wall_s": round(measured["wall_s"], 1),
        "peak_rss_mib": round(measured["peak_rss_mib"]),
    }


def report(results: list[dict], generated: dict, command: str, info: dict, args) -> str:
    lines = [
        "# Scale: pretraining and evaluation on large generated catalogs",
        "",
        f"`{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} cores, load average {info['load_average']} at the start; one torch "
        f"thread per process. Each catalog: {args.users:,} users with {args.per_user} interactions each (items drawn "
        f"Zipf-like, exponent {ITEM_ALPHA}), items with a generated title and no image; a text-only model with a "
        f"frozen `{args.text_model}` text encoder (its outputs computed once into a fresh feature cache), hidden "
        f"size 64, sampled softmax with 256 negatives, batch 256, {args.epochs} epoch(s). *Prepare*: everything "
        "before training (loading the data, building the model, encoding the catalog); *encode*: the catalog's part "
        "of it (tokenising, hashing, the frozen encoder; each process its share). Validation and test rank every "
        "user against the whole catalog (full ranking). Peak RSS: the largest process of the run. The test NDCG@10 "
        "of generated data says nothing about quality; it is there to show that the runs compare the same models.",
        "",
        "| items | interacted | processes | prepare s | encode s | train s | steps/s | valid s | test s | wall s | peak RSS | test NDCG@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        runtime = row["runtime"]
        lines.append(
            f"| {row['items']:,} | {generated[row['items']]['items_interacted']:,} | {row['processes']} "
            f"| {runtime['prepare_s']:.1f} | {runtime['encode_s']:.1f} | {runtime['train_s']:.1f} "
            f"| {runtime['steps_per_second']:.2f} "
            f"| {runtime['valid_s']:.1f} | {runtime['test_s']:.1f} | {row['wall_s']:.0f} "
            f"| {row['peak_rss_mib']:,} MiB | {row['test_ndcg@10']:.4f} |"
        )
    single = {row["items"]: row for row in results if row["processes"] == 1}
    sizes = sorted(single)
    if len(sizes) > 1:
        small, large = single[sizes[0]], single[sizes[-1]]
        factor = sizes[-1] / sizes[0]
        lines += ["", f"Growth from {sizes[0]:,} to {sizes[-1]:,} items ({factor:g}x the catalog), one process:"]
        for key in ("prepare_s", "encode_s", "train_s", "valid_s", "test_s"):
            ratio = large["runtime"][key] / max(small["runtime"][key], 1e-9)
            lines.append(f"- {key.removesuffix('_s')}: {ratio:.1f}x")
        lines.append(f"- peak RSS: {large['peak_rss_mib'] / small['peak_rss_mib']:.1f}x")
    pairs = [(row, single.get(row["items"])) for row in results if row["processes"] == 2 and row["items"] in single]
    if pairs:
        lines += [
            "",
            "Two processes against one, wall-time ratios (goal <= 0.6x for evaluation and catalog encoding). The "
            "models differ (each process takes its own batch of --batch_size sequences, so two processes train on twice "
            "the sequences per step, in half the steps): "
            "that evaluation sharded over processes gives exactly the metrics of one process is tested in "
            "tests/test_distributed.py, on one model.",
        ]
        for two, one in pairs:
            ratios = {
                key: two["runtime"][key] / max(one["runtime"][key], 1e-9)
                for key in ("prepare_s", "encode_s", "valid_s", "test_s", "train_s")
            }
            lines.append(
                f"- {two['items']:,} items: prepare {ratios['prepare_s']:.2f}x (encode {ratios['encode_s']:.2f}x), "
                f"valid {ratios['valid_s']:.2f}x, test {ratios['test_s']:.2f}x, train {ratios['train_s']:.2f}x"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Catalog sizes.")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="Process counts to run each size.")
    parser.add_argument("--users", type=int, default=20_000, help="Users of every generated catalog.")
    parser.add_argument("--per_user", type=int, default=20, help="Interactions per user.")
    parser.add_argument("--epochs", type=int, default=1, help="Training epochs per run.")
    parser.add_argument("--text_model", default="tiny-bert", help="The frozen text encoder (a --text_model value).")
    parser.add_argument("--work_dir", default=None, help="Where data and runs go (kept). Default: a temporary folder.")
    parser.add_argument("--output_dir", default="results", help="Where scale_training.md/json and the records go.")
    parser.add_argument("--force", action="store_true", help="Run again the runs that have a record.")
    args = parser.parse_args(argv)
    command = "python scripts/benchmark_scale_training.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    info = machine()
    output = Path(args.output_dir)
    records = output / "scale_training"  # one JSON record per finished run: a re-run skips them
    records.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="mmsr-scale-training-"))
    settings = {"users": args.users, "per_user": args.per_user, "epochs": args.epochs, "text_model": args.text_model}
    try:
        for size in args.sizes:
            todo = [
                p for p in args.processes if args.force or not (records / f"{size}-items-{p}-processes.json").is_file()
            ]
            if not todo:
                continue
            started = time.perf_counter()
            generated = generate_domain(work_dir / "data" / "synthetic" / f"scale-{size}", size, args.users,
                                        args.per_user)  # fmt: skip
            generated["generate_s"] = round(time.perf_counter() - started, 1)
            for processes in todo:
                row = {**run(work_dir, size, processes, args), "generated": generated, "settings": settings}
                row["machine"] = info
                path = records / f"{size}-items-{processes}-processes.json"
                atomic_write_text(path, json.dumps(row, indent=2) + "\n")
                print(f"{size:,} items, {processes} process(es): {row['runtime']}, {row['wall_s']} s, "
                      f"{row['peak_rss_mib']} MiB", flush=True)  # fmt: skip
                write_report(records, output, command, info, args)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(write_report(records, output, command, info, args))
    return 0


def write_report(records: Path, output: Path, command: str, info: dict, args) -> str:
    """`scale_training.{md,json}` from the records of the requested sizes and process counts (those that exist)."""
    results = []
    for size in args.sizes:
        for processes in args.processes:
            path = records / f"{size}-items-{processes}-processes.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
    generated = {row["items"]: row["generated"] for row in results}
    info = results[0]["machine"] if results else info  # the machine the runs were measured on
    text = report(results, generated, command, info, args)
    payload = {"command": command, "machine": info, "generated": generated, "results": results}
    atomic_write_text(output / "scale_training.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(output / "scale_training.md", text)
    return text


if __name__ == "__main__":
    sys.exit(main())
