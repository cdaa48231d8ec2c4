"""Guards for mixed precision on the CPU.

torch 2.13's bf16 3-D convolution on CPUs with native bf16 (oneDNN, AMX) returns a garbage *weight* gradient when
the input's depth is 2 and the kernel 3 (values up to 1e37 or inf in most calls; forward and input gradient are
right, fp32 is right). Swin UNETR at roi 64 has exactly that at its bottleneck (64 / 32 = 2 voxels a side: its
``encoder10`` convolutions), so bf16 training of it skipped steps for "non-finite gradients" that were not a
property of the model. The same family of oneDNN bf16 conv3d defects is tracked upstream (pytorch PR #188426,
a wrong forward when the innermost output is 1 and strided).

:func:`guard_small_convolutions` makes every ``Conv3d`` of a model whose input is smaller than its kernel along
some axis run in fp32 under CPU bf16 autocast. Those convolutions work on a handful of voxels, so the cost is
nil; everything else keeps bf16.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallInputFp32Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in fp32 when CPU bf16 autocast is on and the input is smaller than the kernel
    along some spatial axis (see the module docstring); otherwise exactly ``nn.Conv3d``. Same parameters, same
    state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") \
                and torch.get_autocast_dtype("cpu") == torch.bfloat16 \
                and any(size < k for size, k in zip(x.shape[2:], self.kernel_size, strict=True)):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_small_convolutions(model: nn.Module) -> int:
    """Make the plain ``nn.Conv3d`` layers of ``model`` :class:`SmallInputFp32Conv3d` (in place: the class only,
    parameters and names unchanged). Returns how many layers it converted.

    Example:
        >>> net = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1))
        >>> guard_small_convolutions(net)
        1
    """
    converted = 0
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = SmallInputFp32Conv3d
            converted += 1
    return converted
