"""A trained network with its run configuration, and how it is called with a subset of the modalities.

Run folders are read by :func:`pemma.methods.load_model`, which asks the method registry how to rebuild each kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.artifacts import load_base_state
from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.models.pemma_base import PEMMA_MODELS
from pemma.models.registry import build_backbone, constructor_kwargs
from pemma.vocab import KIND_BACKBONE


@dataclass
class LoadedModel:
    """A trained network, the configuration it was trained with, and the input sets it accepts.

    ``net`` is a plain MONAI network (called as ``net(x)``) or a multi-modal model whose class sets
    ``accepts_modalities = True`` (PEMMA, late fusion: called as ``net(x, modalities)``).
    """

    net: nn.Module
    config: RunConfig
    meta: dict[str, Any]
    input_sets: list[list[str]]
    run_dir: Path | None = field(default=None)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", KIND_BACKBONE))

    def check_inputs(self, modalities: Sequence[str], source: str) -> None:
        if list(modalities) not in self.input_sets:
            accepted = " or ".join(",".join(s) for s in self.input_sets)
            channels = f" ({len(self.input_sets[0])} channel(s) expected)" if len(self.input_sets) == 1 else ""
            raise PemmaError(f"{source}: model expects input {accepted}, got {','.join(modalities)}{channels}")

    def __call__(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        return run_network(self.net, self.meta.get("modalities", []), x, modalities)

    def predictor(self, modalities: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A window -> logits function for sliding-window inference with the given inputs."""
        return lambda x: self(x, modalities)


def accepts_modalities(net: nn.Module) -> bool:
    """True for a network called as ``net(x, modalities)`` (also inside DDP / torch.compile wrappers)."""
    return bool(getattr(unwrap_model(net), "accepts_modalities", False))


def run_network(net: nn.Module, trained: Sequence[str], x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
    """Logits of ``net`` for ``x`` holding ``modalities`` ([CT, PET] order).

    A plain backbone trained on more channels than given (early fusion with one modality) gets the
    missing channels as zeros, as the PEMMA paper evaluates early fusion with a single modality.
    """
    if accepts_modalities(net):
        return net(x, tuple(modalities))
    if not trained or list(modalities) == list(trained):
        return net(x)
    full = x.new_zeros((x.shape[0], len(trained), *x.shape[2:]))
    for i, modality in enumerate(modalities):
        full[:, list(trained).index(modality)] = x[:, i]
    return net(full)


def base_constructor_kwargs(cfg: RunConfig, in_channels: int = 1) -> dict[str, Any]:
    """The MONAI constructor arguments of the network of ``cfg`` (for parameter accounting)."""
    return constructor_kwargs(cfg.model, in_channels)


def build_pemma(base: LoadedModel, adapter_cfg: AdapterConfig, added_modality: str = "pet") -> nn.Module:
    """A PEMMA model around the CT network of ``base`` (``base.net`` itself is left as it is).

    The base weights go into a fresh network through :func:`~pemma.adapters.artifacts.load_base_state`;
    ``model.load_report`` lists the loaded and skipped base tensors and the new ones (adapters, PET pathway,
    trainable copies of base modules).
    """
    net = build_backbone(base.config.model, in_channels=1)
    report = load_base_state(net, base.net.state_dict())
    if report["new"] or report["skipped"]:
        raise PemmaError(f"{base.run_dir}: base weights do not fit its own configuration "
                         f"({len(report['new'])} missing, {len(report['skipped'])} skipped)")
    model_class = PEMMA_MODELS[base.config.model.backbone]
    extra = {"gradient_checkpointing": True} if base.config.model.gradient_checkpointing and \
        model_class.supports_gradient_checkpointing else {}
    try:  # adapter settings that do not fit this network (a target or trained part it does not have)
        model = model_class(net, adapter_cfg, added_modality=added_modality, **extra)
    except ValueError as exc:
        raise PemmaError(f"invalid adapter settings for {base.config.model.backbone}: {exc}") from None
    report["new"] = sorted(model.adapter_state_dict())
    model.load_report = report
    return model
