"""Run logging: a console + file logger and an append-only metrics CSV that survives resumes."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRIC_FIELDS = ["step", "epoch", "loss", "lr", "val_GTVp", "val_GTVn", "val_mean", "seconds"]


def run_logger(run_dir: Path | None, enabled: bool = True) -> logging.Logger:
    """Logger ``pemma.run`` writing to stderr and ``run_dir/train.log`` (main process only)."""
    logger = logging.getLogger("pemma.run")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None and enabled:
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class MetricsCSV:
    """``metrics.csv`` with one row per logged step; :meth:`truncate` drops rows after a resumed step."""

    def __init__(self, path: Path, fields: Sequence[str] = METRIC_FIELDS) -> None:
        self.path, self.fields = path, list(fields)

    def truncate(self, last_step: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.fields})
