"""Atomic writes: a reader sees the previous version or the new one, never a half-written file or folder."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import glob
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_ACTIVE: set[Path] = set()  # temporary folders this process is writing right now


def is_local_path(name: str | os.PathLike) -> bool:
    """Whether `name` can only be a path on this machine, never a Hub repo id ('name' or 'org/name'): it exists,
    starts with `.`, `/` or `~`, or has more than one `/`. Such a name that is no folder fails at once, with no
    request to the Hub."""
    text = str(name)
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


@contextlib.contextmanager
def atomic_directory(folder: str | os.PathLike, owned: Iterable[str] = ()):
    """Yields a temporary folder beside `folder`; when the block succeeds, that folder becomes `folder` in one step.

    The new version holds what the block wrote plus every entry of the previous version that the block did not
    write (training states, metrics, ...), hard-linked so the previous version stays whole until the swap. The
    entries named by a pattern of `owned` (`fnmatch` on top-level names: the files the writer owns) are the
    block's alone: one it did not write this time (left by an earlier save of another kind) is dropped, and a
    sub-folder it wrote is not merged with the previous one. On Linux the swap is one atomic rename exchange: a
    crash at any instant leaves the previous version or the new one, never a mix and never no folder. Elsewhere it
    is two renames, and the next write puts back a previous version that a crash left between them. When the block
    fails, nothing in `folder` changes and the temporary folder is removed; one left by a killed writer is removed
    by the next write.
    """
    folder = Path(folder)
    if folder.is_symlink():  # write where the link points, keep the link
        folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _recover(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a plain mkdir would honour the umask
    _ACTIVE.add(tmp)
    try:
        try:
            yield tmp
        except OSError as err:  # e.g. disk full inside a library writer: say which folder was being written
            if err.filename is None and err.errno is not None:
                message = f"{err.strerror or err} (the previous version is unchanged)"
                raise OSError(err.errno, message, str(folder)) from err
            raise
        if folder.exists():
            _link_missing(folder, tmp, skip=tuple(owned))
        replace_directory(tmp, folder)
    finally:
        _ACTIVE.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(new: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Moves the finished folder `new` to `folder` in one step, replacing (and removing) any previous version.

    `new` must be beside `folder` (same file system). On Linux the replacement is one atomic rename exchange."""
    new, folder = Path(new), Path(folder)
    if not folder.exists():
        os.replace(new, folder)
        return
    _swap(new, folder)  # the previous version is now at `new`
    shutil.rmtree(new, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yields `(fd, tmp)`: an open descriptor and the path of a temporary file beside `path` (folders created); when
    the block succeeds, that file replaces `path` in one rename, with the permissions a plain `open()` would give it
    (the umask's); when it fails, it is removed and `path` is unchanged. The block owns `fd` (closes it, or hands
    it to `os.fdopen`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 (set here: the block may have replaced tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    try:
        with atomic_file(path) as (fd, _):
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, f"{err.strerror or err} (the previous version is unchanged)", str(path)) from err


def atomic_save_tensors(path: str | os.PathLike, tensors: dict) -> None:
    """Writes `tensors` to the safetensors file `path` through a temporary file in the same folder and a rename."""
    from safetensors.torch import save_file

    with atomic_file(path) as (fd, tmp):
        os.close(fd)
        save_file({name: value.contiguous() for name, value in tensors.items()}, tmp)


def _link_missing(source: Path, target: Path, skip: tuple[str, ...] = ()) -> None:
    """Adds to `target` every entry of `source` it lacks (merging sub-folders both have), as hard links, except the
    entries whose names match a pattern of `skip`."""
    for entry in source.iterdir():
        if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in skip):
            continue
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if not destination.exists():
                destination.mkdir()
                shutil.copystat(entry, destination)
            if destination.is_dir() and not destination.is_symlink():
                _link_missing(entry, destination)
        elif not destination.exists() and not destination.is_symlink():
            if entry.is_symlink():
                destination.symlink_to(os.readlink(entry))
                continue
            try:
                os.link(entry, destination)
            except OSError:  # a file system without hard links
                shutil.copy2(entry, destination)


def _swap(new: Path, folder: Path) -> None:
    """Puts `new` at `folder` and the previous `folder` at `new`."""
    if _rename_exchange(new, folder):
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, old)
    os.replace(new, folder)  # a crash right before this line leaves `old`: `_recover` puts it back
    os.replace(old, new)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically exchanges two paths (Linux `renameat2(RENAME_EXCHANGE)`); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # C library older than glibc 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # file system or kernel without the flag
        return False
    raise OSError(code, os.strerror(code), str(b))


def _recover(folder: Path) -> None:
    """Cleans up after writers of `folder` that died: puts back a previous version that a crash left between the
    two renames of `_swap`, and removes their temporary folders."""
    for kind in ("old", "tmp"):
        prefix = f".{folder.name}.{kind}-"
        for path in sorted(
            folder.parent.glob(glob.escape(prefix) + "*"), key=lambda p: p.stat().st_mtime, reverse=True
        ):
            pid = path.name.removeprefix(prefix).split("-")[0]
            if not path.is_dir() or not pid.isdigit() or path in _ACTIVE or _alive(int(pid)):
                continue
            if kind == "old" and not folder.exists():
                os.replace(path, folder)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process: the folder is not in _ACTIVE, so it is left from a failed earlier write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def current_umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_tensors(path: Path) -> dict | None:
    """The tensors of a cache file; None when it is missing or damaged (a damaged file is recomputed, never
    trusted)."""
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception as err:
        logger.warning("cache file %s is unreadable (%s); computing its rows again", path, err)
        return None


def check_finite(weights: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """`weights` when every floating-point tensor is finite; a NaN or infinite value (a diverged run, a damaged
    file) is an error naming the tensor, instead of a model that loads and then scores everything NaN."""
    import torch

    from .errors import CheckpointError  # imported here: this module also loads on its own (tests/test_reliability.py)

    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: tensor {name!r} holds {bad} NaN or infinite values of {tensor.numel()}")
    return weights
