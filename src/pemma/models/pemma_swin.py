"""PEMMA Swin UNETR: a CT-trained MONAI SwinUNETR upgraded to CT+PET with a PET pathway and LoRA/DoRA."""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from pemma.adapters.blocks import EmbeddingFusion, PetSkipBlock
from pemma.adapters.config import AdapterConfig, AdapterDefaults
from pemma.models.pemma_base import PemmaAdaptedModel, first_conv
from pemma.models.registry import BackboneSpec, register_backbone
from pemma.models.stacking import base_module
from pemma.vocab import ROI_MULTIPLES

__all__ = ["PemmaSwinUNETR"]


class PemmaSwinUNETR(PemmaAdaptedModel):
    """PEMMA on Swin UNETR, based on: "Saeed et al., Parameter-efficient multi-modal adaptation"
    <https://arxiv.org/abs/2504.13645>.

    * PET gets its own patch embedding ``pet_embedding`` (a copy of the CT ``swinViT.patch_embed``).
    * ``fusion``: with CT and PET the two embeddings are concatenated on channels ([CT, PET]) and
      projected back by a 1×1×1 convolution (initialised to pass CT through); with PET alone a residual
      adapter (1×1 conv, instance norm, ReLU, 1×1 conv; zero-initialised) maps the PET embedding.
      The fused embedding then runs through the frozen Swin stages, whose ``attn.qkv`` and ``attn.proj``
      Linears carry LoRA/DoRA adapters (``config.target_modules``; the MLP linears can be added).
    * ``pet_skip`` (conv block on the raw PET volume, zero-initialised output) is added to the first,
      full-resolution skip ``encoder1(ct)``; without CT, ``encoder1`` reads the PET volume.
    * CT alone, on the exact route (``config.ct_route``, default), bypasses all of this and runs the untouched
      CT model (adapters disabled): its output equals the base model's exactly, before and after adaptation.
      On the shared route (the paper's) CT alone runs ``fusion``'s CT adapter and the adapted Swin stages.

    Everything else stays frozen (default ``train_parts``: pet_embedding, pet_skip, fusion). The authors'
    structure (``--recipe authors``): ``config.single_adapter="projected"`` (their ct_adapter / pet_adapter, conv
    C->C, BatchNorm, ReLU, conv C->2C, then the shared 2C->C projection) and ``config.pet_skip_block=
    "encoder1_copy"`` (a PET copy of ``encoder1`` gives the first skip of PET alone).

    Args:
        base: the CT model, ``monai.networks.nets.SwinUNETR`` (3-D, in_channels=1). Deep-copied, never edited.
        config: adapter configuration. Default ``AdapterConfig()`` (LoRA rank 4 on attn.qkv and attn.proj).
        adapter_name: peft adapter name. Default "ctpet".
        added_modality: the modality the PET pathway reads (``pet``, or another catalogued one, e.g. ``mr``).
            Default "pet".

    Example:
        >>> base = SwinUNETR(in_channels=1, out_channels=3, feature_size=48)
        >>> model = PemmaSwinUNETR(base, AdapterConfig(method="dora", rank=8, alpha=16))
        >>> logits = model(torch.rand(1, 1, 96, 96, 96), modalities=("pet",))  # (1, 3, 96, 96, 96)
    """

    backbone_name = "swin_unetr"
    transformer_name = "swinViT"
    adapter_defaults = AdapterDefaults(target_modules=("attn.qkv", "attn.proj"),
                                       new_parts=("pet_embedding", "pet_skip", "fusion"),
                                       train_parts=("pet_embedding", "pet_skip", "fusion"),
                                       pet_entry_parts=("fusion", "pet_skip"))
    feature_pet_parts = ("pet_embedding", "fusion")

    def __init__(self, base: SwinUNETR, config: AdapterConfig | None = None, adapter_name: str = "ctpet",
                 added_modality: str = "pet") -> None:
        if not isinstance(base, SwinUNETR):
            raise ValueError(f"base must be a monai SwinUNETR, got {type(base).__name__}")
        embed_conv = base.swinViT.patch_embed.proj
        if not isinstance(embed_conv, torch.nn.Conv3d):
            raise ValueError("PemmaSwinUNETR supports 3-D SwinUNETR only")
        if embed_conv.in_channels != 1 or first_conv(base.encoder1).in_channels != 1:
            raise ValueError(f"base must be a CT model with in_channels=1, got {embed_conv.in_channels}")
        super().__init__(base, config, adapter_name, added_modality)
        feature_size = embed_conv.out_channels
        self.pet_embedding = copy.deepcopy(base.swinViT.patch_embed)
        # the shared route gives CT alone a single-modality adapter too (the paper's ct_adapter)
        single = self.modalities if self.shared_route else self.modalities[1:]
        self.fusion = EmbeddingFusion(feature_size, self.modalities, single=single, style=self.config.single_adapter)
        # 'encoder1_copy' (the authors'): a PET copy of encoder1 that replaces it for PET alone
        self.pet_skip = PetSkipBlock(out_channels=first_conv(base.encoder1).out_channels) \
            if self.config.pet_skip_block == "conv" else copy.deepcopy(base.encoder1)
        self._set_new_parts_trainable()

    def _stages(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """``SwinTransformer.forward`` from the (fused) patch embedding on: the five normalised outputs."""
        vit, normalize = self.net.swinViT, self.net.normalize
        x = vit.pos_drop(x0)
        outs = [vit.proj_out(x, normalize)]
        for i in range(1, 5):
            if vit.use_v2:
                x = getattr(vit, f"layers{i}c")[0](x.contiguous())
            x = getattr(vit, f"layers{i}")[0](x.contiguous())
            outs.append(vit.proj_out(x, normalize))
        return outs

    def _build_stacked_pathway(self, modality: str, route: str) -> dict[str, nn.Module | None]:
        """A stacked modality's patch embedding (a copy of the CT one), first-skip block, and the fusion of its
        level (the level below's, widened; see :mod:`pemma.models.stacking`)."""
        encoder1 = base_module(self.net.encoder1)
        skip = PetSkipBlock(out_channels=first_conv(encoder1).out_channels) if self.config.pet_skip_block == "conv" \
            else copy.deepcopy(encoder1)
        return {"embedding": copy.deepcopy(self.net.swinViT.patch_embed), "skip": skip,
                "fusion": self._widened_fusion(self.fusion_of(len(self.stack) - 1), route)}

    def fusion_of(self, level: int) -> nn.Module:
        """The embedding fusion of level ``level`` (0: ``self.fusion``)."""
        return self.fusion if level == 0 else self.stacked[self.stack[level - 1].modality]["fusion"]

    def _forward_adapted(self, inputs: dict[str, torch.Tensor], level: int = 0) -> torch.Tensor:
        net = self.net
        mods = [m for m in self.modalities if m in inputs]
        primary = inputs[mods[0]]
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            net._check_input_size(primary.shape[2:])
        # CT alone (a shared route): the CT single-modality adapter, no added skip
        embeddings = {m: (net.swinViT.patch_embed if m == "ct" else self.embedding_of(m))(inputs[m]) for m in mods}
        hidden = self._stages(self.fusion_of(level)(embeddings))

        full = self._full_resolution
        if self.config.pet_skip_block == "encoder1_copy":  # the authors': the copy serves its modality alone
            enc0 = full(net.encoder1, inputs["ct"]) if "ct" in inputs else full(self.skip_of(mods[0]), primary)
        else:
            enc0 = full(net.encoder1, primary)
            for m in mods:
                if m != "ct":
                    enc0 = enc0 + full(self.skip_of(m), inputs[m])
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        dec4 = net.encoder10(hidden[4])
        dec3 = net.decoder5(dec4, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        return net.out(net.decoder1(dec0, enc0))


register_backbone(BackboneSpec(name="swin_unetr", net_class=SwinUNETR, roi_multiple=ROI_MULTIPLES["swin_unetr"],
                               checkpointing_kwarg="use_checkpoint"))
