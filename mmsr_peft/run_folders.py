"""Run folders (`--output_dir` of `mmsr-pretrain` and `mmsr-adapt`): one run each, never a mix of two.

A folder that already holds a run is refused unless the run continues it (`--resume`) or replaces it
(`--overwrite_output_dir`, which empties it first); a folder the run reads (`--base`) is always refused; and while a
run writes its folder it holds a lock there, so a second run started on the same folder stops at once instead of
interleaving its files with the first one's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from .errors import RunFolderBusy
from .files import atomic_write_text

LOCK_FILE = ".mmsr-run.lock"
# What marks a folder as holding a run (files every run writes, at its first best epoch or at its end)
RUN_MARKERS = (
    "metrics.json",
    "run_args.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "checkpoints",
)


def check_output_dir(
    output_dir: str,
    protected: dict[str, str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> None:
    """Refuses, before any work, an `output_dir` a run cannot or must not write: an existing file; one of the
    `protected` folders (`{flag: folder}`, e.g. the `--base` a run reads, which it would overwrite), or with
    `overwrite` a folder that holds one of them (emptying it would delete it); a folder that holds another run,
    unless `overwrite` (it is emptied by `claim_output_dir`) or `resume` (the run goes on); with `overwrite`, a
    folder that holds files but no run (it is not a run folder to replace)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder")
    for flag, folder in (protected or {}).items():
        if not folder or not Path(folder).exists():
            continue
        if path.resolve() == Path(folder).resolve():
            raise ValueError(f"--output_dir {output_dir} is the {flag} folder: the run would write over it")
        if overwrite and not resume and path.resolve() in Path(folder).resolve().parents:
            raise ValueError(
                f"--output_dir {output_dir} holds the {flag} folder {folder}: --overwrite_output_dir would delete it"
            )
    found = [name for name in RUN_MARKERS if (path / name).exists()]
    if found and not (overwrite or resume):
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({', '.join(found)}): pass --overwrite_output_dir to "
            "replace it, --resume to continue it, or choose another folder"
        )
    # a run stopped in its first epoch may have written its tracking logs alone
    others = (
        sorted(entry.name for entry in path.iterdir() if entry.name not in (LOCK_FILE, "logs"))
        if path.is_dir()
        else []
    )
    if overwrite and not resume and others and not found:
        raise ValueError(
            f"--output_dir {output_dir} holds files but no run ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}): --overwrite_output_dir replaces an earlier run's folder and "
            "would delete them; choose another folder"
        )


class RunFolderLock:
    """An exclusive lock on a run folder (`flock` on its `.mmsr-run.lock`), held until `release` or the process
    ends (the kernel drops it then: a killed run leaves the file behind, but no lock)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self.handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunFolderBusy(
                    f"--output_dir {output_dir}: another run is writing this folder; wait for it or choose another"
                ) from None
            raise
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        """Removes the lock file (while still holding the lock) and lets go of it."""
        if not self.handle.closed:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


@contextlib.contextmanager
def claim_output_dir(output_dir: str, main_process: bool = True, overwrite: bool = False, resume: bool = False):
    """While the block runs, the main process holds the lock of `output_dir`; on entering, with `overwrite` and no
    `resume`, it empties the folder of the previous run, so the folder ends up holding this run alone. The other
    processes of a multi-process run neither lock nor write."""
    if not main_process:
        yield
        return
    created = not Path(output_dir).exists()
    lock = RunFolderLock(output_dir)
    try:
        if overwrite and not resume:
            for entry in Path(output_dir).iterdir():
                if entry.name == LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        yield
    finally:
        lock.release()
        if created and not any(Path(output_dir).iterdir()):  # a run that failed before writing leaves nothing
            Path(output_dir).rmdir()


def save_run_args(folder: str | Path, *arguments) -> None:
    """Writes the run's arguments (not the architecture) to `run_args.json`."""
    merged = {name: value for args in arguments for name, value in dataclasses.asdict(args).items()}
    atomic_write_text(Path(folder) / "run_args.json", json.dumps(merged, indent=2) + "\n")
