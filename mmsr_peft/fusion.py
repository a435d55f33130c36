"""Multimodal fusion: turns an item's text and image encodings into one item embedding."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigMixin
from .encoders import EncoderOutput

POOLED_OPS = ("sum", "concat", "film", "gated")
# The MMSR paper's own definitions (its official code, model/fushion_module.py and model/modeling.py), beside ours
PAPER_POOLED = tuple(f"paper_{op}{head}" for head in ("", "_dnn") for op in POOLED_OPS)
PAPER_TOKEN_FUSIONS = ("paper_co_attention", "paper_merge_attention")
TOKEN_FUSIONS = ("co_attention", "merge_attention") + PAPER_TOKEN_FUSIONS
FUSION_TYPES = (
    (POOLED_OPS + tuple(f"{op}_mlp" for op in POOLED_OPS) + ("co_attention", "merge_attention"))
    + PAPER_POOLED
    + PAPER_TOKEN_FUSIONS
)
CONDITIONS = ("text", "image")


@dataclass
class FusionConfig(ConfigMixin):
    """Architecture of the fusion module. Pooled variants first project text and image to `t`, `v` of width D (a
    learned vector stands in for an absent modality); token variants read the token / patch states. The `paper_`
    types are the MMSR paper's definitions as its official code writes them; the others are ours
    (docs/design_space.md says what each of ours changes).

    Args:
        type (`str`): ours:
            - `"sum"`: `t + v`.
            - `"concat"`: `Linear(2D -> D)([t; v])`.
            - `"film"`: `γ ⊙ t + β` with `(γ - 1, β) = Linear(D -> 2D)(v)` (image modulates text; γ starts near 1).
            - `"gated"`: `g ⊙ t + (1 - g) ⊙ v` with `g = sigmoid(Linear(2D -> D)([t; v]))`.
            - `"sum_mlp"`, `"concat_mlp"`, `"film_mlp"`, `"gated_mlp"`: the base op `x`, then
              `LayerNorm(x + MLP(x))` with `MLP = Linear(D -> 4D), GELU, dropout, Linear(4D -> D)`.
            - `"co_attention"`: per layer, text tokens cross-attend to image patches and patches to text tokens,
              then self-attention + feed-forward in each stream (LXMERT); `Linear(2D -> D)` of the two [CLS] states.
            - `"merge_attention"`: one self-attention stream over `[CLS] + text tokens + image patches` with
              modality-type embeddings, read out at [CLS].
            The paper's, on `x = LN(t)`, `y = LN(v)` (one LayerNorm shared by both, as in its code):
            - `"paper_sum"`: `fc_x(x) + fc_y(y)`.
            - `"paper_concat"`: `fc_out([x; y])`.
            - `"paper_film"`: `fc_out(γ ⊙ y + β)` with `(γ, β) = fc(x)` (`condition="image"` swaps the roles).
            - `"paper_gated"`: `fc_out(sigmoid(fc_x(x)) ⊙ fc_y(y))` (`condition="image"`: the gate from `y`).
            - `"paper_sum_dnn"`, ..., `"paper_gated_dnn"`: the op, then three `Dropout, Linear(D -> D), ReLU` layers
              (no residual, no normalisation).
            - `"paper_co_attention"`: BERT-style (post-norm) layers: both streams cross-attend to the other through
              one shared cross-attention, then self-attention + feed-forward in each; the mean of each stream's
              tokens, `Linear(2D -> D)`.
            - `"paper_merge_attention"`: BERT-style layers over `text tokens + image patches` (modality-type
              embeddings), the mean of the tokens.
        num_layers (`int`): layers of the attention variants.
        num_heads (`int`): attention heads of the attention variants (must divide D).
        dropout (`float`): dropout of the attention variants, of the `_mlp` and of the `_dnn` heads.
        intermediate_size (`int`, *optional*): feed-forward width of the attention variants (default 4 D).
        condition (`str`): `paper_film` / `paper_gated`: the modality that conditions (`"text"`, the paper's
            default, or `"image"`).
        init_from (`str`, *optional*): `paper_co_attention` / `paper_merge_attention`: the BERT checkpoint (a folder
            or Hub id) whose first `num_layers` layers initialised the fusion's layers when the model was built
            (recorded here; loading a saved model reads its own weights, never this checkpoint).
    """

    type: str = "concat"  # one of FUSION_TYPES
    num_layers: int = 1  # attention variants: layers
    num_heads: int = 2  # attention variants: attention heads
    dropout: float = 0.1  # attention variants, _mlp and _dnn heads: dropout
    intermediate_size: int | None = None  # attention variants: feed-forward width (None: 4 x hidden size)
    condition: str = "text"  # paper_film / paper_gated: which modality conditions the other
    init_from: str | None = None  # paper attention variants: the BERT checkpoint their layers started from

    def __post_init__(self):
        if self.type not in FUSION_TYPES:
            raise ValueError(f"fusion.type must be one of {', '.join(FUSION_TYPES)}; got {self.type!r}")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError(f"fusion.num_layers/num_heads must be >= 1, got {self.num_layers}/{self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"fusion.dropout must be in [0, 1), got {self.dropout}")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"fusion.intermediate_size must be >= 1, got {self.intermediate_size}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"fusion.condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.init_from is not None and self.type not in PAPER_TOKEN_FUSIONS:
            raise ValueError(
                f"fusion.init_from (a BERT checkpoint) initialises {' or '.join(PAPER_TOKEN_FUSIONS)} only, "
                f"not {self.type!r}"
            )


class ModalityProjection(nn.Module):
    """Single-modality item tower head: projects the pooled encoding; a learned vector stands in when absent."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size)
        # Not zeros: an all-zero item embedding (this head's absent item, or `sum`/`film`/`gated` of two absent
        # modalities) makes cosine scoring's F.normalize divide by its eps, a ~1e13 gradient that clipping turns
        # into a zero update for every other parameter; and LayerNorm of a constant is 0, which the paper's
        # fusions pass through zero biases and ReLU as no gradient at all.
        self.missing = nn.Parameter(torch.empty(hidden_size).normal_(std=0.02))

    def forward(self, encoded: EncoderOutput, present: torch.Tensor) -> torch.Tensor:
        return torch.where(present[:, None], self.proj(encoded.pooled), self.missing)  # (N, D)


