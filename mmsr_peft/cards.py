"""Model cards for base models and adapters, rendered from the templates of `mmsr_peft.model_cards` (the repository's
`model_cards/` folder, shipped inside the package).

A card is a function of a run folder (its `config.json` or adapter config, `metrics.json` and
`run_args.json`) and of the repo id it is published under, so `mmsr-publish` can render it again for the Hub. A base
folder with no training record (neither `metrics.json` nor `run_args.json`: one written by `save_merged`, say) gets
a short card that states its architecture only.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from .adapters import _adapter_record, adapter_config_file
from .configuration import item_tower_name
from .domains import DEFAULT_DATA_DIR, SOURCES
from .evaluation import PROTOCOL, format_table
from .files import is_local_path
from .plots import CURVES_FILE

TEMPLATES = "mmsr_peft.model_cards"
TASK = "sequential-recommendation"
SYNTHETIC_NOTE = (
    "The embedded **synthetic** multi-domain world of mmsr_peft (generated, deterministic): items with text and "
    "rendered images whose attributes are shared across domains, users with attribute preferences and a "
    "sequential habit. Not real data."
)
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "8-bit AdamW (bitsandbytes)"}


def public_name(value):
    """A model name as it may be published: a Hub repo id or a preset stays whole, a local path keeps its last part
    only (never a path of this machine); an `hf:` prefix stays. Anything but a string is returned as it is."""
    if not isinstance(value, str):
        return value
    prefix = "hf:" if value.startswith("hf:") else ""
    name = value.removeprefix(prefix)
    return prefix + Path(name).name if is_local_path(name) else value


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


def _trained_on(stats: dict) -> str:
    """The users and training sequences a run trained on (all kept users when the stats do not say)."""
    if "train_users" not in stats:
        return f"{stats['users_kept']} (all kept)"
    return f"{stats['train_users']} ({stats.get('train_sequences', '?')} sequences)"


def _data_section(data: dict, run_args: dict) -> str:
    synthetic = all(stats.get("synthetic") for stats in data.values())
    lines = [SYNTHETIC_NOTE if synthetic else "Processed domain folders (see their manifests)."]
    lines += [
        "",
        "| domain | items | users kept | users dropped (< 3 interactions) | users trained on | interactions ",
    ]
    lines[-1] += "| cold-start items (held out of training) | manifest |"
    lines += ["|---|---|---|---|---|---|---|---|"]
    for name, s in data.items():
        manifest = f"{s.get('source', '?')} v{s.get('version', '?')}, sha256 {s.get('manifest_sha256', '?')[:12]}"
        lines.append(
            f"| {name} | {s['items']} | {s['users_kept']} | {s['users_dropped_short']} | {_trained_on(s)} | "
            f"{s['interactions']} | {s.get('cold_items', 0)} | {manifest} |"
        )
    fraction = run_args.get("train_user_fraction")
    if fraction is not None and fraction < 1:
        lines += ["", f"Training used a share of the users (`--train_user_fraction {fraction}`); every kept user is "]
        lines[-1] += "validated and tested."
    return "\n".join(lines)


def _data_source(data: dict, run_args: dict) -> str:
    """The `source` argument of `load_domain` that reads the run's data again."""
    source = run_args.get("data_source") or next(iter(data.values()), {}).get("source")
    return source if source in SOURCES else "synthetic"


def _load_domain_line(domain: str, data: dict, run_args: dict) -> str:
    """The quick start's line that loads the catalog of `domain` from where the run read it."""
    source = _data_source(data, run_args)
    call = f'load_domain("{domain}")' if source == "synthetic" else f'load_domain("{domain}", source="{source}")'
    prepare = SOURCES[source].format(name=domain, data_dir=DEFAULT_DATA_DIR)
    return f"catalog = {call}.catalog  # first: {prepare}"


def _training(run_args: dict, metrics: dict) -> str:
    """How long and how the run trained: its optimizer, and --max_steps when that ended it."""
    optim = run_args.get("optim") or "adamw"
    if metrics.get("stopped_by") == "max_steps":
        length = f"{run_args['max_steps']} steps (`--max_steps`)"
    else:
        length = f"{run_args['num_epochs']} epochs at most"
    return (
        f"{length}, batch {run_args['batch_size']}, {OPTIMIZERS.get(optim, optim)} lr {run_args['learning_rate']} "
        f"({run_args.get('lr_scheduler_type', 'linear')} schedule), {run_args['num_negatives']} sampled negatives "
        "per step"
    )


def base_revision(base_model: str, run_args: dict) -> str | None:
    """The revision of the Hub base an adapter was trained on (`--revision`), when `base_model` is that base."""
    revision, base = run_args.get("revision"), run_args.get("base")
    if revision and revision != "main" and base == base_model and not is_local_path(base):
        return revision
    return None


