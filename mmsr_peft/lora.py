"""LoRA on an MMSR model: its components, the modules LoRA adapts in each encoder family by default, and what is
set after peft's injection (per-component dropout, exact base weights under LoRA on attention)."""

from __future__ import annotations

import re

from torch import nn

from .encoders.common import TORCHVISION_CNNS, encoder_blocks

COMPONENTS = ("text", "vision", "fusion", "sequence")
DEFAULT_COMPONENTS = ("text", "vision", "fusion")  # what `mmsr-adapt` adapts unless --components says otherwise
BLOCK_COMPONENTS = ("text", "vision")  # the encoders, whose stacks of blocks LoRA can leave out from the bottom

# Modules LoRA adapts in each encoder family (regex on the module name inside the encoder).
TEXT_TARGETS = {
    "bert": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "roberta": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "xlm-roberta": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    "distilbert": r"transformer\.layer\.\d+\.attention\.(q_lin|v_lin)",
    "clip_text_model": r"(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    "electra": r"encoder\.layer\.\d+\.attention\.self\.(query|value)",
    # XLNet's relative attention keeps q, k, v as raw parameters, which LoRA cannot wrap: its feed-forward layers
    "xlnet": r"layer\.\d+\.ff\.(layer_1|layer_2)",
}
# open_clip ViTs use nn.MultiheadAttention: peft adapts it only when the attention module itself is targeted.
VISION_TARGETS = {
    "open_clip_vit": r"transformer\.resblocks\.\d+\.attn",
    # transformers 5 names (first) and 4.x names
    "hf_vit": r"(layers\.\d+\.attention\.(q_proj|v_proj)|encoder\.layer\.\d+\.attention\.attention\.(query|value))",
    "hf_clip_vision_model": r"(vision_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    "hf_swin": r"encoder\.layers\.\d+\.blocks\.\d+\.attention\.(q_proj|v_proj|self\.query|self\.value)",
    "hf_beit": r"(layers\.\d+\.attention\.(q_proj|v_proj)|encoder\.layer\.\d+\.attention\.attention\.(query|value))",
    "hf_vit_mae": r"(layers\.\d+\.attention\.(q_proj|v_proj)|encoder\.layer\.\d+\.attention\.attention\.(query|value))",
    # ConvNeXt has no attention: its blocks' pointwise (linear) convolutions
    "hf_convnext": r"encoder\.stages\.\d+\.layers\.\d+\.(pwconv1|pwconv2)",
}


def block_names(encoder: nn.Module, family: str, purpose: str) -> list[str]:
    """The names inside `encoder` of its stack of blocks (`encoder_blocks`), bottom first."""
    names = {id(module): name for name, module in encoder.named_modules()}
    return [names[id(block)] for block in encoder_blocks(encoder, family, purpose)]


def convolution_targets(tower: nn.Module, family: str) -> str:
    """The default targets of a torchvision CNN, whose blocks differ in layout along the stack (MobileNetV2's first
    block has no expansion convolution, ResNets' first blocks of a stage a downsampling one): by name, every
    convolution without groups and every linear layer in the stack of blocks. Depthwise convolutions are left out:
    peft's LoRA on a grouped convolution needs a rank divisible by its groups and cannot be merged."""
    stack = block_names(tower, family, "LoRA")
    names = [
        name
        for name, module in tower.named_modules()
        if any(name.startswith(f"{block}.") for block in stack)
        and (isinstance(module, nn.Conv2d) and module.groups == 1 or isinstance(module, nn.Linear))
    ]
    return f"({'|'.join(map(re.escape, names))})"


VISION_TARGETS |= {f"torchvision_{arch}": convolution_targets for arch in TORCHVISION_CNNS}
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
    "paper_sum": r"((text|image)\.proj|fc_[xy])",
    "paper_concat": r"((text|image)\.proj|fc_out)",
    "paper_film": r"((text|image)\.proj|fc|fc_out)",
    "paper_gated": r"((text|image)\.proj|fc_[xy]|fc_out)",
    "paper_co_attention": (
        r"(text_proj|image_proj|fc_out|layers\.\d+\.cross\.attn|layers\.\d+\.(text|image)_self\.(self_attn|linear1|linear2))"
    ),
    "paper_merge_attention": r"(text_proj|image_proj|layers\.\d+\.(self_attn|linear1|linear2))",
}
FUSION_TARGETS |= {  # the paper's DNN heads: their three linear layers too
    f"{op}_dnn": rf"({FUSION_TARGETS[op]}|dnn\.fc[123])"
    for op in ("paper_sum", "paper_concat", "paper_film", "paper_gated")
}
# The sequence encoder: SASRec's attention (the module itself, see above) and feed-forward layers; GRU4Rec's output
# projection (peft cannot adapt nn.GRU). NextItNet's causal convolutions pad on one side, which peft's LoRA for
# Conv1d does not reproduce: it has no default (train it in full with --modules_to_save sequence_encoder).
SEQUENCE_TARGETS = {
    "sasrec": r"layers\.layers\.\d+\.(self_attn|linear1|linear2)",
    "gru4rec": r"projection",
}


