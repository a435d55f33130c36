"""Exceptions raised at the toolkit's boundaries (data files, checkpoints, command lines)."""


class DataError(ValueError):
    """A data file or folder does not hold what the processed domain format expects; the message names it."""


class CheckpointError(ValueError):
    """A checkpoint or adapter cannot be loaded as asked (missing/unexpected keys, unsafe format, mismatch)."""


class RunFolderBusy(RuntimeError):
    """Another run holds the lock of the run folder (`--output_dir`) this run was asked to write."""
