"""Prognosis model: pooled encoder features of a segmentation backbone (+ a projected clinical vector) -> head.

Image features (``D = 3 * C + 1`` values) are read from the encoder's ``C``-channel output (tokens or the
deepest feature map) and from the network's own segmentation of the crop:

* the mean and the maximum of every channel over tokens / space (the most intense focus, e.g. SUVmax);
* the **tumour-weighted mean** of every channel: tokens weighted by the predicted GTVp + GTVn probability
  averaged over each token's patch (so the features describe the lesion, not the anatomy around it);
* ``log(1 + predicted tumour voxels)``: the soft tumour burden (the network's metabolic/tumour volume).

Encoder output per backbone and input:

* plain UNETR (the CT run): the final ViT hidden states (after the last LayerNorm);
* plain Swin UNETR: the deepest ``swinViT`` stage output (``16 * feature_size`` channels);
* PEMMA UNETR (adapted): CT and PET patch tokens (PET through ``pet_embedding``) concatenated along the
  sequence and run through the adapter-carrying transformer, as in segmentation; pooling is over **all**
  tokens (CT and PET, both weighted by the same patch's tumour probability), so the PET tokens' own
  features reach the head;
* PEMMA Swin UNETR: the fused CT+PET embedding (``fusion``) through the adapted Swin stages, deepest stage.
  CT alone (a CT+EHR model) runs the CT embedding through the adapted stages.

The segmentation is the network's forward pass on the same input (the PEMMA model with the same modalities).
The PEMMA features are computed here from the PEMMA model's submodules (``net``, ``pet_embedding``,
``fusion``, ``_pet_tokens``, ``_stages``) without changing those classes. With adapters freshly initialised
and CT input they equal the plain model's features exactly (tested).

Then ``z = (f - mean) / std`` with the training-set mean and std of ``f`` (buffers, set when a stage starts),
plus ``clinical(x_ehr)`` when the model uses EHR: a Linear projection of the encoded clinical vector
(:class:`~pemma.survival.clinical.ClinicalEncoder`) initialised to zero, so adding EHR starts from the
previous model's predictions exactly. The head (:mod:`pemma.survival.heads`) maps ``z`` to its output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn

from pemma.adapters.state import is_adapter_param
from pemma.io_utils import copy_tensors_into
from pemma.models.pemma_base import PemmaAdaptedModel
from pemma.vocab import ROI_MULTIPLES

#: input patch edge of a UNETR token and of a Swin UNETR deepest-stage voxel: the ROI multiples each needs
UNETR_PATCH, SWIN_STRIDE = ROI_MULTIPLES["unetr"], ROI_MULTIPLES["swin_unetr"]
#: names the image features; runs keyed by it (``pemma reproduce``'s prognosis folder) retrain when it changes
FEATURES = "mean-max-tumour_weighted-burden/1"


@dataclass(frozen=True)
class EncoderReadout:
    """Where a backbone's image features are read (one entry per MONAI class in :data:`READOUTS`).

    Args:
        stride: input voxels per token / feature-map voxel along each axis.
        channels: ``net -> C``, the channels of the encoder output.
        plain: ``(net, x) -> encoded`` of a plain MONAI network: (B, N, C) tokens or (B, C, x, y, z).
        adapted: ``(model, inputs) -> encoded`` of a PEMMA model around it on the adapted path, ``inputs`` the
            ``{modality: (B, 1, X, Y, Z)}`` of :meth:`~pemma.models.pemma_base.PemmaAdaptedModel.split_modalities`.
    """

    stride: int
    channels: Callable[[nn.Module], int]
    plain: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    adapted: Callable[[PemmaAdaptedModel, dict[str, torch.Tensor]], torch.Tensor]


def _unetr_adapted(model: PemmaAdaptedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """CT (and PET) patch tokens through the adapter-carrying transformer, after its final LayerNorm."""
    net = model.net
    sequences = [net.vit.patch_embedding(inputs["ct"])]
    if "pet" in inputs:
        sequences.append(model._pet_tokens(inputs["pet"]))
    h = torch.cat(sequences, dim=1)
    for block in net.vit.blocks:
        h = block(h)
    return net.vit.norm(h)


def _swin_adapted(model: PemmaAdaptedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (fused CT+PET, or CT) embedding through the adapted Swin stages: the deepest stage."""
    embedding = model.net.swinViT.patch_embed(inputs["ct"])
    if "pet" in inputs:
        embedding = model.fusion({"ct": embedding, "pet": model.pet_embedding(inputs["pet"])})
    return model._stages(embedding)[-1]


