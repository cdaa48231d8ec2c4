"""``pemma update``: single-modality updates without replay, per kind of run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_main

from pemma.methods.loading import load_model

pytestmark = [pytest.mark.slow, pytest.mark.long]  # trains tiny base and adapted models (CLI train / adapt / update)

TINY = [*FAST[:2], "--spacing", "4", "4", "4", "--batch-size", "1", "--max-steps", "2"]


@pytest.fixture(scope="module")
def adapted(bases: dict[str, Path], phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapted")
    runs = {}
    for method in ("lora", "early-fusion", "late-fusion", "full"):
        runs[method] = root / method
        run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", "--method",
                 method, *TINY, "--out", str(runs[method]))
    return runs


def _logits(run: Path, modalities: tuple[str, ...]) -> torch.Tensor:
    model = load_model(run)
    x = torch.rand((1, len(modalities), 32, 32, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x, modalities)


def _update(adapted: dict[str, Path], phantom: Path, tmp_path: Path, method: str, modalities: str) -> Path:
    out = tmp_path / f"{method}_{modalities}"
    stdout = run_main("update", "--model", str(adapted[method]), "--data", str(phantom), "--centres", "CHUP",
                      "--modalities", modalities, *TINY, "--out", str(out))
    assert "best validation mean DSCagg" in stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["updated_from"] == str(adapted[method].resolve()) and meta["update_modalities"] == modalities.split(",")
    return out


def test_pemma_pet_update_keeps_ct_exact(adapted: dict[str, Path], bases: dict[str, Path], phantom: Path,
                                         tmp_path: Path) -> None:
    out = _update(adapted, phantom, tmp_path, "lora", "pet")
    assert torch.equal(_logits(out, ("ct",)), _logits(bases["unetr"], ("ct",)))
    assert not torch.equal(_logits(out, ("pet",)), _logits(adapted["lora"], ("pet",)))


def test_pemma_ct_update_uses_its_own_adapter(adapted: dict[str, Path], bases: dict[str, Path], phantom: Path,
                                              tmp_path: Path) -> None:
    out = _update(adapted, phantom, tmp_path, "lora", "ct")
    summary = json.loads(run_main("params", str(out), "--json"))
    assert summary["adapter for ct"] == "ct_update" and summary["adapter for ct+pet"] == "ctpet"
    # the CT+PET and PET routes are untouched by a CT-only update; the CT route changed
    assert torch.equal(_logits(out, ("ct", "pet")), _logits(adapted["lora"], ("ct", "pet")))
    assert not torch.equal(_logits(out, ("ct",)), _logits(bases["unetr"], ("ct",)))
    # the original CT model stays recoverable: the base run is untouched and still loads
    assert load_model(out).meta["base_sha256"] == load_model(bases["unetr"]).meta["sha256"]
    # a further PET update keeps the CT adapter it was given
    again = tmp_path / "again"
    run_main("update", "--model", str(out), "--data", str(phantom), "--centres", "MDA", "--modalities", "pet", *TINY,
             "--out", str(again))
    assert torch.equal(_logits(again, ("ct",)), _logits(out, ("ct",)))


def test_pemma_ct_pet_update(adapted: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    out = _update(adapted, phantom, tmp_path, "lora", "ct,pet")
    assert not torch.equal(_logits(out, ("ct", "pet")), _logits(adapted["lora"], ("ct", "pet")))


@pytest.mark.parametrize("method", ["early-fusion", "full"])
def test_all_parameter_baselines_forget_ct(adapted: dict[str, Path], phantom: Path, tmp_path: Path,
                                           method: str) -> None:
    out = _update(adapted, phantom, tmp_path, method, "pet")
    assert not torch.equal(_logits(out, ("ct",)), _logits(adapted[method], ("ct",)))


def test_late_fusion_updates_the_member_of_the_modality(adapted: dict[str, Path], phantom: Path,
                                                        tmp_path: Path) -> None:
    pet = _update(adapted, phantom, tmp_path, "late-fusion", "pet")
    assert torch.equal(_logits(pet, ("ct",)), _logits(adapted["late-fusion"], ("ct",)))
    assert not (pet / "ct_member.safetensors").exists()
    ct = _update(adapted, phantom, tmp_path, "late-fusion", "ct")
    assert (ct / "ct_member.safetensors").is_file()
    assert torch.equal(_logits(ct, ("pet",)), _logits(adapted["late-fusion"], ("pet",)))
    assert not torch.equal(_logits(ct, ("ct",)), _logits(adapted["late-fusion"], ("ct",)))


def test_update_refuses_missing_modality_and_overwrite(bases: dict[str, Path], phantom: Path,
                                                       capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from pemma.cli.main import main

    assert main(["update", "--model", str(bases["unetr"]), "--data", str(phantom), "--modalities", "pet", *TINY,
                 "--out", str(tmp_path / "x")]) != 0
    assert "model expects input ct, got pet" in capsys.readouterr().err
    assert main(["update", "--model", str(bases["unetr"]), "--data", str(phantom), "--modalities", "ct", *TINY,
                 "--out", str(bases["unetr"])]) != 0
    assert "not over" in capsys.readouterr().err
