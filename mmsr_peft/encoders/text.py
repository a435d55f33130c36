"""The text encoder: any Hugging Face `AutoModel`, pooled by mean or by its classification token."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin
from .common import (
    BLOCK_LAYOUT,
    BlockInputs,
    EncoderOutput,
    enable_activation_checkpointing,
    encoder_blocks,
    find_part,
    first_trainable_block,
    quiet_from_pretrained,
    set_finetuning,
)

POOLINGS = ("mean", "cls")
LENGTH_BUCKET = 64  # texts per backbone call when a batch is encoded in groups of similar length
# Where the [CLS]-like token of a text encoder is: first (BERT and most), or last: XLNet appends its <cls>, and
# CLIP's text model reads its end-of-text token (with causal attention, the only one that has seen the whole text).
CLS_LAST = ("xlnet", "clip_text_model")
# Families whose blocks can run on their own, from cached states (`TextEncoder.encode_from`): each block takes the
# hidden states and the attention mask transformers builds for the whole model (causal for CLIP's text model,
# whose blocks are followed by a layer norm: `BLOCK_LAYOUT`).
FROM_BLOCK_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "clip_text_model")
CAUSAL_FAMILIES = ("clip_text_model",)


def _mask_builder(causal: bool = False):
    """transformers' builder of a model's attention mask from its padding mask (5.x), bidirectional or causal, or
    None where it has none (4.x)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
    except ImportError:
        return None
    if causal:
        return lambda **kwargs: create_causal_mask(cache=None, **kwargs)
    return create_bidirectional_mask


