"""The MMSR paper's other encoder families, each from a tiny random config saved as a model folder, offline: Swin,
BEiT, ViT-MAE and ConvNeXt (Hugging Face) and ResNets (torchvision) as the vision encoder, ELECTRA and XLNet as the
text encoder. Each one's weights load, its outputs are its own model's, `top_k` trains its top block, LoRA finds
its targets, and a saved model loads back."""

import re
from copy import deepcopy

import pytest
import torch
from testing_utils import assert_same_weights
from transformers import AutoConfig, AutoModel

from mmsr_peft import MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.encoders import TextEncoder, TextEncoderConfig, VisionEncoder
from mmsr_peft.encoders.vision import OpenClipVisionEncoder, TorchvisionEncoder
from mmsr_peft.lora import lora_target_modules

VIT_LIKE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VISION = {
    "swin": {"patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4},
    "beit": {"patch_size": 8, "use_mean_pooling": True, **VIT_LIKE},
    "vit_mae": {"patch_size": 8, **VIT_LIKE},
    "convnext": {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
}
# (tokens, width) of a 32 px image: Swin's last stage 4x4 cells x 32, BEiT/ViT-MAE [CLS] + 16 patches, ConvNeXt 4x4 x 16
SHAPES = {"swin": (16, 32), "beit": (17, 32), "vit_mae": (17, 32), "convnext": (16, 16)}
TEXT = {
    "electra": {"embedding_size": 16, **VIT_LIKE},
    "xlnet": {"d_model": 32, "n_layer": 2, "n_head": 2, "d_inner": 64},
    # eos_token_id 2: CLIP's original rule, the end-of-text token is the text's highest id
    "clip_text_model": {"bos_token_id": 0, "eos_token_id": 2, **VIT_LIKE},
}


def saved(model_type, settings, folder):
    torch.manual_seed(0)
    extra = {"image_size": 32} if model_type in VISION else {"vocab_size": 120}
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **settings, **extra))
    model.save_pretrained(folder)
    return model.eval()


