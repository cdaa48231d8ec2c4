"""UNETR with gradient checkpointing: MONAI's UNETR has no switch for it (its SwinUNETR has ``use_checkpoint``)."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNETR
from torch.utils.checkpoint import checkpoint

from pemma.adapters.state import recompute_as_now

__all__ = ["CheckpointedUNETR"]


class CheckpointedUNETR(UNETR):
    """MONAI UNETR whose transformer blocks recompute their activations in backward (gradient checkpointing).

    MONAI's UNETR has no checkpointing switch (its SwinUNETR has ``use_checkpoint``); this subclass adds
    one, ``gradient_checkpointing``. The module tree is UNETR's, so state-dict keys, parameter names and the
    initialisation for a given seed are the same; outputs and gradients equal UNETR's. With the switch off,
    or when autograd is off (inference), it runs ``UNETR.forward`` itself.

    Args:
        *args: ``UNETR`` arguments.
        gradient_checkpointing: recompute each transformer block in backward. Default True.
        **kwargs: ``UNETR`` keyword arguments.

    Example:
        >>> net = CheckpointedUNETR(in_channels=1, out_channels=3, img_size=32, hidden_size=48, num_heads=4)
    """

    def __init__(self, *args: Any, gradient_checkpointing: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gradient_checkpointing = bool(gradient_checkpointing)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return super().forward(x_in)
        # UNETR.forward, with ViT.forward unrolled so that each block runs under torch's checkpoint
        # (UNETR's ViT has no classification token or head)
        x = self.vit.patch_embedding(x_in)
        hidden = []
        for block in self.vit.blocks:
            # the adapter state of the forward also in the recomputation (a PEMMA copy switches adapters per call)
            x = checkpoint(block, x, use_reentrant=False, context_fn=recompute_as_now(block))
            hidden.append(x)
        x = self.vit.norm(x)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(hidden[3]))
        enc3 = self.encoder3(self.proj_feat(hidden[6]))
        enc4 = self.encoder4(self.proj_feat(hidden[9]))
        dec3 = self.decoder5(self.proj_feat(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))
