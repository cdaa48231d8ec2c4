"""The shared CT route end to end: ``pemma adapt --recipe authors`` (shared route), then single-modality updates
that keep training the same adapter, recorded in the run and shown by ``pemma params``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, main_result, run_main

import pemma
from pemma.errors import PemmaError
from pemma.methods.loading import load_model

pytestmark = pytest.mark.slow  # trains a tiny adapted model and updates it (CLI adapt / update)

TINY = [*FAST[:2], "--spacing", "4", "4", "4", "--batch-size", "1", "--max-steps", "2"]


def _logits(run: Path, modalities: tuple[str, ...]) -> torch.Tensor:
    model = load_model(run)
    x = torch.rand((1, len(modalities), 32, 32, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x, modalities)


def test_shared_route_adapt_and_updates(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    adapted = tmp_path / "authors"
    shown = run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", "--recipe",
                     "authors", *TINY, "--val-fraction", "0.5", "--out", str(adapted))
    assert "best validation mean DSCagg (CT+PET, CT, PET averaged)" in shown  # not "(CT+PET)": what it is over
    meta = json.loads((adapted / "model.json").read_text())
    assert meta["ct_route"] == "shared" and meta["recipe"] == "authors"
    stored = json.loads((adapted / "adapter_config.json").read_text())["adapter_config"]
    assert stored["ct_route"] == "shared" and stored["target_modules"] == ["attn.qkv.q", "attn.qkv.v"]
    # the authors validate on all three input sets: each scored alone, the best weights by their average
    assert stored["validation_inputs"] == "each"
    assert "validation: each input set alone (ct+pet, ct, pet)" in (adapted / "train.log").read_text()
    last = list(csv.DictReader((adapted / "metrics.csv").open()))[-1]
    each = [float(last[f"val_{s}_mean"]) for s in ("ct+pet", "ct", "pet")]
    assert float(last["val_mean"]) == pytest.approx(sum(each) / 3, abs=1e-4)
    assert "(averaged over ct+pet " in (adapted / "train.log").read_text()
    # CT alone runs the adapted network: it is no longer the base's output
    assert not torch.equal(_logits(adapted, ("ct",)), _logits(bases["unetr"], ("ct",)))
    summary = json.loads(run_main("params", str(adapted), "--json"))
    assert summary["ct_route"] == "shared" and summary["recipe"] == "authors"
    assert summary["adapter for ct"] == summary["adapter for ct+pet"] == "ctpet"
    api = pemma.params(adapted)  # numbers, as without a run (were "x.xxx%" strings with one)
    assert api["percent_of_early_fusion"] == pytest.approx(100.0 * api["trainable"] / api["early_fusion"])
    assert api["authors_percent"] == pytest.approx(summary["authors_percent"]) and 0 < api["authors_percent"] < 100

    # a CT-only update trains the same adapter: CT+PET output moves too, and no ct_update adapter appears
    ct = tmp_path / "ct"
    run_main("update", "--model", str(adapted), "--data", str(phantom), "--centres", "CHUP", "--modalities", "ct",
             "--ct-route", "shared", "--recipe", "authors", *TINY, "--out", str(ct))
    assert json.loads((ct / "adapter_config.json").read_text())["ct_adapter"] is None
    assert not torch.equal(_logits(ct, ("ct",)), _logits(adapted, ("ct",)))
    assert not torch.equal(_logits(ct, ("ct", "pet")), _logits(adapted, ("ct", "pet")))
    assert json.loads(run_main("params", str(ct), "--json"))["adapter for ct"] == "ctpet"

    # an update keeps the route: asking for the other one is a one-line error
    bad = main_result("update", "--model", str(adapted), "--data", str(phantom), "--centres", "CHUP", "--modalities",
                      "pet", "--ct-route", "exact", *TINY, "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "keeps the route" in bad.stderr and "Traceback" not in bad.stderr


def test_adapt_and_update_refuse_another_window_or_spacing(bases: dict[str, Path], phantom: Path,
                                                           tmp_path: Path) -> None:
    # both keep the run's window and voxel spacing: another --roi / --spacing was accepted and silently ignored
    base = str(bases["unetr"])  # trained with --roi 32 32 32 --spacing 4 4 4 (FAST)
    bad = main_result("adapt", "--base", base, "--data", str(phantom), "--centres", "MDA", "--preset", "tiny",
                      "--roi", "64", "64", "64", "--max-steps", "1", "--out", str(tmp_path / "roi"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"{base}: --roi 64 64 64 differs from the run's (32 32 32); the run's is kept" in bad.stderr
    bad = main_result("update", "--model", base, "--data", str(phantom), "--centres", "HGJ", "--modalities", "ct",
                      "--preset", "tiny", "--spacing", "2", "2", "2", "--max-steps", "1", "--out", str(tmp_path / "sp"))
    assert bad.returncode == 2 and "--spacing 2 2 2 differs from the run's (4 4 4)" in bad.stderr
    assert not (tmp_path / "roi").exists() and not (tmp_path / "sp").exists()
    # the Python API's other spellings: the field name, and overrides
    for given in ({"roi_size": [64, 64, 64]}, {"overrides": {"model": {"roi_size": [64, 64, 64]}}},
                  {"overrides": {"preprocess": {"target_spacing": [2, 2, 2]}}}):
        with pytest.raises(PemmaError, match="differs from the run's"):
            pemma.adapt(base, phantom, tmp_path / "api", centres=["MDA"], max_steps=1, **given)
    from pemma.api.run import check_kept_geometry
    from pemma.config import RunConfig

    kept = RunConfig.load(bases["unetr"] / "config.yaml")  # the same values are accepted
    check_kept_geometry({"roi": [32, 32, 32], "target_spacing": [4, 4, 4]}, {"model": {"roi_size": [32] * 3}}, kept,
                        base)