class PooledFusion(nn.Module):
    """Late fusion of the projected pooled vectors `t`, `v` by `sum`, `concat`, `film` or `gated`, optionally
    followed by a residual MLP head (`*_mlp`). An absent modality is a learned vector, not zeros that look like
    content."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.op = config.type.removesuffix("_mlp")
        self.text = ModalityProjection(text_dim, d)
        self.image = ModalityProjection(image_dim, d)
        if self.op == "concat":
            self.out_proj = nn.Linear(2 * d, d)  # name kept from the first release: old checkpoints still load
        elif self.op == "film":
            self.film = nn.Linear(d, 2 * d)
            nn.init.normal_(self.film.weight, std=0.02)  # γ ≈ 1, β ≈ 0 at start: the text vector passes through
            nn.init.zeros_(self.film.bias)
        elif self.op == "gated":
            self.gate = nn.Linear(2 * d, d)
        self.mlp = self.norm = None
        if config.type.endswith("_mlp"):
            layers = [("fc1", nn.Linear(d, 4 * d)), ("act", nn.GELU()), ("drop", nn.Dropout(config.dropout))]
            self.mlp = nn.Sequential(OrderedDict([*layers, ("fc2", nn.Linear(4 * d, d))]))
            self.norm = nn.LayerNorm(d)

    def combine(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.op == "sum":
            return t + v
        if self.op == "concat":
            return self.out_proj(torch.cat([t, v], dim=-1))
        if self.op == "film":
            gamma, beta = self.film(v).chunk(2, dim=-1)  # (N, D) each
            return (1 + gamma) * t + beta
        g = torch.sigmoid(self.gate(torch.cat([t, v], dim=-1)))  # (N, D)
        return g * t + (1 - g) * v

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        fused = self.combine(self.text(text, has_text), self.image(image, has_image))  # (N, D)
        return fused if self.mlp is None else self.norm(fused + self.mlp(fused))


def _encoder_layer(config: FusionConfig, hidden_size: int, bert: bool = False) -> nn.TransformerEncoderLayer:
    """A pre-norm transformer layer (ours), or with `bert` a BERT layer: post-norm, GELU, LayerNorm eps 1e-12."""
    return nn.TransformerEncoderLayer(
        hidden_size,
        config.num_heads,
        config.intermediate_size or 4 * hidden_size,
        config.dropout,
        activation="gelu" if bert else "relu",
        layer_norm_eps=1e-12 if bert else 1e-5,
        batch_first=True,
        norm_first=not bert,
    )


def _keep(n: int, encoded: EncoderOutput, present: torch.Tensor) -> torch.Tensor:
    """`(N, 1 + L)` key mask of a stream: its [CLS] slot is always visible, tokens only if the modality is present."""
    cls = torch.ones(n, 1, dtype=torch.bool, device=encoded.mask.device)
    return torch.cat([cls, encoded.mask & present[:, None]], dim=1)


class MergeAttentionFusion(nn.Module):
    """Early fusion: one self-attention stream over `[CLS] + text tokens + image patches`, each token tagged
    with a modality-type embedding. Tokens of an absent modality are masked out of attention."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.type_embedding = nn.Embedding(3, hidden_size)  # 0: [CLS], 1: text, 2: image
        layer = _encoder_layer(config, hidden_size)
        self.layers = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        n = text.tokens.shape[0]
        types = self.type_embedding.weight
        tokens = torch.cat(
            [
                self.cls.expand(n, -1, -1) + types[0],
                self.text_proj(text.tokens) + types[1],  # (N, L, D)
                self.image_proj(image.tokens) + types[2],  # (N, P, D)
            ],
            dim=1,
        )  # (N, 1 + L + P, D)
        keep = torch.cat([_keep(n, text, has_text), image.mask & has_image[:, None]], dim=1)  # (N, 1 + L + P)
        states = self.layers(tokens, src_key_padding_mask=~keep)
        return self.out_proj(self.norm(states[:, 0]))  # (N, D)


