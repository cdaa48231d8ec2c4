"""The PEMMA pathway for a modality other than PET: the same modules and numbers under another name, modality
dropout over its subsets, the exact CT route, and ``pemma adapt --add-modality mr`` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters import AdapterConfig
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR

SPEC = {
    "unetr": (UNETR, {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
              PemmaUNETR, (1, 32, 32, 32)),
    "swin_unetr": (SwinUNETR, {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
                   PemmaSwinUNETR, (1, 64, 32, 32)),
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _pair(backbone: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    net_class, kwargs, pemma_class, _ = SPEC[backbone]
    torch.manual_seed(0)
    base = net_class(1, 3, **kwargs).eval()
    torch.manual_seed(1)
    pet = pemma_class(base, AdapterConfig()).eval()
    torch.manual_seed(1)
    mr = pemma_class(base, AdapterConfig(), added_modality="mr").eval()
    with torch.no_grad():  # pretend adaptation happened (the same change in both)
        gen = torch.Generator().manual_seed(7)
        for (_, p), (_, q) in zip(pet.named_parameters(), mr.named_parameters(), strict=True):
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
                q.copy_(p)
    return base, pet, mr


@pytest.mark.parametrize("backbone", list(SPEC))
def test_an_added_mr_is_the_pet_pathway_under_another_name(backbone: str) -> None:
    base, pet, mr = _pair(backbone)
    assert mr.modalities == ("ct", "mr") and pet.modalities == ("ct", "pet")
    # the same modules (pet_embedding, pet_skip, adapters); Swin's fusion names its single-modality adapter
    assert list(mr.state_dict()) == [k.replace("single.pet.", "single.mr.") for k in pet.state_dict()]
    batch, *spatial = SPEC[backbone][3]
    x = torch.rand(batch, 2, *spatial, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(mr(x, ("ct", "mr")), pet(x, ("ct", "pet")))
        assert torch.equal(mr(x[:, 1:], ("mr",)), pet(x[:, 1:], ("pet",)))
        assert torch.equal(mr(x[:, :1], ("ct",)), base(x[:, :1]))  # the exact CT route
        assert not torch.equal(mr(x, ("ct", "mr")), base(x[:, :1]))
    with pytest.raises(ValueError, match="subset of"):
        mr(x, ("ct", "pet"))


def test_modality_dropout_draws_subsets_of_the_added_modality() -> None:
    cfg = AdapterConfig(modality_dropout=(0.5, 0.25, 0.25))
    assert cfg.modality_choices(added="mr") == [(("ct", "mr"), 0.5), (("ct",), 0.25), (("mr",), 0.25)]
    assert cfg.modality_choices() == [(("ct", "pet"), 0.5), (("ct",), 0.25), (("pet",), 0.25)]
    draws = {cfg.sample_modalities(random.Random(i), trainable_only=True, added="dose") for i in range(40)}
    assert draws == {("ct", "dose"), ("dose",)}
    with pytest.raises(ValueError, match="added_modality must be a modality name other than ct"):
        PemmaUNETR(UNETR(1, 3, **SPEC["unetr"][1]), AdapterConfig(), added_modality="ct")


@pytest.mark.slow
@pytest.mark.long  # CLI: synth, a CT base and its adaptation, a few steps each
def test_cli_adapt_a_ct_run_to_ct_mr(tmp_path: Path) -> None:
    from conftest import FAST, run_cli

    data = tmp_path / "phantom"
    run_cli("synth", str(data), "--cases-per-centre", "2", "--centres", "CHUM,MDA", "--shape", "48", "48", "32",
            "--modalities", "ct,pet,mr")
    run_cli("train", "--data", str(data), "--centres", "CHUM", "--modalities", "ct", *FAST, "--max-steps", "1",
            "--out", str(tmp_path / "ct"))
    proc = run_cli("adapt", "--base", str(tmp_path / "ct"), "--data", str(data), "--centres", "MDA",
                   "--add-modality", "mr", *FAST, "--max-steps", "2", "--out", str(tmp_path / "ctmr"))
    assert "DSCagg (CT+MR)" in proc.stdout
    meta = json.loads((tmp_path / "ctmr" / "model.json").read_text())
    assert meta["modalities"] == ["ct", "mr"] and meta["input_sets"] == [["ct", "mr"], ["ct"], ["mr"]]
    assert meta["adapters"]["ct"] == "none (exact CT base)"
    assert "modality dropout per step: ct+mr" in (tmp_path / "ctmr" / "train.log").read_text()
    for inputs in ("ct,mr", "mr"):
        out = run_cli("evaluate", "--model", str(tmp_path / "ctmr"), "--data", str(data), "--centres", "MDA",
                      "--modalities", inputs).stdout
        assert f"inputs {inputs.replace(',', '+')} " in out
    refused = run_cli("adapt", "--base", str(tmp_path / "ct"), "--data", str(data), "--add-modality", "mr",
                      "--method", "late_fusion", *FAST, "--max-steps", "1", "--out", str(tmp_path / "lf"), check=False)
    assert refused.returncode == 2 and "only pemma_lora, pemma_dora, early_fusion, full_finetune add a modality " \
        "other than pet" in refused.stderr
