"""The speed-ups change nothing but speed: the feature cache, encoding each distinct item once, chunked ranking."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_model import catalog, tiny  # noqa: F401  (catalog is a fixture)

from mmsr_peft import Catalog
from mmsr_peft.cache import FeatureCache
from mmsr_peft.data.collate import TrainCollator
from mmsr_peft.training import pooled_only, precompute_frozen_states


def frozen(model):
    for encoder in (model.item_tower.text, model.item_tower.vision):
        encoder.requires_grad_(False)
    return model


class CountCalls:
    """Counts the items an encoder's forward sees."""

    def __init__(self, module):
        self.items = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        first = args[0] if args else None
        self.items += len(first) if isinstance(first, torch.Tensor) else 0


def test_cache_is_reused_when_nothing_changed(catalog, tmp_path):  # noqa: F811
    model = frozen(tiny())
    inputs = model.processor(catalog.records(range(len(catalog))))
    first = precompute_frozen_states(model, inputs, batch_size=5, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.split("-")[0] for f in files] == ["image_pooled", "text_pooled"]  # concat reads no token states
    calls = CountCalls(model.item_tower.text)
    cache = FeatureCache(tmp_path)
    states = cache.encode("text_pooled", model.item_tower.text, pooled_only(model.item_tower.encode_text), inputs, 5)
    assert (cache.last_hits, cache.last_misses, calls.items) == (len(catalog), 0, 0)
    # exact: a cache hit returns the very tensors that were computed and stored
    assert torch.equal(states.pooled, first.text_states.pooled)


