"""Fine-tuning regimes per encoder: frozen (cached), top_k (only the top blocks train), full."""

import numpy as np
import pytest
import torch
from test_model import catalog  # noqa: F401  (a fixture)
from test_model import tiny as tiny_model

from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.training import precompute_frozen_states

# AdamW steps of about this size overflow the adapter's weights within an epoch: every score is NaN, so every target
# is a miss (NDCG@10 0) on any CPU. A merely large rate (50) wrecks the model too, but how far depends on the BLAS
# kernels: on an Intel Xeon its epoch scored above the start on validation.
WRECKING_LEARNING_RATE = 1e30


def tiny(**regimes):
    args = ModelArguments(text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=32, **regimes)
    return build_model(args)


def trainable(module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_top_k_trains_exactly_the_top_blocks_of_each_encoder():
    model = tiny(text_finetune="top_k", text_top_k=1, vision_finetune="top_k", vision_top_k=1)
    text, vision = model.item_tower.text.backbone, model.item_tower.vision.tower
    assert trainable(text) == {n for n, _ in text.named_parameters() if n.startswith("encoder.layer.1.")}
    expected = {n for n, _ in vision.named_parameters() if n.startswith(("transformer.resblocks.1.", "ln_post."))}
    assert trainable(vision) == expected | {"proj"}
    # the layers below, the embeddings and the patch projection stay frozen
    assert not {n for n in trainable(text) if n.startswith(("embeddings.", "encoder.layer.0."))}
    assert "conv1.weight" not in trainable(vision)
    # everything outside the encoders trains
    assert all(p.requires_grad for p in model.item_tower.fusion.parameters())
    assert all(p.requires_grad for p in model.sequence_encoder.parameters())


def test_frozen_and_full():
    model = tiny(text_finetune="frozen", vision_finetune="full")
    assert not trainable(model.item_tower.text) and trainable(model.item_tower.vision) == {
        n for n, _ in model.item_tower.vision.named_parameters()
    }


def test_only_frozen_encoders_are_cached():
    model = tiny(text_finetune="frozen", vision_finetune="top_k").eval()
    records = [{"item_id": f"i{k}", "text": f"red item {k}", "image": None} for k in range(5)]
    inputs = model.processor(records)
    cached = precompute_frozen_states(model, inputs)
    assert cached.text_states is not None and cached.image_states is None
    assert torch.allclose(model.embed_items(cached), model.embed_items(inputs), atol=1e-6)


@pytest.mark.parametrize(
    "regimes, message",
    [
        ({"text_finetune": "half"}, "regime"),
        ({"text_finetune": "top_k", "text_top_k": 5}, "between 1 and the 2 blocks"),
    ],
)
def test_bad_regimes_are_clear_errors(regimes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**regimes)


def test_item_inputs_of_unknown_ids_in_id_tower():
    model = build_model(ModelArguments(item_tower="id"), item_vocab=["a", "b"])
    with pytest.raises(ValueError, match="vocabulary"):
        model.embed_items(ItemInputs(item_index=torch.tensor([0, -1])))


def test_frozen_batchnorm_keeps_its_statistics_while_the_top_blocks_train():
    args = ModelArguments(item_tower="image", vision_model="mobilenet_v2", image_size=32, hidden_size=16)
    model = build_model(args)
    model.item_tower.vision.set_finetuning("top_k", 2)
    model.train()
    features = model.item_tower.vision.tower.features
    low, top = features[1].conv[0][1], features[-1][1]  # BatchNorm of a frozen block and of a trained one
    assert not low.training and top.training
    before = low.running_mean.clone()
    model.item_tower.vision(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8))
    # exact: a frozen BatchNorm's statistics are not written at all
    assert torch.equal(low.running_mean, before) and not torch.equal(
        top.running_mean, torch.zeros_like(top.running_mean)
    )