def base_card(folder: str | Path, repo_id: str) -> str:
    """The card of the base checkpoint in `folder`, published as `repo_id`."""
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    config = _read(folder, "config.json")
    text, vision = config.get("text") or {}, config.get("vision") or {}
    item_tower = item_tower_name(config["item_tower"])
    name = repo_id.rstrip("/").split("/")[-1]
    parts = dict(
        model_name=name,
        repo_id=repo_id,
        item_tower=item_tower,
        text_encoder=public_name(text.get("source")) or "none",
        vision_encoder=public_name(vision.get("source")) or "none",
        fusion=config["fusion"]["type"] if item_tower == "multimodal" else "none",
        sequence_encoder=config["sequence"]["type"],
        hidden_size=config["hidden_size"],
    )
    if not (folder / "metrics.json").exists() and not (folder / "run_args.json").exists():
        card_data = ModelCardData(
            model_name=name,
            library_name="mmsr_peft",
            license="apache-2.0",
            tags=["recommendation", TASK, "multimodal", "id-agnostic"],
        )
        example = _load_domain_line("office", {}, {}).replace("  # first:", "  # an example domain; first:")
        return _render("base.md", card_data, trained=False, load_domain=example, **parts)
    metrics, run_args = _read(folder, "metrics.json"), _read(folder, "run_args.json")
    data = metrics["data"]
    synthetic = all(s.get("synthetic") for s in data.values())
    card_data = ModelCardData(
        model_name=name,
        library_name="mmsr_peft",
        license="apache-2.0",
        tags=["recommendation", TASK, "multimodal", "id-agnostic", *(["synthetic-data"] if synthetic else [])],
        datasets=[f"mmsr_peft/{domain}" for domain in data],
        eval_results=_eval_results(metrics["test"].get("all") or _last_row(metrics), name, "+".join(data)),
    )
    return _render(
        "base.md",
        card_data,
        trained=True,
        **parts,
        num_parameters=f"{metrics['total_parameters']:,}",
        data_section=_data_section(data, run_args),
        protocol=PROTOCOL,
        results_table=format_table(metrics["test"], extra=metrics.get("trainable_column")),
        best_epoch=metrics["best_epoch"],
        curves=(folder / CURVES_FILE).is_file(),
        synthetic=synthetic,
        training=_training(run_args, metrics),
        load_domain=_load_domain_line(next(iter(data)), data, run_args),
    )


def _components(run_args: dict, adapter_config: dict, settings: dict) -> tuple[str, int | None, int | None]:
    """The adapted components as the card names them, and the rank and alpha they share (None, None when they
    differ: each component then names its own, as the adapter record `mmsr_adapter.json` holds them)."""
    names = run_args["components"] or list(settings)
    ranks = {c: (settings[c].get("r"), settings[c].get("lora_alpha")) for c in names if c in settings}
    if len(set(ranks.values())) > 1:
        shared = None, None
    elif ranks:
        shared = next(iter(ranks.values()))
    else:  # an adapter without a record of its components: what its config says
        shared = adapter_config.get("r"), adapter_config.get("lora_alpha")
    described = []
    for c in names:
        notes = []
        top_k = settings.get(c, {}).get("top_k", 0)
        if top_k:
            notes.append(f"LoRA in its top {'block' if top_k == 1 else f'{top_k} blocks'}")
        if shared == (None, None) and c in ranks:
            notes.append(f"rank {ranks[c][0]}, alpha {ranks[c][1]}")
        described.append(f"{c} ({'; '.join(notes)})" if notes else c)
    return ", ".join(described), *shared


def adapter_card(folder: str | Path, repo_id: str, base_model: str | None = None) -> str:
    """The card of the adapter in `folder`, published as `repo_id` on top of `base_model`."""
    from huggingface_hub import ModelCardData

    folder = Path(folder)
    config_file = adapter_config_file(folder)
    adapter_config = _read(folder, config_file.name if config_file else "adapter_config.json")
    metrics, run_args = (_read(folder, n) for n in ("metrics.json", "run_args.json"))
    domain, data = run_args["target"], metrics["data"]
    base_model = base_model or adapter_config.get("base_model_name_or_path") or run_args["base"]
    revision = base_revision(base_model, run_args)
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
    components, rank, alpha = _components(run_args, adapter_config, settings)
    return _render(
        "adapter.md",
        card_data,
        model_name=name,
        repo_id=repo_id,
        base_model=base_model,
        base_revision=revision,
        base_args=f'"{base_model}"' + (f', revision="{revision}"' if revision else ""),
        domain=domain,
        side=side,
        width=adapter_config.get("width"),
        components=components,
        rank=rank,
        alpha=alpha,
        trainable=f"{trainable:,}",
        trainable_share=f"{100 * trainable / total:.2f} %",
        data_section=_data_section(data, run_args),
        protocol=PROTOCOL,
        results_table=format_table(metrics["test"], extra=metrics.get("trainable_column")),
        best_epoch=metrics["best_epoch"],
        curves=(folder / CURVES_FILE).is_file(),
        synthetic=synthetic,
        training=_training(run_args, metrics),
        adapter_name=run_args["adapter_name"],
        load_domain=_load_domain_line(domain, data, run_args),
    )