def test_pooled_and_token_fusions_keep_their_own_cache_files(catalog, tmp_path):  # noqa: F811
    """A pooled fusion's cache holds one vector per item; a token fusion's holds the token states, in a file of its
    own, so neither reads the other's (both models share the same frozen encoders)."""
    pooled, tokens = frozen(tiny(fusion="concat")), frozen(tiny(fusion="merge_attention"))
    inputs = pooled.processor(catalog.records(range(len(catalog))))
    from_pooled = precompute_frozen_states(pooled, inputs, batch_size=5, cache_dir=tmp_path)
    from_tokens = precompute_frozen_states(tokens, inputs, batch_size=5, cache_dir=tmp_path)
    stored = {p.name.split("-")[0]: load_file(p) for p in tmp_path.iterdir()}
    assert sorted(stored) == ["image", "image_pooled", "text", "text_pooled"]
    length = inputs.input_ids.shape[1]
    assert stored["text_pooled"]["tokens"].shape[1] == 1 and stored["text"]["tokens"].shape[1] == length
    assert from_pooled.text_states.tokens.shape[1] == 1 and from_tokens.text_states.tokens.shape[1] == length
    # the same encoder, run in other batches: equal up to float32 rounding
    torch.testing.assert_close(from_pooled.text_states.pooled, from_tokens.text_states.pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion, tokens", [("concat", False), ("merge_attention", True)])
def test_frozen_states_keep_only_what_the_fusion_reads(fusion, tokens, catalog):  # noqa: F811
    model = frozen(tiny(fusion=fusion))
    inputs = model.processor(catalog.records(range(len(catalog))))
    cached = precompute_frozen_states(model, inputs, batch_size=5)
    full = model.item_tower.encode_text(inputs)
    assert cached.input_ids is None and cached.attention_mask is None and cached.pixel_values is None
    assert cached.has_text is not None and cached.has_image is not None
    if tokens:  # the token states the attention reads
        torch.testing.assert_close(cached.text_states.tokens, full.tokens, rtol=1e-5, atol=1e-6)
    else:  # one vector per item, however many tokens the encoder saw
        assert cached.text_states.tokens.shape == (len(catalog), 1, full.pooled.shape[1]) != full.tokens.shape
    with torch.no_grad():
        torch.testing.assert_close(
            model.embed_catalog(cached, 5), model.embed_catalog(inputs, 5), rtol=1e-5, atol=1e-6
        )  # the embeddings do not change, only what is carried


def test_a_catalog_pass_keeps_no_batch_s_token_states_once_it_read_them(catalog):  # noqa: F811
    """A [CLS] vector is a view into every token's state: kept as it is until the batches are joined, a catalog of a
    million items would hold all of their token states at once."""
    import weakref

    from mmsr_peft.cache import encode_catalog
    from mmsr_peft.encoders import EncoderOutput

    model = tiny()
    inputs = model.processor(catalog.records(range(len(catalog))))
    earlier = []

    def run(items):
        assert all(ref() is None for ref in earlier)  # the batches before this one kept nothing of their states
        states = model.item_tower.text(items.input_ids, items.attention_mask).tokens
        earlier.append(weakref.ref(states))  # a view of it keeps it alive (as its `_base`)
        return (EncoderOutput(states[:, 0], states[:, :1], items.attention_mask[:, :1].bool()),)

    with torch.no_grad():
        (output,) = encode_catalog(run, model.item_tower.text, inputs, batch_size=4)
        expected = model.item_tower.text(inputs.input_ids, inputs.attention_mask).tokens[:, 0]
    assert len(earlier) == 3
    torch.testing.assert_close(output.pooled, expected, rtol=1e-5, atol=1e-6)


def test_cache_is_recomputed_when_the_encoder_changes(catalog, tmp_path):  # noqa: F811
    model = frozen(tiny())
    inputs = model.processor(catalog.records(range(len(catalog))))
    cache = FeatureCache(tmp_path)
    tower = model.item_tower
    before = cache.encode("text", tower.text, tower.encode_text, inputs, 5)
    with torch.no_grad():
        next(tower.text.parameters()).add_(0.5)
    after = cache.encode("text", tower.text, tower.encode_text, inputs, 5)
    assert cache.last_misses == len(catalog)
    assert len(list(tmp_path.glob("text-*.safetensors"))) == 2
    assert not torch.allclose(before.pooled, after.pooled)
    fresh = precompute_frozen_states(model, inputs, batch_size=5).text_states
    # the cache encodes distinct contents only, so in other batches: equal up to float32 rounding (values up to ~3)
    torch.testing.assert_close(after.pooled, fresh.pooled, rtol=1e-5, atol=1e-6)


def test_cache_is_recomputed_when_the_pooling_changes(catalog, tmp_path):  # noqa: F811
    """The same weights pooled otherwise give other vectors: another file, never the other pooling's rows."""
    model = frozen(tiny())
    inputs = model.processor(catalog.records(range(len(catalog))))
    cache, tower = FeatureCache(tmp_path), model.item_tower
    text = tower.text
    mean = cache.encode("text_pooled", text, tower.encode_text, inputs, 5)
    text.config.pooling = "cls"
    first = cache.encode("text_pooled", text, tower.encode_text, inputs, 5)
    assert cache.last_misses == len(catalog) and len(list(tmp_path.glob("text_pooled-*.safetensors"))) == 2
    with torch.no_grad():
        expected = text(inputs.input_ids, inputs.attention_mask).tokens[:, 0]
    torch.testing.assert_close(first.pooled, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first.pooled, mean.pooled)
    text.config.source = "another/path/to/the/same/weights"  # provenance only: the same file
    cache.encode("text_pooled", text, tower.encode_text, inputs, 5)
    assert cache.last_misses == 0


def test_cache_follows_the_adapter_that_runs_in_the_encoder(catalog, tmp_path):  # noqa: F811
    """Two LoRA adapters loaded in the text encoder: both are in its weights whichever runs, yet each one (and
    none) gives other vectors, so each reads its own file."""
    from peft import LoraConfig

    model = frozen(tiny())
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        model.add_adapter(LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False), name)
    model.requires_grad_(False)  # evaluated, not trained: the encoder is cached
    inputs = model.processor(catalog.records(range(len(catalog))))
    cache, tower = FeatureCache(tmp_path), model.item_tower
    vectors = {}
    for name in ("a", "b", None, "a"):
        model.set_adapter(name) if name else model.disable_adapters()
        vectors.setdefault(name, []).append(cache.encode("text_pooled", tower.text, tower.encode_text, inputs, 5))
        with torch.no_grad():  # what the encoder gives now, uncached
            live = tower.text(inputs.input_ids, inputs.attention_mask)
        torch.testing.assert_close(vectors[name][-1].pooled, live.pooled, rtol=1e-5, atol=1e-6)
    assert cache.last_misses == 0  # "a" again: its own file, read back
    assert len(list(tmp_path.glob("text_pooled-*.safetensors"))) == 3
    assert not torch.allclose(vectors["a"][0].pooled, vectors["b"][0].pooled)


