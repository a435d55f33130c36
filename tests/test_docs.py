"""The documentation works as a front door: the README stays short, every relative link resolves, and every command
line of a ```bash block parses with the real argument parser of its command (nothing runs)."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 10_240

CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)  # fenced blocks and inline code spans
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
OPTIONAL = re.compile(r"\s\[[^\]]*\]")  # `[--private]`, `[--raw_dir DIR]`: optional segments of a usage line

# The command (or recipe) a doc line starts with -> the parser that checks it.
CONSOLE_COMMANDS = {
    "mmsr-pretrain": "pretrain",
    "mmsr-adapt": "adapt",
    "mmsr-baseline": "baseline",
    "mmsr-evaluate": "evaluate",
    "mmsr-publish": "publish",
    "mmsr-recommend": "recommend",
    "mmsr-data": "data",
}
RECIPES = {"recipes/pretrain.py": "pretrain", "recipes/adapt.py": "adapt"}


def relative_links(path: Path) -> list[str]:
    """The link targets of `path` outside code, without `#anchor`s, web and mail links and same-page anchors."""
    text = CODE.sub("", path.read_text())
    targets = (target.split("#")[0] for target in LINK.findall(text))
    return [t for t in targets if t and not re.match(r"(https?|mailto):", t)]


def bash_lines(path: Path):
    """`(line number, line)` of each logical line of the ```bash blocks of `path` (backslash continuations joined)."""
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_bash = line.strip() == "```bash" and not in_bash
            continue
        if not in_bash:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def command(line: str) -> tuple[str, list[str]] | None:
    """`(kind, argv)` of a doc line that runs one of our commands or recipes, or None for any other line."""
    tokens = shlex.split(OPTIONAL.sub("", line), comments=True)
    while tokens and ENV_ASSIGNMENT.fullmatch(tokens[0]):
        tokens = tokens[1:]
    if not tokens or "--help" in tokens:
        return None
    if tokens[0] in CONSOLE_COMMANDS:
        return CONSOLE_COMMANDS[tokens[0]], tokens[1:]
    if tokens[:2] == ["accelerate", "launch"] or (tokens[0] == "python" and tokens[1:2] and "recipes/" in tokens[1]):
        for index, token in enumerate(tokens):
            if token.startswith("recipes/"):
                return RECIPES.get(token, f"unknown recipe {token}"), tokens[index + 1 :]
    return None


COMMAND_LINES = [
    pytest.param(kind, argv, id=f"{path.relative_to(ROOT)}:{number}")
    for path in DOC_FILES
    for number, line in bash_lines(path)
    if (found := command(line)) is not None
    for kind, argv in [found]
]


def parse(kind: str, argv: list[str]):
    """Parses `argv` with the parser of the `kind` command, as its `main` would, without running it."""
    from mmsr_peft.arguments import parse_args

    if kind == "data":
        from mmsr_peft.cli import data_parser

        return data_parser().parse_args(argv)
    if kind == "pretrain":
        from mmsr_peft.arguments import DataArguments
        from mmsr_peft.builder import ModelArguments
        from mmsr_peft.training import TrainingArguments

        return parse_args((ModelArguments, DataArguments, TrainingArguments), argv)
    if kind == "adapt":
        from mmsr_peft.adaptation import AdaptArguments
        from mmsr_peft.training import TrainingArguments

        return parse_args((AdaptArguments, TrainingArguments), argv)
    if kind == "baseline":
        from mmsr_peft.arguments import DataArguments
        from mmsr_peft.baselines import BaselineArguments
        from mmsr_peft.builder import ModelArguments

        return parse_args((BaselineArguments, ModelArguments, DataArguments), argv)
    if kind == "evaluate":
        from mmsr_peft.model_evaluation import EvaluateArguments

        return parse_args((EvaluateArguments,), argv)
    if kind == "publish":
        from mmsr_peft.hub import PublishArguments

        return parse_args((PublishArguments,), argv)
    if kind == "recommend":
        from mmsr_peft.batch import RecommendArguments

        return parse_args((RecommendArguments,), argv)
    raise AssertionError(f"no parser for {kind!r}")


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move details to docs/ (limit {README_MAX_BYTES})"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files {broken}"


def test_the_extractor_finds_the_documented_commands():
    assert len(COMMAND_LINES) >= 10, [p.id for p in COMMAND_LINES]
    kinds = {p.values[0] for p in COMMAND_LINES}
    assert {"pretrain", "adapt", "publish", "data"} <= kinds, kinds


@pytest.mark.parametrize("kind, argv", COMMAND_LINES)
def test_documented_command_parses(kind, argv, request, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # a `--config recipes/configs/...` path is relative to the repository root
    where = request.node.callspec.id
    try:
        parse(kind, argv)
    except SystemExit as err:  # argparse's error exit
        pytest.fail(f"{where}: `{kind} {shlex.join(argv)}` does not parse: {capsys.readouterr().err.strip()} ({err})")
    except ValueError as err:  # a dataclass's __post_init__ refused a value
        pytest.fail(f"{where}: `{kind} {shlex.join(argv)}` is refused: {err}")
