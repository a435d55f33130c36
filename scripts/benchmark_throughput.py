"""Training-step throughput of MMSR configurations on this machine's device (CPU or GPU).

Encoders keep the architecture of the named models but random weights: throughput does not depend on the
values, and the benchmark then needs no weights download. Data: the synthetic source domains (food, home,
movies; 1,200 items), batches built exactly as in training (each distinct item of the batch encoded once).

    python scripts/benchmark_throughput.py                                   # all configurations, fp32 + bf16
    python scripts/benchmark_throughput.py --configs demo --steps 5          # quick CPU check
    python scripts/benchmark_throughput.py --text_model path/to/minilm      # tokenizer/config folder to use
    python scripts/benchmark_throughput.py --configs lora full --precisions bf16 \
        --pad_items_to_multiple_of 64 --torch_compile --profile             # steady shapes, compiled, profiled

Prints a Markdown table and writes it, with the raw timings, to `<output_dir>/throughput.{md,json}`; with
`--profile`, also the torch profiler's busiest operators over each configuration's timed steps
(`<output_dir>/profile-<config>-<precision>.txt`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from runner import in_fresh_process, library_trainer

from mmsr_peft.data.processing import ItemProcessor
from mmsr_peft.data.synthetic import SOURCE_DOMAINS, generate_world
from mmsr_peft.domains import build_corpus, load_domain
from mmsr_peft.encoders import TextEncoderConfig, VisionEncoderConfig
from mmsr_peft.fusion import FusionConfig
from mmsr_peft.lora import lora_target_modules
from mmsr_peft.model import MMSRConfig, MMSRModel
from mmsr_peft.training import precompute_frozen_states

# name -> (vision tower, image size, fusion, how the encoders train)
CONFIGS = {
    "demo": ("tiny-vit", 64, "concat", "frozen text (cached), ViT trained"),
    "lora": ("ViT-B-32", 224, "concat", "LoRA r=8 on text, vision, fusion"),
    "lora-merge_attention": ("ViT-B-32", 224, "merge_attention", "LoRA r=8 on text, vision, fusion"),
    "full": ("ViT-B-32", 224, "concat", "everything trained"),
}


def build(name: str, text_model: str, device) -> MMSRModel:
    from transformers import AutoTokenizer

    from mmsr_peft.builder import VISION_PRESETS

    vision_name, image_size, fusion, _ = CONFIGS[name]
    if vision_name in VISION_PRESETS:
        vision = VisionEncoderConfig(tower=dict(VISION_PRESETS[vision_name]), embed_dim=64, image_size=image_size)
    else:
        vision = VisionEncoderConfig.from_open_clip(vision_name)
    config = MMSRConfig(
        text=TextEncoderConfig.from_pretrained_backbone(text_model, max_length=32),
        vision=vision,
        fusion=FusionConfig(type=fusion),
        hidden_size=64,
    )
    processor = ItemProcessor(AutoTokenizer.from_pretrained(text_model), 32, vision.image_size)
    model = MMSRModel(config, processor)
    if name == "demo":
        model.item_tower.text.requires_grad_(False)
    elif name.startswith("lora"):
        from peft import LoraConfig

        model.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_modules(model)), "bench")
    return model.to(device)


def measure(name: str, precision: str, data_dir: str, args) -> dict:
    """Steps of the library's `Trainer` (forward under the run's autocast, backward, clipping, optimizer and
    scheduler) for one configuration and precision; run in a fresh process, since Accelerate's mixed-precision
    setting is fixed once per process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    corpus = build_corpus([load_domain(d, data_dir=data_dir) for d in SOURCE_DOMAINS], max_len=50)
    torch.manual_seed(0)
    model = build(name, args.text_model, device)
    catalog_inputs = model.processor(corpus.catalog.records(range(len(corpus.catalog))))
    catalog_inputs = precompute_frozen_states(model, catalog_inputs, 256)
    mixed_precision = "bf16" if precision == "bf16" else "no"
    with tempfile.TemporaryDirectory() as output_dir:  # the trainer's; nothing is saved there
        trainer = library_trainer(
            model,
            corpus,
            catalog_inputs,
            output_dir,
            batch_size=args.batch_size,
            num_negatives=args.num_negatives,
            learning_rate=1e-4,
            mixed_precision=mixed_precision,
            pad_items_to_multiple_of=args.pad_items_to_multiple_of,
            torch_compile=args.torch_compile,
            torch_compile_backend=args.torch_compile_backend,
        )
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(corpus.train), generator=generator).tolist()
        times, items = [], []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.train()

        def batch_of(step: int):
            start = (step * args.batch_size) % max(1, len(order) - args.batch_size)
            return trainer.collator([corpus.train[i] for i in order[start : start + args.batch_size]]).to(device)

        for step in range(args.warmup + args.steps):
            batch = batch_of(step)
            _synchronize(device)
            began = time.perf_counter()
            trainer.training_step(batch)  # its loss.item() waits for the device
            _synchronize(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - began)
                items.append(len(batch.items))
        if args.profile:  # further steps, after the timed ones: the profiler's overhead stays out of the timings
            with torch.profiler.profile(activities=_activities(device), record_shapes=True) as profiler:
                for step in range(args.warmup + args.steps, args.warmup + 2 * args.steps):
                    trainer.training_step(batch_of(step))
                _synchronize(device)
            sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            report = profiler.key_averages().table(sort_by=sort_by, row_limit=40)
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            Path(args.output_dir, f"profile-{name}-{precision}.txt").write_text(report + "\n")
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_p10": deciles[0],
        "step_s_p90": deciles[-1],
        "step_s_max": max(times),
        "step_s": times,
        "sequences_per_s": args.batch_size / median,
        "items_encoded_per_step": statistics.mean(items),
        "items_per_s": statistics.mean(items) / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "trainable_parameters": sum(p.numel() for p in trainer.trainable.values()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _activities(device) -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(rows: list[dict]) -> str:
    lines = [
        "| config | encoders | precision | step (s), median [p10, p90] (min, max) | sequences/s | items encoded/step | "
        "items/s | peak GPU mem (GiB) | trainable / total params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(
            f"| {r['config']} | {CONFIGS[r['config']][3]} | {r['precision']} | {r['step_s_median']:.3f} "
            f"[{r['step_s_p10']:.3f}, {r['step_s_p90']:.3f}] ({r['step_s_min']:.3f}, {r['step_s_max']:.3f}) | "
            f"{r['sequences_per_s']:.1f} | "
            f"{r['items_encoded_per_step']:.0f} | {r['items_per_s']:.0f} | {memory} | "
            f"{r['trainable_parameters']:,} / {r['parameters']:,} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--text_model", default=None, help="Folder/name of a BERT-like config + tokenizer (MiniLM).")
    parser.add_argument("--batch_size", type=int, default=64, help="Training sequences per step.")
    parser.add_argument("--num_negatives", type=int, default=256, help="Sampled catalog negatives per step.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per configuration.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first.")
    parser.add_argument("--output_dir", default="results", help="Where throughput.md/json go.")
    parser.add_argument(
        "--pad_items_to_multiple_of", type=int, default=0, help="The training flag: steady step shapes (0: off)."
    )
    parser.add_argument("--torch_compile", action="store_true", help="The training flag: torch.compile the step.")
    parser.add_argument("--torch_compile_backend", default="inductor", help="With --torch_compile.")
    parser.add_argument("--profile", action="store_true", help="Also write the torch profiler's table per config.")
    args = parser.parse_args(argv)
    if args.text_model is None:
        from mmsr_peft.builder import minilm_path

        args.text_model = minilm_path()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as data_dir:
        generate_world(Path(data_dir) / "synthetic", SOURCE_DOMAINS)
        rows = []
        for name in args.configs:
            for precision in args.precisions:
                result = in_fresh_process(measure, name, precision, data_dir, args)
                rows.append({"config": name, "precision": precision, **result})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"Training-step throughput on {device_name} (torch {torch.__version__}); batch {args.batch_size} sequences "
        f"of up to 50 items + {args.num_negatives} negatives; median of {args.steps} steps after {args.warmup} "
        "warm-up steps; encoders with random weights (throughput only)."
    )
    if args.pad_items_to_multiple_of:
        header += f" Each step's items padded to a multiple of {args.pad_items_to_multiple_of}."
    if args.torch_compile:
        header += f" Steps compiled with torch.compile ({args.torch_compile_backend})."
    text = f"{header}\n\n{table(rows)}\n"
    print("\n" + text)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.md").write_text(text)
    (out / "throughput.json").write_text(
        json.dumps({"device": device_name, "args": vars(args), "rows": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