def test_cache_encodes_only_items_whose_content_changed(catalog, tmp_path):  # noqa: F811
    model = frozen(tiny())
    tower = model.item_tower
    cache = FeatureCache(tmp_path)
    cache.encode("text", tower.text, tower.encode_text, model.processor(catalog.records(range(len(catalog)))), 5)
    texts = list(catalog.texts)
    texts[2] = "a completely different yellow ruler"
    changed = Catalog(catalog.item_ids, texts, catalog.images, name="tiny")
    inputs = model.processor(changed.records(range(len(changed))))
    calls = CountCalls(tower.text)
    states = cache.encode("text", tower.text, tower.encode_text, inputs, 5)
    assert (cache.last_hits, cache.last_misses, calls.items) == (len(catalog) - 1, 1, 1)
    fresh = precompute_frozen_states(model, inputs, batch_size=5).text_states
    # one item encoded alone, the others read back: other batches, equal up to float32 rounding
    torch.testing.assert_close(states.pooled, fresh.pooled, rtol=1e-5, atol=1e-6)
    stored = load_file(next(tmp_path.glob("text-*.safetensors")))
    distinct = len(set(catalog.texts))  # items without text share one entry
    assert len(stored["digests"]) == distinct + 1  # the old version of item 2 is kept for other catalogs


def test_damaged_cache_file_is_recomputed_not_trusted(catalog, tmp_path):  # noqa: F811
    model = frozen(tiny())
    tower = model.item_tower
    inputs = model.processor(catalog.records(range(len(catalog))))
    cache = FeatureCache(tmp_path)
    expected = cache.encode("text", tower.text, tower.encode_text, inputs, 5)
    path = next(tmp_path.glob("text-*.safetensors"))
    path.write_bytes(path.read_bytes()[:100])
    states = cache.encode("text", tower.text, tower.encode_text, inputs, 5)
    assert cache.last_misses == len(catalog)
    assert torch.equal(states.pooled, expected.pooled)  # exact: the same items encoded in the same batches again
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("fusion", ["concat", "merge_attention"])
def test_cached_forward_equals_uncached_forward(catalog, fusion):  # noqa: F811
    model = frozen(tiny(fusion=fusion))
    inputs = model.processor(catalog.records(range(len(catalog))))
    cached = precompute_frozen_states(model, inputs, batch_size=5)
    sequences = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([10, 11, 3])]
    plain = TrainCollator(inputs, num_negatives=4, seed=0)(sequences)
    with_states = TrainCollator(cached, num_negatives=4, seed=0)(sequences)
    assert with_states.items.text_states is not None and plain.items.text_states is None
    a, b = model(**vars(plain)), model(**vars(with_states))
    # the cached states were encoded in other batches than the batch's items: equal up to float32 rounding
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.item_embeddings, b.item_embeddings, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "gated", "merge_attention"])
def test_encoding_each_distinct_item_once_gives_the_per_position_loss(catalog, fusion):  # noqa: F811
    """The paper's code encodes the item at every position; we encode each distinct item of a batch once."""
    model = tiny(fusion=fusion)  # trainable encoders, eval mode (no dropout)
    model.config.loss = "bce"
    inputs = model.processor(catalog.records(range(len(catalog))))
    inputs = dataclasses.replace(inputs, item_index=torch.arange(len(catalog)))  # to find the batch's rows
    sequences = [np.array([0, 1, 2, 1, 3]), np.array([4, 5, 1, 7, 8, 9]), np.array([10, 0, 3])]
    batch = TrainCollator(inputs, loss="bce", seed=0)(sequences)
    catalog_rows = batch.items.item_index  # the batch's distinct items as catalog rows
    # Naive: one encoded copy per position of inputs, targets and negatives.
    positions = torch.cat([batch.inputs.flatten(), batch.targets.flatten(), batch.negatives.flatten()])
    real = positions >= 0
    naive_rows = torch.full_like(positions, -1)
    naive_rows[real] = torch.arange(int(real.sum()))
    naive_items = inputs.select(catalog_rows[positions[real]])
    shape = batch.inputs.shape
    naive_inputs, naive_targets, naive_negatives = naive_rows.split(batch.inputs.numel())
    unique = model(**vars(batch))
    naive = model(
        naive_items, naive_inputs.view(shape), naive_targets.view(shape), negatives=naive_negatives.view(shape)
    )
    assert len(batch.items) < len(naive_items)
    # other batch compositions, so other matmul shapes: equal up to float32 rounding
    torch.testing.assert_close(unique.loss, naive.loss, rtol=1e-5, atol=1e-6)


