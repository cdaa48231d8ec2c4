"""Early fusion from the CT model (a baseline of the PEMMA paper): CT and PET (or another added modality) as two
input channels, every parameter trains, started from the CT model (its first convolution gets a zero channel for the
added modality, so training starts from the CT model's function). The run is a plain two-channel backbone run (kind
``backbone``)."""

from __future__ import annotations

import torch
from torch import nn

from pemma.adapters.config import AdapterConfig
from pemma.methods.adaptation import AdaptationSetup
from pemma.methods.registry import Method, register_method
from pemma.models.registry import build_backbone
from pemma.training.loop import TrainingTask
from pemma.training.segmentation import backbone_task
from pemma.vocab import KIND_BACKBONE


def inflate_first_conv(net: nn.Module, ct_state: dict[str, torch.Tensor]) -> list[str]:
    """Load a 1-channel CT state into a 2-channel [CT, PET] network; input-channel mismatches get the CT
    weights on channel 0 and zeros on the PET channel. Returns the names of the inflated tensors."""
    own = net.state_dict()
    inflated = []
    for key, value in ct_state.items():
        if own[key].shape != value.shape:
            widened = torch.zeros_like(own[key])
            widened[:, : value.shape[1]] = value
            ct_state = {**ct_state, key: widened}
            inflated.append(key)
    net.load_state_dict(ct_state)
    return inflated


def early_fusion_task(setup: AdaptationSetup, adapter_cfg: AdapterConfig | None = None) -> TrainingTask:
    """A two-channel backbone initialised from the CT base; ``adapter_cfg`` is not used."""
    net = build_backbone(setup.cfg.model, in_channels=2)
    inflated = inflate_first_conv(net, setup.base.net.state_dict())
    task = backbone_task(setup.cfg, net=net, name="early fusion from the CT model", extra_meta=setup.base_reference)
    task.describe.append(f"initialised from {setup.base_run}; {setup.added_modality.upper()} channel added (zeros) to "
                         f"{inflated}")
    return task


register_method(Method(name="early_fusion", kind=KIND_BACKBONE, build=early_fusion_task,
                       description="early fusion: a two-channel network started from the CT model, all trained"))