def _no_pooler(hf_config) -> dict:
    """`add_pooling_layer=False` for the models that have that option (BERT-like): their pooler is not used."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(hf_config)]
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
        else {}
    )


@dataclass
class TextEncoderConfig(ConfigMixin):
    """Architecture of the text encoder: any Hugging Face `AutoModel`.

    Args:
        backbone (`dict`): the Hugging Face model config as a dict (`model_type` + architecture fields).
        pooling (`str`): `"mean"` over real tokens or `"cls"` (the classification token: the first one; XLNet's
            last, CLIP text's end-of-text token).
        max_length (`int`): maximum tokens per item text.
        source (`str`, *optional*): the model name/path the architecture (and tokenizer) came from; informational.
    """

    backbone: dict = field(default_factory=dict)  # transformers config dict, e.g. {"model_type": "bert", ...}
    pooling: str = "mean"  # "mean" over real tokens or "cls"
    max_length: int = 32  # tokens per item text
    source: str | None = None  # name/path the architecture came from (provenance only)

    def __post_init__(self):
        self.backbone = json.loads(json.dumps(self.backbone))  # the form it has after config.json (str keys)
        # where the weights were read from: a path of the machine, not architecture
        self.backbone.pop("_name_or_path", None)
        if "model_type" not in self.backbone:
            raise ValueError(
                f"text.backbone must be a transformers config dict with 'model_type', got {self.backbone}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ValueError(f"text.max_length must be >= 2, got {self.max_length}")

    @classmethod
    def from_pretrained_backbone(cls, name_or_path: str, **kwargs) -> TextEncoderConfig:
        """The architecture of a Hugging Face model (name or local folder), without loading its weights."""
        from transformers import AutoConfig

        backbone = AutoConfig.from_pretrained(name_or_path).to_dict()
        return cls(backbone=backbone, source=name_or_path, **kwargs)


class TextEncoder(nn.Module):
    """A Hugging Face encoder with `mean` or `cls` pooling."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        settings = dict(config.backbone)
        hf_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        self.config = config
        self.backbone = AutoModel.from_config(hf_config, **_no_pooler(hf_config))
        self.hidden_size = hf_config.hidden_size
        self.length_bucket = LENGTH_BUCKET  # texts encoded together, by length (0: the whole batch at once)

    def set_finetuning(self, regime: str, top_k: int = 1) -> None:
        """`frozen`, `full`, or `top_k`: only the top `top_k` transformer layers train."""
        set_finetuning(self.backbone, self.config.backbone["model_type"], regime, top_k)

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes each transformer layer's activations in the backward pass instead of storing them."""
        enable_activation_checkpointing(self.backbone)

    def load_backbone(self, name_or_path: str) -> None:
        """Fills the backbone with the weights of a pretrained model (every key must match)."""
        from transformers import AutoModel

        pretrained = quiet_from_pretrained(AutoModel, name_or_path, **_no_pooler(self.backbone.config))
        self.backbone.load_state_dict(pretrained.state_dict(), strict=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        def run(ids, mask):
            return self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state

        states = self._by_length(run, input_ids, attention_mask)  # (N, L, H)
        mask = attention_mask.bool()
        return EncoderOutput(self._pool(states, mask), states, mask)

    def encode_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """`forward`'s output and, from the same pass, the pooled state after the embeddings and after each layer
        (pooled like the output: mean over real tokens, or the classification token), `(N, H)` each. The output is
        the last hidden state, which some families normalise after their last layer (CLIP text)."""

        def run(ids, mask):  # pooled in each length group: the token states of every layer are never all kept
            output = self.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            return (output.last_hidden_state, *(self._pool(states, mask.bool()) for states in output.hidden_states))

        states, *pooled = self._by_length(run, input_ids, attention_mask)
        mask = attention_mask.bool()
        return EncoderOutput(self._pool(states, mask), states, mask), pooled

    def first_cached_block(self) -> int:
        """The block a training step can start from, its inputs computed once (`block_inputs`): the lowest block
        that trains when nothing below it does (top-k fine-tuning, LoRA in the top blocks). 0, the whole encoder
        runs: nothing to gain, or a family whose blocks cannot run on their own (`FROM_BLOCK_FAMILIES`, with
        transformers 5)."""
        family = self.config.backbone["model_type"]
        if family not in FROM_BLOCK_FAMILIES or _mask_builder() is None:
            return 0
        return first_trainable_block(self.backbone, family)

    def block_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int) -> BlockInputs:
        """The hidden states entering block `start` (`(N, L, H)`, zeros or junk on padding), to `encode_from`: the
        embeddings and the blocks below `start` run, not the ones above it."""
        backbone = self.backbone
        project = getattr(backbone, "embeddings_project", None)  # ELECTRA's, when its embeddings are narrower

        def run(ids, mask):
            states = backbone.embeddings(input_ids=ids)
            return self._run_blocks(project(states) if project is not None else states, mask, 0, start)

        states = self._by_length(run, input_ids, attention_mask)
        return BlockInputs.entering(start, states, attention_mask.bool())

    def encode_from(self, inputs: BlockInputs) -> EncoderOutput:
        """`forward`'s output from the states entering block `inputs.start`: only the blocks from there on run, and
        what follows them (CLIP text's final layer norm)."""

        def run(states, mask):
            return self._run_blocks(states, mask, inputs.block, None)

        states = self._by_length(run, inputs.states, inputs.mask.long())
        return EncoderOutput(self._pool(states, inputs.mask), states, inputs.mask)

    def _run_blocks(self, states: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        """Blocks `start` to `stop` (exclusive) of a `FROM_BLOCK_FAMILIES` encoder on the states entering block
        `start`, under the attention mask its family builds from the padding `mask`; with `stop` None, every block
        from `start` on and what follows them (CLIP text's final layer norm)."""
        family = self.config.backbone["model_type"]
        causal = family in CAUSAL_FAMILIES
        attention = _mask_builder(causal)(config=self.backbone.config, inputs_embeds=states, attention_mask=mask)
        # without padding, the causal builder leaves the mask to attention kernels that are told to be causal
        extra = {"is_causal": True} if causal else {}
        for block in encoder_blocks(self.backbone, family)[start:stop]:
            states = block(states, attention, **extra)
            states = states[0] if isinstance(states, tuple) else states
        if stop is None:
            for name in BLOCK_LAYOUT[family][1]:
                part = find_part(self.backbone, name)
                states = part(states) if part is not None else states
        return states

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls" and self.config.backbone["model_type"] in CLS_LAST:
            columns = torch.arange(mask.shape[1], device=mask.device)
            # the last real token, whatever side the tokenizer pads
            last = torch.where(mask, columns, -1).amax(1).clamp(min=0)
            return states[torch.arange(len(states), device=states.device), last]
        if self.config.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def _by_length(self, run, inputs: torch.Tensor, attention_mask: torch.Tensor):
        """`run(inputs, attention_mask)` on token ids or hidden states `inputs`, giving a tensor (or a tuple of
        them) with a row per text: token states `(N, L, H)` or one vector per text `(N, W)`. Right-padded texts are
        encoded in groups of `length_bucket` of similar length, each cut after its longest text, so a batch of
        mostly short texts does not pay for its longest one in every row; token states come back padded with zeros
        to the batch's length (the padding is masked wherever states are read)."""
        lengths = attention_mask.sum(1)
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        right_padded = bool((attention_mask.bool() == (columns < lengths[:, None])).all())
        if not self.length_bucket or len(inputs) <= self.length_bucket or not right_padded:
            return run(inputs, attention_mask)
        order = torch.argsort(lengths)
        groups = []
        for group in order.split(self.length_bucket):
            length = max(1, int(lengths[group].max()))
            groups.append(run(inputs[group, :length], attention_mask[group, :length]))
        restore, width = torch.argsort(order), attention_mask.shape[1]

        def joined(parts):  # the groups' rows back in the batch's order, token states padded to its length
            padded = [F.pad(part, (0, 0, 0, width - part.shape[1])) if part.dim() == 3 else part for part in parts]
            return torch.cat(padded)[restore]

        if isinstance(groups[0], tuple):
            return tuple(joined(parts) for parts in zip(*groups, strict=True))
        return joined(groups)
