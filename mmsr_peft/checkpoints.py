"""Checkpoint folders: where a base model's files are (a local folder or a Hub repo), and reading its weights safely
(safetensors; pickle only when asked, and then tensors only)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import check_finite, is_local_path


def read_json(path: Path):
    """The JSON value in `path`; a file that is not valid JSON is an error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.pth")


def resolve_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, allow_pickle: bool = False
) -> Path:
    """A local folder as is; anything else is a Hub repo id, downloaded (or read from the cache). Pickle weights
    are only downloaded with `allow_pickle=True`."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if is_local_path(name_or_path):
        raise CheckpointError(f"{name_or_path}: not a checkpoint folder, and not a Hub repo id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.md", "*.model", *(PICKLE_FILES if allow_pickle else ())]
    try:
        folder = Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    except RepositoryNotFoundError as err:
        raise CheckpointError(
            f"{name_or_path}: no local folder {path.resolve()}, and no such repo on the Hub"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:  # offline cache misses, connection errors, bad ids
        raise CheckpointError(
            f"{name_or_path}: no local folder {path.resolve()}, and not available from the Hub as a repo id ({err})"
        ) from err
    if not (folder / WEIGHTS_FILE).is_file() and not allow_pickle:
        from huggingface_hub import HfApi

        offered = [f for f in HfApi().list_repo_files(str(name_or_path), revision=revision) if f in PICKLE_FILES]
        if offered:
            raise CheckpointError(
                f"{name_or_path}: the repo offers only pickle weights ({offered[0]}); pickle can run arbitrary code, "
                "so it is refused. Ask for safetensors, or pass allow_pickle=True if you trust its author."
            )
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Reads `model.safetensors` (every float tensor must be finite); a pickle file is only read with
    `allow_pickle=True` (it can run code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if path.is_file():
        try:
            return check_finite(load_file(path), path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    pickles = [folder / name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{folder}: only pickle weights ({pickles[0].name}) found; pickle can run arbitrary code, so it is "
            "refused. Convert it to safetensors, or pass allow_pickle=True if you trust its author."
        )
    if pickles:
        return read_pickle_weights(pickles[0])
    raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")


def read_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """A pickled weights file the caller has allowed (`allow_pickle=True`), read weights-only: even an allowed
    pickle may hold tensors only, never code; every float tensor must be finite."""
    import pickle

    try:
        return check_finite(torch.load(path, map_location="cpu", weights_only=True), path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable weights file ({err})") from err