class CrossAttention(nn.Module):
    """Pre-norm residual cross-attention: `x + Attn(LN(x), LN(y), LN(y))`, keys masked by `y_keep`."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, config.num_heads, dropout=config.dropout, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_keep: torch.Tensor) -> torch.Tensor:
        context = self.norm_context(y)
        attended = self.attn(self.norm_query(x), context, context, key_padding_mask=~y_keep, need_weights=False)[0]
        return x + self.dropout(attended)


class CoAttentionLayer(nn.Module):
    """One LXMERT-style layer: both streams cross-attend to the other (from the same input states), then each
    runs self-attention + feed-forward on its own tokens."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.text_cross = CrossAttention(config, hidden_size)
        self.image_cross = CrossAttention(config, hidden_size)
        self.text_self = _encoder_layer(config, hidden_size)
        self.image_self = _encoder_layer(config, hidden_size)

    def forward(self, t, v, t_keep, v_keep) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = self.text_cross(t, v, v_keep), self.image_cross(v, t, t_keep)
        return self.text_self(t, src_key_padding_mask=~t_keep), self.image_self(v, src_key_padding_mask=~v_keep)


class CoAttentionFusion(nn.Module):
    """Two token streams, `[CLS_t] + text tokens` and `[CLS_v] + image patches`, joined by cross-attention layers.
    Each [CLS] is always a visible key, so an item missing a modality attends to that stream's [CLS] alone (a
    learned "missing" signal) instead of to masked content; the output projects `[CLS_t; CLS_v]` to D."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.text_cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.image_cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.layers = nn.ModuleList(CoAttentionLayer(config, hidden_size) for _ in range(config.num_layers))
        self.text_norm = nn.LayerNorm(hidden_size)
        self.image_norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        n = text.tokens.shape[0]
        t = torch.cat([self.text_cls.expand(n, -1, -1), self.text_proj(text.tokens)], dim=1)  # (N, 1 + L, D)
        v = torch.cat([self.image_cls.expand(n, -1, -1), self.image_proj(image.tokens)], dim=1)  # (N, 1 + P, D)
        t_keep, v_keep = _keep(n, text, has_text), _keep(n, image, has_image)
        for layer in self.layers:
            t, v = layer(t, v, t_keep, v_keep)
        pooled = torch.cat([self.text_norm(t[:, 0]), self.image_norm(v[:, 0])], dim=-1)  # (N, 2D)
        return self.out_proj(pooled)


def _xavier(module: nn.Module) -> None:
    """The paper's initialisation of its pooled fusions: Xavier-normal weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        nn.init.zeros_(module.bias)


