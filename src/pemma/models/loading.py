"""Rebuild a trained model from its run folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.models.registry import build_backbone
from pemma.training.checkpoint import CONFIG_FILE, load_weights, read_meta


@dataclass
class LoadedModel:
    """A trained network, the configuration it was trained with, and the input sets it accepts."""

    net: nn.Module
    config: RunConfig
    meta: dict[str, Any]
    input_sets: list[list[str]]

    def check_inputs(self, modalities: Sequence[str], source: str) -> None:
        if list(modalities) not in self.input_sets:
            accepted = " or ".join(",".join(s) for s in self.input_sets)
            raise PemmaError(f"{source}: model expects input {accepted}, got {','.join(modalities)} "
                             f"({len(self.input_sets[0])} channel(s) expected)")

    def __call__(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        return self.net(x)

    def predictor(self, modalities: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A window -> logits function for sliding-window inference with the given inputs."""
        return lambda x: self(x, modalities)


def load_model(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a run folder written by ``pemma train`` (config, metadata and checked weights)."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    config = RunConfig.load(run_dir / CONFIG_FILE)
    kind = meta.get("kind", "backbone")
    if kind != "backbone":
        raise PemmaError(f"{run_dir}: unsupported model kind {kind!r}")
    modalities = list(meta["modalities"])
    net = build_backbone(config.model, in_channels=len(modalities))
    state = load_weights(run_dir)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise PemmaError(f"{run_dir}: weights do not fit the configured network "
                         f"({str(exc).splitlines()[0]})") from None
    net.to(device).eval()
    return LoadedModel(net=net, config=config, meta=meta, input_sets=[modalities])