def _loss_and_grads(model, batch):
    torch.manual_seed(0)  # same dropout masks in both runs
    model.zero_grad()
    loss = model(**vars(batch)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(catalog):  # noqa: F811
    model = tiny().requires_grad_(True).train()
    batch = TrainCollator(model.processor(catalog.records(range(len(catalog)))), num_negatives=4, seed=0)(
        [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7, 8, 9])]
    )
    loss, grads = _loss_and_grads(model, batch)
    model.gradient_checkpointing_enable()
    assert model.item_tower.text.backbone.is_activation_checkpointing
    assert model.item_tower.vision.tower.transformer.grad_checkpointing
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-5, atol=1e-6)  # another code path: float32 rounding
    assert grads.keys() == checkpointed_grads.keys() and any("backbone" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one forward."""
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(**vars(batch))
    return sum(storages.values())


def test_feed_forward_checkpointing_keeps_less_and_changes_no_gradient(catalog):  # noqa: F811
    """Under LoRA on both encoders (tiny-bert and an open_clip ViT): the feed-forward expansions are recomputed,
    not kept; the loss, the gradients and the state-dict keys stay the same."""
    from peft import LoraConfig

    from mmsr_peft.lora import lora_target_modules

    model = tiny()
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model)), "default")
    model.train()
    batch = TrainCollator(model.processor(catalog.records(range(len(catalog)))), num_negatives=4, seed=0)(
        [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7, 8, 9])]
    )
    keys, kept = list(model.state_dict()), _saved_bytes(model, batch)
    loss, grads = _loss_and_grads(model, batch)
    blocks = model.feed_forward_checkpointing_enable()
    layers = model.item_tower.text.backbone.config.num_hidden_layers + len(
        model.item_tower.vision.tower.transformer.resblocks
    )
    assert blocks == layers and model.feed_forward_checkpointing_enable() == 0  # every block once
    assert list(model.state_dict()) == keys
    assert _saved_bytes(model, batch) < 0.9 * kept
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(checkpointed_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == checkpointed_grads.keys() and any("lora_" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_feed_forward_checkpointing_keeps_the_layer_norm_of_a_scale_fc_tower():
    """open_clip blocks built with `scale_fc` have a LayerNorm `ln` between the activation and `c_proj`."""
    from mmsr_peft.encoders import VisionEncoder, VisionEncoderConfig
    from mmsr_peft.encoders.common import checkpoint_feed_forward

    torch.manual_seed(0)
    tower = {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "scale_fc": True}
    vision = VisionEncoder(VisionEncoderConfig(tower=tower, embed_dim=16, image_size=32)).eval()
    pixels = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    expected = vision(pixels).pooled  # with gradients: the recomputed path runs only where something needs them
    assert checkpoint_feed_forward(vision) == 2
    torch.testing.assert_close(vision(pixels).pooled, expected)


def test_bf16_autocast_trains_on_cpu(data_dir, tmp_path):
    from accelerate.state import AcceleratorState
    from conftest import tiny_pretrain_argv

    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(
        data_dir, "--num_epochs", "1", "--output_dir", str(tmp_path), "--mixed_precision", "bf16"
    )
    AcceleratorState._reset_state(reset_partial_state=True)  # precision is fixed per process, as in real runs
    try:
        assert pretrain_main([*argv, "--gradient_checkpointing", "true", "--vision_finetune", "full"]) == 0
        assert AcceleratorState().mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert (tmp_path / "model.safetensors").is_file()


def test_weights_digest_covers_scalar_buffers_and_changes_with_them():
    from mmsr_peft.cache import weights_digest

    norm = torch.nn.BatchNorm1d(4)  # num_batches_tracked is a 0-dim integer buffer
    before = weights_digest(norm)
    norm.num_batches_tracked += 1
    assert weights_digest(norm) != before


def _images(folder, colours):
    from PIL import Image

    paths = []
    for i, colour in enumerate(colours):
        path = folder / f"{i}.png"
        Image.new("RGB", (40, 24), colour).save(path)
        paths.append(str(path))
    return paths


def test_image_cache_decodes_each_image_once_across_runs(tmp_path):
    from mmsr_peft.cache import ImageCache
    from mmsr_peft.data.processing import ItemProcessor

    paths = _images(tmp_path, [(250, 0, 0), (0, 250, 0), (250, 0, 0)])  # the third file has the first one's bytes
    records = [{"item_id": str(i), "text": "", "image": p} for i, p in enumerate([*paths, None])]
    processor = ItemProcessor(image_size=16)
    plain = processor(records)
    cache = ImageCache(tmp_path / "cache")
    pixels, has_image = cache.load([r["image"] for r in records], 16)
    assert (cache.last_hits, cache.last_misses) == (1, 2)  # identical bytes are decoded once
    # exact: uint8 pixels and boolean flags, decoded by the same code
    assert torch.equal(pixels, plain.pixel_values) and torch.equal(has_image, plain.has_image)
    cached = processor(records, image_cache_dir=tmp_path / "cache")
    assert torch.equal(cached.pixel_values, plain.pixel_values) and torch.equal(cached.has_image, plain.has_image)
    again = ImageCache(tmp_path / "cache")
    again.load([r["image"] for r in records], 16)
    assert (again.last_hits, again.last_misses) == (3, 0)

    _images(tmp_path, [(0, 0, 250)])  # 0.png is rewritten: its bytes, so its digest, change
    changed = ImageCache(tmp_path / "cache")
    pixels, _ = changed.load(paths, 16)
    assert (changed.last_hits, changed.last_misses) == (2, 1)
    assert pixels[0, 2].float().mean() > 200 and pixels[2, 0].float().mean() > 200  # new blue, old red kept

    (tmp_path / "cache" / "images-16px.safetensors").write_bytes(b"not a safetensors file")
    damaged = ImageCache(tmp_path / "cache")
    assert torch.equal(damaged.load(paths, 16)[0], pixels) and damaged.last_misses == 3  # decoded again, not trusted
    assert load_file(tmp_path / "cache" / "images-16px.safetensors")["pixels"].shape == (3, 3, 16, 16)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["images-16px.safetensors"]  # no temp files


def test_image_cache_names_an_unreadable_image(tmp_path):
    from mmsr_peft.cache import ImageCache
    from mmsr_peft.errors import DataError

    with pytest.raises(DataError, match=r"missing\.png: cannot read image"):
        ImageCache(tmp_path / "cache").load([str(tmp_path / "missing.png")], 16)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_a_negative_table_scores_the_sampled_negatives_as_the_encoders_would(loss, catalog):  # noqa: F811
    """With the table computed from the current weights, the loss is the loss of encoding every item, and only
    the batch's own items go through the encoders."""
    model = tiny().requires_grad_(True)  # trainable encoders: what the table spares
    inputs = model.processor(catalog.records(range(len(catalog))))
    sequences = [np.arange(0, 5), np.arange(3, 7)]
    batch = TrainCollator(inputs, loss, num_negatives=12, seed=0, negative_table=True)(sequences)
    own = torch.unique(torch.as_tensor(np.concatenate(sequences)))
    assert torch.equal(batch.catalog_rows[~batch.from_table], own)  # the negatives that are only negatives: the rest
    assert batch.from_table.any()
    table = model.embed_catalog(inputs)
    calls = CountCalls(model.item_tower.text)
    with_table = model(**vars(batch), item_table=table)
    assert calls.items == len(own)
    without = model(**{**vars(batch), "from_table": None})
    assert calls.items == len(own) + len(batch.items)
    torch.testing.assert_close(with_table.item_embeddings, without.item_embeddings, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_table.loss, without.loss, rtol=1e-5, atol=1e-6)
    with_table.loss.backward()  # the gradient reaches the encoders through the batch's own items
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.item_tower.text.parameters())


