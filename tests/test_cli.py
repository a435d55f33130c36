"""What the console commands say: `--help` of every option, and the error for a missing optional dependency."""

import re
import sys

import pytest

from mmsr_peft.cli import adapt_main, pretrain_main
from mmsr_peft.configuration import ITEM_TOWERS
from mmsr_peft.domains import DOMAINS, SOURCES
from mmsr_peft.fusion import FUSION_TYPES
from mmsr_peft.lora import COMPONENTS
from mmsr_peft.losses import LOSSES
from mmsr_peft.sequence_encoders import SEQUENCE_TYPES


def option_help(main, capsys) -> dict[str, str]:
    """`{--option: its help text on one line}` from `main(["--help"])`."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n")[1]
    blocks = re.split(r"\n  (?=--)", options)[1:]
    return {block.split()[0]: " ".join(block.split()) for block in blocks}


@pytest.mark.parametrize(
    "main, choices",
    [
        (
            pretrain_main,
            {
                "--item_tower": ITEM_TOWERS,
                "--fusion": FUSION_TYPES,
                "--sequence_encoder": SEQUENCE_TYPES,
                "--loss": LOSSES,
                "--data_source": tuple(SOURCES),
                "--optim": ("adamw", "adamw8bit"),
                "--mixed_precision": ("no", "bf16", "fp16"),
            },
        ),
        (
            adapt_main,
            {
                "--target": tuple(DOMAINS),
                "--components": COMPONENTS,
                "--method": ("lora", "full", "frozen", "scratch"),
                "--quantize": ("4bit", "8bit"),
                "--data_source": tuple(SOURCES),
            },
        ),
    ],
)
def test_help_lists_every_choice_and_gives_one_default(main, choices, capsys):
    helps = option_help(main, capsys)
    for text in helps.values():
        assert text.count("(default") <= 1, text
        assert "(default: None)" not in text, text
    for option, values in choices.items():
        listed = re.findall(r"[\w-]+", helps[option])
        assert set(values) <= set(listed), (option, helps[option])
    assert "(default: 0.0)" in helps["--cold_start_fraction"]  # the one default, added by the formatter


def test_qlora_options_without_bitsandbytes_name_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` meets when not installed
    assert adapt_main(["--target", "office", "--quantize", "4bit"]) == 2
    assert "--quantize 4bit needs bitsandbytes" in capsys.readouterr().err
    assert pretrain_main(["--optim", "adamw8bit"]) == 2
    assert "pip install 'mmsr-peft[qlora]'" in capsys.readouterr().err


def test_components_with_a_method_that_ignores_them_are_refused(capsys):
    assert adapt_main(["--target", "office", "--method", "frozen", "--components", "text"]) == 2
    assert "--components applies to --method lora or full, not --method frozen" in capsys.readouterr().err
