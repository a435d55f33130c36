"""Adapters beyond the basics of test_model.py: per-component LoRA settings, modules_to_save, folders of adapters
loaded in a new process, exact base scores, merged exports, QLoRA and the 8-bit optimizer, adapter metadata."""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from test_model import ITEM_IDS, tiny
from testing_utils import assert_same_weights

from mmsr_peft import Catalog, MMSRModel
from mmsr_peft.adaptation import AdaptArguments, adapt, prepare_method
from mmsr_peft.adapters import base_state_dict
from mmsr_peft.arguments import parse_args
from mmsr_peft.errors import CheckpointError
from mmsr_peft.lora import lora_target_modules
from mmsr_peft.side import SideAdapterConfig
from mmsr_peft.training import TrainingArguments, make_optimizer

HISTORIES = [ITEM_IDS[:3], ITEM_IDS[5:9], [ITEM_IDS[11]]]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """The items of `tiny()`'s vocabulary, with text and 32-px images (one without)."""
    from PIL import Image

    folder, images = tmp_path_factory.mktemp("images"), []
    for i in range(len(ITEM_IDS)):
        images.append(None if i == 7 else str(folder / f"{i}.png"))
        if images[-1]:
            Image.new("RGB", (32, 32), (20 * i, 255 - 20 * i, 60 + 10 * i)).save(images[-1])
    texts = [f"a {['red', 'blue', 'green'][i % 3]} notebook with {i} stripes" for i in range(len(ITEM_IDS))]
    return Catalog(ITEM_IDS, texts, images, name="tiny")


def scores(model, catalog):
    """Every item's score for each history, in catalog order: `(B, N)`."""
    top = model.recommend(HISTORIES, catalog, k=len(catalog), exclude_history=False)
    order = torch.tensor([[catalog.index[i] for i in row] for row in top.item_ids])
    return torch.empty_like(top.scores).scatter_(1, order, top.scores)


def lora_layers(model, prefix: str) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and n.startswith(prefix)}


PER_COMPONENT = ["--rank_pattern", "text=16", "--target_modules", "vision=mlp.c_fc", "--alpha_pattern", "fusion=32"]
PER_COMPONENT += ["--dropout_pattern", "fusion=0.2", "--lora_r", "4"]
# the same, with the per-component flags of before the patterns (deprecated aliases)
DEPRECATED = ["--text_lora_r", "16", "--vision_target_modules", "mlp.c_fc", "--fusion_lora_alpha", "32"]
DEPRECATED += ["--fusion_lora_dropout", "0.2", "--lora_r", "4"]


# and as `--flag=value` or with hyphens, as argparse takes any flag
DEPRECATED_INLINE = ["--text_lora_r=16", "--vision-target-modules", "mlp.c_fc", "--fusion-lora-alpha=32"]
DEPRECATED_INLINE += ["--fusion_lora_dropout", "0.2", "--lora_r", "4"]


