"""`training_curves.png`: what a run's training did, per epoch, drawn with Pillow (no plotting library needed).

Left, the mean training loss of each epoch; right, the validation NDCG@10 and HR@10 after each epoch (full ranking,
the protocol of `mmsr_peft.evaluation`). A dashed line marks the epoch whose weights were kept (the best validation
NDCG@10). Epoch 0, when present, is the starting model (`--evaluate_start`): it has validation metrics, no loss.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .files import atomic_file

CURVES_FILE = "training_curves.png"
COLOURS = [(76, 114, 176), (221, 132, 82), (85, 168, 104)]
PANEL_WIDTH, HEIGHT, MARGIN = 460, 340, (62, 20, 40, 50)  # margins: left, right, top, bottom


def _panel(draw, x0: int, title: str, series: dict[str, list[tuple[float, float]]], best_epoch: int) -> None:
    """One chart at horizontal offset `x0`: a line per series, axes with their ranges, a dashed best-epoch line.
    Values that are not finite (a run whose loss diverged) are left out and their epochs named above the chart."""
    left, right, top, bottom = MARGIN
    draw.text((x0 + left, 12), title, fill="black")
    skipped = sorted({int(x) for line in series.values() for x, y in line if not math.isfinite(y)})
    if skipped:
        epochs = ", ".join(map(str, skipped[:8])) + (", ..." if len(skipped) > 8 else "")
        draw.text((x0 + left, 24), f"not finite at epoch {epochs}", fill=(200, 40, 40))
    series = {label: [(x, y) for x, y in line if math.isfinite(y)] for label, line in series.items()}
    points = [p for line in series.values() for p in line]
    if not points:
        draw.text((x0 + left, HEIGHT // 2), "nothing recorded", fill="black")
        return
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.08 or abs(y_hi) * 0.08 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    width, height = PANEL_WIDTH - left - right, HEIGHT - top - bottom

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + left + (x - x_lo) / (x_hi - x_lo) * width, top + (y_hi - y) / (y_hi - y_lo) * height

    draw.rectangle([x0 + left, top, x0 + left + width, top + height], outline="black")
    for value in (y_hi - pad, y_lo + pad):
        draw.text((x0 + 4, at(x_lo, value)[1] - 6), f"{value:.4g}", fill="black")
    for value in (x_lo, x_hi):
        draw.text((at(value, y_lo)[0] - 4, top + height + 6), f"{value:g}", fill="black")
    draw.text((x0 + left, top + height + 24), "epoch", fill="black")
    if x_lo <= best_epoch <= x_hi:
        x = at(best_epoch, y_lo)[0]
        for y in range(top, top + height, 8):
            draw.line([x, y, x, min(y + 4, top + height)], fill=(120, 120, 120))
        draw.text((x + 4, top + 4), f"best: {best_epoch}", fill=(90, 90, 90))
    for i, (label, line) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = [at(x, y) for x, y in line]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((x0 + left + 60 + 120 * i, top + height + 24), label, fill=colour)  # the legend, under the axis


def plot_training_curves(history: list[dict], best_epoch: int, path: str | Path, title: str = "") -> Path:
    """Draws `history` (the `history` of a run's `metrics.json`: per epoch `epoch`, `train_loss`, `valid_*`) into
    the PNG `path`, written under a temporary name and renamed (never half-written). Returns `path`."""
    from PIL import Image, ImageDraw

    path = Path(path)
    loss = {"train loss": [(h["epoch"], h["train_loss"]) for h in history if h.get("train_loss") is not None]}
    valid = {
        name: [(h["epoch"], h[f"valid_{key}"]) for h in history if f"valid_{key}" in h]
        for name, key in (("valid NDCG@10", "ndcg@10"), ("valid HR@10", "hr@10"))
    }
    image = Image.new("RGB", (2 * PANEL_WIDTH, HEIGHT + 20), "white")
    draw = ImageDraw.Draw(image)
    _panel(
        draw, 0, f"{title}: training loss (epoch mean)" if title else "training loss (epoch mean)", loss, best_epoch
    )
    _panel(draw, PANEL_WIDTH, "validation, full ranking", valid, best_epoch)
    with atomic_file(path) as (fd, _), os.fdopen(fd, "wb") as out:
        image.save(out, format="PNG")
    return path
