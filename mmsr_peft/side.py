"""Side adapters: a small network beside the frozen encoders, after IISAN's decoupled side-adapter network (Fu et
al., SIGIR 2024), that reads the encoders' pooled state after every layer and adds a correction to the item
embedding.

Nothing back-propagates through the encoders. With frozen encoders their per-layer states are computed once for a
catalog, in the same pass as the encoders' outputs (and kept in the feature cache, see
`mmsr_peft.training.precompute_frozen_states`), so a training step never runs an encoder: it costs the side
network, the fusion and the sequence encoder, forward and backward.

The network has one chain per modality (intra-modal) and one across them (inter-modal). A chain walks the layers
bottom up; at each layer a learned gate mixes the chain's state with that layer's projected state, and a residual
MLP refines the mix. The inter-modal chain reads the sum of a text and an image layer at matching relative depths.
The last state of each chain goes through one linear layer, initialised to zero, so an adapter starts as the base
model exactly and the base's weights never change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigMixin
from .errors import CheckpointError

SIDE_CONFIG_FILE = "side_adapter_config.json"
SIDE_WEIGHTS_FILE = "side_adapter_model.safetensors"
SIDE_ADAPTER_TYPE = "MMSR_SIDE"
SAVED = "modules_to_save."  # where a side adapter's weights file keeps its copies of modules_to_save


@dataclass
class SideAdapterConfig(ConfigMixin):
    """A side adapter's architecture (saved as `side_adapter_config.json`).

    Args:
        width (`int`): width of the side network's states.
        dropout (`float`): dropout inside its residual MLPs, in training only.
        text_widths / image_widths (`list[int]`): widths of the text encoder's layer states (its embeddings, then
            each layer) and of the vision encoder's blocks. Filled in from the model the adapter is added to, and
            checked against the model it is loaded onto.
        modules_to_save (`list[str]`): modules of the base (e.g. `sequence_encoder`) trained in full with the side
            network and saved with it (the base keeps its own copy, as with peft's `modules_to_save`).
        base_model_name_or_path (`str`, *optional*): the base model it was trained on (informational, as in peft).
    """

    adapter_type: str = SIDE_ADAPTER_TYPE
    width: int = 64
    dropout: float = 0.1
    text_widths: list[int] = field(default_factory=list)
    image_widths: list[int] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    base_model_name_or_path: str | None = None

    def __post_init__(self):
        if self.adapter_type != SIDE_ADAPTER_TYPE:
            raise ValueError(f"adapter_type must be {SIDE_ADAPTER_TYPE!r}, got {self.adapter_type!r}")
        if self.width < 1 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"side adapter width must be >= 1 and dropout in [0, 1), got {self.width}, {self.dropout}"
            )
        for name in ("text_widths", "image_widths"):
            widths = getattr(self, name)
            if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
                raise ValueError(f"side adapter {name} must be positive integers, got {widths}")

    def save_pretrained(self, folder: str | Path) -> None:
        (Path(folder) / SIDE_CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> SideAdapterConfig:
        """Reads a `side_adapter_config.json`; bad JSON or a bad field is a `ValueError` naming the file."""
        try:
            settings = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(settings, where=str(path))
        except ValueError as err:
            raise ValueError(err if str(err).startswith(str(path)) else f"{path}: {err}") from None


def layer_widths(tower: nn.Module) -> tuple[list[int], list[int]]:
    """The widths of the per-layer states of an item tower's text and vision encoders (empty for a modality it
    lacks), measured on one dummy item in eval mode."""
    widths = {}
    for modality, encoder in (("text", tower.text), ("image", tower.vision)):
        if encoder is None:
            widths[modality] = []
            continue
        device, was_training = next(encoder.parameters()).device, encoder.training
        if modality == "text":
            inputs = (torch.ones(1, 2, dtype=torch.long, device=device),) * 2  # token ids and mask
        else:
            side = encoder.config.image_size
            inputs = (torch.zeros(1, 3, side, side, dtype=torch.uint8, device=device),)
        encoder.eval()
        with torch.no_grad():
            widths[modality] = [layer.shape[-1] for layer in encoder.encode_layers(*inputs)[1]]
        encoder.train(was_training)
    return widths["text"], widths["image"]


class SideBlock(nn.Module):
    """One step of a chain: a learned gate mixes the chain's state with this layer's input, then a residual MLP
    (pre-norm) refines the mix."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(()))  # sigmoid(0): an even mix to start with
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, state: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate)
        mixed = gate * state + (1 - gate) * layer
        return mixed + self.dropout(self.fc2(F.gelu(self.fc1(self.norm(mixed)))))