@pytest.mark.parametrize(
    "flags", [PER_COMPONENT, DEPRECATED, DEPRECATED_INLINE], ids=["patterns", "deprecated flags", "inline, hyphens"]
)
def test_rank_alpha_dropout_and_targets_per_component(flags, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapt_args, _ = parse_args((AdaptArguments, TrainingArguments), ["--target", "office", *flags])
    deprecations = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert deprecations == ([] if flags is PER_COMPONENT else [
        "--text_lora_r is deprecated; use --rank_pattern text=16",
        "--vision_target_modules is deprecated; use --target_modules vision=mlp.c_fc",
        "--fusion_lora_alpha is deprecated; use --alpha_pattern fusion=32",
        "--fusion_lora_dropout is deprecated; use --dropout_pattern fusion=0.2",
    ])  # fmt: skip
    assert adapt_args.rank_pattern == {"text": 16} and adapt_args.target_modules == {"vision": ["mlp.c_fc"]}
    model, row = prepare_method(tiny(), adapt_args)
    assert row == "LoRA (text+vision+fusion)"
    text, vision = lora_layers(model, "item_tower.text."), lora_layers(model, "item_tower.vision.")
    fusion = lora_layers(model, "item_tower.fusion.")
    assert text and {layer.r["office"] for layer in text.values()} == {16}
    assert vision and all(n.endswith("mlp.c_fc") for n in vision) and {m.r["office"] for m in vision.values()} == {4}
    assert fusion and {layer.scaling["office"] for layer in fusion.values()} == {32 / 4}
    assert {layer.lora_dropout["office"].p for layer in fusion.values()} == {0.2}
    assert all(isinstance(layer.lora_dropout["office"], torch.nn.Identity) for layer in text.values())

    model.save_adapter(tmp_path / "office", "office")
    record = json.loads((tmp_path / "office" / "mmsr_adapter.json").read_text())
    assert (
        record["lora"]["components"]["text"]["r"] == 16 and record["lora"]["components"]["fusion"]["lora_alpha"] == 32
    )
    loaded = tiny()
    loaded.load_adapter(tmp_path / "office")
    assert {m.r["office"] for m in lora_layers(loaded, "item_tower.text.").values()} == {16}
    assert {m.lora_dropout["office"].p for m in lora_layers(loaded, "item_tower.fusion.").values()} == {0.2}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--components", "text", "--rank_pattern", "vision=4"], "'vision' is not in --components"),
        (["--target_modules", "vision=out_proj"], "nn.MultiheadAttention would have no effect"),
        (["--target_modules", "vision=q_proj,v_proj"], "matches no module"),
        (["--rank_pattern", "audio=4"], "--rank_pattern audio=4: expected COMPONENT=VALUE"),
        (["--dropout_pattern", "text=high"], "--dropout_pattern text=high: invalid value 'high' for text"),
        (["--rank_pattern", "text=0"], "text LoRA: rank must be >= 1"),
        (["--lora_top_k", "-1"], "--lora_top_k must be >= 0"),
        (["--top_k_pattern", "fusion=1"], "--top_k_pattern fusion=1: expected one of text, vision"),
        (["--lora_top_k", "3"], "the text encoder: its 'bert' stack has 2 blocks; expected 1 to 2"),
        (["--modules_to_save", "nothing"], "no module 'nothing'"),
        (["--quantize", "2bit"], "valid: 4bit, 8bit"),
        (["--method", "full", "--quantize", "4bit"], "needs --method lora"),
        (["--method", "frozen", "--modules_to_save", "sequence_encoder"], "needs --method lora or side"),
    ],
)
def test_bad_lora_settings_name_the_problem(argv, message):
    with pytest.raises(ValueError, match=message):
        adapt_args, _ = parse_args((AdaptArguments, TrainingArguments), ["--target", "office", *argv])
        prepare_method(tiny(), adapt_args)


def test_lora_in_the_top_blocks_leaves_the_blocks_below_without_autograd(catalog, tmp_path):
    adapt_args, _ = parse_args(
        (AdaptArguments, TrainingArguments), ["--target", "office", "--lora_top_k", "1", "--top_k_pattern", "vision=2"]
    )
    model, _ = prepare_method(tiny(), adapt_args)
    text, vision = lora_layers(model, "item_tower.text."), lora_layers(model, "item_tower.vision.")
    assert text and all(n.startswith("item_tower.text.backbone.encoder.layer.1.") for n in text)
    assert {n.split(".")[5] for n in vision} == {"0", "1"}  # micro-vit has two blocks: both
    blocks = model.item_tower.text.backbone.encoder.layer
    graph = {}
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda module, args, output, i=i: graph.__setitem__(i, output[0].requires_grad))
    inputs = model.processor(catalog.records(range(4)))
    model.train()
    model.item_tower.text(inputs.input_ids, inputs.attention_mask).pooled.sum().backward()
    assert graph == {0: False, 1: True}  # nothing below the top block is recorded for the backward pass
    assert all(layer.lora_A["office"].weight.grad is not None for layer in text.values())

    model.save_adapter(tmp_path / "office", "office")
    record = json.loads((tmp_path / "office" / "mmsr_adapter.json").read_text())["lora"]["components"]
    assert (record["text"]["top_k"], record["vision"]["top_k"], record["fusion"]["top_k"]) == (1, 2, 0)
    loaded = tiny()
    loaded.load_adapter(tmp_path / "office")
    assert lora_layers(loaded, "item_tower.").keys() == lora_layers(model, "item_tower.").keys()


def test_only_lora_weights_and_declared_modules_to_save_train():
    adapt_args = AdaptArguments(target="office", modules_to_save=["sequence_encoder"])
    model, _ = prepare_method(tiny(), adapt_args)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    copies = {n for n in trainable if n.startswith("sequence_encoder.modules_to_save.office.")}
    assert copies and len(copies) == len(list(tiny().sequence_encoder.parameters()))
    assert all("lora_" in n for n in trainable - copies)
    assert base_state_dict(model).keys() == tiny().state_dict().keys()  # the base is unchanged underneath