def test_a_negative_table_needs_sampled_negatives(catalog):  # noqa: F811
    inputs = tiny().processor(catalog.records(range(3)))
    with pytest.raises(ValueError, match="full_ce loss samples none"):
        TrainCollator(inputs, "full_ce", negative_table=True)


def test_training_with_a_negative_table(data_dir, tmp_path):
    """The flag reaches the training loop: same seed, same batches, other negative scores, other weights."""
    import json
    import math

    from conftest import tiny_pretrain_argv

    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "2", "--text_finetune", "full")
    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        assert pretrain_main([*argv, "--negative_table", flag, "--output_dir", str(out)]) == 0
        losses[flag] = [h["train_loss"] for h in json.loads((out / "metrics.json").read_text())["history"]]
    assert len(losses["true"]) == 2 and all(math.isfinite(loss) for loss in losses["true"])
    assert losses["true"][0] != losses["false"][0]


@pytest.mark.parametrize(
    "loss, negative_table, itc_weight",
    [
        ("sampled_softmax", False, 0.0),
        ("sampled_softmax", False, 0.5),
        ("bce", False, 0.0),
        ("sampled_softmax", True, 0.0),
    ],
)
def test_padding_the_items_to_a_steady_size_changes_no_loss_or_gradient(loss, negative_table, itc_weight, catalog):  # noqa: F811
    """`--pad_items_to_multiple_of`: sequences padded to the full window, distinct items to a multiple of 8 (the
    encoders' and the table's share each); the padding is encoded and never scored."""
    model = tiny(itc_weight=itc_weight).requires_grad_(True)  # eval mode: no dropout, so both runs are comparable
    model.config.loss = loss
    inputs = model.processor(catalog.records(range(len(catalog))))
    counts = np.arange(1, len(catalog) + 1)  # a logQ correction that differs by item
    sequences = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([2, 7, 8, 9, 10])]
    window = model.config.sequence.max_len + 1

    def collate(multiple):
        collator = TrainCollator(
            inputs,
            loss,
            num_negatives=3,
            item_counts=counts,
            seed=0,
            negative_table=negative_table,
            pad_to_multiple_of=multiple,
            sequence_length=window,
        )
        return collator(sequences)

    plain, padded = collate(0), collate(8)
    assert plain.inputs.shape[1] == 4 and padded.inputs.shape[1] == window - 1
    assert len(padded.items) > len(plain.items) and int(padded.candidate_mask.sum()) == len(plain.items)
    if negative_table:
        assert int((~padded.from_table).sum()) % 8 == 0 and int(padded.from_table.sum()) % 8 == 0
    else:
        assert len(padded.items) % 8 == 0
    table = model.embed_catalog(inputs) if negative_table else None
    results = []
    for batch in (plain, padded):
        model.zero_grad()
        output = model(**vars(batch), item_table=table)
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.loss.detach(), grads))
    (loss_plain, grads_plain), (loss_padded, grads_padded) = results
    # other shapes, so other matmul blockings: equal up to float32 rounding
    torch.testing.assert_close(loss_padded, loss_plain, rtol=1e-5, atol=1e-6)
    assert grads_plain.keys() == grads_padded.keys() and any("text.backbone" in n for n in grads_plain)
    for name in grads_plain:
        torch.testing.assert_close(grads_padded[name], grads_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_trains_as_eager_does(data_dir, tmp_path):
    """`--torch_compile` (here with the `aot_eager` backend, which needs no C++ compiler) compiles the training
    step the Trainer runs and gives the eager losses; padding keeps the shapes of its graphs few."""
    import json

    from conftest import tiny_pretrain_argv
    from torch._dynamo.utils import counters

    from mmsr_peft.cli import pretrain_main

    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "1", "--text_finetune", "full", "--dropout", "0")
    argv += ["--pad_items_to_multiple_of", "16"]
    losses = {}
    for name, extra in {
        "eager": [],
        "compiled": ["--torch_compile", "true", "--torch_compile_backend", "aot_eager"],
    }.items():
        counters.clear()
        assert pretrain_main([*argv, *extra, "--output_dir", str(tmp_path / name)]) == 0
        losses[name] = [h["train_loss"] for h in json.loads((tmp_path / name / "metrics.json").read_text())["history"]]
        assert (sum(counters["stats"].values()) > 0) == (name == "compiled")  # dynamo ran only when asked
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-5, atol=1e-6)


