"""The training engine on toy models: cosine values, parameter groups, gradient accumulation, exact resume."""

from __future__ import annotations

import copy
import gc
import logging
import math
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pemma.errors import PemmaError
from pemma.training.engine import Engine

CPU = torch.device("cpu")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _noisy_step(engine: Engine) -> float:
    """A step whose data come from torch's generator (so a resume must restore it)."""
    x = torch.randn(6, 4)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(6, 1)
    return engine.step(lambda module: ((module(x) - y) ** 2).mean())


def test_cosine_schedule_is_the_closed_form() -> None:
    engine = Engine(_model(), total_steps=5, lr=0.1, device=CPU)
    lrs = []
    for _ in range(5):
        _noisy_step(engine)
        lrs.append(engine.lr)
    assert lrs == [0.1 * 0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(1, 6)]
    assert engine.step_count == 5


def test_groups_cover_trainable_parameters_only_with_scaled_lr() -> None:
    model = _model()
    model[0].requires_grad_(False)
    engine = Engine(model, total_steps=3, lr=0.2, device=CPU, lr_scales={"2.weight": 0.5})
    groups = engine.optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [1, 1] and [g["lr"] for g in groups] == [0.2, 0.1]
    frozen = model[0].weight.clone()
    _noisy_step(engine)
    assert torch.equal(model[0].weight, frozen)
    model.requires_grad_(False)
    with pytest.raises(PemmaError, match="nothing to train"):
        Engine(model, total_steps=3, lr=0.2, device=CPU)


