"""Small modules of the PEMMA PET pathway (arXiv 2504.13645).

Each one starts as an identity (or as "add nothing"), so that a freshly built PEMMA model behaves like
the CT model it came from and adaptation starts from there.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.unetr_block import UnetrBasicBlock
from torch import nn


class PetSkipBlock(nn.Module):
    """Convolutional block on the raw PET volume whose output is added to the first (full-res) skip.

    A MONAI ``UnetrBasicBlock`` (residual 3×3×3 convolutions) followed by a 1×1×1 convolution initialised
    to zero, so that adding it to the skip is an identity until it is trained.

    Args:
        in_channels: channels of the PET input. Default 1.
        out_channels: channels of the skip it is added to (the backbone's ``feature_size``).
        norm_name: MONAI norm name. Default "instance".

    Example:
        >>> block = PetSkipBlock(out_channels=16)
        >>> block(torch.rand(1, 1, 32, 32, 32)).abs().max().item()
        0.0
    """

    def __init__(self, out_channels: int, in_channels: int = 1, norm_name: str | tuple = "instance") -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got in={in_channels} out={out_channels}")
        self.block = UnetrBasicBlock(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                                     kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        self.proj = nn.Conv3d(out_channels, out_channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, pet: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(pet))


class ModalityAdapter(nn.Module):
    """Residual adapter for a single-modality embedding: ``x + conv(relu(norm(conv(x))))``.

    The method's "1×1 conv, norm, ReLU, 1×1 conv" with a residual connection and the last convolution
    initialised to zero, so it starts as an exact identity.

    Args:
        channels: embedding channels.
        hidden: channels of the bottleneck. Default: ``channels``.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        if channels < 1 or hidden < 1:
            raise ValueError(f"channels must be positive, got channels={channels} hidden={hidden}")
        self.body = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1),
            nn.InstanceNorm3d(hidden, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, kernel_size=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ProjectedModalityAdapter(nn.Module):
    """The authors' single-modality adapter of Swin UNETR: conv C->C, BatchNorm, ReLU, conv C->n·C, whose output
    then goes through the CT+PET projection n·C->C (of :class:`EmbeddingFusion`). PyTorch's default
    initialisation, as theirs (it does not start as an identity).

    Args:
        channels: embedding channels C.
        out_channels: the projection's input channels (n·C).
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        if channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got channels={channels} out_channels={out_channels}")
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, kernel_size=1),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class EmbeddingFusion(nn.Module):
    """Maps per-modality patch embeddings (B, C, d, h, w) into the backbone's embedding space.

    * several modalities: concatenated on channels in MODALITY_ORDER and projected back to C channels by a
      1×1×1 convolution initialised to ``[I, 0, ...]`` (it starts by passing the first modality through);
    * one modality: its :class:`ModalityAdapter`. By default there is none for CT (on pemma's exact route CT
      alone runs the untouched base); the shared route adds one for CT too.

    Args:
        channels: embedding channels C.
        modalities: all modalities of the model, in channel order. Default ("ct", "pet").
        single: the modalities that get a single-modality adapter. Default: all but the first.
        style: ``"residual"`` (:class:`ModalityAdapter`, default) or ``"projected"`` (the authors':
            :class:`ProjectedModalityAdapter` followed by the shared projection).
    """

    def __init__(self, channels: int, modalities: tuple[str, ...] = ("ct", "pet"),
                 single: tuple[str, ...] | None = None, style: str = "residual") -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"fusion needs at least two modalities, got {modalities}")
        single = tuple(modalities[1:] if single is None else single)
        if any(m not in modalities for m in single):
            raise ValueError(f"single-modality adapters {single} must be among the modalities {modalities}")
        self.modalities = tuple(modalities)
        self.project = nn.Conv3d(channels * len(modalities), channels, kernel_size=1)
        with torch.no_grad():
            self.project.weight.zero_()
            self.project.weight[:, :channels, 0, 0, 0].copy_(torch.eye(channels))
            self.project.bias.zero_()
        if style not in ("residual", "projected"):
            raise ValueError(f"style must be 'residual' or 'projected', got {style!r}")
        self.style = style
        width = channels * len(modalities)
        self.single = nn.ModuleDict({m: ModalityAdapter(channels) if style == "residual"
                                     else ProjectedModalityAdapter(channels, width) for m in single})

    def forward(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        present = [m for m in self.modalities if m in embeddings]
        if len(present) != len(embeddings) or not present:
            raise ValueError(f"embeddings must be keyed by {self.modalities}, got {sorted(embeddings)}")
        if len(present) == 1:
            if present[0] not in self.single:
                raise ValueError(f"no single-modality adapter for {present[0]!r} (on the exact route it runs the "
                                 "base model)")
            adapted = self.single[present[0]](embeddings[present[0]])
            return adapted if self.style == "residual" else self.project(adapted)
        if len(present) == len(self.modalities):
            return self.project(torch.cat([embeddings[m] for m in present], dim=1))
        # a partial set of several modalities (three or more stacked): the absent ones' channels are zero
        like = embeddings[present[0]]
        return self.project(torch.cat([embeddings[m] if m in embeddings else torch.zeros_like(like)
                                       for m in self.modalities], dim=1))