#: the feature readout of each MONAI backbone class (a new backbone adds its entry here)
READOUTS: dict[type[nn.Module], EncoderReadout] = {
    UNETR: EncoderReadout(
        stride=UNETR_PATCH, channels=lambda net: int(net.vit.norm.normalized_shape[0]),
        plain=lambda net, x: net.vit(x)[0],  # (B, N, C) hidden states after the final LayerNorm
        adapted=_unetr_adapted),
    SwinUNETR: EncoderReadout(
        stride=SWIN_STRIDE, channels=lambda net: int(net.swinViT.patch_embed.proj.out_channels) * 16,
        plain=lambda net, x: net.swinViT(x, net.normalize)[-1],  # (B, 16 * feature_size, x/32, y/32, z/32)
        adapted=_swin_adapted),
}


def readout_of(net: nn.Module) -> EncoderReadout:
    """The :class:`EncoderReadout` of a plain MONAI network (ValueError for another class)."""
    for cls, readout in READOUTS.items():
        if isinstance(net, cls):
            return readout
    raise ValueError(f"unsupported network {type(net).__name__}; expected "
                     f"{' or '.join(c.__name__ for c in READOUTS)}")


def feature_dim(encoder: nn.Module) -> int:
    """D of the image features (:func:`pool_features`) of a plain MONAI UNETR / SwinUNETR or a PEMMA model
    around one."""
    net = encoder.net if isinstance(encoder, PemmaAdaptedModel) else encoder
    return 3 * readout_of(net).channels(net) + 1