def two_adapters(base_dir):
    """The base, with `office` (LoRA everywhere + its own sequence encoder) and `arts` (LoRA on the fusion only)."""
    model = MMSRModel.from_pretrained(base_dir)
    targets = lora_target_modules(model)
    model.add_adapter(
        LoraConfig(r=4, target_modules=targets, init_lora_weights=False, modules_to_save=["sequence_encoder"]),
        "office",
    )
    with torch.no_grad():
        model.sequence_encoder.modules_to_save["office"].position.weight.add_(0.5)
    model.add_adapter(
        LoraConfig(r=2, target_modules=lora_target_modules(model, ["fusion"]), init_lora_weights=False), "arts"
    )
    return model


def test_adapters_with_different_modules_to_save_save_as_a_folder_and_load_in_a_new_process(catalog, tmp_path):
    tiny().requires_grad_(False).save_pretrained(tmp_path / "base")
    plain = MMSRModel.from_pretrained(tmp_path / "base")
    base = scores(plain, catalog)
    model = two_adapters(tmp_path / "base")
    expected = {}
    for name in ("office", "arts"):
        model.set_adapter(name)
        expected[name] = scores(model, catalog)
    model.disable_adapters()
    expected["base"] = scores(model, catalog)
    # exact: LoRA on nn.MultiheadAttention left no rounding behind in the base weights
    assert_same_weights(base_state_dict(model), plain.state_dict())
    # the peft-wrapped modules and the plain ones compute alike only up to float32 rounding on some CPUs
    torch.testing.assert_close(expected["base"], base, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected["office"], base) and not torch.allclose(expected["arts"], base)
    assert not torch.allclose(expected["office"], expected["arts"])

    model.save_adapters(tmp_path / "adapters")
    office = load_file(tmp_path / "adapters" / "office" / "adapter_model.safetensors")
    arts = load_file(tmp_path / "adapters" / "arts" / "adapter_model.safetensors")
    assert any(".sequence_encoder." in k for k in office) and not any(".sequence_encoder." in k for k in arts)

    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        from mmsr_peft import Catalog, MMSRModel

        catalog = Catalog({catalog.item_ids!r}, {catalog.texts!r}, {catalog.images!r}, name="tiny")
        def scores(model):
            top = model.recommend({HISTORIES!r}, catalog, k=len(catalog), exclude_history=False)
            order = torch.tensor([[catalog.index[i] for i in row] for row in top.item_ids])
            return torch.empty_like(top.scores).scatter_(1, order, top.scores)

        model = MMSRModel.from_pretrained({str(tmp_path / "base")!r})
        assert model.load_adapters({str(tmp_path / "adapters")!r}) == ["arts", "office"]
        out = {{}}
        for name in ("office", "arts"):
            model.set_adapter(name)
            out[name] = scores(model)
        model.disable_adapters()
        out["base"] = scores(model)
        save_file(out, {str(tmp_path / "scores.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    loaded = load_file(tmp_path / "scores.safetensors")
    for name in ("office", "arts", "base"):
        assert torch.equal(loaded[name], expected[name]), name  # exact: the same forward on identical weights

    # the other order: the adapter without modules_to_save first (peft issue #2422)
    model = MMSRModel.from_pretrained(tmp_path / "base")
    model.load_adapter(tmp_path / "adapters" / "arts")
    model.load_adapter(tmp_path / "adapters" / "office")
    assert torch.equal(scores(model, catalog), expected["office"])  # exact: the same forward on identical weights
    model.set_adapter("arts")
    assert torch.equal(scores(model, catalog), expected["arts"])


def test_deleting_an_adapter_keeps_the_active_one_and_deleting_the_active_one_leaves_the_base(catalog):
    model = tiny()
    base = scores(model, catalog)
    fusion = lora_target_modules(model, ["fusion"])
    torch.manual_seed(0)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), "a")

    def add_b():  # LoRA on the fusion only, with its own sequence encoder
        model.add_adapter(
            LoraConfig(r=2, target_modules=fusion, init_lora_weights=False, modules_to_save=["sequence_encoder"]), "b"
        )
        with torch.no_grad():
            model.sequence_encoder.modules_to_save["b"].position.weight.normal_()

    add_b()
    model.add_adapter(SideAdapterConfig(width=8, modules_to_save=["sequence_encoder"]), "s")  # the same module saved
    with torch.no_grad():
        model.sequence_encoder.modules_to_save["s"].position.weight.normal_()
    model.eval()
    side = scores(model, catalog)
    model.delete_adapter("b")  # inactive, but it shares the active adapter's `modules_to_save` wrapper
    assert model.active_adapter() == "s"
    torch.testing.assert_close(scores(model, catalog), side, rtol=1e-5, atol=1e-6)
    add_b()
    model.eval()
    lora_b = scores(model, catalog)
    model.delete_adapter("s")
    assert model.active_adapter() == "b"
    torch.testing.assert_close(scores(model, catalog), lora_b, rtol=1e-5, atol=1e-6)

    model.set_adapter("a")
    model.delete_adapter("a")  # peft alone would activate "b" on the fusion layers and nothing on the others
    assert model.active_adapter() is None
    torch.testing.assert_close(scores(model, catalog), base, rtol=1e-5, atol=1e-6)
    model.set_adapter("b")
    model.delete_adapter("b")  # the last LoRA adapter
    assert model.list_adapters() == [] and model.active_adapter() is None
    torch.testing.assert_close(scores(model, catalog), base, rtol=1e-5, atol=1e-6)


def test_a_save_replaces_the_adapter_files_of_an_earlier_save_and_keeps_the_others(tmp_path):
    model = tiny()
    fusion = lora_target_modules(model, ["fusion"])
    model.add_adapter(SideAdapterConfig(width=8), "office")
    model.save_adapter(tmp_path / "office", "office")
    (tmp_path / "office" / "README.md").write_text("a card\n")
    model.delete_adapter("office")
    model.add_adapter(LoraConfig(r=2, target_modules=fusion, init_lora_weights=False), "office")  # LoRA now
    model.save_adapter(tmp_path / "office", "office")
    names = sorted(p.name for p in (tmp_path / "office").iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "mmsr_adapter.json"]
    loaded = tiny()
    loaded.load_adapter(tmp_path / "office")
    assert not loaded._is_side("office")  # the side adapter's files would have been read first

    model.add_adapter(LoraConfig(r=2, target_modules=fusion, init_lora_weights=False), "arts")
    model.save_adapters(tmp_path / "all")
    (tmp_path / "all" / "notes.txt").write_text("ours\n")
    model.delete_adapter("arts")
    model.save_adapters(tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["notes.txt", "office"]
    assert tiny().load_adapters(tmp_path / "all") == ["office"]


def test_adapter_names_may_be_module_names_and_a_dot_in_a_folder_name_becomes_an_underscore(tmp_path):
    model = tiny()
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), "office")
    folder = tmp_path / "lora-office-v1.0"
    model.save_adapter(folder, "office")
    loaded = tiny()
    loaded.load_adapter(folder, "office")
    for name in ("fusion", "text", "layer"):  # parts of module paths, loaded beside another adapter
        assert loaded.load_adapter(folder, name) == name
    assert loaded.list_adapters() == ["office", "fusion", "text", "layer"]
    assert tiny().load_adapter(folder) == "lora-office-v1_0"  # a name becomes a module name: no dots
    with pytest.raises(ValueError, match=r"adapter name 'v1\.0': must be a non-empty string without '\.'.*'v1_0'"):
        loaded.load_adapter(folder, "v1.0")


