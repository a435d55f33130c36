"""Performance benchmark: every figure is measured side by side in one run on this machine.

    python scripts/benchmark.py                       # everything (about 15 minutes on 2 CPU cores)
    python scripts/benchmark.py --sections catalog    # one section
    make benchmark                                    # the same, with RecBole's own virtual environment

Sections:
- `recbole`: our ID-SASRec vs RecBole's SASRec on MovieLens-100k, same split (exported with `mmsr-data
  recbole-export`), same hyper-parameters: training transitions per second and full-ranking users per second.
  RecBole runs in its own virtual environment (`.venv-recbole`, made by `make recbole-venv`); when it is missing
  the section says so and reports our side only.
- `cached`: MMSR with the frozen MiniLM text encoder cached vs our ID-SASRec, epoch time on MovieLens-100k.
- `unique`: items encoded per step vs the B x T positions of the batch (trainable encoders encode each distinct item
  of a batch once).
- `lora`: LoRA, a side adapter and full fine-tuning of the default CPU model (MiniLM + ViT, concat fusion) on the
  synthetic office domain: peak memory (RSS of a fresh process), step and epoch time, trainable share, adapter vs
  base checkpoint size.
- `catalog`: full-ranking evaluation time and peak memory vs catalog size (10 k, 100 k, 1 M generated items).

Timings are medians of `--repeats` runs with [min, max]; each memory figure comes from its own fresh process.
Writes `<output_dir>/benchmark.md` and `.json` with the command that made them and the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from runner import LiveHeapPeak, in_fresh_process, library_trainer, machine

REPO = Path(__file__).resolve().parents[1]
RECBOLE_PYTHON = REPO / ".venv-recbole" / "bin" / "python"
SECTIONS = ("recbole", "cached", "unique", "lora", "catalog")
# The hyper-parameters both SASRecs share (RecBole's names in scripts/recbole_sasrec.py).
SASREC = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "max_len": 50, "dropout": 0.2, "batch_size": 256}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def fmt(stat: dict, digits: int = 2) -> str:
    if len(stat.get("runs", ())) == 1:
        return f"{stat['median']:.{digits}f} (one run)"
    return f"{stat['median']:.{digits}f} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]"


# ---------------------------------------------------------------------------------------------------------------
# Our training epoch: the library's Trainer, as `mmsr-pretrain` runs it.


def epoch_seconds(model, corpus, catalog_inputs, batch_size: int, num_negatives: int) -> float:
    """Seconds of one training epoch through the library's `Trainer` (data loading and steps; its end-of-epoch
    evaluation and saved training state are not counted: `TrainState.seconds["train"]`)."""
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = library_trainer(
            model, corpus, catalog_inputs, output_dir, num_epochs=1, batch_size=batch_size, num_negatives=num_negatives
        )
        return trainer.train().seconds["train"]


def movielens_corpus(data_dir: str):
    from mmsr_peft.data.movielens import prepare_movielens
    from mmsr_peft.domains import build_corpus, load_folder

    folder = Path(data_dir) / "movielens" / "ml-100k"
    if not folder.exists():
        prepare_movielens(data_dir)
    return build_corpus([load_folder(folder)], SASREC["max_len"])


def sasrec_model(item_tower: str, item_ids, loss: str):
    from mmsr_peft.builder import ModelArguments, build_model

    args = ModelArguments(
        item_tower=item_tower,
        hidden_size=SASREC["hidden_size"],
        num_layers=SASREC["num_layers"],
        num_heads=SASREC["num_heads"],
        max_len=SASREC["max_len"],
        dropout=SASREC["dropout"],
        loss=loss,
        text_finetune="frozen",
    )
    return build_model(args, item_vocab=item_ids)


def ours_sasrec(data_dir: str, item_tower: str, repeats: int, cache_dir: str) -> dict:
    """Epoch time and evaluation speed of our SASRec with the `id` tower or the frozen, cached MiniLM `text` tower."""
    from mmsr_peft.evaluation import evaluate
    from mmsr_peft.training import precompute_frozen_states

    corpus = movielens_corpus(data_dir)
    torch.manual_seed(0)
    model = sasrec_model(item_tower, corpus.catalog.item_ids, "full_ce")
    inputs = model.processor(corpus.catalog.records(range(len(corpus.catalog))))
    began = time.perf_counter()
    inputs = precompute_frozen_states(model, inputs, 256, cache_dir)
    cache_seconds = time.perf_counter() - began
    epochs = [epoch_seconds(model, corpus, inputs, SASREC["batch_size"], 0) for _ in range(repeats)]
    evals = []
    for _ in range(repeats):
        began = time.perf_counter()
        evaluate(model, inputs, corpus.test, batch_size=256, progress=False)
        evals.append(time.perf_counter() - began)
    transitions = sum(len(s) - 1 for s in corpus.train)
    users = len(corpus.test[0].targets)
    return {
        "epoch_s": spread(epochs),
        "transitions": transitions,
        "transitions_per_s": spread([transitions / e for e in epochs]),
        "eval_s": spread(evals),
        "eval_users_per_s": spread([users / e for e in evals]),
        "cache_s": cache_seconds,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def recbole_sasrec(data_dir: str, epochs: int) -> dict:
    """RecBole's SASRec on the exported split, in `.venv-recbole` (see scripts/recbole_sasrec.py). The export (it
    holds MovieLens data) and RecBole's report stay in the temporary `data_dir`."""
    if not RECBOLE_PYTHON.is_file():
        return {"error": f"{RECBOLE_PYTHON.relative_to(REPO)} not found: run `make recbole-venv` to compare"}
    from mmsr_peft.data.recbole import export_recbole

    export = Path(data_dir) / "recbole-export"
    export_recbole(Path(data_dir) / "movielens" / "ml-100k", export, max_len=SASREC["max_len"], overwrite=True)
    report = Path(data_dir) / "recbole_sasrec.json"
    command = [
        str(RECBOLE_PYTHON), str(REPO / "scripts" / "recbole_sasrec.py"), str(export),
        "--epochs", str(epochs), "--output", str(report),
        *[f"--{k}={v}" for k, v in SASREC.items()], "--learning_rate=1e-3", "--patience", str(epochs),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"RecBole run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    raw = json.loads(report.read_text())
    epochs_s = raw["wall_s"]["train_per_epoch"]  # each RecBole training row is one transition (a prefix + target)
    return {
        "epoch_s": spread(epochs_s),
        "transitions_per_s": spread([raw["data"]["train_rows"] / e for e in epochs_s]),
        "eval_s": spread([raw["data"]["test_users"] / raw["throughput"]["recbole_eval_users_per_s"]]),
        "eval_users_per_s": spread([raw["throughput"]["recbole_eval_users_per_s"]]),
        "test": raw["test"],
        "raw": raw,
    }


# ---------------------------------------------------------------------------------------------------------------


def unique_items(data_dir: str) -> dict:
    """Distinct items per training batch of MovieLens-100k vs the B x T positions (and negatives) of the batch."""
    from mmsr_peft.data.collate import TrainCollator
    from mmsr_peft.data.processing import ItemInputs

    corpus = movielens_corpus(data_dir)
    inputs = ItemInputs(item_index=torch.arange(len(corpus.catalog)))
    rows = []
    for batch_size, negatives in ((64, 256), (256, 256)):
        collate = TrainCollator(inputs, "sampled_softmax", negatives, seed=0)
        order = np.random.default_rng(0).permutation(len(corpus.train))
        encoded, positions = [], []
        for first in range(0, len(order), batch_size):
            batch = collate([corpus.train[i] for i in order[first : first + batch_size]])
            encoded.append(len(batch.items))
            positions.append(int((batch.inputs >= 0).sum() + (batch.targets[:, -1:] >= 0).sum()) + negatives)
        rows.append(
            {
                "batch_size": batch_size,
                "negatives": negatives,
                "items_encoded_per_step": statistics.mean(encoded),
                "positions_per_step": statistics.mean(positions),
            }
        )
    return {"rows": rows}


def resident_mib() -> float:
    """This process's resident memory now (not its peak), in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# The adaptation rows' training settings (TrainingArguments fields) by key suffix: as they are, with gradient
# checkpointing, with sampled negatives scored from a table, and with the lighter activations (no encoder dropout,
# feed-forward recomputed). The side adapter runs no encoder backward: only the first.
ADAPTATION_SETTINGS = {
    "": {},
    "_checkpointing": {"gradient_checkpointing": True},
    "_table": {"negative_table": True},
    "_lean": {"encoder_dropout": 0.0, "feed_forward_checkpointing": True},
}


def adaptation_step(
    method: str,
    data_dir: str,
    steps: int,
    training: dict | None = None,
    lora_top_k: int = 0,
) -> dict:
    """Step time, memory and sizes of one adaptation method (`lora`, `side` or `full`) on the default CPU model
    (synthetic office). Memory: the resident size once model and catalog are loaded, and the peak during training
    (the difference is what training itself costs: activations, gradients, optimizer states). A side adapter's
    frozen encoders run once over the catalog before training (`prepare_s`; a later run reads the feature cache).
    `training`: `TrainingArguments` fields; with `negative_table`, sampled negatives are scored from a table of the
    catalog's embeddings, rebuilt once an epoch (`table_s`), instead of going through the encoders. `lora_top_k`:
    LoRA in the top blocks of each encoder only (`--lora_top_k`); the blocks below run without autograd."""
    from peft import LoraConfig

    from mmsr_peft.adapters import is_adapter_key
    from mmsr_peft.builder import ModelArguments, build_model
    from mmsr_peft.domains import build_corpus, load_domain
    from mmsr_peft.lora import lora_target_modules
    from mmsr_peft.side import SideAdapterConfig
    from mmsr_peft.training import precompute_frozen_states

    corpus = build_corpus([load_domain("office", data_dir=data_dir)], 50)
    torch.manual_seed(0)
    model = build_model(ModelArguments(text_finetune="full", vision_finetune="full"), corpus.catalog.item_ids)
    if method == "lora":
        model.requires_grad_(False)
        top_k = {"text": lora_top_k, "vision": lora_top_k}
        model.add_adapter(
            LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_modules(model, top_k=top_k)), "bench"
        )
    elif method == "side":
        model.add_adapter(SideAdapterConfig(), "bench")
    began = time.perf_counter()
    inputs = precompute_frozen_states(model, model.processor(corpus.catalog.records(range(len(corpus.catalog)))))
    prepare_s = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as output_dir:  # the trainer's; nothing is saved there
        trainer = library_trainer(
            model,
            corpus,
            inputs,
            output_dir,
            learning_rate=1e-4,
            num_negatives=256,
            **(training or {}),
        )
        began = time.perf_counter()
        table = trainer.negative_table() if trainer.args.negative_table else None
        table_s = time.perf_counter() - began
        loaded_mib = resident_mib()
        model.train()
        times = []
        with LiveHeapPeak() as live:
            for step in range(steps + 1):
                rows = np.arange(step * 64, (step + 1) * 64) % len(corpus.train)  # office has fewer than steps x 64
                batch = trainer.collator([corpus.train[i] for i in rows]).to(trainer.accelerator.device)
                began = time.perf_counter()
                trainer.training_step(batch, table)
                if step:  # the first step allocates; it is not timed
                    times.append(time.perf_counter() - began)
    with tempfile.TemporaryDirectory() as folder:
        if method in ("lora", "side"):
            model.save_adapter(folder, "bench")
            size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
        else:
            model.save_pretrained(folder)
            size = (Path(folder) / "model.safetensors").stat().st_size
    return {
        "step_s": spread(times),
        "steps_per_epoch": math.ceil(len(corpus.train) / 64),
        "prepare_s": prepare_s,
        "table_s": table_s,
        "trainable_parameters": sum(p.numel() for p in trainer.trainable.values()),
        "base_parameters": sum(p.numel() for n, p in model.named_parameters() if not is_adapter_key(n)),
        "weights_bytes": size,
        "loaded_rss_mib": loaded_mib,
        "live_loaded_mib": live.start_mib,
        "live_peak_mib": live.peak_mib,
    }


def catalog_scale(num_items: int, num_users: int, repeats: int) -> dict:
    """Full-ranking evaluation of an ID-SASRec over a generated catalog of `num_items` items: one untimed call (its
    one-time costs: allocations, kernel selection), then `repeats` timed ones."""
    from mmsr_peft.data.processing import ItemInputs
    from mmsr_peft.evaluation import EvalSet, evaluate

    torch.manual_seed(0)
    item_ids = [str(i) for i in range(num_items)]
    model = sasrec_model("id", item_ids, "full_ce")
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, num_items, size=rng.integers(5, 51)) for _ in range(num_users)]
    eval_set = EvalSet("generated", histories, rng.integers(0, num_items, size=num_users), (0, num_items))
    inputs = ItemInputs(item_index=torch.arange(num_items))
    times = []
    for run in range(repeats + 1):
        began = time.perf_counter()
        evaluate(model, inputs, [eval_set], batch_size=256, progress=False)
        if run:
            times.append(time.perf_counter() - began)
    return {
        "items": num_items,
        "users": num_users,
        "eval_s": spread(times),
        "users_per_s": spread([num_users / seconds for seconds in times]),
    }


# ---------------------------------------------------------------------------------------------------------------


def run(args) -> dict:
    from mmsr_peft.data.synthetic import SyntheticWorldConfig, generate_world

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        movielens_corpus(data_dir)  # prepared once, in this process
        if "recbole" in args.sections or "cached" in args.sections:
            results["ours_id"] = in_fresh_process(ours_sasrec, data_dir, "id", args.repeats, None)
            print("ours id-SASRec:", json.dumps(results["ours_id"]["epoch_s"]), flush=True)
        if "recbole" in args.sections:
            results["recbole"] = recbole_sasrec(data_dir, args.repeats)
            print("RecBole SASRec:", json.dumps(results["recbole"])[:300], flush=True)
        if "cached" in args.sections:
            cache_dir = str(Path(data_dir) / "feature-cache")
            in_fresh_process(ours_sasrec, data_dir, "text", 1, cache_dir)  # fills the cache, as a first run would
            results["ours_text_cached"] = in_fresh_process(ours_sasrec, data_dir, "text", args.repeats, cache_dir)
            print("ours text (cached):", json.dumps(results["ours_text_cached"]["epoch_s"]), flush=True)
        if "unique" in args.sections:
            results["unique"] = unique_items(data_dir)
        if "lora" in args.sections:
            generate_world(Path(data_dir) / "synthetic", ["office"], SyntheticWorldConfig(seed=0))
            for method in ("lora", "side", "full"):
                for suffix, training in ADAPTATION_SETTINGS.items():
                    if method == "side" and suffix:
                        continue
                    key = method + suffix
                    results[key] = in_fresh_process(adaptation_step, method, data_dir, args.steps, training)
                    print(f"{key}:", json.dumps(results[key]["step_s"]), flush=True)
            for suffix in ("", "_table"):  # LoRA in the encoders' top 2 blocks (of MiniLM's 6 and the ViT's 12)
                key = "lora_top2" + suffix
                training = ADAPTATION_SETTINGS[suffix]
                results[key] = in_fresh_process(adaptation_step, "lora", data_dir, args.steps, training, 2)
                print(f"{key}:", json.dumps(results[key]["step_s"]), flush=True)
    if "catalog" in args.sections:
        results["catalog"] = []
        for num_items in args.catalog_sizes:
            results["catalog"].append(in_fresh_process(catalog_scale, num_items, args.eval_users, args.repeats))
            print("catalog:", results["catalog"][-1], flush=True)
    return results


def held_mib(row: dict) -> float | None:
    """The memory that training holds for live objects (its live-heap peak above the level before the steps); None
    for a row measured before the live heap was."""
    return None if row.get("live_peak_mib") is None else row["live_peak_mib"] - row["live_loaded_mib"]


def held_ratio(a: dict, b: dict) -> str:
    """`"memory held by training 0.65x, "` for rows `a` over `b` (nothing when either was measured without it)."""
    if held_mib(a) is None or held_mib(b) is None:
        return ""
    return f"memory held by training {held_mib(a) / held_mib(b):.2f}x, "


def report(results: dict, args, command: str, where: str) -> str:
    """The Markdown report of `results`, measured by `command` on the machine `where` describes."""
    lines = [
        "# Performance benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {where}; load average {results['load_average']['start']:.1f} at start, "
        f"{results['load_average']['end']:.1f} at the end (other jobs on the machine slow both sides of a ratio)  ",
        *(
            f"Sections not measured again by the last command: {', '.join(run['sections'])} on {run['machine']}, load "
            f"average {run['load_average']['start']:.1f} at start, {run['load_average']['end']:.1f} at the end  "
            for run in results.get("earlier_runs", [])
        ),
        f"Timings: median [min, max] of {args.repeats} runs (steps: {args.steps}; RecBole's epochs: the epochs of "
        "one training run; catalog evaluations: after an untimed one); memory: peak RSS of a fresh process per "
        "measurement.",
        "",
    ]
    ours = results.get("ours_id")
    if "recbole" in results:
        lines += [
            "## Our ID-SASRec vs RecBole's SASRec (MovieLens-100k, identical leave-one-out split)",
            "",
            f"Both: hidden {SASREC['hidden_size']}, {SASREC['num_layers']} layers, {SASREC['num_heads']} heads, "
            f"max_len {SASREC['max_len']}, batch {SASREC['batch_size']}, full softmax cross-entropy, AdamW/Adam lr "
            "1e-3. An epoch is one pass over every training transition (next-item target). RecBole trains each "
            "prefix of a user's sequence as its own sample (one target each); we train windows of up to 51 items "
            "with a target at every position. Evaluation: full ranking of all 1,682 items for the 943 test users.",
            "",
            "| | epoch (s) | transitions / s | evaluation (s) | users / s |",
            "|---|---|---|---|---|",
            f"| ours, id tower | {fmt(ours['epoch_s'])} | {fmt(ours['transitions_per_s'], 0)} | "
            f"{fmt(ours['eval_s'], 3)} | {fmt(ours['eval_users_per_s'], 0)} |",
        ]
        recbole = results["recbole"]
        if "error" in recbole:
            lines += ["", f"RecBole: not measured — {recbole['error']}"]
        else:
            lines.append(
                f"| RecBole 1.2.1 SASRec | {fmt(recbole['epoch_s'])} | {fmt(recbole['transitions_per_s'], 0)} | "
                f"{fmt(recbole['eval_s'], 3)} | {fmt(recbole['eval_users_per_s'], 0)} |"
            )
            train_ratio = ours["transitions_per_s"]["median"] / recbole["transitions_per_s"]["median"]
            eval_ratio = ours["eval_users_per_s"]["median"] / recbole["eval_users_per_s"]["median"]
            lines += ["", f"Ratio ours / RecBole: training {train_ratio:.1f}x (target >= 3x), evaluation "
                      f"{eval_ratio:.1f}x (target >= 2x)."]  # fmt: skip
        lines.append("")
    if "ours_text_cached" in results:
        cached = results["ours_text_cached"]
        ratio = cached["epoch_s"]["median"] / ours["epoch_s"]["median"]
        lines += [
            "## MMSR with a frozen, cached text encoder vs ID-SASRec (MovieLens-100k)",
            "",
            "| | epoch (s) | evaluation (s) | encoder pass at start (s) |",
            "|---|---|---|---|",
            f"| ours, id tower | {fmt(ours['epoch_s'])} | {fmt(ours['eval_s'], 3)} | - |",
            f"| ours, MiniLM text tower, frozen + cached | {fmt(cached['epoch_s'])} | {fmt(cached['eval_s'], 3)} | "
            f"{cached['cache_s']:.2f} (read from the on-disk cache of a previous run) |",
            "",
            f"Epoch time ratio text-cached / id: {ratio:.2f}x (target <= 1.3x).",
            "",
        ]
    if "unique" in results:
        lines += [
            "## Items encoded per step (MovieLens-100k training batches, sampled softmax)",
            "",
            "| batch | negatives | items encoded / step | B x T positions + negatives | share |",
            "|---|---|---|---|---|",
        ]
        for row in results["unique"]["rows"]:
            share = row["items_encoded_per_step"] / row["positions_per_step"]
            lines.append(
                f"| {row['batch_size']} | {row['negatives']} | {row['items_encoded_per_step']:.0f} | "
                f"{row['positions_per_step']:.0f} | {share:.1%} |"
            )
        lines.append("")
    if "lora" in results:
        lines += [
            "## LoRA, side adapter and full fine-tuning (default CPU model: MiniLM + ViT, concat; synthetic office, "
            "batch 64)",
            "",
            "Loaded: resident memory once model and catalog inputs are in memory; training: peak minus loaded "
            "(activations, gradients, optimizer states). Epoch: steps per epoch x the median step (+ rebuilding the "
            "negative table, once an epoch: `--negative_table`, sampled negatives scored from a table of the "
            "catalog's embeddings instead of encoded at every step). Before training, "
            "the side adapter runs its frozen encoders once over the catalog (one-time; a later run reads the "
            "feature cache). Held: the peak of the memory the allocator holds for live objects during the steps, "
            "minus its level before them (glibc's `mallinfo2`, sampled every 2 ms): what training itself needs, "
            "without the freed memory that glibc keeps resident for reuse, which the RSS columns include.",
            "",
            "| | step (s) | epoch (s) | peak RSS (MiB) | loaded (MiB) | training (MiB) | held (MiB) | trainable "
            "parameters | weights on disk | encoder pass before training (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, label in (
            ("lora", "LoRA r=8 (text, vision, fusion)"),
            ("side", "side adapter (width 64)"),
            ("full", "full fine-tuning"),
            ("lora_table", "LoRA + negative table"),
            ("full_table", "full + negative table"),
            ("lora_checkpointing", "LoRA + gradient checkpointing"),
            ("full_checkpointing", "full + gradient checkpointing"),
            ("lora_lean", "LoRA, encoder dropout 0 + feed-forward checkpointing"),
            ("full_lean", "full, encoder dropout 0 + feed-forward checkpointing"),
            ("lora_top2", "LoRA in the encoders' top 2 blocks (`--lora_top_k 2`)"),
            ("lora_top2_table", "LoRA in the top 2 blocks + negative table"),
        ):
            row = results.get(key)
            if row is None:
                continue
            share, held = row["trainable_parameters"] / row["base_parameters"], held_mib(row)
            kind = "base checkpoint" if key.startswith("full") else "adapter"
            epoch = None
            if "steps_per_epoch" in row:  # and the negative table's rebuild, once an epoch
                epoch = row["step_s"]["median"] * row["steps_per_epoch"] + row.get("table_s", 0)
            lines.append(
                f"| {label} | {fmt(row['step_s'], 3)} | {'-' if epoch is None else f'{epoch:.1f}'} | "
                f"{row['peak_rss_mib']:.0f} | {row['loaded_rss_mib']:.0f} | "
                f"{row['peak_rss_mib'] - row['loaded_rss_mib']:.0f} | {'-' if held is None else f'{held:.0f}'} | "
                f"{row['trainable_parameters']:,} "
                f"({min(share, 1):.2%}) | {kind} {row['weights_bytes'] / 2**20:.2f} MiB | "
                f"{row.get('prepare_s', 0):.1f} |"
            )
        lines.append("")
        settings = (("", "without gradient checkpointing"), ("_checkpointing", "with gradient checkpointing"))
        for suffix, setting in (*settings, ("_lean", "encoder dropout 0 + feed-forward checkpointing")):
            lora, full = results.get("lora" + suffix), results.get("full" + suffix)
            if lora and full:
                lines.append(
                    f"- {setting}, LoRA / full: peak memory "
                    f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x (target <= 0.6x), training memory "
                    f"{(lora['peak_rss_mib'] - lora['loaded_rss_mib']) / (full['peak_rss_mib'] - full['loaded_rss_mib']):.2f}x, "
                    f"{held_ratio(lora, full)}step time {lora['step_s']['median'] / full['step_s']['median']:.2f}x"
                )
        pairs = (
            ("lora_table", "full"),
            ("lora_table", "full_table"),
            ("lora_top2", "full"),
            ("lora_top2_table", "full"),
        )
        for lora_key, full_key in pairs:
            lora, full = results.get(lora_key), results.get(full_key)
            if lora and full:
                name = lora_key.replace("_top2", " in the top 2 blocks").replace("_table", " + negative table")
                lines.append(
                    f"- {name} / {full_key.replace('_', ' + negative ')}: peak memory "
                    f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x (target <= 0.6x), {held_ratio(lora, full)}"
                    f"step time {lora['step_s']['median'] / full['step_s']['median']:.2f}x"
                )
        lora, side = results["lora"], results.get("side")
        if side:
            lines.append(
                f"- side adapter / LoRA: peak memory {side['peak_rss_mib'] / lora['peak_rss_mib']:.2f}x (target <= "
                f"0.3x), training memory {(side['peak_rss_mib'] - side['loaded_rss_mib']) / (lora['peak_rss_mib'] - lora['loaded_rss_mib']):.2f}x, "
                f"{held_ratio(side, lora)}step (and epoch) time {side['step_s']['median'] / lora['step_s']['median']:.3f}x (target <= 0.3x)"
            )
        full = results["full"]
        lines += [
            f"- adapter / base checkpoint {lora['weights_bytes'] / full['weights_bytes']:.2%} (target <= 3 %); "
            f"LoRA trainable share {lora['trainable_parameters'] / lora['base_parameters']:.2%} (target <= 2 %)",
            "",
        ]
    if "catalog" in results:
        lines += [
            "## Full-ranking evaluation vs catalog size (ID-SASRec, generated catalog and histories)",
            "",
            "| items | users | evaluation (s) | users / s | peak RSS (MiB) |",
            "|---|---|---|---|---|",
        ]
        for row in results["catalog"]:
            lines.append(
                f"| {row['items']:,} | {row['users']:,} | {fmt(row['eval_s'])} | {fmt(row['users_per_s'], 0)} | "
                f"{row['peak_rss_mib']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per timing (median, min, max reported).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per LoRA / full measurement.")
    parser.add_argument("--catalog_sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--eval_users", type=int, default=2_000, help="Users ranked per catalog-size measurement.")
    parser.add_argument("--output_dir", default="results", help="Where benchmark.md/json go.")
    parser.add_argument(
        "--update",
        action="store_true",
        help="Measure --sections again and keep the other sections of an existing benchmark.json (its command is "
        "kept, followed by this one).",
    )
    args = parser.parse_args(argv)
    if args.update and ("recbole" in args.sections) != ("cached" in args.sections):
        parser.error(
            "--update: the recbole and cached sections share the row of our ID-SASRec: measure both or neither"
        )
    threads = {name: os.environ[name] for name in ("OMP_NUM_THREADS", "MMSR_BENCH_THREADS") if name in os.environ}
    command = shlex.join([*(f"{k}={v}" for k, v in threads.items()), "python", "scripts/benchmark.py"])
    command += "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    load_before = os.getloadavg()[0]
    results = run(args)
    results["load_average"] = {"start": load_before, "end": os.getloadavg()[0]}
    previous = Path(args.output_dir) / "benchmark.json"
    if args.update and previous.is_file():
        earlier = json.loads(previous.read_text())
        kept = [name for name in SECTIONS if name not in args.sections and name in earlier["args"]["sections"]]
        runs = earlier["results"].get("earlier_runs", [])
        runs = [{**run, "sections": [n for n in run["sections"] if n in kept]} for run in runs]
        latest = {"machine": earlier["machine"], "load_average": earlier["results"]["load_average"]}
        runs.append({**latest, "sections": [n for n in kept if not any(n in run["sections"] for run in runs)]})
        results = {**earlier["results"], **results, "earlier_runs": [run for run in runs if run["sections"]]}
        steps = [step for step in earlier["command"].split("` then `") if step != command]  # one of each command
        command = "` then `".join([*steps, command])
        args.sections = [*kept, *args.sections]
    info = machine()
    where = f"{info['cpu']}, {info['cores']} cores visible, torch {info['torch']} with {info['torch_threads']} threads"
    text = report(results, args, command, where)
    print("\n" + text)
    from mmsr_peft.files import atomic_write_text

    atomic_write_text(Path(args.output_dir) / "benchmark.md", text)
    payload = {"command": command, "machine": where, "args": vars(args), "results": results}
    atomic_write_text(Path(args.output_dir) / "benchmark.json", json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