class PaperPooledFusion(nn.Module):
    """The MMSR paper's pooled fusions (`paper_sum`, `paper_concat`, `paper_film`, `paper_gated`, each optionally
    followed by its three-layer `_dnn` head), on the projected pooled vectors `t`, `v` (a learned vector stands in
    for an absent modality, which the paper's code does not handle)."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.op = config.type.removeprefix("paper_").removesuffix("_dnn")
        self.text_conditions = config.condition == "text"
        self.text = ModalityProjection(text_dim, d)
        self.image = ModalityProjection(image_dim, d)
        self.layer_norm = nn.LayerNorm(d, eps=1e-6)  # one LayerNorm for both modalities, as in the paper's code
        if self.op in ("sum", "gated"):
            self.fc_x, self.fc_y = nn.Linear(d, d), nn.Linear(d, d)
        if self.op == "film":
            self.fc = nn.Linear(d, 2 * d)
        if self.op != "sum":
            self.fc_out = nn.Linear(2 * d if self.op == "concat" else d, d)
        self.dnn = None
        if config.type.endswith("_dnn"):
            layers = []
            for i in (1, 2, 3):
                layers += [
                    (f"drop{i}", nn.Dropout(config.dropout)),
                    (f"fc{i}", nn.Linear(d, d)),
                    (f"act{i}", nn.ReLU()),
                ]
            self.dnn = nn.Sequential(OrderedDict(layers))
        self.apply(_xavier)  # leaves the `missing` vectors to ModalityProjection's non-zero initialisation

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The op on the normalised text `x` and image `y`."""
        if self.op == "sum":
            return self.fc_x(x) + self.fc_y(y)
        if self.op == "concat":
            return self.fc_out(torch.cat([x, y], dim=-1))
        if self.op == "film":
            condition, conditioned = (x, y) if self.text_conditions else (y, x)
            gamma, beta = self.fc(condition).chunk(2, dim=-1)  # (N, D) each
            return self.fc_out(gamma * conditioned + beta)
        out_x, out_y = self.fc_x(x), self.fc_y(y)
        gated = torch.sigmoid(out_x) * out_y if self.text_conditions else out_x * torch.sigmoid(out_y)
        return self.fc_out(gated)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        t, v = self.text(text, has_text), self.image(image, has_image)
        fused = self.combine(self.layer_norm(t), self.layer_norm(v))  # (N, D)
        return fused if self.dnn is None else self.dnn(fused)


