"""Checkpoints saved by earlier code keep loading and recommending the same: `tests/fixtures/legacy/` holds a tiny
base (text + image, the paper's gated fusion) and a LoRA adapter on it, written by the code of commit ccd8be9 (before
the package layout changed; `make_legacy.py` there made them), with the top-4 they recommended then."""

import json
from pathlib import Path

import pytest
import torch

from mmsr_peft import Catalog, MMSRModel
from mmsr_peft.arguments import ModelArguments
from mmsr_peft.errors import CheckpointError

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def expected():
    return json.loads((LEGACY / "expected.json").read_text())


def test_a_base_and_its_adapter_saved_by_earlier_code_load_and_recommend_the_same(expected):
    texts = expected["texts"]
    catalog = Catalog([f"item-{i}" for i in range(len(texts))], texts, [None] * len(texts), name="legacy")
    with pytest.warns(FutureWarning, match="item_tower 'modal' is now called 'multimodal'"):
        model = MMSRModel.from_pretrained(LEGACY / "base").eval()  # its config.json has the old name
    assert model.config.item_tower == "multimodal"
    assert model.load_adapter(LEGACY / "office") == "office"  # its record names these very base weights
    for name in ("office", "base"):
        if name == "base":
            model.disable_adapters()
        top = model.recommend(expected["histories"], catalog, k=4)
        # the closest scores of a list are 1e-4 apart: far beyond what another CPU's kernels change
        assert top.item_ids == expected["top"][name]["item_ids"], name
        torch.testing.assert_close(top.scores, torch.tensor(expected["top"][name]["scores"]), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:item_tower 'modal'")
def test_the_legacy_adapter_still_refuses_another_base(tmp_path):
    other = MMSRModel.from_pretrained(LEGACY / "base")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="base"):
        MMSRModel.from_pretrained(tmp_path / "other").load_adapter(LEGACY / "office")


def test_the_old_item_tower_name_still_works_in_commands_and_is_saved_under_the_new_one(tmp_path):
    with pytest.warns(FutureWarning, match="'modal' is now called 'multimodal'"):
        args = ModelArguments(item_tower="modal")
    assert args.item_tower == "multimodal"
    with pytest.warns(FutureWarning):
        model = MMSRModel.from_pretrained(LEGACY / "base")
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["item_tower"] == "multimodal"