class SideChain(nn.Module):
    """Blocks that walk a stack of layer states bottom up, from a zero state."""

    def __init__(self, depth: int, width: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(SideBlock(width, dropout) for _ in range(depth))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        state = torch.zeros_like(layers[0])
        for block, layer in zip(self.blocks, layers, strict=True):
            state = block(state, layer)
        return state


class SideNetwork(nn.Module):
    """The side adapter: `forward(text_layers, image_layers, has_text, has_image)` gives the `(N, hidden_size)`
    correction added to the item tower's output.

    Args:
        config (`SideAdapterConfig`): the architecture (with the encoders' layer widths filled in).
        hidden_size (`int`): width of the item embeddings.
    """

    def __init__(self, config: SideAdapterConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.modalities = [m for m in ("text", "image") if getattr(config, f"{m}_widths")]
        if not self.modalities:
            raise ValueError("a side adapter needs the layer widths of at least one encoder")
        width = config.width
        self.projections = nn.ModuleDict(
            {m: nn.ModuleList(nn.Linear(w, width) for w in getattr(config, f"{m}_widths")) for m in self.modalities}
        )
        self.chains = nn.ModuleDict(
            {m: SideChain(len(getattr(config, f"{m}_widths")), width, config.dropout) for m in self.modalities}
        )
        chains = len(self.modalities)
        if chains == 2:
            self.pairs = aligned_layers(len(config.text_widths), len(config.image_widths))
            self.chains["inter"] = SideChain(len(self.pairs), width, config.dropout)
            chains += 1
        self.out = nn.Linear(chains * width, hidden_size)
        nn.init.zeros_(self.out.weight)  # the adapter starts as the identity: base output + 0
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        text_layers: torch.Tensor | None,
        image_layers: torch.Tensor | None,
        has_text: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        inputs = {"text": (text_layers, has_text), "image": (image_layers, has_image)}
        projected, outputs = {}, []
        for modality in self.modalities:
            states, present = inputs[modality]
            widths = getattr(self.config, f"{modality}_widths")
            if states is None or states.shape[-1] != sum(widths):
                got = None if states is None else tuple(states.shape)
                raise ValueError(f"side adapter: {modality} layer states of width {sum(widths)} expected, got {got}")
            keep = present.to(states.dtype)[:, None]  # an item without this modality gets zeros from it
            parts = states.split(widths, dim=-1)
            projected[modality] = [
                proj(part) * keep for proj, part in zip(self.projections[modality], parts, strict=True)
            ]
            outputs.append(self.chains[modality](projected[modality]))
        if "inter" in self.chains:
            text, image = projected["text"], projected["image"]
            outputs.append(self.chains["inter"]([text[i] + image[j] for i, j in self.pairs]))
        return self.out(torch.cat(outputs, dim=-1))


def aligned_layers(text_depth: int, image_depth: int) -> list[tuple[int, int]]:
    """Pairs of text and image layers at the same relative depth, as many as the shallower stack has layers, the
    last layers paired together."""
    steps = min(text_depth, image_depth)
    if steps == 1:
        return [(text_depth - 1, image_depth - 1)]
    return [
        (round(k * (text_depth - 1) / (steps - 1)), round(k * (image_depth - 1) / (steps - 1))) for k in range(steps)
    ]


def attach(model: nn.Module, config: SideAdapterConfig, adapter_name: str) -> None:
    """Adds a `SideNetwork` for `config` to `model.item_tower.side_adapters`, sized to the model's encoders (a
    config that names other layer widths is a `CheckpointError`), and gives it its own trainable copy of each of
    `config.modules_to_save` (peft's `ModulesToSaveWrapper`, shared with the LoRA adapters that save the same
    module). `AdapterMixin.add_adapter` registers it."""
    if model.config.item_tower == "id":
        raise ValueError("a side adapter reads the text and vision encoders; an `id` item tower has none")
    text, image = layer_widths(model.item_tower)
    if (config.text_widths or config.image_widths) and (config.text_widths, config.image_widths) != (text, image):
        raise CheckpointError(
            f"the side adapter was built for encoder layer widths text {config.text_widths}, image "
            f"{config.image_widths}; this model's are text {text}, image {image}"
        )
    modules = dict(model.named_modules())
    missing = [name for name in config.modules_to_save if name not in modules]
    if missing:
        top = [n for n, _ in model.named_children()] + [
            f"item_tower.{n}" for n, _ in model.item_tower.named_children()
        ]
        raise ValueError(f"modules_to_save: no module {missing} in the model; e.g. {sorted(top)}")
    config.text_widths, config.image_widths = text, image
    network = SideNetwork(config, model.config.hidden_size).to(next(model.parameters()).device)
    model.item_tower.side_adapters[adapter_name] = network.train(model.training)
    for name in config.modules_to_save:
        _save_module(model, name, adapter_name)


def _save_module(model: nn.Module, name: str, adapter_name: str) -> None:
    from peft.utils.other import ModulesToSaveWrapper

    module = model.get_submodule(name)
    if isinstance(module, ModulesToSaveWrapper):
        module.update(adapter_name)
        return
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, ModulesToSaveWrapper(module, adapter_name))


def saved_modules(model: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    """The copies of `modules_to_save` that belong to `adapter_name`, by the name of the module they replace."""
    return {
        name: module.modules_to_save[adapter_name]
        for name, module in model.named_modules()
        if adapter_name in getattr(module, "modules_to_save", {})
    }


def weights(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """What a side adapter's weights file holds: the network's weights, and its module copies under `SAVED`."""
    state = dict(model.item_tower.side_adapters[adapter_name].state_dict())
    for name, module in saved_modules(model, adapter_name).items():
        state.update({f"{SAVED}{name}.{k}": v for k, v in module.state_dict().items()})
    return state


def load_weights(model: nn.Module, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
    """Fills an attached side adapter from `weights`' layout; a missing, unexpected or reshaped weight is a
    `RuntimeError`."""
    saved = saved_modules(model, adapter_name)
    model.item_tower.side_adapters[adapter_name].load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(SAVED)}
    )
    for name, module in saved.items():
        prefix = f"{SAVED}{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    prefixes = tuple(f"{SAVED}{name}." for name in saved)
    unknown = [k for k in state if k.startswith(SAVED) and not (prefixes and k.startswith(prefixes))]
    if unknown:
        raise RuntimeError(f"unexpected weights of saved modules {unknown[:5]}")
