"""Model cards for base models and adapters, rendered from the templates in `model_cards/`."""

from __future__ import annotations

from pathlib import Path

from .evaluation import PROTOCOL

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
SYNTHETIC_NOTE = (
    "The embedded **synthetic** multi-domain world of mmsr_peft (generated, deterministic): items with text and "
    "rendered images whose attributes are shared across domains, users with attribute preferences and a "
    "sequential habit. Not real data."
)


def _render(template: str, card_data, **values) -> str:
    from huggingface_hub import ModelCard

    path = TEMPLATES / template
    if not path.is_file():
        raise FileNotFoundError(f"model card template {path} not found (install mmsr_peft from its repository)")
    return str(ModelCard.from_template(card_data, template_path=str(path), **values))


def _data_description(synthetic: bool, domains: list[str]) -> str:
    return SYNTHETIC_NOTE if synthetic else f"Processed domain folders: {', '.join(domains)} (see their manifests)."


def base_card(model, results_table: str, metrics: dict, data_stats: dict, best_epoch: int, repo_id: str) -> str:
    from huggingface_hub import ModelCardData

    config = model.config
    synthetic = all(s.get("synthetic") for s in data_stats.values())
    card_data = ModelCardData(
        library_name="mmsr_peft",
        license="apache-2.0",
        tags=["recommendation", "sequential-recommendation", "multimodal", *(["synthetic-data"] if synthetic else [])],
        datasets=[f"mmsr_peft-synthetic/{name}" if synthetic else name for name in data_stats],
        metrics=sorted(metrics),
    )
    return _render(
        "base.md",
        card_data,
        model_name=Path(repo_id).name,
        repo_id=repo_id,
        item_tower=config.item_tower,
        text_encoder=(config.text.source if config.text else "none"),
        vision_encoder=(config.vision.source if config.vision else "none"),
        fusion=config.fusion.type if config.item_tower == "modal" else "none",
        sequence_encoder=config.sequence.type,
        hidden_size=config.hidden_size,
        num_parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        data_description=_data_description(synthetic, list(data_stats)),
        data_stats=data_stats,
        protocol=PROTOCOL,
        results_table=results_table,
        best_epoch=best_epoch,
        synthetic=synthetic,
    )


def adapter_card(
    base_model: str, domain: str, synthetic: bool, results_table: str, best_epoch: int, repo_id: str, lora: dict
) -> str:
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(
        library_name="peft",
        license="apache-2.0",
        base_model=base_model,
        tags=["mmsr_peft", "lora", "recommendation", domain, *(["synthetic-data"] if synthetic else [])],
        datasets=[f"mmsr_peft-synthetic/{domain}" if synthetic else domain],
    )
    return _render(
        "adapter.md",
        card_data,
        model_name=Path(repo_id).name,
        repo_id=repo_id,
        base_model=base_model,
        domain=domain,
        data_description=_data_description(synthetic, [domain]),
        protocol=PROTOCOL,
        results_table=results_table,
        best_epoch=best_epoch,
        synthetic=synthetic,
        **lora,
    )
