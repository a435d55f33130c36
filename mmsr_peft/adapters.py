"""LoRA adapters with peft: default target modules per encoder family, and adapter management on MMSRModel.

peft does the work (injection, trainable marking, state dicts); this module is the table of where LoRA goes
and the few helpers that let several named adapters live on one base model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

COMPONENTS = ("text", "vision", "fusion")
ADAPTER_RECORD = "mmsr_adapter.json"  # which base weights an adapter belongs to
PEFT_PREFIX = "base_model.model."  # how PeftModel names weights in adapter files; plain peft users load ours

# Modules LoRA adapts in each encoder family (regex on the module name inside the encoder).
TEXT_TARGETS = {
    "bert": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "roberta": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "xlm-roberta": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "distilbert": r"transformer\.layer\.\d+\.attention\.(q_lin|v_lin)",
    "clip_text_model": r"(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
}
# open_clip ViTs use nn.MultiheadAttention: peft adapts it only when the attention module itself is targeted.
VISION_TARGETS = {
    "open_clip_vit": r"transformer\.resblocks\.\d+\.attn",
    # transformers 5 names (first) and 4.x names
    "hf_vit": r"(layers\.\d+\.attention\.(q_proj|v_proj)|encoder\.layer\.\d+\.attention\.attention\.(query|value))",
    "hf_clip_vision_model": r"(vision_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
}
FUSION_TARGETS = {
    "sum": r"(text|image)\.proj",
    "concat": r"((text|image)\.proj|out_proj)",
    "film": r"((text|image)\.proj|film)",
    "gated": r"((text|image)\.proj|gate)",
    "sum_mlp": r"((text|image)\.proj|mlp\.fc[12])",
    "concat_mlp": r"((text|image)\.proj|out_proj|mlp\.fc[12])",
    "film_mlp": r"((text|image)\.proj|film|mlp\.fc[12])",
    "gated_mlp": r"((text|image)\.proj|gate|mlp\.fc[12])",
    "co_attention": (
        r"((text|image)_proj|out_proj|layers\.\d+\.(text|image)_cross\.attn"
        r"|layers\.\d+\.(text|image)_self\.(self_attn|linear1|linear2))"
    ),
    "merge_attention": r"(text_proj|image_proj|out_proj|layers\.layers\.\d+\.(self_attn|linear1|linear2))",
}


def model_components(model: nn.Module) -> list[str]:
    """The components of `model` that have default LoRA targets (an `id` tower has none of them)."""
    config = model.config
    vision = config.uses_vision and model.item_tower.vision.family in VISION_TARGETS
    present = {"text": config.uses_text, "vision": vision, "fusion": config.item_tower != "id"}
    return [component for component in COMPONENTS if present[component]]


def lora_target_modules(model: nn.Module, components=None) -> str:
    """A regex for `LoraConfig(target_modules=...)` covering `components` of `model` (default: every component
    it has); every component's pattern must match at least one module, so nothing is silently left without LoRA."""
    config = model.config
    present = model_components(model)
    components = present if components is None else components
    patterns = {}
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; valid components: {', '.join(COMPONENTS)}")
        if component == "vision" and config.uses_vision and component not in present:
            family = model.item_tower.vision.family
            raise ValueError(f"no default LoRA targets for vision tower {family!r}; known: {sorted(VISION_TARGETS)}")
        if component not in present:
            raise ValueError(f"component {component!r} does not exist in an item_tower={config.item_tower!r} model")
        if component == "text":
            family = config.text.backbone["model_type"]
            if family not in TEXT_TARGETS:
                raise ValueError(
                    f"no default LoRA targets for text encoder type {family!r}; known: {sorted(TEXT_TARGETS)}"
                )
            patterns["text"] = rf"item_tower\.text\.backbone\.{TEXT_TARGETS[family]}"
        elif component == "vision":
            patterns["vision"] = rf"item_tower\.vision\.tower\.{VISION_TARGETS[model.item_tower.vision.family]}"
        elif config.item_tower == "modal":
            patterns["fusion"] = rf"item_tower\.fusion\.{FUSION_TARGETS[config.fusion.type]}"
        else:  # a single-modality tower's projection head plays the fusion part
            patterns["fusion"] = r"item_tower\.head\.proj"
    if not patterns:
        raise ValueError("no component to adapt: pass at least one of " + ", ".join(COMPONENTS))
    names = [name for name, _ in model.named_modules()]
    for component, pattern in patterns.items():
        if not any(re.fullmatch(pattern, name) for name in names):
            raise ValueError(f"LoRA target pattern for {component!r} matches no module: {pattern}")
    return "|".join(f"({p})" for p in patterns.values())


