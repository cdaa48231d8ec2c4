"""What a run shows: TensorBoard events beside metrics.csv (loss and learning rate every step, validation metrics),
events after a resumed checkpoint replaced rather than duplicated, and the loss / DSC figure written at the end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import SessionLog
from torch import nn

from pemma.runtime import METRIC_FIELDS
from pemma.training.curves import CURVES_FILE, plot_training_curves
from pemma.training.engine import Engine

CPU = torch.device("cpu")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(run_dir: Path, steps: range, resume: bool, seed: int = 0) -> Engine:
    torch.manual_seed(seed)
    engine = Engine(nn.Linear(3, 1), total_steps=4, lr=0.1, device=CPU)
    engine.begin(run_dir, resume=resume, seed=1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in steps:
        lr = engine.lr
        loss = engine.step(lambda module: ((module(x) - y) ** 2).mean())
        assert engine.events is not None
        if engine.step_count % 2 == 0:
            engine.log_metrics({"step": engine.step_count, "epoch": 0, "loss": f"{loss:.5f}", "lr": f"{lr:.3e}",
                                "val_GTVp": 0.1 * engine.step_count, "val_GTVn": "", "val_mean": 0.05})
    return engine


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_events_every_step_validation_metrics_and_the_figure(tmp_path: Path) -> None:
    engine = _run(tmp_path, range(4), resume=False)
    figure = engine.finish(title="toy")
    assert figure == tmp_path / CURVES_FILE and figure.read_bytes()[:8] == PNG_SIGNATURE
    scalars = _scalars(tmp_path)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    lrs = [v for _, v in scalars["train/lr"]]
    assert lrs[0] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)  # the cosine schedule, as stepped
    assert [s for s, _ in scalars["val/GTVp"]] == [2, 4]
    assert [v for _, v in scalars["val/GTVp"]] == pytest.approx([0.2, 0.4])
    assert "val/GTVn" not in scalars  # empty cells are not logged as zeros
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(METRIC_FIELDS)


def test_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path: Path) -> None:
    first = _run(tmp_path, range(3), resume=False)
    first.step_count = 2  # a checkpoint written at step 2; the run died after logging step 3
    first.save(tmp_path)
    first.finish()
    # a resumed run is a later process: its event file's name (time in whole seconds, then host, pid and a per-process
    # writer counter that sorts "10" before "9") must sort after the first one's, as TensorBoard reads them in order
    time.sleep(1.1)
    second = _run(tmp_path, range(2), resume=True, seed=5)
    second.finish()
    steps = [s for s, _ in _scalars(tmp_path)["train/loss"]]
    assert steps == [1, 2, 3, 4], steps  # step 3 of the first process is purged, not shown twice
    # the resumed writer says so in its file (TensorBoard drops the older events from that step on)
    starts = [(e.step, e.session_log.status) for path in sorted(tmp_path.glob("events.out.tfevents.*"))
              for e in EventFileLoader(str(path)).Load() if e.HasField("session_log")]
    assert (3, SessionLog.START) in starts, starts


def test_plot_training_curves_reads_metrics_csv(tmp_path: Path) -> None:
    csv = tmp_path / "metrics.csv"
    assert plot_training_curves(csv, tmp_path / "a.png") is None  # nothing logged: no figure
    csv.write_text("step,epoch,loss,lr,val_GTVp,val_GTVn,val_mean,seconds\n1,0,0.9,1e-3,0.1,0.0,0.05,1\n"
                   "2,0,0.7,5e-4,0.3,,0.15,2\n")
    out = plot_training_curves(csv, tmp_path / "sub" / "curves.png")
    assert out is not None and out.read_bytes()[:8] == PNG_SIGNATURE and len(out.read_bytes()) > 5000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # written atomically, no temporary left


def test_a_warning_is_printed_on_its_own_line_under_a_progress_bar(capsys) -> None:
    """A warning raised while a tqdm bar was drawn was appended to the bar's line ("check: 25%|...pemma check:
    warning: ..."), easy to miss: the bar is cleared, the warning printed, the bar drawn again."""
    import sys

    from tqdm import tqdm

    from pemma.cli.main import _one_line_warning

    show = _one_line_warning("check")
    for i in tqdm(range(3), desc="check", file=sys.stderr, ncols=60):
        if i == 1:
            show(UserWarning("case X: a warning"), UserWarning)
    err = capsys.readouterr().err
    assert "\rpemma check: warning: case X: a warning\n" in err
