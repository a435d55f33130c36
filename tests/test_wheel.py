"""The package as a `pip install` user gets it: a wheel, installed into a fresh virtual environment, used from a folder
outside the repository (no checkout to read model-card templates or anything else from)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(command, cwd, **kwargs):
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (
        f"{command} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the sources (setuptools writes build/ beside the sources)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("mmsr_peft", "model_cards"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."], source)
    (path,) = out.glob("mmsr_peft-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh virtual environment that reuses this one's dependencies (a .pth line) and holds the wheel."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root)], root)
    python = root / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    # the dependencies only: .pth files of a folder named in a .pth are not run, so this environment's editable
    # mmsr_peft (a .pth hook) stays out
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], root)
    return root


def test_the_wheel_ships_the_card_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mmsr_peft/model_cards/base.md", "mmsr_peft/model_cards/adapter.md"} <= set(names)
    assert not [name for name in names if name.startswith(("model_cards/", "tests/", "recipes/", "scripts/"))]


@pytest.mark.slow
def test_an_installed_wheel_pretrains_adapts_writes_cards_and_loads_back(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = ["--text_model", "tiny-bert", "--vision_model", "micro-vit", "--image_size", "32", "--num_epochs", "1"]
    trained = run([venv / "bin" / "mmsr-pretrain", *tiny, "--output_dir", "base"], work, env=env)
    assert "kernels" not in trained.stdout + trained.stderr  # bitsandbytes' notice, though nothing is quantized
    adapted = run(
        [venv / "bin" / "mmsr-adapt", "--target", "office", "--base", "base", "--num_epochs", "1"], work, env=env
    )
    assert "kernels" not in adapted.stdout + adapted.stderr
    for folder in ("base", "outputs/adapters/office"):
        card = (work / folder / "README.md").read_text()
        assert "synthetic" in card and "## " in card, folder
    check = (
        "import mmsr_peft; from mmsr_peft import MMSRModel; model = MMSRModel.from_pretrained('base'); "
        "model.load_adapter('outputs/adapters/office', adapter_name='office'); "
        "print(mmsr_peft.__file__); print(model.list_adapters())"
    )
    loaded = run([venv / "bin" / "python", "-c", check], work, env=env)
    lines = loaded.stdout.split()
    assert Path(lines[0]).is_relative_to(venv) and lines[1] == "['office']"  # the installed copy, not the checkout
    assert loaded.stderr == ""  # loading prints nothing
