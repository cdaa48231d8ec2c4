"""The two CT routes of a PEMMA model (``AdapterConfig.ct_route``): exact (CT alone = the untouched base) and
shared (the paper's: CT alone through the adapted network, so CT-only draws train and CT output can change)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters import AdapterConfig, merge_adapters
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = {
    "unetr": (UNETR, {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
              PemmaUNETR, (1, 32, 32, 32)),
    "swin_unetr": (SwinUNETR, {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
                   PemmaSwinUNETR, (1, 64, 32, 32)),
}


def _base(backbone: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cls, kw, _, _ = SPEC[backbone]
    return cls(1, 3, **kw).eval()


def _volume(backbone: str, seed: int = 1) -> torch.Tensor:
    batch, *spatial = SPEC[backbone][3]
    return torch.rand(batch, 2, *spatial, generator=torch.Generator().manual_seed(seed))


def _steps(model: torch.nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """A few adaptation steps on CT-only draws (the only draws that reach the CT output on the shared route)."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[:, :1], ("ct",)), target) \
            + torch.nn.functional.cross_entropy(model(x, ("ct", "pet")), target)
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("backbone", list(SPEC))
def test_shared_route_ct_draws_train_and_ct_output_changes(backbone):
    base, x = _base(backbone), _volume(backbone)
    model = SPEC[backbone][2](base, AdapterConfig(ct_route="shared")).eval()
    assert model.adapter_for(("ct",)) == "ctpet" and model.active_adapters == ["ctpet"]
    with torch.no_grad():
        reference = base(x[:, :1])
        before = model(x[:, :1], ("ct",))
    # every new piece starts as "no change": CT alone equals the base before any training
    assert (before - reference).abs().max() <= 1e-5
    model.train()
    model(x[:, :1], ("ct",)).square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".lora_" in n for n in grads), "CT-only draws must reach the adapters"
    assert not any(n.startswith("pet_") for n in grads), "CT alone must not use the PET pathway"
    model.zero_grad()
    _steps(model, x)
    with torch.no_grad():
        after = model(x[:, :1], ("ct",))
    assert (after - reference).abs().max() > 1e-4, "CT output did not change after adaptation steps"


@pytest.mark.parametrize("backbone", list(SPEC))
def test_exact_route_ct_output_stays_base(backbone):
    base, x = _base(backbone), _volume(backbone)
    model = SPEC[backbone][2](base, AdapterConfig()).eval()
    assert model.config.ct_route == "exact" and model.adapter_for(("ct",)) is None
    _steps(model, x)
    with torch.no_grad():
        assert (model(x[:, :1], ("ct",)) - base(x[:, :1])).abs().max() <= 1e-6


def test_shared_route_has_no_ct_update_adapter_and_merged_serves_ct():
    base, x = _base("unetr"), _volume("unetr")
    model = PemmaUNETR(base, AdapterConfig(ct_route="shared")).eval()
    with pytest.raises(ValueError, match="shared CT route"):
        model.add_ct_adapter()
    _steps(model, x, steps=2)
    merged = merge_adapters(model)
    with torch.no_grad():
        assert (merged(x[:, :1], ("ct",)) - model(x[:, :1], ("ct",))).abs().max() <= 1e-4
    exact = merge_adapters(PemmaUNETR(base, AdapterConfig()).eval())
    with pytest.raises(ValueError, match="merged"):
        exact(x[:, :1], ("ct",))


def test_modality_dropout_keeps_ct_draws_on_the_shared_route():
    cfg = AdapterConfig(modality_dropout=(0.6, 0.2, 0.2))
    assert [m for m, _ in cfg.modality_choices(trainable_only=True)] == [("ct", "pet"), ("pet",)]
    assert [m for m, _ in cfg.modality_choices()] == [("ct", "pet"), ("ct",), ("pet",)]
