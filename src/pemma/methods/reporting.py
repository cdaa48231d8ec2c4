"""What ``pemma params`` and ``pemma export`` report about a run folder (any registered kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.merging import merge_adapters
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path
from pemma.methods.loading import load_model
from pemma.methods.registry import get_kind
from pemma.vocab import ALL_INPUT_SETS, KIND_PEMMA


def parameter_summary(run_dir: Path, base_run: str | Path | None = None) -> dict[str, Any]:
    """Trainable / total parameters of a run and their share of the early-fusion model of the same size
    (``base_run``: its CT base run if it moved)."""
    loaded = load_model(run_dir, base_run=base_run)
    cfg = loaded.config
    out: dict[str, Any] = {"run": str(run_dir), "kind": loaded.kind, "backbone": cfg.model.backbone,
                           "preset": cfg.preset}
    report = get_kind(loaded.kind, str(run_dir)).report
    if report is not None:
        out.update(report(loaded))
    return out


class _FixedInputs(nn.Module):
    """A merged PEMMA model with its input set fixed, so it traces to a single-argument TorchScript model."""

    def __init__(self, model: nn.Module, modalities: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.modalities = model, modalities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.modalities)


@torch.no_grad()
def export_merged(run_dir: Path, out_path: Path, tolerance: float = 1e-4,
                  base_run: str | Path | None = None) -> dict[str, Any]:
    """Merge the adapters of an adapted run and write a standalone TorchScript model for CT+PET input.

    The merged model is checked against the unmerged one on a seeded random input of the training window
    size; a difference above ``tolerance`` is an error and nothing is written.
    """
    loaded = load_model(run_dir, base_run=base_run)
    if loaded.kind != KIND_PEMMA:
        raise PemmaError(f"{run_dir}: only adapted (pemma adapt) runs have adapters to merge")
    modalities = ALL_INPUT_SETS[0]
    merged = merge_adapters(loaded.net).eval()
    x = torch.rand((1, len(modalities), *loaded.config.model.roi_size), generator=torch.Generator().manual_seed(0))
    reference = loaded.net(x, modalities)
    diff = float((merged(x, modalities) - reference).abs().max())
    if diff > tolerance:
        raise PemmaError(f"{run_dir}: merged model differs from the unmerged one by {diff:.2e} > {tolerance}")
    traced = torch.jit.trace(_FixedInputs(merged, modalities), x, check_trace=False)
    traced_diff = float((traced(x) - reference).abs().max())
    if traced_diff > tolerance:
        raise PemmaError(f"{run_dir}: traced model differs from the unmerged one by {traced_diff:.2e}")
    with atomic_path(out_path) as tmp:
        torch.jit.save(traced, str(tmp))
    return {"backbone": loaded.config.model.backbone, "max_abs_diff": max(diff, traced_diff),
            "bytes": out_path.stat().st_size}
