"""Prognosis model: pooled features of plain and PEMMA encoders, EHR projection, saved state."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters.config import AdapterConfig
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.survival.heads import CoxHead, MTLRHead, TimeBins
from pemma.survival.model import PrognosisModel, feature_dim, pemma_features, plain_features, trainable_summary

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unetr() -> UNETR:
    torch.manual_seed(0)
    return UNETR(1, 3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()


@pytest.fixture(scope="module")
def swin() -> SwinUNETR:
    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1),
                     num_heads=(1, 2, 2, 4)).eval()


def test_pemma_features_equal_plain_features_at_initialisation(unetr: UNETR, swin: SwinUNETR) -> None:
    """Fresh adapters (zero update) on CT input give the CT network's features exactly."""
    for net, klass, size in ((unetr, PemmaUNETR, 32), (swin, PemmaSwinUNETR, 64)):
        x = torch.rand(2, 1, size, size, size, generator=torch.Generator().manual_seed(1))
        model = klass(net, AdapterConfig(method="lora", rank=2)).eval()
        with torch.no_grad():
            plain = plain_features(net, x)
            adapted = pemma_features(model, x, ("ct",))
        assert plain.shape == (2, feature_dim(net))
        torch.testing.assert_close(adapted, plain, rtol=0, atol=1e-6)


def test_pool_features_weights_tokens_by_the_tumour() -> None:
    """Known answer: 2 patches on a 2 x 1 x 1 grid, CT and PET tokens; the tumour fills patch 0 only."""
    from pemma.survival.model import pool_features

    tokens = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]]])  # CT p0, CT p1, PET p0, PET p1
    tumour = torch.zeros(1, 1, 4, 2, 2)
    tumour[:, :, :2] = 1.0  # patch 0 (first 2 voxels along x) is tumour: 8 voxels
    out = pool_features(tokens, tumour, 2)[0]
    assert out.shape == (7,)
    torch.testing.assert_close(out[:2], torch.tensor([4.0, 40.0]))  # mean over the 4 tokens
    torch.testing.assert_close(out[2:4], torch.tensor([7.0, 70.0]))  # max
    torch.testing.assert_close(out[4:6], torch.tensor([3.0, 30.0]) * 2 / (2 + 1e-3))  # CT p0 and PET p0 only
    torch.testing.assert_close(out[6], torch.log1p(torch.tensor(8.0)))  # soft tumour burden
    # a feature map (B, C, x, y, z) is read as tokens in the same patch order
    fmap = tokens[:, :2].transpose(1, 2).reshape(1, 2, 2, 1, 1)
    torch.testing.assert_close(pool_features(fmap, tumour, 2)[0, 4:6], torch.tensor([1.0, 10.0]) / (1 + 1e-3))
    with pytest.raises(ValueError, match="do not tile"):
        pool_features(tokens[:, :3], tumour, 2)


def test_pet_changes_features_and_reaches_adapters(unetr: UNETR) -> None:
    model = PemmaUNETR(unetr, AdapterConfig(method="dora", rank=2)).eval()
    ct = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    pet = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    both = pemma_features(model, torch.cat([ct, pet], 1), ("ct", "pet"))
    assert both.shape == (2, 145) and not torch.allclose(both, pemma_features(model, ct, ("ct",)))
    both.sum().backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None]
    assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads)
    with pytest.raises(ValueError, match="need CT"):
        pemma_features(model, pet, ("pet",))


def test_prognosis_model_ehr_starts_as_identity_and_saved_state(unetr: UNETR) -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32, 32)
    plain = PrognosisModel(unetr, MTLRHead(145, TimeBins((100.0, 200.0))), ("ct",))
    plain.set_feature_scaling(torch.randn(10, 145))
    out = plain(x)
    assert out.shape == (3, 3) and plain.risk(out).shape == (3,)
    assert set(plain.saved_state()) == {"feature_mean", "feature_std", "head.linear.weight", "head.linear.bias"}

    encoder = PemmaUNETR(unetr, AdapterConfig(rank=2)).eval()
    with_ehr = PrognosisModel(encoder, MTLRHead(145, TimeBins((100.0, 200.0))), ("ct",), n_clinical=5)
    new = with_ehr.load_saved_state(plain.saved_state(), allow_new=("encoder.", "clinical."))
    assert "clinical.weight" in new and any(".lora_A." in k for k in new)
    clinical = torch.randn(3, 5)
    torch.testing.assert_close(with_ehr(x, clinical), out, rtol=0, atol=1e-5)  # zero-initialised projection
    with pytest.raises(ValueError, match="clinical vector of 5"):
        with_ehr(x)
    with pytest.raises(ValueError, match="missing"):
        with_ehr.load_saved_state(plain.saved_state())
    with pytest.raises(ValueError, match="unexpected"):
        plain.load_saved_state(with_ehr.saved_state())
    with_ehr.requires_grad_(False)
    with_ehr.clinical.requires_grad_(True)
    summary = trainable_summary(with_ehr)
    assert summary["trainable"] == 5 * 145 + 145 == summary["trainable:clinical"]


