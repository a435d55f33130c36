"""Model cards for base models and adapters, rendered from the templates of `mmsr_peft.model_cards` (the repository's
`model_cards/` folder, shipped inside the package).

A card is a function of a run folder (its `config.json` or adapter config, `metrics.json` and
`run_args.json`) and of the repo id it is published under, so `mmsr-publish` can render it again for the Hub.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from .adapters import _adapter_record, adapter_config_file
from .configuration import item_tower_name
from .evaluation import PROTOCOL, format_table
from .plots import CURVES_FILE

TEMPLATES = "mmsr_peft.model_cards"
TASK = "sequential-recommendation"
SYNTHETIC_NOTE = (
    "The embedded **synthetic** multi-domain world of mmsr_peft (generated, deterministic): items with text and "
    "rendered images whose attributes are shared across domains, users with attribute preferences and a "
    "sequential habit. Not real data."
)


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: needed to write the model card (is {folder} an mmsr_peft run folder?)")
    return json.loads(path.read_text())


def _render(template: str, card_data, **values) -> str:
    from huggingface_hub import ModelCard

    text = files(TEMPLATES).joinpath(template).read_text(encoding="utf-8")
    return str(ModelCard.from_template(card_data, template_str=text, **values))


def _eval_results(metrics: dict, model_name: str, domain: str) -> list:
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=TASK,
            dataset_type=f"mmsr_peft/{domain}",
            dataset_name=domain,
            dataset_split="test",
            metric_type=name,
            metric_name=name.upper(),
            metric_value=round(value, 4),
        )
        for name, value in metrics.items()
    ]


def _last_row(metrics: dict) -> dict:
    """The metrics of the trained model in an adaptation table (its last row)."""
    return metrics["test"][next(reversed(metrics["test"]))]


def _data_section(data: dict) -> str:
    synthetic = all(stats.get("synthetic") for stats in data.values())
    lines = [SYNTHETIC_NOTE if synthetic else "Processed domain folders (see their manifests)."]
    lines += ["", "| domain | items | users kept | users dropped (< 3 interactions) | interactions | manifest |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, s in data.items():
        manifest = f"{s.get('source', '?')} v{s.get('version', '?')}, sha256 {s.get('manifest_sha256', '?')[:12]}"
        lines.append(
            f"| {name} | {s['items']} | {s['users_kept']} | {s['users_dropped_short']} | {s['interactions']} | {manifest} |"
        )
    return "\n".join(lines)


def base_card(folder: str | Path, repo_id: str) -> str:
    """The card of the base checkpoint in `folder`, published as `repo_id`."""
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    config, metrics, run_args = (
        _read(folder, "config.json"),
        _read(folder, "metrics.json"),
        _read(folder, "run_args.json"),
    )
    data = metrics["data"]
    synthetic = all(s.get("synthetic") for s in data.values())
    name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        model_name=name,
        library_name="mmsr_peft",
        license="apache-2.0",
        tags=["recommendation", TASK, "multimodal", "id-agnostic", *(["synthetic-data"] if synthetic else [])],
        datasets=[f"mmsr_peft/{domain}" for domain in data],
        eval_results=_eval_results(metrics["test"].get("all") or _last_row(metrics), name, "+".join(data)),
    )
    text, vision = config.get("text") or {}, config.get("vision") or {}
    item_tower = item_tower_name(config["item_tower"])
    return _render(
        "base.md",
        card_data,
        model_name=name,
        repo_id=repo_id,
        item_tower=item_tower,
        text_encoder=text.get("source") or "none",
        vision_encoder=vision.get("source") or "none",
        fusion=config["fusion"]["type"] if item_tower == "multimodal" else "none",
        sequence_encoder=config["sequence"]["type"],
        hidden_size=config["hidden_size"],
        num_parameters=f"{metrics['total_parameters']:,}",
        data_section=_data_section(data),
        protocol=PROTOCOL,
        results_table=format_table(metrics["test"], extra=metrics.get("trainable_column")),
        best_epoch=metrics["best_epoch"],
        curves=(folder / CURVES_FILE).is_file(),
        synthetic=synthetic,
        training=f"{run_args['num_epochs']} epochs at most, batch {run_args['batch_size']}, AdamW lr "
        f"{run_args['learning_rate']} ({run_args.get('lr_scheduler_type', 'linear')} schedule), "
        f"{run_args['num_negatives']} sampled negatives per step",
        example_domain=next(iter(data)),
    )


def adapter_card(folder: str | Path, repo_id: str, base_model: str | None = None) -> str:
    """The card of the adapter in `folder`, published as `repo_id` on top of `base_model`."""
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    config_file = adapter_config_file(folder)
    adapter_config = _read(folder, config_file.name if config_file else "adapter_config.json")
    metrics, run_args = (_read(folder, n) for n in ("metrics.json", "run_args.json"))
    domain, data = run_args["target"], metrics["data"]
    base_model = base_model or adapter_config.get("base_model_name_or_path") or run_args["base"]
    synthetic = all(s.get("synthetic") for s in data.values())
    name = repo_id.rstrip("/").split("/")[-1]
    side = "adapter_type" in adapter_config  # a side adapter (mmsr_peft.side), not a peft one
    card_data = ModelCardData(
        model_name=name,
        library_name="mmsr_peft" if side else "peft",
        license="apache-2.0",
        base_model=base_model,
        tags=[
            "mmsr_peft",
            "side-adapter" if side else "lora",
            TASK,
            domain,
            *(["synthetic-data"] if synthetic else []),
        ],
        datasets=[f"mmsr_peft/{domain}"],
        eval_results=_eval_results(_last_row(metrics), name, domain),
    )
    trainable, total = metrics["trainable_parameters"], metrics["total_parameters"]
    settings = _adapter_record(folder).get("lora", {}).get("components", {})  # as the adapter was made
    top_k = {c: s.get("top_k", 0) for c, s in settings.items()}
    components = [
        f"{c} (LoRA in its top {'block' if top_k[c] == 1 else f'{top_k[c]} blocks'})" if top_k.get(c) else c
        for c in run_args["components"] or []
    ]
    return _render(
        "adapter.md",
        card_data,
        model_name=name,
        repo_id=repo_id,
        base_model=base_model,
        domain=domain,
        side=side,
        width=adapter_config.get("width"),
        components=", ".join(components),
        rank=adapter_config.get("r"),
        alpha=adapter_config.get("lora_alpha"),
        trainable=f"{trainable:,}",
        trainable_share=f"{100 * trainable / total:.2f} %",
        data_section=_data_section(data),
        protocol=PROTOCOL,
        results_table=format_table(metrics["test"], extra=metrics.get("trainable_column")),
        best_epoch=metrics["best_epoch"],
        curves=(folder / CURVES_FILE).is_file(),
        synthetic=synthetic,
        adapter_name=run_args["adapter_name"],
    )
