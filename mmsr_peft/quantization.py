"""QLoRA: the frozen encoders' Linear layers stored in 4 or 8 bits with bitsandbytes, LoRA trained on top.

Only the text encoder and the vision encoder are quantized: they hold almost all of the weights, and LoRA
leaves them frozen. Fusion, projection heads and the sequence encoder are small and stay in float32.
`nn.MultiheadAttention` keeps its weights (it reads them directly instead of calling its `out_proj`), so an
open_clip ViT has only its MLPs quantized; its LoRA targets are the attention modules themselves.
"""

from __future__ import annotations

import torch
from torch import nn

QUANTIZATIONS = ("4bit", "8bit")


def require_bitsandbytes(option: str) -> None:
    """Fails with the install command when bitsandbytes, an optional dependency (the `qlora` extra), is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"{option} needs bitsandbytes, which is not installed: pip install 'mmsr-peft[qlora]'"
        ) from err


def _bitsandbytes():
    require_bitsandbytes("--quantize")
    import bitsandbytes

    return bitsandbytes


def quantized_linear(linear: nn.Linear, bits: str) -> nn.Module:
    """A bitsandbytes copy of `linear` on the same device: NF4 with float32 compute (`4bit`, QLoRA's choice) or
    LLM.int8() (`8bit`). The weights are quantized when they are moved to the device, here."""
    bnb = _bitsandbytes()
    weight, bias = linear.weight.data, linear.bias
    if bits == "4bit":
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias is not None, compute_dtype=torch.float32, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
        # bitsandbytes 0.50's CPU inference shortcut (AVX512-BF16 machines, eval mode, no grad) repacks the weights
        # in place, fails when in_features is not a multiple of 64, and breaks training afterwards: keep it off.
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias is not None, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.data.cpu(), requires_grad=False)
    return layer.to(weight.device)


def quantize_encoders(model: nn.Module, bits: str) -> list[str]:
    """Replaces every `nn.Linear` of `model`'s text and vision encoders by its bitsandbytes version, in place,
    and marks the model the way peft and Accelerate expect (`is_loaded_in_4bit` / `is_loaded_in_8bit`), so LoRA
    layers added afterwards are peft's bnb LoRA layers. Returns the names of the quantized layers.

    Call it before adding adapters, after moving the model to its device. The quantized model trains and
    evaluates; its adapters load onto the unquantized base. It cannot be saved as a base (`save_pretrained`).
    """
    if bits not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {bits!r}; valid: {', '.join(QUANTIZATIONS)}")
    _bitsandbytes()
    if model.list_adapters():
        raise ValueError(f"quantize the base before adding adapters; loaded adapters: {model.list_adapters()}")
    tower, done = model.item_tower, []
    for prefix, encoder in (("item_tower.text", tower.text), ("item_tower.vision", tower.vision)):
        if encoder is None:
            continue
        for parent_name, parent in list(encoder.named_modules()):
            if isinstance(parent, nn.MultiheadAttention):  # it reads out_proj.weight directly
                continue
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, quantized_linear(child, bits))
                    done.append(".".join(filter(None, (prefix, parent_name, name))))
    if not done:
        raise ValueError("the model's encoders have no nn.Linear layer to quantize")
    setattr(model, f"is_loaded_in_{bits}", True)
    model.quantization = bits
    return done
