"""The paper's protocol and the demo as Python functions: ``reproduce`` and ``demo``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _list(value: str | int | Iterable | None) -> list | None:
    if value is None:
        return None
    return [value] if isinstance(value, str | int) else list(value)


def reproduce(strategy: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
              backbone: str | Iterable[str] | None = None, preset: str | None = None, max_steps: int | None = None,
              variant: str | Iterable[str] | None = None, method: str | Iterable[str] | None = None,
              seed: int | None = None, exclude_bad_cases: bool = False, progress: bool = True,
              ct_route: str | Iterable[str] | None = None, recipe: str | Iterable[str] | None = None,
              amp: bool | str | None = None, workers: int | str | None = None) -> Path:
    """Run every phase of a strategy (pretrain -> adapt -> updates) for every method, evaluate, and report.

    Finished phases and evaluations in ``out`` are not recomputed.

    Args:
        strategy: strategy YAML or a shipped name (``hecktor2022``, ``demo``).
        data: HECKTOR folder, nnU-Net raw folder or datalist.
        out: results folder.
        backbone: override the strategy's backbones (one or a list).
        preset: override the strategy's preset. max_steps: bound every phase's training steps.
        variant: run only these variants. method: run only these methods (``pemma_lora``, ``pemma_dora``,
            ``early_fusion``, ``late_fusion``, ``full_finetune``).
        seed: override the strategy's split seed (also the training seed).
        exclude_bad_cases: leave out the cases that fail the data check (``out/excluded_cases.json``) instead of
            stopping before any training.
        progress: show progress bars.
        ct_route: the PEMMA methods' CT routes (``exact``, ``shared``; one or a list), replacing the strategy's
            ``routes``.
        recipe: the PEMMA methods' recipes (``pemma``, ``authors``; one or a list), replacing the strategy's
            ``recipes``.
        amp: mixed precision for every segmentation training and prediction of the run (the neural prognosis
            stages run in fp32), replacing the strategy's ``amp``:
            ``True``, ``False`` or ``"auto"`` (on for CUDA or a CPU with native bf16: :func:`pemma.runtime.resolve_amp`)
        workers: processes that train and evaluate the method chains side by side once the CT base is trained,
            replacing the strategy's ``workers``: an integer or ``"auto"`` (two on a CPU with two or more cores,
            one on CUDA: :func:`pemma.protocol.chains.resolve_workers`).

    Returns:
        The Markdown report (``out/report.md``).

    Example:
        >>> print(pemma.reproduce("demo", "data/phantom", "results/", max_steps=2).read_text())
    """
    from pemma.protocol.runner import reproduce as run_strategy

    return run_strategy(os.fspath(strategy), os.fspath(data), os.fspath(out), backbones=_list(backbone),
                        preset=preset, max_steps=max_steps, variants=_list(variant), methods=_list(method),
                        seed=seed, exclude_bad_cases=exclude_bad_cases, progress=progress,
                        ct_routes=_list(ct_route), recipes=_list(recipe), amp=amp, workers=workers)


def demo(out: str | os.PathLike = "demo", *, seed: int | Iterable[int] | None = None, strategy: str = "demo",
         preset: str | None = None, backbone: str | None = None, max_steps: int | None = None,
         exclude_bad_cases: bool = False, progress: bool = True, difficulty: str = "normal",
         amp: bool | str | None = None, workers: int | str | None = None) -> Path:
    """The default phantom + :func:`reproduce` with the shipped demo strategy (tiny preset, CPU).

    Args:
        out: output folder (``phantom/``, ``seed_<n>/``). Default ``demo``.
        seed: split and training seed(s). Default 0; several seeds add ``seeds.md``.
        strategy: strategy file or shipped name. Default ``demo``.
        preset, backbone, max_steps: overrides of the strategy's values.
        exclude_bad_cases: as for :func:`reproduce`.
        progress: show progress bars.
        difficulty: the phantom: ``normal`` (default) or ``hard`` (see ``pemma synth --difficulty``).
        amp: as for :func:`reproduce` (the demo strategy's default is ``auto``).
        workers: as for :func:`reproduce` (the demo strategy's default is ``auto``).

    Returns:
        The report (``seed_<n>/report.md`` for one seed, ``seeds.md`` for several).

    Example:
        >>> print(pemma.demo("demo", seed=[0, 1]).read_text())
    """
    from pemma.data.phantom import PhantomConfig
    from pemma.errors import PemmaError
    from pemma.protocol.demo import run_demo

    try:
        phantom = PhantomConfig(difficulty=difficulty)
    except ValueError as exc:
        raise PemmaError(f"invalid phantom settings: {exc}") from None
    return run_demo(os.fspath(out), seeds=_list(seed) or [0], preset=preset, max_steps=max_steps, backbone=backbone,
                    strategy=strategy, exclude_bad_cases=exclude_bad_cases, progress=progress, phantom=phantom,
                    amp=amp, workers=workers)