def test_accumulated_halves_match_the_whole_batch() -> None:
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    whole = Engine(_model(), total_steps=2, lr=0.01, device=CPU, clip_norm=0.5)
    halves = Engine(_model(), total_steps=2, lr=0.01, device=CPU, clip_norm=0.5)
    loss_whole = whole.step(lambda m: ((m(x) - y) ** 2).mean())
    loss_halves = halves.step(lambda m: ((m(x[:4]) - y[:4]) ** 2).mean(), lambda m: ((m(x[4:]) - y[4:]) ** 2).mean())
    assert loss_halves == pytest.approx(loss_whole, rel=1e-6)
    for a, b in zip(whole.model.parameters(), halves.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_reported_loss_is_the_second_value() -> None:
    engine = Engine(_model(), total_steps=1, lr=0.01, device=CPU)
    x = torch.randn(3, 4)
    assert engine.step(lambda m: (m(x).sum() + 100.0, torch.tensor(1.5))) == 1.5


def test_checkpoint_resume_continues_bit_identically(tmp_path: Path) -> None:
    uninterrupted = Engine(_model(), total_steps=6, lr=0.05, device=CPU)
    uninterrupted.begin(tmp_path / "a", resume=False, seed=3)
    for _ in range(6):
        _noisy_step(uninterrupted)

    first = Engine(_model(), total_steps=6, lr=0.05, device=CPU)
    (tmp_path / "b").mkdir()
    assert first.begin(tmp_path / "b", resume=True, seed=3) is None  # no checkpoint: a fresh start
    for _ in range(3):
        _noisy_step(first)
    first.save(tmp_path / "b", best=0.25)
    torch.manual_seed(12345)  # whatever ran in between, the resumed run restores the generator

    second = Engine(_model(seed=99), total_steps=6, lr=0.05, device=CPU)
    assert second.begin(tmp_path / "b", resume=True, seed=3) == {"best": 0.25}
    assert second.step_count == 3
    while second.step_count < 6:
        _noisy_step(second)
    for a, b in zip(uninterrupted.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="clash"):
        second.state_dict(step=1)


def _nan_step(engine: Engine) -> float:
    x = torch.randn(6, 4)
    return engine.step(lambda module: (module(x) * float("nan")).mean())


@pytest.mark.parametrize("clip_norm", [None, 1.0])
def test_a_nonfinite_step_is_skipped_and_training_goes_on(clip_norm: float | None) -> None:
    engine = Engine(_model(), total_steps=10, lr=0.05, device=CPU, clip_norm=clip_norm)
    _noisy_step(engine)
    weights = [p.detach().clone() for p in engine.model.parameters()]
    moments = [engine.optimizer.state[p]["exp_avg"].clone() for p in engine.params]
    lr_before = engine.lr
    assert math.isnan(_nan_step(engine))
    assert engine.step_count == 2 and engine.skipped_steps == 1 and engine.lr < lr_before  # the schedule moves on
    for p, w in zip(engine.model.parameters(), weights, strict=True):
        assert torch.equal(p, w)  # weights unchanged, not NaN
    for p, m in zip(engine.params, moments, strict=True):
        assert torch.equal(engine.optimizer.state[p]["exp_avg"], m)  # AdamW's state untouched
    assert math.isfinite(_noisy_step(engine))
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert any(not torch.equal(p, w) for p, w in zip(engine.model.parameters(), weights, strict=True))


def test_nonfinite_steps_in_a_row_stop_training_as_diverged() -> None:
    engine = Engine(_model(), total_steps=10, lr=0.05, device=CPU, max_nonfinite_steps=3)
    _noisy_step(engine)
    weights = [p.detach().clone() for p in engine.model.parameters()]
    _nan_step(engine)
    _noisy_step(engine)  # a finite step resets the count
    _nan_step(engine)
    _nan_step(engine)
    with pytest.raises(PemmaError, match=r"diverged: non-finite gradients on 3 steps in a row \(steps 4-6"):
        _nan_step(engine)
    assert engine.skipped_steps == 4
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert any(not torch.equal(p, w) for p, w in zip(engine.model.parameters(), weights, strict=True))
    with pytest.raises(PemmaError, match="max_nonfinite_steps"):
        Engine(_model(), total_steps=1, lr=0.1, device=CPU, max_nonfinite_steps=0)


def _warning_of_a_step_with(grad_hook) -> tuple[Engine, str]:
    """The last pemma.run log message of one step whose ``2.weight`` gradient goes through ``grad_hook``."""
    engine = Engine(_model(), total_steps=4, lr=0.05, device=CPU)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pemma.run")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    hook = engine.model[2].weight.register_hook(grad_hook)
    try:
        _noisy_step(engine)
    finally:
        hook.remove()
        logger.removeHandler(handler)
        logger.setLevel(level)
    return engine, records[-1].getMessage()


def test_the_warning_names_the_tensors_with_nonfinite_gradients() -> None:
    engine, message = _warning_of_a_step_with(lambda g: g * float("nan"))
    assert engine.skipped_steps == 1
    assert "step 1: non-finite gradients" in message and "1 tensors: 2.weight" in message


def test_finite_gradients_whose_norm_overflows_are_skipped_and_named() -> None:
    """Entries of ~1e30 are finite, their squares are not (what torch's bf16 conv3d defect produced)."""
    engine, message = _warning_of_a_step_with(lambda g: torch.full_like(g, 1e30))
    assert engine.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert "finite, but the norm overflows: largest |grad| 1e+30 in 2.weight" in message


def test_clipped_step_equals_torch_clip_grad_norm_and_adamw() -> None:
    model = _model()
    reference = copy.deepcopy(model)
    engine = Engine(model, total_steps=3, lr=0.05, device=CPU, clip_norm=0.1, weight_decay=0.01)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, 3) / 3)))
    for _ in range(3):
        x, y = torch.randn(6, 4), torch.randn(6, 1)
        engine.step(lambda m, x=x, y=y: ((m(x) - y) ** 2).mean())
        optimizer.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
        optimizer.step()
        schedule.step()
    for a, b in zip(engine.model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def _ddp_step(rank: int, port: int, results: Any) -> None:
    """One DDP step in each of two processes, each on its own batch (rank 1's loss is larger)."""
    import datetime
    import gc

    import torch.distributed as dist

    from pemma.runtime import DistInfo

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(0.0)
        engine = Engine(model, total_steps=2, lr=0.1, device=CPU, dist=DistInfo(rank, 2))
        y = torch.full((3, 1), float(rank + 1))  # loss (y - 0)^2: 1 on rank 0, 4 on rank 1
        results.put((rank, engine.step(lambda module: ((module(torch.ones(3, 2)) - y) ** 2).mean())))
        # free the DDP reducer while the group is alive: freed after it (when this function returns) it destroyed
        # the gloo group while holding the GIL, and the group's worker thread, still releasing the all-reduce's
        # tensors, waited for the GIL: the process never exited (seen once in a CI run)
        del engine, model
        gc.collect()
        dist.barrier()
    except Exception as exc:  # noqa: BLE001  (reported to the test)
        results.put((rank, repr(exc)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (each imports torch)
def test_ddp_step_reports_the_mean_loss_of_every_process() -> None:
    """The gradient of a DDP step is the mean over every process's batch; its reported loss (metrics.csv, the
    progress bar, TensorBoard, the run log) was the main process's own batch's alone."""
    import os

    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    context = mp.spawn(_ddp_step, args=(28000 + os.getpid() % 1000, results), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # a hang fails the test instead of the whole run
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two DDP processes did not finish in 300 s")
    got = {}
    while not results.empty():
        rank, value = results.get()
        got[rank] = value
    assert got == {0: pytest.approx(2.5), 1: pytest.approx(2.5)}


def test_process_group_waits_for_every_process_before_leaving_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A normal exit collects what the body freed (a DDP reducer in a reference cycle) and waits at a barrier before
    the group is left (freed after it, gloo's destructor could wait for its worker thread forever); an exception
    leaves the group without waiting (the others may be gone: torchrun stops them), the failed calls' locals freed
    first."""
    import pemma.training.engine as engine_module
    from pemma.runtime import DistInfo

    calls: list[str] = []
    collect = gc.collect
    monkeypatch.setattr(engine_module, "init_distributed", lambda device: DistInfo(0, 2))
    monkeypatch.setattr(engine_module.gc, "collect", lambda: calls.append("collect") or collect())
    monkeypatch.setattr(engine_module, "barrier", lambda dist: calls.append("barrier"))
    monkeypatch.setattr(engine_module, "cleanup", lambda dist: calls.append("cleanup"))
    with engine_module.process_group("cpu") as (_, dist):
        assert dist.enabled
        calls.append("body")
    assert calls == ["body", "collect", "barrier", "cleanup"]
    calls.clear()

    class Held:  # stands for a DDP model a failed training call still held
        pass

    def failing_step() -> None:
        held = Held()
        alive.append(weakref.ref(held))
        raise RuntimeError("a step failed")

    alive: list[weakref.ref] = []
    monkeypatch.setattr(engine_module, "cleanup", lambda dist: calls.append(f"cleanup, held {alive[0]() is not None}"))
    with pytest.raises(RuntimeError), engine_module.process_group("cpu"):
        failing_step()
    assert calls == ["collect", "cleanup, held False"]  # no barrier; the failed call's locals gone first