def test_feature_scaling_floors_small_std(unetr: UNETR) -> None:
    model = PrognosisModel(unetr, CoxHead(145), ("ct",))
    feats = torch.randn(20, 145)
    feats[:, 0] = 1.0  # constant feature
    model.set_feature_scaling(feats)
    assert model.feature_std[0] >= 0.1 * feats.std(0, unbiased=False).mean() - 1e-6
    torch.testing.assert_close(model.feature_mean, feats.mean(0))


class FakeImages:
    """Stands in for :class:`~pemma.survival.data.CaseImages`: fixed random volumes."""

    def __init__(self, n: int) -> None:
        self.volumes = torch.rand(n, 1, 32, 32, 32, generator=torch.Generator().manual_seed(5))

    def __len__(self) -> int:
        return len(self.volumes)

    def batch(self, indices) -> torch.Tensor:
        return self.volumes[list(indices)]


@pytest.mark.slow
def test_fit_solves_the_head_only_and_l2_shrinks_it(unetr: UNETR, tmp_path) -> None:
    """A frozen-encoder stage solves the head (no optimiser steps, no metrics.csv); a given l2 is used as is and
    shrinks the head; without l2 the penalty is chosen from the grid by inner CV."""
    import logging

    from pemma.config import build_config
    from pemma.survival.config import SurvivalConfig
    from pemma.survival.data import Split
    from pemma.survival.fit import fit

    cfg = build_config("tiny", overrides={"train": {"max_steps": 15, "batch_size": 2, "lr": 0.05}})
    n = 8
    split = Split(FakeImages(n), torch.linspace(100, 800, n), torch.tensor([1.0, 0, 1, 1, 0, 1, 0, 1]))
    norms = {}
    for l2 in (0.0, 5.0, None):
        torch.manual_seed(0)
        model = PrognosisModel(unetr, CoxHead(145), ("ct",))
        model.encoder.requires_grad_(False)
        before = {k: v.clone() for k, v in unetr.state_dict().items()}
        settings = SurvivalConfig(l2=l2, l2_grid=(0.1, 1.0), cv_folds=2)
        result = fit(model, split, cfg, torch.device("cpu"), tmp_path, logging.getLogger("test"), settings)
        assert result["steps"] == 0 and result["probe_iterations"] > 0 and math.isfinite(result["loss"])
        assert all(torch.equal(before[k], v) for k, v in unetr.state_dict().items())  # frozen encoder
        if l2 is None:
            assert result["l2"] in (0.1, 1.0) and [r["l2"] for r in result["l2_cv"]] == [0.1, 1.0]
        else:
            assert result["l2"] == l2 and result["l2_cv"] == []
        norms[l2] = model.head.linear.weight.detach().norm().item()
    assert norms[5.0] < 0.5 * norms[0.0]
    assert not (tmp_path / "metrics.csv").exists()


class KeyedImages(FakeImages):
    """FakeImages with case keys (as :class:`~pemma.survival.data.CaseImages` has), so features are memoised;
    counts the volumes it hands out."""

    def __init__(self, n: int, tag: str = "a") -> None:
        super().__init__(n)
        self.tag, self.served = tag, 0

    def case_key(self, i: int) -> tuple:
        return ("test preprocessing", self.tag, i)

    def batch(self, indices) -> torch.Tensor:
        self.served += len(list(indices))
        return super().batch(indices)


def test_features_of_memoises_per_encoder_weights_and_case(unetr: UNETR) -> None:
    from pemma.survival import fit as fit_module

    fit_module._FEATURES.clear()
    encoder = PemmaUNETR(unetr, AdapterConfig(rank=2)).eval()
    model = PrognosisModel(encoder, CoxHead(145), ("ct", "pet"))
    images = KeyedImages(5)
    images.volumes = torch.rand(5, 2, 32, 32, 32, generator=torch.Generator().manual_seed(5))
    first = fit_module.features_of(model, images, 2, torch.device("cpu"))
    assert images.served == 5 and first.shape == (5, 145)
    again = fit_module.features_of(model, images, 2, torch.device("cpu"))
    assert images.served == 5  # no case went through the encoder again
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    plain = FakeImages(5)  # no case keys: computed every time, and equal to the memoised features
    plain.volumes = images.volumes
    torch.testing.assert_close(fit_module.features_of(model, plain, 2, torch.device("cpu")), first,
                               rtol=1e-5, atol=1e-6)
    # another model with the same encoder weights (the +EHR stage after +PET) reuses them; a changed weight does not
    other = PrognosisModel(encoder, CoxHead(145), ("ct", "pet"), n_clinical=3)
    fit_module.features_of(other, images, 2, torch.device("cpu"))
    assert images.served == 5
    with torch.no_grad():
        next(p for n, p in encoder.named_parameters() if ".lora_B." in n).add_(0.5)
    changed = fit_module.features_of(model, images, 2, torch.device("cpu"))
    assert images.served == 10 and not torch.equal(changed, first)
    fit_module._FEATURES.clear()
