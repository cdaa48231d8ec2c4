"""What ``pemma params`` and ``pemma export`` report about a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.export import early_fusion_parameter_count, merge_adapters, parameter_report
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path
from pemma.models.loading import base_constructor_kwargs, load_model
from pemma.models.registry import count_parameters


def parameter_summary(run_dir: Path) -> dict[str, Any]:
    """Trainable / total parameters of a run and their share of the early-fusion model of the same size."""
    loaded = load_model(run_dir)
    cfg = loaded.config
    out: dict[str, Any] = {"run": str(run_dir), "kind": loaded.kind, "backbone": cfg.model.backbone,
                           "preset": cfg.preset}
    if loaded.kind == "pemma":
        report = parameter_report(loaded.net, base_constructor_kwargs(cfg))
        out.update({"method": loaded.meta.get("method"), "trainable": int(report["trainable"]),
                    "total": int(report["total"]), "early_fusion": int(report["early_fusion"]),
                    "percent_of_early_fusion": f"{report['percent_of_early_fusion']:.3f}%",
                    "adapter_bytes": int(loaded.meta.get("adapter_bytes", 0))})
        for inputs, adapter in loaded.meta.get("adapters", {}).items():
            out[f"adapter for {inputs}"] = adapter
    else:
        net = loaded.net.pet_net if loaded.kind == "late_fusion" else loaded.net  # late fusion trains the PET model
        trainable, total = count_parameters(net)
        early = early_fusion_parameter_count(cfg.model.backbone, base_constructor_kwargs(cfg))
        out.update({"inputs": "+".join(loaded.meta["modalities"]), "method": loaded.meta.get("method"),
                    "trainable": trainable, "total": count_parameters(loaded.net)[1],
                    "early_fusion": early, "percent_of_early_fusion": f"{100.0 * trainable / early:.3f}%"})
    return out


class _FixedInputs(nn.Module):
    """A merged PEMMA model with its input set fixed, so it traces to a single-argument TorchScript model."""

    def __init__(self, model: nn.Module, modalities: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.modalities = model, modalities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.modalities)


@torch.no_grad()
def export_merged(run_dir: Path, out_path: Path, tolerance: float = 1e-4) -> dict[str, Any]:
    """Merge the adapters of an adapted run and write a standalone TorchScript model for CT+PET input.

    The merged model is checked against the unmerged one on a seeded random input of the training window
    size; a difference above ``tolerance`` is an error and nothing is written.
    """
    loaded = load_model(run_dir)
    if loaded.kind != "pemma":
        raise PemmaError(f"{run_dir}: only adapted (pemma adapt) runs have adapters to merge")
    modalities = ("ct", "pet")
    merged = merge_adapters(loaded.net).eval()
    x = torch.rand((1, 2, *loaded.config.model.roi_size), generator=torch.Generator().manual_seed(0))
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