def test_a_failed_load_leaves_the_adapter_that_was_active(tmp_path):
    model = tiny()
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), "office")
    model.save_adapter(tmp_path / "office", "office")
    weights = load_file(tmp_path / "office" / "adapter_model.safetensors")
    weights.pop(sorted(weights)[0])
    save_file(weights, tmp_path / "office" / "adapter_model.safetensors", {"format": "pt"})  # a weight short
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), "arts")
    model.set_adapter("office")
    model.requires_grad_(False)  # frozen by hand, for inference
    with pytest.raises(CheckpointError, match="missing keys"):
        model.load_adapter(tmp_path / "office", "broken")
    assert model.list_adapters() == ["office", "arts"] and model.active_adapter() == "office"
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_deleting_an_adapter_leaves_which_parameters_train_as_it_was():
    model = tiny()
    for name in ("office", "arts", "toys"):
        model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), name)
    model.set_adapter("office")
    office = {name for name, parameter in model.named_parameters() if ".office." in name}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in office and "lora_B" in name)  # only half of the active adapter trains
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    model.delete_adapter("arts")
    assert model.active_adapter() == "office"
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable
    model.delete_adapter("office")  # the active one: the base runs alone, and stays frozen
    assert model.active_adapter() is None
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_merged_export_holds_the_modules_to_save_and_leaves_the_base_exact(catalog, tmp_path):
    tiny().requires_grad_(False).save_pretrained(tmp_path / "base")
    model = two_adapters(tmp_path / "base")
    model.set_adapter("office")
    adapted = scores(model, catalog)
    model.save_merged(tmp_path / "merged", "office")
    merged = MMSRModel.from_pretrained(tmp_path / "merged")
    assert torch.allclose(scores(merged, catalog), adapted, atol=1e-5)
    assert torch.equal(scores(model, catalog), adapted)  # exact: the same forward, save_merged restored the weights
    model.disable_adapters()
    plain = MMSRModel.from_pretrained(tmp_path / "base")
    assert_same_weights(base_state_dict(model), plain.state_dict())  # exact: the base weights are untouched
    # the peft-wrapped modules and the plain ones compute alike only up to float32 rounding on some CPUs
    torch.testing.assert_close(scores(model, catalog), scores(plain, catalog), rtol=1e-5, atol=1e-6)


