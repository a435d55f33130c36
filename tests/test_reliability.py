"""Reliability and security: writers killed mid-write, pretraining killed and resumed, two processes against one,
the Hub token, remote code.

The kills are real (SIGKILL of a child process). The child reaches the moment to be killed at through a hook that
the test adds to the child's own code (it prints a line and sleeps), so every run is killed at the same point.
"""

import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import HUB, TINY_MODEL_FLAGS, TINY_TRAIN_FLAGS, tiny_pretrain_argv
from safetensors.torch import load_file
from testing_utils import KILLABLE_RUN, run_until

from mmsr_peft import MMSRModel
from mmsr_peft.cli import adapt_main, pretrain_main, publish_main
from mmsr_peft.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
FILES_MODULE = ROOT / "mmsr_peft" / "files.py"


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ atomic folder writes, killed

# A writer of a model-sized folder through `atomic_directory` (files.py loaded on its own: no torch to import), with a
# hook where the test kills it: in the middle of a file, just before the swap, or between the two renames that
# replace the swap where no atomic rename exchange exists.
WRITER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("atomic_io", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
folder, moment = sys.argv[2], sys.argv[3]

def hang():
    print("NOW", flush=True)
    time.sleep(600)

if moment == "swap":
    swap = io._swap
    io._swap = lambda new, old: (hang(), swap(new, old))
if moment == "between_renames":
    io._rename_exchange = lambda a, b: False
    replace, calls = os.replace, []
    def replace_then_hang(a, b):
        calls.append(a)
        if len(calls) == 2:
            hang()
        replace(a, b)
    os.replace = replace_then_hang
with io.atomic_directory(folder) as tmp:
    (tmp / "config.json").write_text('{"version": 2}')
    with open(tmp / "model.safetensors", "wb") as handle:
        handle.write(b"2" * (8 << 20))
        handle.flush()
        if moment == "mid_write":
            hang()
        handle.write(b"2" * (8 << 20))
"""


@pytest.mark.parametrize("moment", ["mid_write", "swap", "between_renames"])
def test_killed_folder_writer_leaves_the_previous_version_whole(moment, tmp_path):
    from mmsr_peft.files import atomic_directory

    folder = tmp_path / "base"
    with atomic_directory(folder) as tmp:  # version 1, with a training state written beside it later
        (tmp / "config.json").write_text('{"version": 1}')
        (tmp / "model.safetensors").write_bytes(b"1" * (1 << 20))
    (folder / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint_0" / "optimizer.bin").write_bytes(b"state")
    previous = tree(folder)

    run_until(WRITER, [str(FILES_MODULE), str(folder), moment], "NOW", tmp_path / "writer.log")

    if moment == "between_renames":  # only without an atomic rename exchange (not Linux): the next write repairs it
        assert not folder.exists() and len(list(tmp_path.glob(".base.old-*"))) == 1
        with pytest.raises(RuntimeError):
            with atomic_directory(folder):
                raise RuntimeError("a failed write still puts the previous version back")
    assert tree(folder) == previous
    with atomic_directory(folder) as tmp:  # the next write succeeds and cleans up what the killed one left
        (tmp / "config.json").write_text('{"version": 3}')
    assert json.loads((folder / "config.json").read_text()) == {"version": 3}
    assert (folder / "checkpoints" / "checkpoint_0" / "optimizer.bin").read_bytes() == b"state"
    assert (folder / "model.safetensors").read_bytes() == previous["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "writer.log") == ["base"]


def test_folder_swap_is_one_step_for_a_concurrent_reader(tmp_path):
    """A reader polling the folder while new versions are swapped in always finds it, and the files of the folder
    it opened all belong to one version, each one whole (with file-by-file renames it would see a mix)."""
    from mmsr_peft.files import atomic_directory

    folder, seen, done = tmp_path / "base", set(), threading.Event()
    names = ("config.json", "model.safetensors", "tokenizer.json")

    def write(version: int) -> None:
        with atomic_directory(folder) as tmp:
            for name in names:
                (tmp / name).write_text(f"{version}," * 20000)

    def read_one(directory: int, name: str) -> str:
        fd = os.open(name, os.O_RDONLY, dir_fd=directory)
        try:
            return os.read(fd, 1 << 20).decode()
        finally:
            os.close(fd)

    def read():
        while not done.is_set():
            try:
                directory = os.open(folder, os.O_RDONLY)
            except FileNotFoundError:
                seen.add("no folder")
                continue
            try:
                seen.add(frozenset(v for name in names for v in read_one(directory, name).split(",") if v))
            except FileNotFoundError:
                pass  # the version this reader opened was replaced and removed meanwhile: no mix, a retry
            finally:
                os.close(directory)

    write(0)
    reader = threading.Thread(target=read)
    reader.start()
    for version in range(1, 40):
        write(version)
    done.set()
    reader.join()
    assert "no folder" not in seen
    assert len(seen) > 1 and all(len(versions) == 1 for versions in seen), sorted(map(sorted, seen))


# ------------------------------------------------------------------ exact resume after SIGKILL


@pytest.fixture(scope="module")
def interrupted(data_dir, tmp_path_factory):
    """An uninterrupted tiny pretraining run (2 epochs of 4 steps, a training state every 2 steps and at each epoch
    end, after its validation, the last 2 kept), and the same run killed with SIGKILL right after its 3rd state:
    step 6, mid-epoch 2. `boundary` is a copy of the killed run without that last state, as if killed at the start
    of epoch 2."""
    root = tmp_path_factory.mktemp("resume")
    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "2", "--save_steps", "2", "--save_total_limit", "2")
    assert pretrain_main([*argv, "--output_dir", str(root / "straight")]) == 0
    run_until(
        KILLABLE_RUN, ["3", "pretrain_main", *argv, "--output_dir", str(root / "killed")], "SAVED", root / "killed.log"
    )
    shutil.copytree(root / "killed", root / "boundary")
    shutil.rmtree(root / "boundary" / "checkpoints" / "checkpoint_2")
    shutil.copytree(root / "boundary", root / "pristine")  # tests that resume `boundary` change it
    return root, argv


def _assert_same_run(straight: Path, resumed: Path) -> None:
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    first, second = (json.loads((folder / "metrics.json").read_text()) for folder in (straight, resumed))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    for x, y in zip(first["history"], second["history"], strict=True):
        assert y == pytest.approx(x, abs=1e-6)
    assert second["test"].keys() == first["test"].keys()
    for name, metrics in first["test"].items():
        assert second["test"][name] == pytest.approx(metrics, abs=1e-6), name


@pytest.mark.slow
def test_killed_run_kept_the_last_states_and_a_loadable_best_model(interrupted):
    root, _ = interrupted
    assert sorted(p.name for p in (root / "killed" / "checkpoints").iterdir()) == ["checkpoint_1", "checkpoint_2"]
    MMSRModel.from_pretrained(root / "killed")  # the best model so far (epoch 1) is whole
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_run_killed_at_an_epoch_boundary_resumes_exactly(interrupted):
    root, argv = interrupted
    assert pretrain_main([*argv, "--output_dir", str(root / "boundary"), "--resume"]) == 0
    _assert_same_run(root / "straight", root / "boundary")


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_exactly(interrupted):
    root, argv = interrupted
    assert pretrain_main([*argv, "--output_dir", str(root / "killed"), "--resume"]) == 0
    _assert_same_run(root / "straight", root / "killed")


@pytest.mark.slow
def test_run_killed_in_its_last_validation_resumes_to_validate_it(interrupted, tmp_path, monkeypatch):
    from mmsr_peft import training

    root, argv = interrupted
    end_of_epoch, calls = training.Trainer._end_of_epoch, []

    def dies_in_the_last_validation(self):
        calls.append(1)
        if len(calls) == 2:  # step 8 ends epoch 2 and the run: a multiple of --save_steps
            raise KeyboardInterrupt("simulated kill")
        return end_of_epoch(self)

    with monkeypatch.context() as patch:
        patch.setattr(training.Trainer, "_end_of_epoch", dies_in_the_last_validation)
        with pytest.raises(KeyboardInterrupt):
            pretrain_main([*argv, "--output_dir", str(tmp_path / "run")])
    assert pretrain_main([*argv, "--output_dir", str(tmp_path / "run"), "--resume"]) == 0
    _assert_same_run(root / "straight", tmp_path / "run")  # epoch 2 validated, selected and reported


@pytest.mark.slow
def test_run_killed_while_saving_a_state_resumes_from_the_last_complete_one(interrupted, tmp_path, monkeypatch):
    from mmsr_peft import training

    root, argv = interrupted
    partial = Path(shutil.copytree(root / "pristine", tmp_path / "partial"))
    newest = partial / "checkpoints" / "checkpoint_2"
    newest.mkdir()  # what a kill inside save_state leaves: the folder with its first file only
    shutil.copy(partial / "checkpoints" / "checkpoint_1" / "model.safetensors", newest)
    save_state, complete = training.Trainer._save_state, []

    def counted(self):  # how many states --resume could use after each save (--save_total_limit 2)
        save_state(self)
        complete.append(sum((folder / "complete").is_file() for folder in (partial / "checkpoints").iterdir()))

    monkeypatch.setattr(training.Trainer, "_save_state", counted)
    assert pretrain_main([*argv, "--output_dir", str(partial), "--resume"]) == 0
    _assert_same_run(root / "straight", partial)
    # the killed state was deleted, not counted by the rotation in place of a complete one
    assert complete and all(count == 2 for count in complete), complete


def torch_bytes(value) -> bytes:
    """`value` as `torch.save` writes it."""
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class RunsCode:
    """Unpickling this runs a shell command (what a malicious pickle does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_side_adapter_run_killed_mid_run_resumes_exactly(base_dir, data_dir, tmp_path):
    """A side adapter trains on the frozen encoders' precomputed layer states: resumed, it ends as uninterrupted."""
    argv = ["--target", "office", "--data_dir", str(data_dir), "--base", str(base_dir), "--method", "side"]
    argv += ["--modules_to_save", "sequence_encoder", "--num_epochs", "3", "--patience", "3", *TINY_TRAIN_FLAGS]
    argv += ["--save_steps", "1000000", "--evaluate_start", "true"]  # a training state at each epoch end
    assert adapt_main([*argv, "--output_dir", str(tmp_path / "straight")]) == 0
    killed = ["2", "adapt_main", *argv, "--output_dir", str(tmp_path / "killed")]  # after epoch 2's state, unmarked
    run_until(KILLABLE_RUN, killed, "SAVED", tmp_path / "killed.log")
    assert adapt_main([*argv, "--output_dir", str(tmp_path / "killed"), "--resume"]) == 0
    straight, resumed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "killed"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3]  # epoch 0: the base, before training
    for x, y in zip(straight["history"], resumed["history"], strict=True):
        assert y == pytest.approx(x, abs=1e-6)
    assert resumed["test"].keys() == straight["test"].keys()
    for row, metrics in straight["test"].items():
        assert resumed["test"][row] == pytest.approx(metrics, abs=1e-6), row
    a, b = (load_file(tmp_path / name / "side_adapter_model.safetensors") for name in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.slow
def test_resume_never_runs_a_pickle_and_refuses_forged_states(interrupted, tmp_path, capsys):
    root, argv = interrupted
    ran = tmp_path / "code-ran"
    forged = Path(shutil.copytree(root / "pristine", tmp_path / "forged"))
    state = forged / "checkpoints" / "checkpoint_1"
    assert not list(state.glob("custom_checkpoint_*"))  # our own state is JSON + safetensors
    assert pretrain_main([*argv, "--output_dir", str(forged), "--resume"]) == 0  # resumes from them alone
    _assert_same_run(root / "straight", forged)

    exploit = pickle.dumps(RunsCode(ran))
    saved = json.loads((root / "pristine" / "checkpoints" / "checkpoint_1" / "trainer_state.json").read_text())
    cases = [  # (file of the newest state, its forged content, what the refusal says)
        ("custom_checkpoint_0.pkl", exploit, "pickles that this mmsr_peft never writes"),  # Accelerate unpickles it
        ("random_states_0.pkl", exploit, "not a random-state file written by Accelerate"),
        ("random_states_0.pkl", None, "field 'numpy_random_seed' is not a random-number generator state"),
        ("trainer_state.json", b'{"step": "6"}', "field 'step' is '6', expected an integer"),
        ("trainer_state.json", b"[]", "expected a JSON object, got list"),
        ("trainer_state.json", json.dumps(saved | {"lr_scale": 2}).encode(), "'lr_scale' is 2, expected a number in"),
        ("best_weights.safetensors", b"\x00" * 12, "unreadable"),
        ("random_states_0.pkl", torch_bytes([1, 2, 3]), "(a list)"),
        ("model.safetensors", None, "the training state cannot be loaded"),  # None below: truncated to half
        ("optimizer.bin", None, "the training state cannot be loaded"),
    ]
    for number, (name, content, message) in enumerate(cases):
        case = Path(shutil.copytree(root / "pristine", tmp_path / f"case-{number}"))
        target = case / "checkpoints" / "checkpoint_1" / name
        named = case / "checkpoints" / "checkpoint_1" if name.startswith("custom") else target
        if content is None and name != "random_states_0.pkl":  # a file cut short (a disk that filled up)
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
            named = target.parent
        elif content is None:  # a well-formed pickle of the wrong states, which Accelerate itself would apply
            states = torch.load(target, weights_only=False)  # our own file, written by the fixture's run
            states["numpy_random_seed"] = ("MT19937", states["numpy_random_seed"][1][:10], 0, 0, 0.0)
            torch.save(states, target)
        else:
            target.write_bytes(content)
        assert pretrain_main([*argv, "--output_dir", str(case), "--resume"]) == 2
        error = capsys.readouterr().err
        assert str(named) in error and message in error, error
        assert not ran.exists()


# ------------------------------------------------------------------ two processes = one process with the global batch


@pytest.fixture(scope="module")
def even_world(tmp_path_factory):
    """A tiny `food` domain whose 48 users all have 8 interactions: every training sequence has the same number of
    targets, and 48 sequences make exactly 3 global batches of 16."""
    from mmsr_peft.data.synthetic import SyntheticWorldConfig, generate_world

    root = tmp_path_factory.mktemp("even")
    config = SyntheticWorldConfig(num_items=60, num_users=48, min_len=8, max_len=8, image_size=32)
    generate_world(root / "synthetic", ["food", "home", "movies", "office", "arts", "scientific"], config=config)
    return root


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one_with_the_global_batch(even_world, tmp_path):
    """Two DDP processes with batch 8 against one process with batch 16: after 3 AdamW steps every weight agrees to
    5e-5 and every tensor to 1e-6 RMS (observed here: 8e-6 and 1.3e-7; with the default sampled softmax and dropout,
    whose negatives and masks are drawn per process, the runs differ by ~1e-2 and ~5e-3 RMS). The full-catalog
    softmax, no dropout and equal-length sequences make the two losses the same function of the same batch, so
    only rounding differs; Adam divides each gradient by its own size, so a component whose gradient nearly
    cancels turns that rounding into a visible step: the bound is on those steps. Attention key biases are left
    out: their gradient is exactly zero (softmax ignores a shift shared by all keys), so Adam steps on pure noise."""
    flags = [*TINY_MODEL_FLAGS, *TINY_TRAIN_FLAGS, "--domains", "food", "--data_dir", str(even_world)]
    flags += ["--num_epochs", "1", "--loss", "full_ce", "--dropout", "0"]
    assert pretrain_main([*flags, "--batch_size", "16", "--output_dir", str(tmp_path / "one")]) == 0

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port), str(ROOT / "recipes/pretrain.py")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    argv = [*flags, "--batch_size", "8", "--output_dir", str(tmp_path / "two")]
    run = subprocess.run([*launch, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "two" / "metrics.json").is_file(), run.stderr[-4000:]  # judged by output (ENVIRONMENT.md)

    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    steps = [json.loads((tmp_path / n / "metrics.json").read_text())["history"][-1]["step"] for n in ("one", "two")]
    assert steps == [3, 3]
    assert one.keys() == two.keys()
    for name in one:
        difference = one[name] - two[name]
        if name.endswith("in_proj_bias"):  # (3D,): query, key and value biases; drop the key's
            d = len(difference) // 3
            difference = torch.cat([difference[:d], difference[2 * d :]])
        assert difference.abs().max() <= 5e-5, (name, difference.abs().max().item())
        assert difference.pow(2).mean().sqrt() <= 1e-6, (name, difference.pow(2).mean().sqrt().item())


# ------------------------------------------------------------------ security


@pytest.mark.slow
def test_publishing_never_prints_logs_or_writes_the_token(interrupted, monkeypatch, caplog, capfd, tmp_path):
    root, _ = interrupted
    secret = "hf_reliabilitySecretToken0123456789"
    monkeypatch.setattr(HUB, "token", secret)  # the local Hub now accepts only this token
    monkeypatch.setenv("HF_TOKEN", secret)
    caplog.set_level(logging.DEBUG)  # every logger, at its most verbose
    folder = Path(shutil.copytree(root / "straight", tmp_path / "base"))
    before = {p: p.stat().st_mtime_ns for p in Path(os.environ["HF_HOME"]).rglob("*")}

    assert publish_main(["--folder", str(folder), "--repo_id", "org/token-check"]) == 0
    assert publish_main(["--folder", str(folder), "--repo_id", "org/token-check", "--overwrite_card"]) == 0

    out, err = capfd.readouterr()
    assert "Published base" in out
    assert secret not in out + err
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert "model.safetensors" in HUB.list_files("org/token-check")
    for name in HUB.list_files("org/token-check"):
        assert secret.encode() not in HUB.read_file("org/token-check", name), name
    written = [p for p in folder.rglob("*") if p.is_file()]
    written += [p for p in Path(os.environ["HF_HOME"]).rglob("*") if p.is_file() and p not in before]
    assert not [p for p in written if secret.encode() in p.read_bytes()]


REMOTE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
"""


def test_loading_a_repo_that_ships_code_never_runs_it(tmp_path):
    """A Hub repo whose config points the text encoder at its own Python module (`auto_map`, which transformers
    runs only with trust_remote_code=True): mmsr_peft neither downloads nor runs that module."""
    from huggingface_hub import HfApi

    from mmsr_peft.builder import ModelArguments, build_model

    args = ModelArguments(text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=32)
    build_model(args).save_pretrained(tmp_path / "base")
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    config["text"]["backbone"]["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (tmp_path / "base" / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (tmp_path / "base" / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    api = HfApi()
    api.create_repo("org/ships-code", exist_ok=True)
    api.upload_folder(repo_id="org/ships-code", folder_path=str(tmp_path / "base"))
    assert "evil.py" in HUB.list_files("org/ships-code")

    try:
        model = MMSRModel.from_pretrained("org/ships-code")
    except (CheckpointError, ValueError):
        model = None  # refusing the repo is as good as ignoring its code
    assert not marker.exists()
    from huggingface_hub.constants import HF_HUB_CACHE

    assert not list(Path(HF_HUB_CACHE).glob("models--org--ships-code/snapshots/*/evil.py"))
    if model is not None:
        assert type(model.item_tower.text.backbone).__module__.startswith("transformers.")


def test_package_source_never_passes_trust_remote_code():
    """A complement to the behavioural test above: no code path can opt into remote code."""
    sources = [p for folder in ("mmsr_peft", "recipes", "scripts") for p in (ROOT / folder).rglob("*.py")]
    assert sources and not [p for p in sources if "trust_remote_code" in p.read_text()]


def test_image_path_outside_the_domain_folder_is_never_read(tmp_path):
    """Paths in items.parquet are resolved (symlinks too) and must stay inside the domain folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmsr_peft import Catalog
    from mmsr_peft.errors import DataError

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    domain = tmp_path / "domain"
    (domain / "images").mkdir(parents=True)
    (domain / "images" / "link.png").symlink_to(secret)
    for image in ("../secret.png", str(secret), "images/link.png", "images/../../secret.png"):
        table = pa.table({"item_id": ["a"], "text": ["t"], "image": [image]})
        pq.write_table(table, domain / "items.parquet")
        with pytest.raises(DataError, match="points outside the domain folder"):
            Catalog.from_folder(domain)