def model_components(model: nn.Module, components=DEFAULT_COMPONENTS) -> list[str]:
    """Those of `components` that `model` has and that have default LoRA targets (an `id` tower has no text,
    vision or fusion)."""
    config = model.config
    vision = config.uses_vision and model.item_tower.vision.family in VISION_TARGETS
    present = {
        "text": config.uses_text,
        "vision": vision,
        "fusion": config.item_tower != "id",
        "sequence": config.sequence.type in SEQUENCE_TARGETS,
    }
    return [component for component in components if present[component]]


def component_modules(model: nn.Module, components) -> list[nn.Module]:
    """The modules of `components` (any of `COMPONENTS`) in `model`: the encoders, the fusion module (the projection
    head of a one-modality tower) and the sequence encoder."""
    tower = model.item_tower
    modules = {
        "text": getattr(tower, "text", None),
        "vision": getattr(tower, "vision", None),
        "fusion": getattr(tower, "fusion", None) or getattr(tower, "head", None),
        "sequence": model.sequence_encoder,
    }
    missing = [c for c in components if modules.get(c) is None]
    if missing:
        raise ValueError(f"components {missing} do not exist in an item_tower={model.config.item_tower!r} model")
    return [modules[c] for c in components]


def lora_target_patterns(
    model: nn.Module,
    components=None,
    target_modules: dict[str, list[str]] | None = None,
    top_k: dict[str, int] | None = None,
) -> dict[str, str]:
    """One regex per component of `model` for peft's `target_modules`, `rank_pattern` and `alpha_pattern`.

    `components` default to every one the model has; each gets the default targets of its encoder family, or
    the module names in `target_modules[component]` (e.g. `{"vision": ["q_proj", "v_proj"]}`: modules of that
    component whose name ends with one of them). `top_k[component]` (text, vision; 0: every block) keeps an
    encoder's LoRA in its top blocks: the blocks below then have nothing to train and run without autograd, which
    saves their activations and their backward pass. Every pattern must match at least one module, and none a
    module peft would adapt without effect, so nothing is silently left without LoRA.
    """
    config = model.config
    present = model_components(model, COMPONENTS)
    components = model_components(model) if components is None else components
    target_modules = target_modules or {}
    top_k = {component: k for component, k in (top_k or {}).items() if k}
    patterns = {}
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; valid components: {', '.join(COMPONENTS)}")
        if component == "vision" and config.uses_vision and component not in present:
            family = model.item_tower.vision.family
            raise ValueError(f"no default LoRA targets for vision tower {family!r}; known: {sorted(VISION_TARGETS)}")
        if component in top_k and component not in BLOCK_COMPONENTS:
            raise ValueError(f"LoRA in the top blocks applies to {' and '.join(BLOCK_COMPONENTS)}, not {component!r}")
        encoder = None  # the encoder's own module (text, vision): where its blocks and a CNN's targets are found
        if component == "sequence":
            prefix, family, table = r"sequence_encoder\.", config.sequence.type, SEQUENCE_TARGETS
        elif component not in present:
            raise ValueError(f"component {component!r} does not exist in an item_tower={config.item_tower!r} model")
        elif component == "text":
            prefix, family, table = r"item_tower\.text\.backbone\.", config.text.backbone["model_type"], TEXT_TARGETS
            encoder = model.item_tower.text.backbone
        elif component == "vision":
            prefix, family, table = r"item_tower\.vision\.tower\.", model.item_tower.vision.family, VISION_TARGETS
            encoder = model.item_tower.vision.tower
        elif config.item_tower == "multimodal":
            prefix, family, table = r"item_tower\.fusion\.", config.fusion.type, FUSION_TARGETS
        else:  # a single-modality tower's projection head plays the fusion part
            prefix, family, table = r"item_tower\.head\.", "head", {"head": "proj"}
        if target_modules.get(component):
            patterns[component] = prefix + rf"(.*\.)?({'|'.join(map(re.escape, target_modules[component]))})"
        elif family in table:
            targets = table[family]  # a regex, or a function of the encoder (CNNs)
            patterns[component] = prefix + (targets(encoder, family) if callable(targets) else targets)
        else:
            raise ValueError(
                f"no default LoRA targets for {component} encoder type {family!r}; known: {sorted(table)}"
            )
        if component in top_k:  # a lookahead: only names inside the top blocks pass
            top = _top_blocks(encoder, family, top_k[component], component)
            patterns[component] = rf"(?={prefix}({'|'.join(map(re.escape, top))})\.)" + patterns[component]
    if not patterns:
        raise ValueError("no component to adapt: pass at least one of " + ", ".join(COMPONENTS))
    modules = dict(model.named_modules())
    for component, pattern in patterns.items():
        matched = [name for name in modules if re.fullmatch(pattern, name)]
        if not matched:
            raise ValueError(f"LoRA target pattern for {component!r} matches no module: {pattern}")
        # nn.MultiheadAttention reads its out_proj weights directly: LoRA there would change nothing
        inert = [name for name in matched if isinstance(modules.get(name.rpartition(".")[0]), nn.MultiheadAttention)]
        if inert:
            raise ValueError(
                f"LoRA targets for {component!r} inside nn.MultiheadAttention would have no effect: {inert[:3]}; "
                "target the attention module itself (e.g. 'attn')"
            )
    return patterns