def test_adamw8bit_is_bitsandbytes_and_unknown_optimizers_are_refused():
    import bitsandbytes

    weights = {"w": torch.nn.Parameter(torch.randn(64, 64))}
    assert isinstance(make_optimizer(weights, TrainingArguments(optim="adamw8bit")), bitsandbytes.optim.AdamW8bit)
    with pytest.raises(ValueError, match="valid optimizers: adamw, adamw8bit"):
        TrainingArguments(optim="sgd")


def test_qlora_adapt_runs_on_cpu_records_its_metadata_and_loads_on_the_unquantized_base(catalog, data_dir, tmp_path):
    from peft.tuners.lora import bnb

    tiny().requires_grad_(False).save_pretrained(tmp_path / "base")
    adapt_args = AdaptArguments(target="office", base=str(tmp_path / "base"), data_dir=str(data_dir), quantize="4bit")
    _, training_args = parse_args((AdaptArguments, TrainingArguments), ["--target", "office", *TINY_TRAIN_FLAGS])
    training_args.output_dir, training_args.num_epochs, training_args.optim = str(tmp_path / "qlora"), 1, "adamw8bit"
    model, results = adapt(adapt_args, training_args)
    assert "QLoRA 4bit (text+vision+fusion)" in results
    query = model.item_tower.text.backbone.encoder.layer[0].attention.self.query
    assert isinstance(query, bnb.Linear4bit) and query.lora_B["office"].weight.abs().sum() > 0  # it trained
    with pytest.raises(ValueError, match="quantized"):
        model.save_merged(tmp_path / "merged")

    record = json.loads((tmp_path / "qlora" / "mmsr_adapter.json").read_text())
    assert record["base_sha256"] == MMSRModel.from_pretrained(tmp_path / "base").base_fingerprint
    assert (record["target"], record["method"], record["quantization"]) == ("office", "lora", "4bit")
    assert record["data"]["name"] == "office" and len(record["data"]["manifest_sha256"]) == 64
    assert set(record["metrics"]) == {"valid", "test", "best_epoch"} and "ndcg@10" in record["metrics"]["test"]
    assert record["lora"]["components"]["text"]["r"] == 8

    quantized = scores(model, catalog)
    plain = MMSRModel.from_pretrained(tmp_path / "base")
    plain.load_adapter(tmp_path / "qlora")
    assert (scores(plain, catalog) - quantized).abs().max() < 0.05  # NF4 rounding of the frozen weights only
    other = tiny()
    torch.nn.init.normal_(other.sequence_encoder.position.weight)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="trained on base"):
        MMSRModel.from_pretrained(tmp_path / "other").load_adapter(tmp_path / "qlora")


