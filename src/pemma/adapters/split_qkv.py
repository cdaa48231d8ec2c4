"""MONAI's fused attention projection split into query, key and value Linears, so adapters can target Q and V only.

MONAI's ``SABlock`` (UNETR) and Swin's ``WindowAttention`` compute ``q | k | v`` with one ``qkv`` Linear whose
output is ``[q, k, v]`` concatenated on the last axis. The PEMMA authors put LoRA on the query and value projections
only (as LoRA's paper does), which a fused layer cannot express: peft adapts a whole Linear. :class:`SplitQKV`
holds three Linears ``q``, ``k``, ``v`` with the fused layer's weights (rows ``[0, C)``, ``[C, 2C)``, ``[2C, 3C)``) and
returns their outputs concatenated, which is the fused layer's output (equal to float rounding); peft can then
target ``attn.qkv.q`` and ``attn.qkv.v``. The module tree under ``qkv`` changes (``qkv.q.weight`` ...), so the split is
applied to the PEMMA model's own copy of the base, never to a saved CT model.

Example:
    >>> fused = nn.Linear(48, 144)
    >>> x = torch.rand(2, 5, 48)
    >>> torch.allclose(SplitQKV.from_fused(fused)(x), fused(x), atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: target-module suffixes that address the split projections (``attn.qkv.q`` etc.)
SPLIT_SUFFIXES: tuple[str, ...] = ("qkv.q", "qkv.k", "qkv.v")


class SplitQKV(nn.Module):
    """Query, key and value projections as three Linears whose concatenated output is the fused ``qkv``'s.

    Args:
        q, k, v: ``nn.Linear`` with the same input size and output size ``C`` each.

    Raises:
        ValueError: the three layers do not fit together.
    """

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> None:
        super().__init__()
        shapes = {(layer.in_features, layer.out_features, layer.bias is not None) for layer in (q, k, v)}
        if len(shapes) != 1:
            raise ValueError(f"q, k and v must have the same shape and bias, got {sorted(shapes)}")
        self.q, self.k, self.v = q, k, v

    @classmethod
    def from_fused(cls, fused: nn.Linear) -> SplitQKV:
        """Three Linears holding copies of the rows of ``fused`` (``out_features`` must be divisible by 3)."""
        if not isinstance(fused, nn.Linear) or fused.out_features % 3:
            raise ValueError(f"a fused qkv must be an nn.Linear with 3*C outputs, got {fused!r}")
        size = fused.out_features // 3
        parts = []
        for i in range(3):
            layer = nn.Linear(fused.in_features, size, bias=fused.bias is not None,
                              device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(fused.weight[i * size:(i + 1) * size])
                if fused.bias is not None:
                    layer.bias.copy_(fused.bias[i * size:(i + 1) * size])
            layer.requires_grad_(fused.weight.requires_grad)
            parts.append(layer)
        return cls(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., 3 * C)``: ``[q(x), k(x), v(x)]`` on the last axis."""
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def needs_split(target_modules: Sequence[str]) -> bool:
    """True when a target suffix addresses a split projection (``attn.qkv.q``, ``qkv.v`` ...)."""
    return any(t == s or t.endswith("." + s) for t in target_modules for s in SPLIT_SUFFIXES)


def split_fused_qkv(module: nn.Module, within: str = "") -> list[str]:
    """Replace, in place, every ``nn.Linear`` named ``qkv`` under ``module`` (under the child ``within`` if given)
    by its :class:`SplitQKV`; returns the names replaced.

    Use it on a copy: the module tree (and state-dict keys) of ``module`` change.
    """
    replaced = []
    for name, child in list(module.named_modules()):
        if not (within == "" or name == within or name.startswith(within + ".")):
            continue
        for child_name, grandchild in list(child.named_children()):
            if child_name == "qkv" and isinstance(grandchild, nn.Linear):
                setattr(child, child_name, SplitQKV.from_fused(grandchild))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced
