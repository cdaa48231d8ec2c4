"""Late fusion baseline: a CT model and a PET model whose logits are combined by a weighted sum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn


class LateFusion(nn.Module):
    """``weight * ct_net(CT) + (1 - weight) * pet_net(PET)`` for CT+PET input; each member alone otherwise.

    The PEMMA paper (arXiv 2504.13645) compares against this baseline. With CT alone it is exactly the
    CT model.

    Args:
        ct_net: segmentation network with one input channel (CT).
        pet_net: segmentation network with one input channel (PET).
        weight: weight of the CT logits in [0, 1]. Default 0.5 (``pemma adapt --method late-fusion`` picks
            it on the validation cases).

    Example:
        >>> model = LateFusion(ct_unetr, pet_unetr, weight=0.4)
        >>> logits = model(torch.rand(1, 2, 96, 96, 96), ("ct", "pet"))
    """

    #: called as ``model(x, modalities)`` (see :func:`pemma.models.loaded.run_network`)
    accepts_modalities: ClassVar[bool] = True

    def __init__(self, ct_net: nn.Module, pet_net: nn.Module, weight: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.ct_net, self.pet_net, self.weight = ct_net, pet_net, float(weight)

    def member_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CT logits, PET logits) of a [CT, PET] input (B, 2, D, H, W)."""
        return self.ct_net(x[:, :1]), self.pet_net(x[:, 1:2])

    def forward(self, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        mods = tuple(modalities)
        if x.shape[1] != len(mods):
            raise ValueError(f"x has {x.shape[1]} channels but modalities {mods} name {len(mods)}")
        if mods == ("ct",):
            return self.ct_net(x)
        if mods == ("pet",):
            return self.pet_net(x)
        if mods != ("ct", "pet"):
            raise ValueError(f"modalities must be ('ct',), ('pet',) or ('ct', 'pet'), got {mods}")
        ct, pet = self.member_logits(x)
        return self.weight * ct + (1.0 - self.weight) * pet