@pytest.mark.parametrize(
    "backbone",
    [
        {
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        {
            "model_type": "roberta",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
        {
            "model_type": "clip_text_model",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    ],
    ids=lambda b: b["model_type"],
)
def test_every_text_family_gets_lora_targets_and_top_k(backbone):
    import re

    from mmsr_peft.encoders import TextEncoderConfig
    from mmsr_peft.lora import lora_target_modules
    from mmsr_peft.model import MMSRConfig, MMSRModel

    model = MMSRModel(MMSRConfig(item_tower="text", hidden_size=16, text=TextEncoderConfig(backbone=backbone)))
    pattern = lora_target_modules(model, ["text"])
    assert sum(bool(re.fullmatch(pattern, n)) for n, _ in model.named_modules()) == 4  # query + value, 2 layers
    model.item_tower.text.set_finetuning("top_k", 1)
    trainable = [n for n, p in model.item_tower.text.named_parameters() if p.requires_grad]
    assert trainable and not [n for n in trainable if ".0." in n or "embeddings" in n]


def test_encoder_dropout_zero_makes_training_encoders_read_as_in_evaluation(catalog, tmp_path):  # noqa: F811
    """`--encoder_dropout 0`: a trainable encoder in training mode gives its evaluation outputs (the features a
    model trained on cached ones knows); the saved config keeps the encoder's own dropout."""
    from mmsr_peft.training import Trainer, TrainingArguments, make_accelerator

    model = tiny_model(text_finetune="full")  # in eval mode
    inputs = model.processor(catalog.records(range(len(catalog))))
    expected = model.embed_items(inputs)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model.embed_items(inputs), expected)  # tiny-bert's own dropout (0.1)
    args = TrainingArguments(output_dir=str(tmp_path), encoder_dropout=0.0, report_to=["none"])
    Trainer(model, [np.arange(4)], inputs, [], args, make_accelerator(args, "multimodal", "concat"))
    torch.testing.assert_close(model.embed_items(inputs), expected, rtol=0, atol=0)  # the same kernels, no mask
    assert model.item_tower.text.backbone.config.hidden_dropout_prob == 0.1  # what save_pretrained writes
    with pytest.raises(ValueError, match=r"--encoder_dropout must be in \[0, 1\), got 1.0"):
        TrainingArguments(encoder_dropout=1.0)


HF_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize(
    "model_type, settings",
    [
        ("vit", {"patch_size": 8, "attention_probs_dropout_prob": 0.3, **HF_VIT}),  # attention dropout: a float
        ("beit", {"patch_size": 8, "use_mean_pooling": True, "drop_path_rate": 0.2, **HF_VIT}),  # stochastic depth
        ("swin", {"patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4}),
    ],
)
def test_encoder_dropout_zero_reaches_hf_attention_and_stochastic_depth_but_not_lora(model_type, settings, tmp_path):
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModel

    from mmsr_peft.lora import lora_target_modules

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(model_type, image_size=32, **settings)).save_pretrained(tmp_path)
    args = ModelArguments(item_tower="image", vision_model=f"hf:{tmp_path}", image_size=32, hidden_size=16)
    model = build_model(args)
    model.add_adapter(LoraConfig(r=2, lora_dropout=0.3, target_modules=lora_target_modules(model)), "office")
    model.set_encoder_dropout(0.0)
    lora = {m.p for n, m in model.named_modules() if ".lora_dropout." in n and isinstance(m, torch.nn.Dropout)}
    assert lora == {0.3}  # the adapter's own setting
    vision = model.item_tower.vision.train()
    lora_modules = {m for n, m in vision.named_modules() if "lora_dropout" in n}
    vision.apply(lambda m: m.eval() if m in lora_modules else None)  # this test is about the encoder's own dropout
    pixels = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(vision(pixels).pooled, vision(pixels).pooled, rtol=0, atol=0)


def test_each_encoder_can_train_at_its_own_learning_rate():
    from peft import LoraConfig

    from mmsr_peft.lora import lora_target_modules
    from mmsr_peft.training import TrainingArguments, make_optimizer

    model = tiny(text_finetune="full", vision_finetune="full")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(learning_rate=1e-3, text_learning_rate=1e-5, vision_learning_rate=3e-4)
    groups = make_optimizer(named, args).param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-5, 3e-4]
    text = {id(p) for n, p in named.items() if n.startswith("item_tower.text.")}
    assert {id(p) for p in groups[1]["params"]} == text and len(text) > 0
    assert sum(len(g["params"]) for g in groups) == len(named)  # every parameter in exactly one group
    assert [g["lr"] for g in make_optimizer(named, TrainingArguments(learning_rate=1e-3)).param_groups] == [1e-3]

    lora = tiny()  # LoRA on frozen encoders: peft's wrapped names still land in the encoder's group
    lora.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(lora, ["text", "fusion"])), "default")
    named = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    groups = make_optimizer(named, TrainingArguments(text_learning_rate=2e-4)).param_groups
    assert groups[1]["lr"] == 2e-4 and all("lora_" in n for n, p in named.items() if "item_tower.text." in n)
    assert len(groups[1]["params"]) == sum("item_tower.text." in n for n in named) > 0


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_learning_rate_schedules_are_transformers_after_the_warm_up(kind):
    import transformers

    from mmsr_peft.training import TrainState, learning_rate_factor

    factor = learning_rate_factor(kind, 10, 100, TrainState())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = {
        "linear": transformers.get_linear_schedule_with_warmup(optimizer, 10, 100),
        "cosine": transformers.get_cosine_schedule_with_warmup(optimizer, 10, 100),
        "constant": transformers.get_constant_schedule_with_warmup(optimizer, 10),
    }[kind]
    expected = [reference.lr_lambdas[0](step) for step in range(101)]
    assert [factor(step) for step in range(101)] == pytest.approx(expected, abs=1e-12)
    assert factor(5) == 0.5 and factor(10) == 1.0


