"""PEMMA UNETR: a CT-trained MONAI UNETR upgraded to CT+PET with a PET pathway and LoRA/DoRA adapters."""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import UNETR
from torch import nn
from torch.utils.checkpoint import checkpoint

from pemma.adapters.blocks import PetSkipBlock
from pemma.adapters.config import AdapterConfig, AdapterDefaults
from pemma.adapters.state import recompute_as_now
from pemma.models.checkpointed_unetr import CheckpointedUNETR
from pemma.models.pemma_base import PemmaAdaptedModel, first_conv
from pemma.models.registry import BackboneSpec, register_backbone
from pemma.models.stacking import base_module
from pemma.vocab import ROI_MULTIPLES

__all__ = ["PemmaUNETR"]


class PemmaUNETR(PemmaAdaptedModel):
    """PEMMA on UNETR, based on: "Saeed et al., Parameter-efficient multi-modal adaptation"
    <https://arxiv.org/abs/2504.13645> (and its MICCAI 2024 version, arXiv 2404.13704).

    * CT and PET are cut into patch tokens, PET through ``pet_embedding`` (a copy of the CT patch
      projection). Both token sets get the CT model's positional embedding. The two sequences are
      concatenated along the sequence axis, CT first, and run together through the frozen transformer,
      whose attention projections carry LoRA/DoRA adapters: PET tokens are extra context for CT tokens.
    * The decoder reads the hidden states (blocks 3, 6, 9 and the final norm of block 12) at the CT
      positions, or at the PET positions when CT is absent. The final ViT LayerNorm is token-wise, so
      applying it to the CT slice equals slicing its output.
    * ``pet_skip`` (a conv block on the raw PET volume, zero-initialised output) is added to the first,
      full-resolution skip ``encoder1(ct)``. Without CT, ``encoder1`` reads the PET volume instead, or, with
      ``config.pet_alone_skip="replaces"`` (the authors' recipe), PET alone's first skip is ``pet_skip(pet)`` only.
    * The authors' structure (``--recipe authors``): ``config.pet_patch_embedding="shared"`` sends PET through the
      CT model's frozen patch projection (no ``pet_embedding``), ``config.pet_skip_block="encoder1_copy"`` makes
      ``pet_skip`` a trainable copy of the base's ``encoder1`` (their ``encoder1_pt``).
    * CT alone, on the exact route (``config.ct_route``, default), runs the untouched CT model (adapters and
      trainable copies disabled): its output equals the base model's exactly, before and after adaptation.
      On the shared route (the paper's) CT alone runs the adapted network: LoRA ViT on the CT tokens only and
      the trained encoder copies, without PET tokens or the PET skip.

    What trains is ``config.train_parts`` (default: PET embedding, PET skip block, ``encoder1``,
    ``encoder2``, the last decoder block ``decoder2``, ``out``; base modules train as peft ``modules_to_save``
    copies) plus the adapters.

    Args:
        base: the CT model, ``monai.networks.nets.UNETR`` with in_channels=1. Deep-copied, never edited.
        config: adapter configuration. Default ``AdapterConfig()`` (LoRA, rank 4, alpha 8, on ``attn.qkv``).
        adapter_name: peft adapter name. Default "ctpet".
        gradient_checkpointing: recompute each transformer block in backward (saves memory). Default False.
            A base :class:`~pemma.models.checkpointed_unetr.CheckpointedUNETR` has its own switch turned off in the copy
            (CT alone runs the copy's forward inside peft adapter contexts, which a recompute in backward
            would run outside of), and a ``forward`` patched onto the base's modules (an instance attribute)
            is removed from the copy, because it would call the original, un-adapted module.
        added_modality: the modality the PET pathway reads (``pet``, or another catalogued one, e.g. ``mr``).
            Default "pet".

    Example:
        >>> base = UNETR(in_channels=1, out_channels=3, img_size=96)
        >>> model = PemmaUNETR(base, AdapterConfig(method="lora", rank=4))
        >>> logits = model(torch.rand(1, 2, 96, 96, 96), modalities=("ct", "pet"))  # (1, 3, 96, 96, 96)
    """

    backbone_name = "unetr"
    transformer_name = "vit"
    # the paper's method: UNETR trains the PET embedding, the PET skip block, the shallow skip encoders and the head;
    # pemma also trains the last (full-resolution) decoder block, so a class the CT base never learnt can be added
    # (docs/phantom-difficulty.md: GTVn 0.000 -> 0.356 with a node-blind base)
    adapter_defaults = AdapterDefaults(target_modules=("attn.qkv",), new_parts=("pet_embedding", "pet_skip"),
                                       train_parts=("pet_embedding", "pet_skip", "encoder1", "encoder2", "decoder2",
                                                    "out"))
    feature_pet_parts = ("pet_embedding",)
    supports_gradient_checkpointing = True

    def __init__(self, base: UNETR, config: AdapterConfig | None = None, adapter_name: str = "ctpet",
                 gradient_checkpointing: bool = False, added_modality: str = "pet") -> None:
        if not isinstance(base, UNETR):
            raise ValueError(f"base must be a monai UNETR, got {type(base).__name__}")
        if len(base.feat_size) != 3:
            raise ValueError(f"PemmaUNETR supports 3-D UNETR only, got spatial dims {len(base.feat_size)}")
        if hasattr(base.vit, "cls_token"):
            raise ValueError("base UNETR has a classification token; PEMMA expects classification=False")
        conv1 = first_conv(base.encoder1)
        if conv1.in_channels != 1:
            raise ValueError(f"base must be a CT model with in_channels=1, got {conv1.in_channels}")
        super().__init__(base, config, adapter_name, added_modality)
        if isinstance(self.net, CheckpointedUNETR):
            self.net.gradient_checkpointing = False
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.img_size = tuple(f * p for f, p in zip(base.feat_size, base.patch_size, strict=True))
        # 'shared': PET through the CT model's frozen patch projection (the authors'), no module of its own
        self.pet_embedding = copy.deepcopy(base.vit.patch_embedding.patch_embeddings) \
            if self.config.pet_patch_embedding == "copy" else None
        self.pet_skip = PetSkipBlock(out_channels=conv1.out_channels) if self.config.pet_skip_block == "conv" \
            else copy.deepcopy(base.encoder1)  # the authors' encoder1_pt: a trainable PET copy of encoder1
        self._set_new_parts_trainable()

    def _pet_tokens(self, pet: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Patch tokens of an added modality (default: the first one, PET): its own projection (or the CT one when
        shared), the CT model's positional embedding and dropout."""
        embed = self.net.vit.patch_embedding
        own = self.embedding_of(modality or self.added_modality)
        projection = embed.patch_embeddings if own is None else own
        tokens = projection(pet)
        if embed.proj_type == "conv":
            tokens = tokens.flatten(2).transpose(-1, -2)
        return embed.dropout(tokens + embed.position_embeddings)

    def _build_stacked_pathway(self, modality: str, route: str) -> dict[str, nn.Module | None]:
        """A stacked modality's patch projection (a copy of the CT one, unless shared) and first-skip block."""
        encoder1 = base_module(self.net.encoder1)
        embedding = copy.deepcopy(self.net.vit.patch_embedding.patch_embeddings) \
            if self.config.pet_patch_embedding == "copy" else None
        skip = PetSkipBlock(out_channels=first_conv(encoder1).out_channels) if self.config.pet_skip_block == "conv" \
            else copy.deepcopy(encoder1)
        return {"embedding": embedding, "skip": skip}

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False, context_fn=recompute_as_now(block))
        return block(x)

    def _forward_adapted(self, inputs: dict[str, torch.Tensor], level: int = 0) -> torch.Tensor:
        net = self.net
        mods = [m for m in self.modalities if m in inputs]
        primary = inputs[mods[0]]  # the decoder reads the first sequence: CT, or the first other modality
        if tuple(primary.shape[2:]) != self.img_size:
            raise ValueError(f"UNETR input must be {self.img_size}, got spatial shape {tuple(primary.shape[2:])}")
        sequences = [net.vit.patch_embedding(inputs[m]) if m == "ct" else self._pet_tokens(inputs[m], m)
                     for m in mods]  # CT alone (a shared route): no added tokens, no added skip
        n_tokens = sequences[0].shape[1]
        x = torch.cat(sequences, dim=1)
        hidden = []
        for block in net.vit.blocks:
            x = self._block(block, x)
            hidden.append(x[:, :n_tokens])
        last = net.vit.norm(x[:, :n_tokens])

        # the first skip: encoder1 reads CT (or, without CT and unless config.pet_alone_skip is 'replaces', the
        # first other modality), and each added modality's skip block is added
        skips = [self._full_resolution(self.skip_of(m), inputs[m]) for m in mods if m != "ct"]
        if "ct" in inputs or self.config.pet_alone_skip != "replaces":
            skips.insert(0, self._full_resolution(net.encoder1, primary))
        enc1 = skips[0]
        for skip in skips[1:]:
            enc1 = enc1 + skip
        enc2 = net.encoder2(net.proj_feat(hidden[3]))
        enc3 = net.encoder3(net.proj_feat(hidden[6]))
        enc4 = net.encoder4(net.proj_feat(hidden[9]))
        dec3 = net.decoder5(net.proj_feat(last), enc4)
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        return net.out(net.decoder2(dec1, enc1))


register_backbone(BackboneSpec(
    name="unetr", net_class=UNETR, roi_multiple=ROI_MULTIPLES["unetr"], roi_kwarg="img_size",
    unused_parameters=True,  # MONAI's TransformerBlock always builds a cross-attention norm UNETR never uses
    checkpointed_class=CheckpointedUNETR))
