"""Plain MONAI backbone runs (``pemma train``: CT-only, or early fusion with several channels) as a run kind:
how they load, update (every parameter trains; a missing modality is zero-filled) and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.methods.registry import RunKind, register_kind
from pemma.methods.update import update_task
from pemma.models.accounting import count_parameters, early_fusion_parameter_count
from pemma.models.loaded import LoadedModel, base_constructor_kwargs
from pemma.models.registry import build_backbone
from pemma.runs import load_weights, save_weights
from pemma.training.loop import TrainingTask
from pemma.vocab import KIND_BACKBONE


def load_backbone(run_dir: Path, meta: dict[str, Any], config: RunConfig, base_run: Path | None = None) -> nn.Module:
    """The network of a backbone run (``meta["modalities"]`` input channels), with its checked weights."""
    net = build_backbone(config.model, in_channels=len(meta["modalities"]))
    state = load_weights(run_dir)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise PemmaError(f"{run_dir}: weights do not fit the configured network "
                         f"({str(exc).splitlines()[0]})") from None
    return net


def _input_sets(meta: dict[str, Any]) -> list[list[str]]:
    trained = list(meta["modalities"])
    return [trained] + ([[m] for m in trained] if len(trained) > 1 else [])


def _update(loaded: LoadedModel, model_run: Path, modalities: tuple[str, ...], cfg: RunConfig) -> TrainingTask:
    model = loaded.net.requires_grad_(True)
    meta_in = dict(loaded.meta)

    def save(module: nn.Module, run_dir: Path, meta: dict[str, Any]) -> None:
        save_weights(unwrap_model(module), run_dir, {**meta_in, **meta})

    return update_task(loaded, model_run, modalities, model, lambda step: modalities, save)


def report_trained(loaded: LoadedModel, trained_net: nn.Module) -> dict[str, Any]:
    """``pemma params`` fields of a run whose trained part is ``trained_net`` (all of its parameters)."""
    trainable, _ = count_parameters(trained_net)
    early = early_fusion_parameter_count(loaded.config.model.backbone, base_constructor_kwargs(loaded.config))
    return {"inputs": "+".join(loaded.meta["modalities"]), "method": loaded.meta.get("method"),
            "trainable": trainable, "total": count_parameters(loaded.net)[1],
            "early_fusion": early, "percent_of_early_fusion": 100.0 * trainable / early}


register_kind(RunKind(name=KIND_BACKBONE, load=load_backbone, input_sets=_input_sets, update=_update,
                      report=lambda loaded: report_trained(loaded, loaded.net)))
