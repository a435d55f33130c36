"""What a training run keeps on disk to be resumed, and what it reports: `TrainState` (counters, validation history
and best weights, as JSON and safetensors), the checks a saved training state passes before Accelerate loads it, and
the training part of a run's `metrics.json`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .arguments import TrainingArguments
from .errors import CheckpointError

COMPLETE_MARKER = "complete"  # written last into each saved training state


def saved_states(output_dir: str | Path) -> list[Path]:
    """The training states a run saved under `output_dir/checkpoints`, oldest first (complete or not)."""
    saved = Path(output_dir, "checkpoints").glob("checkpoint_*")
    return sorted(saved, key=lambda folder: int(folder.name.split("_")[1]))


def last_complete_state(output_dir: str | Path) -> Path | None:
    """The newest training state under `output_dir/checkpoints` that was written whole (None if there is none):
    the one `--resume` continues from."""
    complete = [folder for folder in saved_states(output_dir) if (folder / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


class TrainState:
    """Progress saved beside Accelerate's state: counters and history as JSON (`trainer_state.json`), the best
    weights as safetensors (`best_weights.safetensors`), and with `--ema_decay` the moving average of the trainable
    weights (`ema_weights.safetensors`). Nothing of ours is a pickle, so resuming from a folder
    someone else wrote never runs code (Accelerate unpickles registered objects with `weights_only=False`)."""

    FILE, WEIGHTS, EMA = "trainer_state.json", "best_weights.safetensors", "ema_weights.safetensors"
    COUNTERS = ("step", "epoch", "stale", "best_epoch")
    # Training arguments that leave the trained weights as they are: not recorded in the state, so changing them
    # on --resume is silent. Every other one is recorded, and a resume that changes it is told (`changed_args`).
    NEUTRAL_ARGS = frozenset(
        "output_dir resume overwrite_output_dir patience eval_batch_size save_steps save_total_limit report_to "
        "feature_cache_dir cache_frozen_blocks gradient_checkpointing feed_forward_checkpointing torch_compile "
        "torch_compile_backend torch_compile_mode pad_items_to_multiple_of".split()
    )

    def __init__(self):
        self.step, self.epoch, self.stale = 0, 0, 0
        self.best_metric, self.best_epoch = -math.inf, -1
        self.best_weights: dict[str, torch.Tensor] = {}
        self.ema_weights: dict[str, torch.Tensor] = {}  # --ema_decay: the moving average, by parameter name
        self.history: list[dict] = []
        self.loss_sum, self.loss_steps = 0.0, 0  # the current epoch's training loss so far (its mean is logged)
        self.seconds = {"train": 0.0, "valid": 0.0}  # wall time in training steps and in validation, resumes included
        self.lr_scale = 1.0  # what --lr_scheduler_type reduce_lr_on_plateau has multiplied the learning rate by
        self.args: dict = {}  # the training arguments the state was saved with (`record_args`), as JSON values
        self.processes: int | None = None  # how many processes trained (None: a state saved before it was recorded)

    def epoch_loss(self) -> float | None:
        """The mean training loss of the epoch's steps (None before any, as for the starting model)."""
        return self.loss_sum / self.loss_steps if self.loss_steps else None

    def save(self, folder: Path) -> None:
        from .files import atomic_save_tensors, atomic_write_text

        counters = {name: getattr(self, name) for name in self.COUNTERS}
        best = None if math.isinf(self.best_metric) else self.best_metric
        loss = {"loss_sum": self.loss_sum, "loss_steps": self.loss_steps}
        rest = {"best_metric": best, "lr_scale": self.lr_scale, "seconds": self.seconds, "processes": self.processes}
        rest["args"] = self.args
        rest["history"] = self.history
        text = json.dumps({**counters, **loss, **rest}, indent=1)
        atomic_save_tensors(folder / self.WEIGHTS, self.best_weights)
        if self.ema_weights:
            atomic_save_tensors(folder / self.EMA, {name: value.cpu() for name, value in self.ema_weights.items()})
        atomic_write_text(folder / self.FILE, text + "\n")

    def load(self, folder: Path) -> None:
        """Reads `save`'s files, refusing what they would not have written (names the file and the field)."""
        path = folder / self.FILE
        if not path.is_file():
            raise CheckpointError(
                f"{folder}: no {self.FILE} (a training state written by an older mmsr_peft, whose pickle is not "
                "loaded); start again without --resume"
            )
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(saved).__name__}")
        for name in self.COUNTERS:
            if not isinstance(saved.get(name), int) or isinstance(saved.get(name), bool):
                raise CheckpointError(f"{path}: field {name!r} is {saved.get(name)!r}, expected an integer")
        best = saved.get("best_metric")
        if not isinstance(saved.get("history"), list) or not (best is None or isinstance(best, (int, float))):
            raise CheckpointError(f"{path}: expected a 'history' list and a numeric 'best_metric'")
        if best is not None and not math.isfinite(best):
            raise CheckpointError(f"{path}: field 'best_metric' is {best}, expected a finite number")
        for name in self.COUNTERS:
            setattr(self, name, saved[name])
        self.best_metric = -math.inf if best is None else float(best)
        self.history = saved["history"]
        loss_sum, loss_steps = saved.get("loss_sum", 0.0), saved.get("loss_steps", 0)  # absent before tracking
        if not isinstance(loss_sum, (int, float)) or not isinstance(loss_steps, int) or loss_steps < 0:
            raise CheckpointError(f"{path}: fields 'loss_sum', 'loss_steps' are {loss_sum!r}, {loss_steps!r}")
        self.loss_sum, self.loss_steps = float(loss_sum), loss_steps
        seconds = saved.get("seconds", {"train": 0.0, "valid": 0.0})  # absent before runtimes were recorded
        if not isinstance(seconds, dict) or not all(isinstance(seconds.get(k), (int, float)) for k in self.seconds):
            raise CheckpointError(f"{path}: field 'seconds' is {seconds!r}, expected {{'train': s, 'valid': s}}")
        self.seconds = {key: float(seconds[key]) for key in self.seconds}
        lr_scale = saved.get("lr_scale", 1.0)  # absent before reduce_lr_on_plateau
        if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) or not 0 < lr_scale <= 1:
            raise CheckpointError(f"{path}: field 'lr_scale' is {lr_scale!r}, expected a number in (0, 1]")
        self.lr_scale = float(lr_scale)
        saved_args = saved.get("args", {})  # absent before the arguments were recorded
        if not isinstance(saved_args, dict):
            raise CheckpointError(f"{path}: field 'args' is {saved_args!r}, expected an object of training arguments")
        self.args = saved_args
        processes = saved.get("processes")
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 1):
            raise CheckpointError(f"{path}: field 'processes' is {processes!r}, expected a positive integer")
        self.processes = processes
        self.best_weights = _read_tensors(folder / self.WEIGHTS)
        self.ema_weights = _read_tensors(folder / self.EMA) if (folder / self.EMA).exists() else {}

    def record_args(self, args: TrainingArguments) -> None:
        """Keeps the arguments that shape the trained weights (all but `NEUTRAL_ARGS`) for the states saved next."""
        self.args = self._recorded(args)

    def changed_args(self, args: TrainingArguments) -> list[str]:
        """`name saved -> now` for each recorded argument that `args` sets otherwise (none for an older state,
        which recorded none; an argument added since counts as changed only when set away from its default)."""
        if not self.args:
            return []
        now, defaults = self._recorded(args), self._recorded(type(args)())
        return [
            f"{name} {self.args.get(name, defaults[name])!r} -> {value!r}"
            for name, value in now.items()
            if self.args.get(name, defaults[name]) != value
        ]

    @classmethod
    def _recorded(cls, args: TrainingArguments) -> dict:
        """The arguments that shape the weights as `trainer_state.json` holds them (tuples as lists)."""
        values = {name: value for name, value in asdict(args).items() if name not in cls.NEUTRAL_ARGS}
        return json.loads(json.dumps(values))

    def check_weights(self, expected: dict[str, torch.Tensor], folder: Path) -> None:
        """Refuses best (and averaged) weights that do not fit the model being trained (names and shapes)."""
        for file, weights in ((self.WEIGHTS, self.best_weights), (self.EMA, self.ema_weights)):
            for name, tensor in weights.items():
                if name not in expected or expected[name].shape != tensor.shape:
                    shape = tuple(expected[name].shape) if name in expected else None
                    raise CheckpointError(
                        f"{folder / file}: tensor {name!r} {tuple(tensor.shape)} does not fit the model "
                        f"(expected {shape})"
                    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # missing, truncated or not safetensors: SafetensorError, OSError, ...
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def check_training_state(folder: Path, process_index: int) -> None:
    """Refuses what Accelerate's `load_state` would unpickle with `weights_only=False` (custom checkpoints: we write
    none), and an RNG state file that it would load and apply silently although it is not one it wrote: Python's
    Mersenne Twister state, NumPy's `MT19937` state and torch's CPU generator state, with their sizes."""
    from accelerate.utils import load

    foreign = sorted(p.name for p in folder.glob("custom_checkpoint_*"))
    if foreign:  # Accelerate would unpickle these with weights_only=False: they could run code
        raise CheckpointError(
            f"{folder}: holds {foreign}, pickles that this mmsr_peft never writes and will not load (they can run "
            "code; an older version wrote them): start again without --resume"
        )
    path = folder / f"random_states_{process_index}.pkl"
    try:
        states = load(path)  # weights_only: tensors, arrays and plain containers, never code
    except Exception as err:  # a missing file, a pickle with other globals, garbage: all refused the same way
        raise CheckpointError(
            f"{path}: not a random-state file written by Accelerate ({type(err).__name__})"
        ) from None
    if not isinstance(states, dict):
        raise CheckpointError(f"{path}: not a random-state file written by Accelerate (a {type(states).__name__})")
    python, numpy_state, torch_state = (
        states.get(k) for k in ("random_state", "numpy_random_seed", "torch_manual_seed")
    )
    checks = {
        "random_state": lambda: isinstance(python, tuple) and len(python) == 3 and len(python[1]) == 625,
        "numpy_random_seed": lambda: (
            isinstance(numpy_state, tuple)
            and numpy_state[0] == "MT19937"
            and isinstance(numpy_state[1], np.ndarray)
            and numpy_state[1].shape == (624,)
        ),
        "torch_manual_seed": lambda: (
            isinstance(torch_state, torch.Tensor)
            and torch_state.dtype == torch.uint8
            and torch_state.shape == torch.get_rng_state().shape
        ),
    }
    for field_name, check in checks.items():
        try:
            ok = check()
        except (TypeError, IndexError, KeyError):  # a tuple too short, a value without a length, ...
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: field {field_name!r} is not a random-number generator state")


def training_record(state: TrainState, args: TrainingArguments) -> dict:
    """What a run's `metrics.json` says about its training: the best epoch, the epochs run, whether it stopped by
    `patience` or at the `ceiling` of `num_epochs` (then it may not have converged), and the validation history."""
    stopped_by = "patience" if state.stale >= args.patience else "ceiling"
    if 0 < args.max_steps <= state.step and state.stale < args.patience:
        stopped_by = "max_steps"
    return {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_by": stopped_by,
        "history": state.history,
        "runtime": {
            "train_s": round(state.seconds["train"], 3),
            "valid_s": round(state.seconds["valid"], 3),
            "steps": state.step,
            "steps_per_second": round(state.step / state.seconds["train"], 3) if state.seconds["train"] else None,
        },
    }