def _top_blocks(encoder: nn.Module, family: str, top_k: int, component: str) -> list[str]:
    """The names inside `encoder` of its top `top_k` blocks."""
    blocks = block_names(encoder, family, "LoRA in the top blocks")
    if not 1 <= top_k <= len(blocks):
        raise ValueError(
            f"LoRA in the top {top_k} blocks of the {component} encoder: its {family!r} stack has {len(blocks)} "
            f"blocks; expected 1 to {len(blocks)} (0: every block)"
        )
    return blocks[len(blocks) - top_k :]


def lora_target_modules(model: nn.Module, components=None, target_modules=None, top_k=None) -> str:
    """A regex for `LoraConfig(target_modules=...)` covering `components` of `model` (see `lora_target_patterns`)."""
    return "|".join(f"({p})" for p in lora_target_patterns(model, components, target_modules, top_k).values())


def keep_attention_weights_exact(model: nn.Module) -> None:
    """peft's LoRA on `nn.MultiheadAttention` adds the LoRA delta to the attention weights before every forward and
    subtracts it after, which leaves the base weights off by rounding (and drifting, forward after forward). These
    hooks put the untouched original weights back after each forward, so the base stays bit-exact (its scores with
    adapters disabled, its sha256)."""
    from peft.tuners.lora.layer import MultiheadAttention

    def keep(module, args):
        if not module.merged and not module.disable_adapters:  # this forward will merge and unmerge
            attention = module.get_base_layer()
            module._original_weights = (attention.in_proj_weight, attention.out_proj.get_base_layer().weight)

    def restore(module, args, output):
        if "_original_weights" not in module.__dict__:
            return
        attention = module.get_base_layer()
        in_proj, out_proj = module.__dict__.pop("_original_weights")
        for owner, name, weight in (
            (attention, "in_proj_weight", in_proj),
            (attention.out_proj.get_base_layer(), "weight", out_proj),
        ):
            delattr(owner, name)
            owner.register_parameter(name, weight)

    for module in model.modules():
        if isinstance(module, MultiheadAttention) and not getattr(module, "_keeps_weights", False):
            module.register_forward_pre_hook(keep)
            module.register_forward_hook(restore)
            module._keeps_weights = True


def set_lora_dropout(model: nn.Module, adapter_name: str, dropout_pattern: dict[str, float]) -> None:
    """Sets the LoRA input dropout of `adapter_name` per module pattern (keys matched like peft's `rank_pattern`);
    peft has one `lora_dropout` per adapter, so a per-component dropout is applied here after injection."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import get_pattern_key

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_dropout:
            key = get_pattern_key(dropout_pattern.keys(), name)
            if key in dropout_pattern:
                p = dropout_pattern[key]
                module.lora_dropout[adapter_name] = nn.Dropout(p) if p > 0 else nn.Identity()


def component_pattern(flag: str, pairs: list[str] | dict | None, convert) -> dict:
    """`["text=16", "fusion=4"]` -> `{"text": 16, "fusion": 4}`, each value through `convert` (a dict, as a
    dataclass built in code may hold, is checked the same way); a bad pair is an error naming the flag and the pair."""
    items = pairs.items() if isinstance(pairs, dict) else (pair.partition("=")[::2] for pair in pairs or [])
    pattern = {}
    for component, value in items:
        if component not in COMPONENTS or value in ("", None):
            raise ValueError(
                f"--{flag} {component}={value}: expected COMPONENT=VALUE with a component among {', '.join(COMPONENTS)}"
            )
        try:
            pattern[component] = convert(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"--{flag} {component}={value}: invalid value {value!r} for {component}") from None
    return pattern