def test_a_plateau_during_the_warm_up_lowers_the_rate_from_the_next_step():
    from mmsr_peft.training import TrainState, learning_rate_factor

    state = TrainState()
    factor = learning_rate_factor("reduce_lr_on_plateau", 10, 100, state)
    assert (factor(5), factor(10), factor(50)) == (0.5, 1.0, 1.0)
    state.lr_scale = 0.25  # what the trainer sets at a plateau
    assert factor(5) == pytest.approx(0.125) and factor(10) == factor(50) == 0.25


def test_reduce_lr_on_plateau_lowers_the_rate_after_epochs_without_improvement(base_dir, data_dir, tmp_path):
    import json

    from conftest import TINY_TRAIN_FLAGS

    from mmsr_peft.cli import adapt_main
    from mmsr_peft.training import TrainingArguments

    out = tmp_path / "office"
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    argv += [*TINY_TRAIN_FLAGS, "--num_epochs", "4", "--patience", "4", "--warmup_ratio", "0"]
    argv += [
        "--lr_scheduler_type",
        "reduce_lr_on_plateau",
        "--lr_plateau_patience",
        "1",
        "--lr_plateau_factor",
        "0.25",
    ]
    # a rate that wrecks the adapter: the start (epoch 0) stays best, and every epoch after it lowers the rate
    argv += ["--evaluate_start", "true", "--learning_rate", str(WRECKING_LEARNING_RATE)]
    assert adapt_main(argv) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    best, expected = history[0]["valid_ndcg@10"], WRECKING_LEARNING_RATE
    for entry in history[1:]:
        assert entry["learning_rate"] == pytest.approx(expected, rel=1e-9), history
        expected *= 1.0 if entry["valid_ndcg@10"] > best else 0.25
        best = max(best, entry["valid_ndcg@10"])
    assert expected < WRECKING_LEARNING_RATE  # at least one reduction happened
    state = sorted((out / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    assert json.loads((state / "trainer_state.json").read_text())["lr_scale"] == pytest.approx(
        expected / WRECKING_LEARNING_RATE
    )
    with pytest.raises(ValueError, match="--lr_plateau_factor in \\(0, 1\\), got 1 and 1.5"):
        TrainingArguments(lr_plateau_patience=1, lr_plateau_factor=1.5)
    with pytest.raises(ValueError, match="unknown --lr_scheduler_type 'step'; one of linear, cosine"):
        TrainingArguments(lr_scheduler_type="step")


def test_the_starting_weights_stay_a_candidate_when_no_epoch_beats_them(base_dir, data_dir, tmp_path):
    import json

    from conftest import TINY_TRAIN_FLAGS

    from mmsr_peft.cli import adapt_main

    out = tmp_path / "office"
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    # a learning rate that wrecks the adapter in one epoch: the zero adapter of epoch 0 must win
    argv += [*TINY_TRAIN_FLAGS, "--num_epochs", "1", "--evaluate_start", "true"]
    argv += ["--learning_rate", str(WRECKING_LEARNING_RATE)]
    assert adapt_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1] and metrics["best_epoch"] == 0
    test = metrics["test"]
    assert test["LoRA (text+vision+fusion)"] == pytest.approx(test["zero-shot base"], abs=1e-6)


def test_full_fine_tuning_of_the_components_named_only(base_dir):
    from mmsr_peft import MMSRModel
    from mmsr_peft.adaptation import AdaptArguments, prepare_method

    model, row = prepare_method(
        MMSRModel.from_pretrained(base_dir), AdaptArguments(target="office", method="full", components=["text"])
    )
    assert row == "full fine-tuning (text)"
    assert trainable(model) == {f"item_tower.text.{n}" for n in trainable(model.item_tower.text)} != set()
    everything, _ = prepare_method(MMSRModel.from_pretrained(base_dir), AdaptArguments(target="office", method="full"))
    assert trainable(everything) == {n for n, _ in everything.named_parameters()}  # no components: all of it
