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


def configuration_budget(backbone: str, preset: str = "tiny", recipe: str | None = None,
                         method: str = "lora") -> dict[str, Any]:
    """The parameter budget of a configuration without a run (``pemma params --backbone --preset --recipe``):
    trainable / total and the share of early fusion counted two ways (:mod:`pemma.models.budget`).

    Args:
        backbone: ``unetr`` or ``swin_unetr``. preset: size preset (``tiny``, ``paper``).
        recipe: adaptation recipe (None: ``pemma``). method: ``lora`` or ``dora``.
    """
    import dataclasses

    from pemma.adapters.recipes import recipe_config
    from pemma.config import build_config
    from pemma.models.budget import parameter_budget
    from pemma.models.registry import constructor_kwargs

    try:
        model_cfg = dataclasses.replace(build_config(preset).model, backbone=backbone)
        adapter_cfg = recipe_config(recipe, backbone, method)
    except ValueError as exc:
        raise PemmaError(f"invalid params settings: {exc}") from None
    budget = parameter_budget(backbone, constructor_kwargs(model_cfg, 1), adapter_cfg)
    return {"backbone": backbone, "preset": preset, "recipe": adapter_cfg.recipe, "method": method,
            "ct_route": adapter_cfg.ct_route, **serving_routes(adapter_cfg.ct_route), **budget}


def serving_routes(ct_route: str) -> dict[str, str]:
    """``{"serves <input set>": what runs it}`` for a PEMMA configuration on ``ct_route`` (before any update)."""
    ct = "the adapted network (LoRA + trained parts, no PET pathway)" if ct_route == "shared" \
        else "the untouched CT base (exact)"
    return {"serves ct+pet": "the adapted network", "serves pet": "the adapted network", "serves ct": ct}


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