def test_torch_compile_refuses_lora_on_multihead_attention(catalog, tmp_path):  # noqa: F811
    """peft swaps LoRA'd `nn.MultiheadAttention` weights at every forward, which dynamo cannot trace: a clear
    error up front, naming a layer and what to do, instead of a compiler traceback at the first step."""
    from peft import LoraConfig

    from mmsr_peft.lora import lora_target_modules
    from mmsr_peft.training import Trainer, TrainingArguments, make_accelerator

    model = tiny()
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model, ["vision"])), "default")
    inputs = model.processor(catalog.records(range(len(catalog))))
    args = TrainingArguments(output_dir=str(tmp_path), torch_compile=True, report_to=["none"])
    with pytest.raises(
        ValueError, match=r"--torch_compile: LoRA on nn.MultiheadAttention .* 'item_tower.vision.tower"
    ):
        Trainer(model, [np.arange(4)], inputs, [], args, make_accelerator(args, "multimodal", "concat"))


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"pad_items_to_multiple_of": -8}, "--pad_items_to_multiple_of must be >= 0 (0: off), got -8"),
        ({"torch_compile": True, "torch_compile_backend": "fastest"}, "--torch_compile_backend 'fastest': unknown"),
        (
            {"torch_compile": True, "torch_compile_mode": "turbo"},
            "--torch_compile_mode 'turbo': unknown; one of default",
        ),
    ],
)
def test_bad_compile_and_padding_flags_are_refused(flags, message):
    from mmsr_peft.arguments import TrainingArguments

    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingArguments(**flags)