class PostNormCrossAttention(nn.Module):
    """BERT's cross-attention layer (LXMERT): `LN(x + Dropout(Attn(x, y, y)))`, keys masked by `y_keep`."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden_size, config.num_heads, dropout=config.dropout, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_keep: torch.Tensor) -> torch.Tensor:
        attended = self.attn(x, y, y, key_padding_mask=~y_keep, need_weights=False)[0]
        return self.norm(x + self.dropout(attended))


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation (the paper's attention fusions): normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.MultiheadAttention):
        nn.init.normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)


def _copy_bert_attention(attention: nn.MultiheadAttention, norm: nn.LayerNorm, bert_attention: nn.Module) -> None:
    """BERT's attention block (`BertAttention`: query, key, value, output dense + LayerNorm) into `attention`
    (the three projections stacked in its `in_proj`) and `norm`."""
    own = bert_attention.self
    attention.in_proj_weight.copy_(torch.cat([own.query.weight, own.key.weight, own.value.weight]))
    attention.in_proj_bias.copy_(torch.cat([own.query.bias, own.key.bias, own.value.bias]))
    attention.out_proj.load_state_dict(bert_attention.output.dense.state_dict())
    norm.load_state_dict(bert_attention.output.LayerNorm.state_dict())


def _copy_bert_layer(layer: nn.TransformerEncoderLayer, bert_layer: nn.Module) -> None:
    """A Hugging Face `BertLayer` into a post-norm `nn.TransformerEncoderLayer` of the same shape."""
    _copy_bert_attention(layer.self_attn, layer.norm1, bert_layer.attention)
    layer.linear1.load_state_dict(bert_layer.intermediate.dense.state_dict())
    layer.linear2.load_state_dict(bert_layer.output.dense.state_dict())
    layer.norm2.load_state_dict(bert_layer.output.LayerNorm.state_dict())


def _mean_tokens(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`(N, D)`: the mean of each row's kept token states."""
    weights = keep.to(states.dtype).unsqueeze(-1)  # (N, L, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class _PaperTokenStreams(nn.Module):
    """What the paper's attention fusions share: tokens projected to D with a modality-type embedding, and a learned
    "missing" token per modality, visible only in the items that lack that modality (the paper's code assumes every
    item has both, and attention over no key at all is undefined)."""

    def __init__(self, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.type_embedding = nn.Embedding(2, hidden_size)  # 0: text, 1: image
        self.missing = nn.Embedding(2, hidden_size)

    def streams(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image):
        """`(t, t_keep, v, v_keep)`: each stream `[missing] + tokens`, `(N, 1 + L, D)`, and its key mask."""
        n = text.tokens.shape[0]
        out = []
        for index, (encoded, present, proj) in enumerate(
            [(text, has_text, self.text_proj), (image, has_image, self.image_proj)]
        ):
            missing = self.missing.weight[index].expand(n, 1, -1)
            tokens = torch.cat([missing, proj(encoded.tokens)], dim=1) + self.type_embedding.weight[index]
            keep = torch.cat([~present[:, None], encoded.mask & present[:, None]], dim=1)
            out += [tokens, keep]
        return out


class PaperCoAttentionLayer(nn.Module):
    """One layer of the paper's co-attention (LXMERT's, as its code has it): both streams cross-attend to the other
    through the same cross-attention weights, then BERT self-attention + feed-forward in each stream."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.cross = PostNormCrossAttention(config, hidden_size)
        self.text_self = _encoder_layer(config, hidden_size, bert=True)
        self.image_self = _encoder_layer(config, hidden_size, bert=True)

    def forward(self, t, v, t_keep, v_keep) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = self.cross(t, v, v_keep), self.cross(v, t, t_keep)
        return self.text_self(t, src_key_padding_mask=~t_keep), self.image_self(v, src_key_padding_mask=~v_keep)

    def load_bert_layer(self, bert_layer: nn.Module) -> None:
        """Both self-attention stacks, and the shared cross-attention, from one BERT layer."""
        _copy_bert_layer(self.text_self, bert_layer)
        _copy_bert_layer(self.image_self, bert_layer)
        _copy_bert_attention(self.cross.attn, self.cross.norm, bert_layer.attention)


class PaperCoAttentionFusion(_PaperTokenStreams):
    """The paper's `co_att`: co-attention layers, then `Linear(2D -> D)` of the two streams' token means."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__(text_dim, image_dim, hidden_size)
        self.layers = nn.ModuleList(PaperCoAttentionLayer(config, hidden_size) for _ in range(config.num_layers))
        self.fc_out = nn.Linear(2 * hidden_size, hidden_size)
        self.apply(_bert_init)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        t, t_keep, v, v_keep = self.streams(text, image, has_text, has_image)
        for layer in self.layers:
            t, v = layer(t, v, t_keep, v_keep)
        return self.fc_out(torch.cat([_mean_tokens(t, t_keep), _mean_tokens(v, v_keep)], dim=-1))

    @torch.no_grad()
    def load_bert(self, bert: nn.Module) -> None:
        for layer, bert_layer in zip(self.layers, bert.encoder.layer, strict=False):
            layer.load_bert_layer(bert_layer)


class PaperMergeAttentionFusion(_PaperTokenStreams):
    """The paper's `merge_attn`: BERT layers over the text tokens and image patches together, the mean of the
    tokens (no output layer)."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__(text_dim, image_dim, hidden_size)
        self.layers = nn.ModuleList(_encoder_layer(config, hidden_size, bert=True) for _ in range(config.num_layers))
        self.apply(_bert_init)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        t, t_keep, v, v_keep = self.streams(text, image, has_text, has_image)
        states, keep = torch.cat([t, v], dim=1), torch.cat([t_keep, v_keep], dim=1)  # (N, 2 + L + P, ...)
        for layer in self.layers:
            states = layer(states, src_key_padding_mask=~keep)
        return _mean_tokens(states, keep)

    @torch.no_grad()
    def load_bert(self, bert: nn.Module) -> None:
        for layer, bert_layer in zip(self.layers, bert.encoder.layer, strict=False):
            _copy_bert_layer(layer, bert_layer)


FUSION_CLASSES = {
    **{name: PooledFusion for name in POOLED_OPS + tuple(f"{op}_mlp" for op in POOLED_OPS)},
    **{name: PaperPooledFusion for name in PAPER_POOLED},
    "co_attention": CoAttentionFusion,
    "merge_attention": MergeAttentionFusion,
    "paper_co_attention": PaperCoAttentionFusion,
    "paper_merge_attention": PaperMergeAttentionFusion,
}


def build_fusion(config: FusionConfig, text_dims: tuple[int, int], image_dims: tuple[int, int], hidden_size: int):
    """`text_dims`/`image_dims` are `(pooled size, token size)` of each encoder; attention variants read tokens."""
    token_level = config.type in TOKEN_FUSIONS
    if token_level and hidden_size % config.num_heads:
        raise ValueError(
            f"fusion.num_heads={config.num_heads} must divide hidden_size={hidden_size} for {config.type!r}"
        )
    index = 1 if token_level else 0
    return FUSION_CLASSES[config.type](config, text_dims[index], image_dims[index], hidden_size)
