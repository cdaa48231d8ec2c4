"""What ``pemma params`` and ``pemma export`` report about a run folder (any registered kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pemma.errors import PemmaError
from pemma.methods.exporting import export_model
from pemma.methods.loading import load_model
from pemma.methods.registry import get_kind
from pemma.runs import read_meta
from pemma.vocab import KIND_PEMMA, KIND_PEMMA_STACKED


def configuration_budget(backbone: str, preset: str = "tiny", recipe: str | None = None,
                         method: str = "lora", ct_route: str | None = None) -> dict[str, Any]:
    """The parameter budget of a configuration without a run (``pemma params --backbone --preset --recipe``):
    trainable / total and the share of early fusion counted two ways (:mod:`pemma.models.budget`).

    Args:
        backbone: ``unetr`` or ``swin_unetr``. preset: size preset (``tiny``, ``paper``).
        recipe: adaptation recipe (None: ``pemma``). method: ``lora`` or ``dora``.
        ct_route: ``exact`` or ``shared`` (None: the recipe's).
    """
    from pemma.adapters.recipes import recipe_config
    from pemma.config import build_config
    from pemma.models.budget import parameter_budget
    from pemma.models.registry import constructor_kwargs

    try:
        # the preset's sizes for this backbone (its window too: Swin's must be a multiple of 32)
        model_cfg = build_config(preset, overrides={"model": {"backbone": backbone}}).model
        adapter_cfg = recipe_config(recipe, backbone, method, {"ct_route": ct_route})
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


def export_merged(run_dir: Path, out_path: Path, tolerance: float = 1e-4,
                  base_run: str | Path | None = None) -> dict[str, Any]:
    """Merge the adapters of an adapted run and write a standalone TorchScript model for its full input set (CT+PET,
    CT+MR...): the ``torchscript`` export of :func:`pemma.methods.exporting.export_model` for it (checked against the
    unmerged model on seeded inputs of the training window; a difference above ``tolerance`` is an error and nothing
    is written; the preprocessing record goes beside it).

    Returns:
        ``{"backbone", "max_abs_diff", "bytes"}``.
    """
    meta = read_meta(Path(run_dir))
    if meta.get("kind") not in (KIND_PEMMA, KIND_PEMMA_STACKED):
        raise PemmaError(f"{run_dir}: only adapted (pemma adapt) runs have adapters to merge")
    inputs = meta["modalities"]  # CT and the added modality (a stacked run: its newest level's)
    info = export_model(run_dir, out_path, fmt="torchscript", modalities=inputs, base_run=base_run,
                        tolerance=tolerance)
    return {key: info[key] for key in ("backbone", "max_abs_diff", "bytes")}