def test_hugging_face_vision_normalisation_is_the_checkpoints_own_image_processors(tmp_path):
    import json

    from mmsr_peft.encoders import VisionEncoderConfig

    saved("beit", VISION["beit"], tmp_path / "beit")
    assert VisionEncoderConfig.from_hf(str(tmp_path / "beit")).image_mean == (0.5, 0.5, 0.5)  # BEiT's, by its type
    processor = {"image_processor_type": "BeitImageProcessor", "image_mean": [0.485, 0.456, 0.406]}
    processor["image_std"] = [0.229, 0.224, 0.225]  # e.g. a checkpoint trained on ImageNet statistics
    (tmp_path / "beit" / "preprocessor_config.json").write_text(json.dumps(processor))
    config = VisionEncoderConfig.from_hf(str(tmp_path / "beit"))
    assert (config.image_mean, config.image_std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("model_type", sorted(VISION))
def test_hugging_face_vision_family_loads_encodes_fine_tunes_and_round_trips(model_type, tmp_path):
    reference = saved(model_type, VISION[model_type], tmp_path / model_type)
    args = ModelArguments(vision_model=f"hf:{tmp_path / model_type}", text_model="tiny-bert", image_size=32)
    args.hidden_size, args.vision_finetune, args.vision_top_k = 16, "top_k", 1
    model = build_model(args).eval()
    vision = model.item_tower.vision
    assert vision.family == f"hf_{model_type}"
    pixels = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    out = vision(pixels)
    tokens, width = SHAPES[model_type]
    assert out.tokens.shape == (3, tokens, width) and out.pooled.shape == (3, width)
    normalised = (pixels.float() - vision.mean) / vision.std
    extra = {}
    if model_type == "vit_mae":  # the folder keeps MAE's pretraining mask ratio; the encoder reads every patch
        reference.config.mask_ratio = 0.0
        extra = {"noise": torch.arange(16.0).expand(3, 16)}
    expected = reference(pixel_values=normalised, **extra).last_hidden_state
    assert torch.allclose(
        out.tokens, expected.flatten(2).transpose(1, 2) if expected.dim() == 4 else expected, atol=1e-5
    )
    if model_type == "vit_mae":  # every patch, in place: the mean of the patches, twice the same
        assert torch.allclose(out.pooled, expected[:, 1:].mean(1), atol=1e-5)
        assert torch.equal(vision(pixels).tokens, out.tokens)

    trainable = [n for n, p in vision.tower.named_parameters() if p.requires_grad]
    frozen = [n for n, p in vision.tower.named_parameters() if not p.requires_grad]
    assert trainable and frozen and not any(n.startswith("embeddings.") for n in trainable)
    pattern = lora_target_modules(model, ["vision"])
    assert any(re.fullmatch(pattern, name) for name, _ in model.named_modules())

    model.save_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt").eval()
    # same weights; not bit-equal for Swin: every loaded parameter requires grad (top_k marked one block), so
    # autograd takes other kernels
    assert torch.allclose(loaded.item_tower.vision(pixels).pooled, out.pooled, atol=1e-6)


@pytest.mark.parametrize(
    "model_type, extra",
    [
        *((model_type, {}) for model_type in sorted(VISION)),
        ("beit", {"use_shared_relative_position_bias": True}),
        ("beit", {"use_relative_position_bias": True, "use_mean_pooling": False}),
    ],
    ids=[*sorted(VISION), "beit-shared-bias", "beit-layer-bias"],
)
def test_hugging_face_vision_family_runs_from_its_lowest_trainable_block_as_the_whole_tower_does(
    model_type, extra, tmp_path
):
    from test_frozen_blocks import assert_same_encoding

    saved(model_type, {**VISION[model_type], **extra}, tmp_path / model_type)
    args = ModelArguments(item_tower="image", vision_model=f"hf:{tmp_path / model_type}", image_size=32)
    args.hidden_size, args.vision_finetune, args.vision_top_k = 16, "top_k", 1
    vision = build_model(args).item_tower.vision
    with torch.no_grad():  # BEiT's position bias tables start at zero: make a bias left out show
        for name, parameter in vision.tower.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_()
    assert vision.first_cached_block() == 1  # of two layers (ViT-MAE, BEiT) or two stages (Swin, ConvNeXt)
    pixels = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        inputs = vision.eval().block_inputs(pixels, 1)
    # ConvNeXt: 8x8 cells of 8 channels; Swin: its 8x8 patch grid merged to 4x4 tokens of 32; [CLS] + 16 patches
    shapes = {"convnext": (3, 8, 8, 8), "swin": (3, 16, 32)}
    assert inputs.states.shape == shapes.get(model_type, (3, 17, 32))
    assert_same_encoding(vision, lambda: vision(pixels), lambda: vision.encode_from(inputs))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnet_is_a_vision_trunk_whose_top_stage_fine_tunes(arch, tmp_path):
    args = ModelArguments(item_tower="image", vision_model=arch, image_size=64, hidden_size=16)
    args.vision_finetune, args.vision_top_k = "top_k", 1
    model = build_model(args).eval()
    vision = model.item_tower.vision
    out = vision(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    width = 512 if arch == "resnet18" else 2048
    assert out.tokens.shape == (2, 4, width) and out.pooled.shape == (2, width)  # 64 px / 32 = 2x2 cells
    trainable = {n.split(".")[0] for n, p in vision.tower.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    state = {f"{k}": v for k, v in vision.tower.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, width), torch.zeros(1000)  # a classifier checkpoint
    torch.save(state, tmp_path / "resnet.pth")
    vision.load_backbone(str(tmp_path / "resnet.pth"))  # its classifier head is dropped, every other key loads


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18", "efficientnet_b0"])
def test_lora_on_a_torchvision_cnn_adapts_its_convolutions_and_leaves_the_base_and_its_statistics(arch, tmp_path):
    from peft.tuners.lora import LoraLayer

    from mmsr_peft.adaptation import AdaptArguments, prepare_method
    from mmsr_peft.adapters import base_state_dict

    args = ModelArguments(vision_model=arch, text_model="tiny-bert", image_size=32, hidden_size=16)
    model = build_model(args)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    groups = {n: m.groups for n, m in model.item_tower.vision.tower.named_modules() if isinstance(m, torch.nn.Conv2d)}
    model, row = prepare_method(model, AdaptArguments(target="office"))
    assert row == "LoRA (text+vision+fusion)"  # a CNN has default targets: none is silently left out
    tower = model.item_tower.vision.tower
    adapted = {n: m.get_base_layer() for n, m in tower.named_modules() if isinstance(m, LoraLayer)}
    assert adapted and all(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in adapted.values())
    # every convolution without groups (the stem's too: it is the stack's first block in all but ResNets), none of
    # the depthwise ones
    stem = {"conv1"} if arch == "resnet18" else set()
    assert {n for n, g in groups.items() if g == 1} - stem == {
        n for n, m in adapted.items() if isinstance(m, torch.nn.Conv2d)
    }
    assert any(g > 1 for g in groups.values()) == (arch != "resnet18")

    model.train()  # BatchNorm in training mode would move the frozen base's running statistics
    pixels = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    model.item_tower.vision(pixels).pooled.sum().backward()
    assert all(
        layer.lora_B["office"].weight.grad is not None for layer in tower.modules() if isinstance(layer, LoraLayer)
    )
    assert_same_weights(base_state_dict(model), base)
    model.eval()
    with torch.no_grad():
        for layer in tower.modules():
            if isinstance(layer, LoraLayer):
                layer.lora_B["office"].weight.normal_()
        expected = model.item_tower.vision(pixels).pooled
    model.save_adapter(tmp_path / "office", "office")
    loaded = build_model(args).eval()
    loaded.load_state_dict(base)
    loaded.load_adapter(tmp_path / "office")
    with torch.no_grad():
        assert torch.allclose(loaded.item_tower.vision(pixels).pooled, expected, atol=1e-5)


@pytest.mark.parametrize(
    "vision_model, backend_class",
    [("micro-vit", OpenClipVisionEncoder), ("resnet18", TorchvisionEncoder), ("mobilenet_v2", TorchvisionEncoder)],
)
def test_a_vision_encoder_is_its_backend_s_class_and_copies_as_one(vision_model, backend_class):
    args = ModelArguments(item_tower="image", vision_model=vision_model, image_size=32, hidden_size=16)
    vision = build_model(args).item_tower.vision.eval()
    assert type(VisionEncoder(vision.config)) is backend_class and isinstance(vision, backend_class)
    copy = deepcopy(vision)  # copies are made without a config: the class is already the backend's
    pixels = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    assert type(copy) is backend_class
    assert torch.equal(copy(pixels).pooled, vision(pixels).pooled)


@pytest.mark.parametrize("model_type", sorted(TEXT))
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_electra_xlnet_and_clip_text_encoders_load_pool_and_fine_tune(model_type, pooling, tmp_path):
    reference = saved(model_type, TEXT[model_type], tmp_path / model_type)
    config = TextEncoderConfig.from_pretrained_backbone(str(tmp_path / model_type), pooling=pooling)
    encoder = TextEncoder(config)
    encoder.load_backbone(str(tmp_path / model_type))
    encoder.eval()
    ids = torch.randint(5, 119, (2, 6))
    ids[0, 5] = ids[1, 3] = 119  # each text's last real token is its end-of-text token (CLIP: the highest id)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    out = encoder(ids, mask)
    reference_out = reference(input_ids=ids, attention_mask=mask)
    states = reference_out.last_hidden_state
    assert torch.allclose(out.tokens, states, atol=1e-5)
    if pooling == "mean":
        expected = torch.stack([states[0].mean(0), states[1, :4].mean(0)])
    elif model_type in ("xlnet", "clip_text_model"):  # XLNet's <cls> ends the text, as CLIP's end-of-text token
        expected = torch.stack([states[0, 5], states[1, 3]])
    else:
        expected = states[:, 0]
    assert torch.allclose(out.pooled, expected, atol=1e-5)
    if pooling == "cls" and model_type == "clip_text_model":  # what CLIP itself pools
        assert torch.allclose(out.pooled, reference_out.pooler_output, atol=1e-5)
    encoder.set_finetuning("top_k", 1)
    trainable = {n for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".1." in n or n.startswith("final_layer_norm.") for n in trainable)  # CLIP's follows


@pytest.mark.parametrize("regime", ["full", "top_k"])
def test_a_cnn_training_its_batchnorm_sees_only_the_items_that_have_an_image(regime):
    from mmsr_peft.data.processing import ItemInputs

    args = ModelArguments(item_tower="image", vision_model="resnet18", image_size=32, hidden_size=16)
    args.vision_finetune, args.vision_top_k = regime, 1
    tower = build_model(args).item_tower.train()
    assert tower.vision.batch_statistics()
    torch.manual_seed(0)
    pixels = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    has_image = torch.tensor([True, False, True, True, False, True])
    pixels[~has_image] = 0  # placeholders
    items = ItemInputs(item_index=torch.full((6,), -1), pixel_values=pixels, has_image=has_image)
    if regime == "top_k":
        items.image_blocks = tower.vision.block_inputs(pixels, tower.vision.first_cached_block())
    alone = deepcopy(tower.vision)
    expected = alone(pixels[has_image])
    encoded = tower.encode_image(items)
    torch.testing.assert_close(encoded.pooled[has_image], expected.pooled)
    assert not encoded.pooled[~has_image].any()
    statistics = {k: v for k, v in tower.vision.state_dict().items() if "running" in k}
    assert statistics and all(torch.equal(v, alone.state_dict()[k]) for k, v in statistics.items())
    encoded.pooled.sum().backward()
    assert any(p.grad is not None for p in tower.vision.parameters())

    tower.eval()  # running statistics: every item through the tower, as before
    assert not tower.vision.batch_statistics()
    torch.testing.assert_close(tower.encode_image(items).pooled[has_image], alone.eval()(pixels[has_image]).pooled)