def tumour_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, 3, X, Y, Z) segmentation logits -> (B, 1, X, Y, Z) probability of GTVp or GTVn."""
    return torch.softmax(logits.float(), dim=1)[:, 1:].sum(dim=1, keepdim=True)


def pool_features(encoded: torch.Tensor, tumour: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean, max and tumour-weighted mean of every channel, and the log soft tumour burden.

    Args:
        encoded: (B, N, C) tokens whose N is a multiple of the patch grid (e.g. CT and PET tokens), or
            (B, C, x, y, z) a feature map on the patch grid.
        tumour: (B, 1, X, Y, Z) tumour probability on the input grid, ``X = stride * x`` etc.
        stride: input voxels per token / feature-map voxel along each axis.

    Returns:
        (B, 3C + 1).

    Example:
        >>> pool_features(torch.rand(2, 54, 8), torch.rand(2, 1, 48, 48, 48), 16).shape
        torch.Size([2, 25])
    """
    weights = nn.functional.avg_pool3d(tumour, stride).flatten(1)  # (B, P) in patch-grid order
    tokens = encoded if encoded.ndim == 3 else encoded.flatten(2).transpose(1, 2)  # (B, N, C)
    if tokens.shape[1] % weights.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not tile the {weights.shape[1]}-patch grid")
    weights = weights.repeat(1, tokens.shape[1] // weights.shape[1]).to(tokens.dtype)  # same patch, each modality
    weighted = (tokens * weights[..., None]).sum(dim=1) / (weights.sum(dim=1, keepdim=True) + 1e-3)
    burden = torch.log1p(tumour.flatten(1).sum(dim=1, keepdim=True)).to(tokens.dtype)
    return torch.cat([tokens.mean(dim=1), tokens.amax(dim=1), weighted, burden], dim=1)


def plain_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Image features of a plain MONAI network (see :func:`pool_features`).

    Args:
        net: ``UNETR`` or ``SwinUNETR`` (any in_channels).
        x: (B, C, X, Y, Z) input at the network's ROI size.

    Returns:
        (B, D).

    Example:
        >>> net = UNETR(1, 3, img_size=32, hidden_size=96, mlp_dim=192, num_heads=4, feature_size=8)
        >>> plain_features(net, torch.rand(2, 1, 32, 32, 32)).shape
        torch.Size([2, 289])
    """
    readout = readout_of(net)
    tumour = tumour_probability(net(x))
    return pool_features(readout.plain(net, x), tumour, readout.stride)


def pemma_features(model: PemmaAdaptedModel, x: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
    """Image features of a PEMMA model on the adapted path (adapters active), for ct+pet or ct.

    Args:
        model: ``PemmaUNETR`` or ``PemmaSwinUNETR``.
        x: (B, len(modalities), X, Y, Z) in [CT, PET] order.
        modalities: ("ct", "pet") or ("ct",). PET alone is not supported for prognosis.

    Returns:
        (B, D).
    """
    inputs = model.split_modalities(x, modalities)
    if "ct" not in inputs:
        raise ValueError("prognosis features need CT (PET-only input is not supported)")
    readout = readout_of(model.net)
    tumour = tumour_probability(model(x, modalities))
    return pool_features(readout.adapted(model, inputs), tumour, readout.stride)


class PrognosisModel(nn.Module):
    """Encoder features (+ EHR) -> survival head.

    Args:
        encoder: a plain MONAI ``UNETR`` / ``SwinUNETR`` (the segmentation run's network) or a PEMMA model.
        head: :class:`~pemma.survival.heads.CoxHead` or :class:`~pemma.survival.heads.MTLRHead` on D inputs.
        modalities: the image inputs, [CT, PET] order, e.g. ("ct",) or ("ct", "pet").
        n_clinical: length of the encoded clinical vector; 0 = no EHR. Default 0.

    Shapes:
        forward: x (B, len(modalities), X, Y, Z), clinical (B, n_clinical) -> head output ((B,) Cox,
        (B, K + 1) MTLR); :meth:`risk` maps it to (B,) risk scores.

    Example:
        >>> model = PrognosisModel(unetr, CoxHead(289), ("ct",))  # tiny UNETR: 3 x 96 + 1 pooled features
        >>> risk = model.risk(model(torch.rand(2, 1, 32, 32, 32)))  # (2,)
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, modalities: Sequence[str], n_clinical: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.modalities = tuple(modalities)
        dim = feature_dim(encoder)
        self.feature_dim = dim
        if not self.is_pemma and "pet" in self.modalities and len(self.modalities) == 1:
            raise ValueError("a plain prognosis model reads what its network was trained on; got PET only")
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.clinical: nn.Linear | None = None
        if n_clinical:
            self.clinical = nn.Linear(n_clinical, dim)
            nn.init.zeros_(self.clinical.weight)
            nn.init.zeros_(self.clinical.bias)
        self.head = head

    @property
    def is_pemma(self) -> bool:
        return isinstance(self.encoder, PemmaAdaptedModel)

    @property
    def n_clinical(self) -> int:
        return 0 if self.clinical is None else int(self.clinical.in_features)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> raw pooled features (B, D)."""
        if self.is_pemma:
            return pemma_features(self.encoder, x, self.modalities)
        return plain_features(self.encoder, x)

    def from_features(self, features: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Head output from raw pooled features (B, D) and the clinical vector (B, n_clinical)."""
        z = (features - self.feature_mean) / self.feature_std
        if self.clinical is not None:
            if clinical is None or clinical.shape[-1] != self.clinical.in_features:
                got = None if clinical is None else tuple(clinical.shape)
                raise ValueError(f"this model needs a clinical vector of {self.clinical.in_features} values, "
                                 f"got {got}")
            z = z + self.clinical(clinical.to(z.dtype))
        return self.head(z)

    def forward(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.from_features(self.image_features(x), clinical)

    def risk(self, out: torch.Tensor) -> torch.Tensor:
        """(B,) risk scores (higher = earlier relapse) from the head output."""
        return self.head.risk(out)

    @torch.no_grad()
    def set_feature_scaling(self, features: torch.Tensor) -> None:
        """Standardise with the mean and std of training features (N, D); each std is floored at a tenth of
        their mean (and 1e-6), so near-constant features are not magnified without bound."""
        std = features.std(dim=0, unbiased=False) if features.shape[0] > 1 else torch.ones_like(features[0])
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(std.clamp_min(max(0.1 * float(std.mean()), 1e-6)))

    def saved_state(self) -> dict[str, torch.Tensor]:
        """Everything not in the frozen base network: head, scaling, clinical projection and, for a PEMMA
        encoder, its adapter state (LoRA/DoRA tensors and PET modules). The base is rebuilt from its run."""
        out = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        if self.is_pemma:
            out.update({f"encoder.{k}": v for k, v in self.encoder.adapter_state_dict().items()})
        return out

    def load_saved_state(self, state: dict[str, torch.Tensor], source: str = "prognosis weights",
                         allow_new: Sequence[str] = ()) -> list[str]:
        """Copy :meth:`saved_state` tensors into this model.

        Args:
            state: tensors from :meth:`saved_state` (of this model or of the previous stage).
            source: name used in error messages.
            allow_new: key prefixes of this model that ``state`` may lack (parts new in this stage).

        Returns:
            The keys of this model that ``state`` did not provide.

        Raises:
            ValueError: ``state`` has keys this model lacks, wrong shapes, or lacks keys not in ``allow_new``.
        """
        return copy_tensors_into(self.saved_state(), state, source, optional=allow_new)


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """``{"trainable", "total"}`` parameter counts and trainable counts per top-level part."""
    params = dict(model.named_parameters())
    out = {"trainable": sum(p.numel() for p in params.values() if p.requires_grad),
           "total": sum(p.numel() for p in params.values())}
    parts: dict[str, int] = {}
    for name, p in params.items():
        if p.requires_grad:
            if is_adapter_param(name):
                part = "adapters"
            else:
                pieces = name.split(".")
                part = pieces[1] if pieces[0] == "encoder" and len(pieces) > 1 else pieces[0]
            parts[part] = parts.get(part, 0) + p.numel()
    out.update({f"trainable:{k}": v for k, v in sorted(parts.items())})
    return out
