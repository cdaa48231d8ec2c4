"""Switching peft adapters on a wrapped network, and unwrapping DDP / compiled modules.

The switches flip peft's per-layer ``_disable_adapters`` / ``_active_adapter`` state for the duration of a call and
restore it; unlike ``disable_adapter_layers()`` they do not touch ``requires_grad`` (peft's toggle would re-enable
gradients of adapters the caller froze). peft is pinned to 0.21.2 in pyproject.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from peft import LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

#: the name prefix peft gives the tensors of the adapters pemma builds (LoRA / DoRA: ``lora_A``, ``lora_B``,
#: ``lora_magnitude_vector``); the one place that knows it
ADAPTER_PREFIX: str = LoraModel.prefix


def is_adapter_param(name: str) -> bool:
    """Whether the parameter / state-dict key ``name`` is an adapter tensor (a part of its dotted name starts with
    :data:`ADAPTER_PREFIX`), e.g. ``base_model.model.vit.blocks.0.attn.q.lora_A.default.weight``."""
    return any(part.startswith(ADAPTER_PREFIX) for part in name.split("."))


def _peft_layers(module: nn.Module) -> list[nn.Module]:
    """The peft adapter layers and ModulesToSave wrappers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextlib.contextmanager
def _set_for_block(layers: list[nn.Module], values: list[dict[str, object]]) -> Iterator[None]:
    """Set ``values[i]`` (attribute -> value) on ``layers[i]`` for the block, then restore what they had."""
    previous = [{k: getattr(m, k) for k in v} for m, v in zip(layers, values, strict=True)]
    for layer, v in zip(layers, values, strict=True):
        for k, value in v.items():
            setattr(layer, k, value)
    try:
        yield
    finally:
        for layer, v in zip(layers, previous, strict=True):
            for k, value in v.items():
                setattr(layer, k, value)


def _layer_state(module: nn.Module, attribute: str, value: object) -> contextlib.AbstractContextManager[None]:
    """Set ``attribute`` on every peft layer / ModulesToSave wrapper of ``module`` for the block, then restore.

    ``requires_grad`` flags are left alone (peft's public toggles re-mark trainable parameters). MONAI's own block
    checkpointing (``use_checkpoint``, Swin UNETR) takes no ``context_fn``: a block it checkpointed inside the
    context would be recomputed in backward after the context ended, under another adapter, so it is off for the
    block (pemma's own checkpoints carry the state: :func:`recompute_as_now`).
    """
    layers = _peft_layers(module)
    checkpointed = [m for m in module.modules() if getattr(m, "use_checkpoint", None) is True]
    return _set_for_block(layers + checkpointed,
                          [{attribute: value}] * len(layers) + [{"use_checkpoint": False}] * len(checkpointed))


#: the per-layer peft switches the adapter contexts of this module flip
_SWITCHES = ("_active_adapter", "_disable_adapters")


def recompute_as_now(module: nn.Module) -> Callable[[], tuple[contextlib.AbstractContextManager[None],
                                                                 contextlib.AbstractContextManager[None]]]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: the recomputation in
    backward runs ``module`` with the peft adapter state its layers have *now*, at forward time.

    Without it, a block checkpointed inside :func:`adapter_active` (a stacked level, a CT-update adapter) is
    recomputed after the context has ended, under whichever adapter is active then: torch raises when the saved
    tensors differ in number, and silently computes gradients through the wrong copy when they do not.
    """
    layers = _peft_layers(module)
    state = [{k: getattr(m, k) for k in _SWITCHES if hasattr(m, k)} for m in layers]
    return lambda: (contextlib.nullcontext(), _set_for_block(layers, state))


def adapters_disabled(module: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Run ``module`` as its base model: every peft adapter layer and ModulesToSave wrapper is bypassed."""
    return _layer_state(module, "_disable_adapters", True)


def adapter_active(module: nn.Module, name: str) -> contextlib.AbstractContextManager[None]:
    """Run ``module`` with only the peft adapter ``name`` active (wrappers without it pass through)."""
    return _layer_state(module, "_active_adapter", [name])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside ``DistributedDataParallel`` / ``DataParallel`` (``.module``) or ``torch.compile``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@runtime_checkable
class AdaptedModel(Protocol):
    """What adapter artifacts and merging need of a model: a peft-wrapped ``base_model``, its resolved adapter
    ``config``, and the tensors adaptation trained (``pemma.models.pemma_base.PemmaAdaptedModel`` implements it)."""

    base_model: Any
    config: Any

    @property
    def merged(self) -> bool: ...

    def adapter_state_dict(self) -> dict[str, torch.Tensor]: ...
