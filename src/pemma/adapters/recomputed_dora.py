"""A peft LoRA/DoRA linear layer whose DoRA output is recomputed in backward instead of kept (training memory).

DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024, arXiv 2402.09353) rescales the adapted
layer's output per output feature by ``magnitude / ||W + BA||``. peft computes it as
``(m/n - 1) * (x W^T) + (m/n) * s * B(A(x))``, and autograd keeps both output-sized products for the gradient of the
magnitude: two tensors of the layer's output size per adapted linear, on top of the input that LoRA keeps too. In a
Swin UNETR at the paper preset that is about 1 GiB (``benchmarks/bench_levers.py``: DoRA's footprint 0.87x early
fusion's with them kept, 0.79x recomputed; LoRA's 0.78x). :class:`RecomputedDoraLinear` runs peft's own forward under
``torch.utils.checkpoint``: only the input is kept, and the layer's forward (one linear and the low-rank product)
runs again in backward, with the adapter state of the forward (:func:`pemma.adapters.state.recompute_as_now`).
Outputs, gradients and trained weights are the same bit for bit; LoRA layers, merged layers and calls without
autograd run peft's forward unchanged.

It is registered with peft's custom-layer hook (``LoraConfig._register_custom_module``) for ``nn.Linear`` targets,
so peft builds, names, saves and merges it as its own ``lora.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from torch.utils.checkpoint import checkpoint

from pemma.adapters.state import recompute_as_now

__all__ = ["RecomputedDoraLinear", "register_recomputed_dora"]


class RecomputedDoraLinear(LoraLinear):
    """peft's ``lora.Linear``; in training, a layer with an active DoRA adapter recomputes its output in backward.

    Example:
        >>> from peft import LoraConfig
        >>> from peft.tuners.lora import LoraModel
        >>> cfg = LoraConfig(r=2, target_modules=["0"], use_dora=True)
        >>> register_recomputed_dora(cfg)
        >>> model = LoraModel(nn.Sequential(nn.Linear(4, 4)), cfg, "default")
        >>> type(model.model[0]).__name__
        'RecomputedDoraLinear'
    """

    def _recomputes(self) -> bool:
        return (torch.is_grad_enabled() and not self.disable_adapters and not self.merged
                and any(self.use_dora.get(name, False) for name in self.active_adapters))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self._recomputes():
            return super().forward(x, *args, **kwargs)
        forward = super().forward
        return checkpoint(lambda inp: forward(inp, *args, **kwargs), x, use_reentrant=False,
                          context_fn=recompute_as_now(self))


def register_recomputed_dora(config: Any) -> None:
    """Make peft build :class:`RecomputedDoraLinear` for the ``nn.Linear`` targets of ``config`` (a LoraConfig)."""
    config._register_custom_module({nn.Linear: RecomputedDoraLinear})