def _is_adapter_key(key: str) -> bool:
    return "lora_" in key


def _base_key(key: str) -> str:
    return key.replace(".base_layer", "")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights under their plain names, without any adapter weights."""
    return {_base_key(k): v for k, v in model.state_dict().items() if not _is_adapter_key(k)}


def base_key_map(model: nn.Module) -> dict[str, str]:
    """Plain name -> current name of every base weight (peft moves an adapted layer's weights under `base_layer`)."""
    return {_base_key(k): k for k in model.state_dict() if not _is_adapter_key(k)}


def _adapter_record(name_or_path, revision=None) -> dict:
    """The adapter's `mmsr_adapter.json` (local folder or Hub repo), `{}` when it has none (e.g. made by plain peft)."""
    local = Path(str(name_or_path))
    if local.is_dir():
        path = local / ADAPTER_RECORD
        return json.loads(path.read_text()) if path.is_file() else {}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return json.loads(Path(hf_hub_download(str(name_or_path), ADAPTER_RECORD, revision=revision)).read_text())
    except EntryNotFoundError:
        return {}
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"{name_or_path}: cannot read the adapter from the Hub ({err})") from err


class AdapterMixin:
    """Several named peft adapters on one model, in place (the model stays an `MMSRModel`)."""

    def add_adapter(self, peft_config, adapter_name: str = "default") -> None:
        """Injects a new adapter (e.g. a `LoraConfig`) and makes it the active, trainable one."""
        from peft import inject_adapter_in_model

        if adapter_name in self.list_adapters():
            raise ValueError(f"adapter {adapter_name!r} already exists; loaded adapters: {self.list_adapters()}")
        peft_config.base_model_name_or_path = self.name_or_path
        inject_adapter_in_model(peft_config, self, adapter_name=adapter_name)
        self._peft_configs()[adapter_name] = peft_config
        self.set_adapter(adapter_name)

    def load_adapter(
        self, name_or_path: str | os.PathLike, adapter_name: str | None = None, revision=None, force: bool = False
    ) -> str:
        """Loads an adapter saved in peft's layout (local folder or Hub repo id) and activates it.

        An adapter records the base weights it was trained on (`mmsr_adapter.json`); loading it onto another
        base is an error unless `force=True`. Returns the adapter's name (default: the folder or repo name).
        """
        from peft import PeftConfig, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        adapter_name = adapter_name or Path(str(name_or_path)).name
        record = _adapter_record(name_or_path, revision)
        trained_on = record.get("base_sha256")
        if trained_on and self.base_fingerprint and trained_on != self.base_fingerprint and not force:
            raise CheckpointError(
                f"{name_or_path}: adapter was trained on base {record.get('base_model')!r} (weights sha256 "
                f"{trained_on[:12]}…), but this model is {self.name_or_path!r} (sha256 {self.base_fingerprint[:12]}…); "
                "pass force=True to load it anyway"
            )
        try:
            peft_config = PeftConfig.from_pretrained(str(name_or_path), revision=revision)
            weights = load_peft_weights(str(name_or_path), revision=revision)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{name_or_path}: cannot read a peft adapter ({err})") from err
        weights = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
        self.add_adapter(peft_config, adapter_name)
        try:
            result = set_peft_model_state_dict(self, weights, adapter_name=adapter_name)
        except RuntimeError as err:  # shape mismatch: made for another architecture or rank
            self.delete_adapter(adapter_name)
            raise CheckpointError(f"{name_or_path}: adapter does not fit this base model ({err})") from err
        unexpected = [k for k in result.unexpected_keys if _is_adapter_key(k)]
        expected = {k for k in self.state_dict() if _is_adapter_key(k) and f".{adapter_name}." in k}
        missing = sorted(k for k in result.missing_keys if k in expected)
        if unexpected or missing:
            self.delete_adapter(adapter_name)
            raise CheckpointError(
                f"{name_or_path}: adapter does not fit this base model: unexpected keys {unexpected[:10]}, "
                f"missing keys {missing[:10]}"
            )
        self.eval()
        return adapter_name

    def save_adapter(self, folder: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Writes one adapter in peft's layout (`adapter_config.json` + `adapter_model.safetensors`), atomically."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        from .io import atomic_directory

        adapter_name = adapter_name or self.active_adapter()
        config = self._peft_configs()[adapter_name]
        state = get_peft_model_state_dict(self, adapter_name=adapter_name)
        with atomic_directory(folder) as tmp:
            config.save_pretrained(str(tmp))
            record = {
                "adapter_name": adapter_name,
                "base_model": self.name_or_path,
                "base_sha256": self.base_fingerprint,
            }
            (tmp / ADAPTER_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            save_file(
                {PEFT_PREFIX + k: v.contiguous().cpu() for k, v in state.items()},
                tmp / "adapter_model.safetensors",
                {"format": "pt"},
            )

    def save_merged(self, folder: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Writes a standalone base checkpoint with `adapter_name` merged into the weights; it loads with plain
        `MMSRModel.from_pretrained` and scores like this model with the adapter active. This model is unchanged."""
        adapter_name = adapter_name or self.active_adapter()
        if adapter_name not in self.list_adapters():
            raise ValueError(f"no adapter {adapter_name!r} to merge; loaded adapters: {self.list_adapters()}")
        layers, fingerprint = self._tuner_layers(), self.base_fingerprint
        for layer in layers:
            layer.merge(adapter_names=[adapter_name])
        try:
            self.save_pretrained(folder)
        finally:
            for layer in layers:
                layer.unmerge()
            self.base_fingerprint = fingerprint  # this model is still the unmerged base

    def _tuner_layers(self):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.modules() if isinstance(m, BaseTunerLayer)]

    def _peft_configs(self) -> dict:
        if "_adapter_configs" not in self.__dict__:
            self.__dict__["_adapter_configs"] = {}
        return self.__dict__["_adapter_configs"]

    def list_adapters(self) -> list[str]:
        return list(self._peft_configs())

    def active_adapter(self) -> str | None:
        layers = self._tuner_layers()
        return layers[0].active_adapters[0] if layers and not layers[0].disable_adapters else None

    def set_adapter(self, adapter_name: str) -> None:
        """Activates one loaded adapter (the others stay loaded but unused)."""
        if adapter_name not in self.list_adapters():
            raise ValueError(f"no adapter {adapter_name!r}; loaded adapters: {self.list_adapters()}")
        for layer in self._tuner_layers():
            layer.enable_adapters(True)
            layer.set_adapter(adapter_name)

    def disable_adapters(self) -> None:
        """Runs the base model alone until `set_adapter` is called again."""
        for layer in self._tuner_layers():
            layer.enable_adapters(False)

    def delete_adapter(self, adapter_name: str) -> None:
        for layer in self._tuner_layers():
            if adapter_name in layer.lora_A:
                layer.delete_adapter(adapter_name)
        self._peft_configs().pop(adapter_name, None)