@pytest.mark.parametrize("side", ["right", "left"])
def test_processor_tokenizes_exactly_as_the_tokenizer_does(side):
    from transformers import AutoTokenizer

    from mmsr_peft.builder import minilm_path
    from mmsr_peft.data.processing import ItemProcessor

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.padding_side = tokenizer.truncation_side = side
    texts = ["", "   ", "Toy Story (1995) Animation|Children's|Comedy", "é" * 40, "a b c " * 20, "中文 テキスト"]
    records = [{"item_id": str(i), "text": text} for i, text in enumerate(texts)]
    for max_length in (4, 16):
        settings = tokenizer.backend_tokenizer.padding, tokenizer.backend_tokenizer.truncation
        inputs = ItemProcessor(tokenizer, max_length=max_length)(records)
        # the processor pads and truncates a copy: the user's tokenizer keeps its own settings
        assert (tokenizer.backend_tokenizer.padding, tokenizer.backend_tokenizer.truncation) == settings
        expected = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        assert torch.equal(inputs.input_ids, expected["input_ids"])
        assert torch.equal(inputs.attention_mask, expected["attention_mask"])


def test_content_digests_are_the_sha256_of_what_the_encoder_reads(catalog, tmp_path):  # noqa: F811
    import hashlib

    from mmsr_peft.cache import content_digests

    inputs = tiny().processor(catalog.records(range(len(catalog))))
    # the format of the cache files on disk: a change would make every cached item a miss
    for kind, parts in (
        ("text", (inputs.input_ids, inputs.attention_mask, inputs.has_text)),
        ("image", (inputs.pixel_values, inputs.has_image)),
    ):
        digests = content_digests(inputs, kind)
        for i in (0, len(catalog) - 1):
            expected = hashlib.sha256(b"".join(part[i].numpy().tobytes() for part in parts)).digest()
            assert bytes(digests[i].tolist()) == expected