def test_lora_trains_on_8bit_encoders_and_loads_on_the_unquantized_base(catalog, tmp_path):
    from peft.tuners.lora import bnb

    from mmsr_peft.data.collate import TrainCollator

    model, _ = prepare_method(tiny(), AdaptArguments(target="office", quantize="8bit"))
    assert isinstance(model.item_tower.text.backbone.encoder.layer[0].attention.self.value, bnb.Linear8bitLt)
    optimizer = make_optimizer(
        {n: p for n, p in model.named_parameters() if p.requires_grad}, TrainingArguments(optim="adamw8bit")
    )
    inputs = model.processor(catalog.records(range(len(catalog))))
    batch = TrainCollator(inputs, num_negatives=3, seed=0)([torch.arange(6).numpy(), torch.arange(4, 12).numpy()])
    model.train()
    model(batch.items, batch.inputs, batch.targets).loss.backward()
    optimizer.step()
    model.eval()
    model.save_adapter(tmp_path / "office")
    plain = tiny()
    plain.load_adapter(tmp_path / "office")
    assert (scores(plain, catalog) - scores(model, catalog)).abs().max() < 0.01


@pytest.mark.parametrize(
    "sequence, adapted", [("sasrec", {"self_attn", "out_proj", "linear1", "linear2"}), ("gru4rec", {"projection"})]
)
def test_sequence_component_gets_lora_and_changes_the_user_states(sequence, adapted, catalog, tmp_path):
    from mmsr_peft.builder import ModelArguments, build_model

    def fresh():
        torch.manual_seed(0)
        args = ModelArguments(text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=32)
        args.sequence_encoder, args.max_len, args.text_max_length = sequence, 8, 16
        return build_model(args, item_vocab=ITEM_IDS).eval()

    model = fresh()
    before = scores(model, catalog)
    adapt_args = AdaptArguments(target="office", components=["sequence"], rank_pattern={"sequence": 2})
    model, row = prepare_method(model, adapt_args)
    assert row == "LoRA (sequence)"
    layers = lora_layers(model, "sequence_encoder.")
    assert (
        layers
        and {n.rpartition(".")[2] for n in layers} == adapted
        and {m.r["office"] for m in layers.values()} == {2}
    )
    assert not lora_layers(model, "item_tower.")  # only the sequence encoder was asked for
    assert torch.allclose(scores(model, catalog), before, atol=1e-6)  # LoRA starts as a no-op (B = 0)
    with torch.no_grad():
        for layer in layers.values():
            for weight in layer.lora_B.values():
                weight.weight.normal_(0, 0.5)
    adapted_scores = scores(model, catalog)
    assert not torch.allclose(adapted_scores, before, atol=1e-4)
    model.save_adapter(tmp_path / "office", "office")
    loaded = fresh()
    loaded.load_adapter(tmp_path / "office")
    assert torch.allclose(scores(loaded, catalog), adapted_scores, atol=1e-6)


def test_sequence_component_is_opt_in_and_nextitnet_has_no_default():
    from mmsr_peft.builder import ModelArguments, build_model
    from mmsr_peft.lora import model_components

    assert "sequence" not in model_components(tiny())  # the defaults: text, vision, fusion
    args = ModelArguments(item_tower="id", hidden_size=16, max_len=8, sequence_encoder="nextitnet")
    model = build_model(args, item_vocab=ITEM_IDS)
    with pytest.raises(ValueError, match="no default LoRA targets for sequence encoder type 'nextitnet'"):
        lora_target_modules(model, ["sequence"])


def test_patterns_and_deprecated_flags_in_a_config_file(tmp_path):
    config = tmp_path / "adapt.yaml"
    config.write_text(
        "rank_pattern: {text: 16, fusion: 4}\ntarget_modules: {vision: [q_proj, v_proj]}\nsequence_lora_r: 2\n"
    )
    with pytest.warns(FutureWarning, match="--sequence_lora_r is deprecated; use --rank_pattern sequence=2"):
        adapt_args, _ = parse_args(
            (AdaptArguments, TrainingArguments), ["--target", "office", "--config", str(config)]
        )
    assert adapt_args.rank_pattern == {"text": 16, "fusion": 4, "sequence": 2}
    assert adapt_args.target_modules == {"vision": ["q_proj", "v_proj"]}
    # a flag on the command line adds to the file's pairs, and wins for the same component
    adapt_args, _ = parse_args(
        (AdaptArguments, TrainingArguments),
        ["--target", "office", "--config", str(config), "--rank_pattern", "text=8"],
    )
    assert adapt_args.rank_pattern == {"text": 8, "fusion": 4, "sequence": 2}
