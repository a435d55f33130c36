"""Experiment tracking through Accelerate's trackers (`--report_to`), and each run's `training_curves.png`."""

import json

import pytest
from conftest import tiny_pretrain_argv
from PIL import Image

from mmsr_peft.cli import pretrain_main
from mmsr_peft.training import trackers


def test_a_run_reports_to_tensorboard_and_draws_its_curves(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = tiny_pretrain_argv(data_dir, "--num_epochs", "2", "--output_dir", str(out), "--report_to", "tensorboard")
    assert pretrain_main(argv) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(h["train_loss"] > 0 for h in history)

    events = EventAccumulator(str(out / "logs" / "tensorboard"))
    events.Reload()
    assert {"train/learning_rate", "train/items_per_step", "train/steps_per_second", "valid/hr@10"} <= set(
        events.Tags()["scalars"]
    )
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, history[-1]["step"] + 1))  # one point per optimizer step
    first = history[0]["step"]  # the epoch's mean in metrics.json is the mean of its logged steps
    assert history[0]["train_loss"] == pytest.approx(sum(e.value for e in losses[:first]) / first, rel=1e-5)
    valid = events.Scalars("valid/ndcg@10")
    assert [e.step for e in valid] == [h["step"] for h in history]
    assert [e.value for e in valid] == pytest.approx([h["valid_ndcg@10"] for h in history], rel=1e-6)
    (settings,) = (out / "logs" / "tensorboard").rglob("hparams.yml")
    text = settings.read_text()
    assert "training/seed: 0" in text and "model/fusion/type: concat" in text

    with Image.open(out / "training_curves.png") as image:
        assert image.format == "PNG" and image.size == (920, 360)
    assert "(training_curves.png)" in (out / "README.md").read_text()  # the card shows it


def test_curves_of_a_run_whose_loss_diverged_leave_the_values_out_and_name_their_epochs(tmp_path):
    from mmsr_peft.plots import plot_training_curves

    def history(loss_2: float) -> list[dict]:
        epochs = [{"epoch": 0, "valid_ndcg@10": 0.08, "valid_hr@10": 0.2}]
        epochs += [{"epoch": 1, "train_loss": 4.0, "valid_ndcg@10": 0.09, "valid_hr@10": 0.21}]
        return [*epochs, {"epoch": 2, "train_loss": loss_2, "valid_ndcg@10": 0.0, "valid_hr@10": 0.0}]

    def red(pixel: tuple) -> bool:  # the note's colour (200, 40, 40), whatever the font's antialiasing does to it
        return pixel[0] >= 150 and max(pixel[1:]) <= 90

    for loss_2, noted in ((float("nan"), True), (float("inf"), True), (3.5, False)):
        path = plot_training_curves(history(loss_2), 1, tmp_path / f"curves-{loss_2}.png")
        with Image.open(path) as image:
            assert any(map(red, image.convert("RGB").getdata())) == noted, loss_2


def test_report_to_resolves_auto_none_all_and_refuses_unknown_or_missing_trackers():
    from accelerate.tracking import get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    assert "tensorboard" in available  # the dev extras install it
    assert (
        trackers(["auto"]) == ["tensorboard"] and trackers(["none"]) == [] and trackers(["all"]) == sorted(available)
    )
    with pytest.raises(ValueError, match="--report_to tensorbored: unknown tracker; one of auto, none, all"):
        trackers(["tensorbored"])
    missing = next(
        name for name in ("wandb", "aim", "comet_ml", "mlflow", "dvclive", "swanlab") if name not in available
    )
    with pytest.raises(ImportError, match=f"--report_to {missing}: the {missing} package is not installed"):
        trackers([missing])
