"""What every command leaves in its run folder beside the weights, written in one place: `metrics.json` (the
results and the training record), `test_ranks.npy` (the rank of every test case, for paired comparisons),
`run_args.json` (the arguments, not the architecture), and for a trained run `training_curves.png` and its model
card (`README.md`), which is drawn from what the folder then holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .cards import adapter_card, base_card
from .evaluation import RANKS_FILE
from .files import atomic_file, atomic_write_text
from .plots import CURVES_FILE, plot_training_curves
from .run_folders import save_run_args
from .train_state import TrainState

CARDS = ("base", "adapter")


def write_run_outputs(
    output_dir: str | Path,
    summary: dict,
    arguments: tuple,
    state: TrainState | None = None,
    card: str | None = None,
    base_model: str | None = None,
    test_ranks: np.ndarray | None = None,
) -> None:
    """Writes `summary` to `metrics.json` and the argument dataclasses to `run_args.json`; with `test_ranks` (the
    main protocol's rank of every test case, `EvaluationReport.ranks`) `RANKS_FILE`; with `state` (a trained run's)
    the training curves of its history; with `card` ("base" or "adapter", whose base is `base_model`) the model
    card, last, since it reads the other files. Each file is written atomically."""
    if card is not None and card not in CARDS:
        raise ValueError(f"unknown card {card!r}; valid: {', '.join(CARDS)}")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if test_ranks is not None:  # before metrics.json, which names it: a folder never names a file it lacks
        with atomic_file(folder / RANKS_FILE) as (fd, tmp), os.fdopen(fd, "wb") as handle:
            np.save(handle, np.asarray(test_ranks, dtype=np.int64))
        summary = {**summary, "test_ranks": RANKS_FILE}
    atomic_write_text(folder / "metrics.json", json.dumps(summary, indent=2) + "\n")
    save_run_args(folder, *arguments)
    if state is not None:
        plot_training_curves(state.history, state.best_epoch, folder / CURVES_FILE, folder.name)
    if card == "base":
        atomic_write_text(folder / "README.md", base_card(folder, repo_id=str(output_dir)))
    elif card == "adapter":
        atomic_write_text(folder / "README.md", adapter_card(folder, repo_id=str(output_dir), base_model=base_model))
