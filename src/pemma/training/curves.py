"""What a training run shows while and after it trains: TensorBoard event files beside ``metrics.csv`` (the loss and
learning rate of every step, the validation metrics of every validation) and ``training_curves.png`` (loss and
validation scores against the step), written at the end of training."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pemma.io_utils import atomic_path

#: the figure written into the run folder at the end of training
CURVES_FILE = "training_curves.png"
#: metrics.csv columns that are bookkeeping, not curves
_NOT_CURVES = ("step", "epoch", "seconds", "lr", "events")


class TensorBoardLog:
    """A :class:`torch.utils.tensorboard.SummaryWriter` on the run folder (``tensorboard --logdir runs/`` shows
    every run). A resumed run purges the events after its checkpoint's step, as :class:`MetricsCSV` drops rows.

    Args:
        run_dir: the run folder (the event files go beside ``metrics.csv``).
        purge_step: on resume, the checkpoint's step (events from this step on are discarded); None for a fresh run.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, flush_secs=30)

    def step(self, step: int, loss: float, lr: float) -> None:
        """The training loss and learning rate of one optimiser step."""
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def metrics(self, row: Mapping[str, Any]) -> None:
        """The numeric entries of a ``metrics.csv`` row other than loss / lr (``val_mean`` -> ``val/mean``)."""
        step = int(row["step"])
        for key, value in row.items():
            if key in (*_NOT_CURVES, "loss") or value in ("", None):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(tag, number, step)

    def close(self) -> None:
        self.writer.close()


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in rows:
        try:
            value = float(row.get(key) or "nan")
        except ValueError:
            continue
        if math.isfinite(value):
            steps.append(int(row["step"]))
            values.append(value)
    return steps, values


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path | None:
    """Plot the loss (left) and the validation scores (right: every ``val_*`` column, e.g. DSCagg GTVp, GTVn, mean)
    of ``metrics.csv`` against the step; write the PNG atomically.

    Args:
        metrics_csv: the run's ``metrics.csv``.
        out_png: the figure to write.
        title: figure title. Default: the run folder's name.

    Returns:
        the PNG path, or None when ``metrics.csv`` has no row to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_csv, out_png = Path(metrics_csv), Path(out_png)
    rows = _read_rows(metrics_csv)
    if not rows:
        return None
    scores = [k for k in rows[0] if k.startswith("val_") and _series(rows, k)[0]]
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(10 if scores else 5, 3.6), squeeze=False)
    steps, loss = _series(rows, "loss")
    axes[0, 0].plot(steps, loss, marker="o", markersize=3)
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="loss")
    if scores:
        for key in scores:
            axes[0, 1].plot(*_series(rows, key), marker="o", markersize=3, label=key[4:])
        axes[0, 1].set(xlabel="step", ylabel="validation score", title="validation (DSCagg)"
                       if any(k in ("val_mean", "val_GTVp") for k in scores) else "validation")
        axes[0, 1].legend(fontsize=8)
    fig.suptitle(title or metrics_csv.parent.name, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png
