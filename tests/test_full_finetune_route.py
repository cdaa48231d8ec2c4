"""Full fine-tuning is one network for every input set (the shared CT route): CT alone runs the same trained modules
as CT+PET and PET alone, so a PET-only update can change CT output, as it does for early fusion. Built on the exact
route (before 2026-12-06), CT alone ran separate copies of ``encoder1``, ``encoder2``, ``decoder2`` and ``out`` that
PET-only training never reaches: its CT output was protected by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, main_result, run_main

from pemma.adapters import AdapterConfig
from pemma.config import build_config
from pemma.errors import PemmaError
from pemma.methods.adaptation import AdaptationSetup
from pemma.methods.full_finetune import full_finetune_task
from pemma.models.loaded import LoadedModel
from pemma.models.registry import build_backbone
from pemma.protocol.reuse import check_earlier_constructions

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(adapter_cfg: AdapterConfig | None):
    cfg = build_config("tiny", overrides={"model": {"roi_size": [32, 32, 32]}})
    torch.manual_seed(0)
    base = LoadedModel(net=build_backbone(cfg.model, in_channels=1), config=cfg, meta={}, input_sets=[["ct"]],
                       run_dir=Path("base"))
    return full_finetune_task(AdaptationSetup(base, Path("base"), cfg, [], []), adapter_cfg)


@pytest.mark.parametrize("recipe_route", [None, "exact", "shared"])
def test_ct_alone_runs_the_modules_pet_only_training_changes(recipe_route: str | None) -> None:
    task = _task(None if recipe_route is None else AdapterConfig(ct_route=recipe_route))
    model = task.model.eval()
    assert model.config.ct_route == "shared"
    ct = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = model(ct, ("ct",))
        # what a PET-only step trains: the trained copy of the last decoder block (PET alone runs it)
        pet_grad_params = [p for n, p in model.named_parameters() if "decoder2" in n and "modules_to_save" in n]
        assert pet_grad_params
        for p in pet_grad_params:
            p.add_(0.5)
        after = model(ct, ("ct",))
    assert not torch.allclose(before, after)


def test_pet_only_step_changes_ct_output(bases, phantom: Path, tmp_path: Path) -> None:
    """End to end: adapt by full fine-tuning, update with PET only; the CT-only prediction's logits differ."""
    from pemma.methods import load_model

    adapted, updated = tmp_path / "full", tmp_path / "full_pet"
    run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", "--method", "full",
             *FAST, "--max-steps", "1", "--out", str(adapted))
    assert json.loads((adapted / "model.json").read_text())["adapter_config"]["ct_route"] == "shared"
    run_main("update", "--model", str(adapted), "--data", str(phantom), "--centres", "CHUP", "--modalities", "pet",
             *FAST, "--max-steps", "2", "--lr", "0.05", "--out", str(updated))
    x = torch.rand(1, 2, 32, 32, 32)
    a, b = load_model(adapted), load_model(updated)
    with torch.no_grad():
        assert not torch.allclose(a(x[:, :1], ["ct"]), b(x[:, :1], ["ct"]))


def test_exact_route_for_full_finetuning_is_refused(bases, phantom: Path, tmp_path: Path) -> None:
    proc = main_result("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA",
                       "--method", "full", "--ct-route", "exact", *FAST, "--max-steps", "1",
                       "--out", str(tmp_path / "full"))
    assert proc.returncode != 0
    assert "full fine-tuning" in proc.stderr and "--ct-route exact" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "full").exists()


def test_reproduce_refuses_to_reuse_an_exact_route_full_finetuning_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "unetr" / "full_finetune" / "01_adapt_mda_ct-pet_0000"
    run.mkdir(parents=True)
    meta = {"kind": "pemma_full", "adapter_config": {"ct_route": "shared"}}
    (run / "model.json").write_text(json.dumps(meta))
    check_earlier_constructions(tmp_path)  # today's runs are reused
    meta["adapter_config"]["ct_route"] = "exact"
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PemmaError, match="01_adapt_mda_ct-pet_0000: full fine-tuning run of an earlier pemma"):
        check_earlier_constructions(tmp_path)


def test_resume_of_an_exact_route_full_finetuning_checkpoint_says_why(bases, phantom: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of an earlier pemma (exact route) is refused with a reason the user can act on: before, the line
    said 'ct_route exact → shared; rerun with the same flags', and --ct-route exact is refused for full fine-tuning."""
    import pemma.methods.full_finetune as full

    out = tmp_path / "full"
    args = ("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", "--method", "full",
            *FAST, "--max-steps", "1", "--out", str(out))
    monkeypatch.setattr(full, "FULL_FINETUNE_ROUTE", "exact")  # as pemma built it before 2026-12-06
    run_main(*args)
    monkeypatch.undo()
    proc = main_result(*args, "--resume")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "earlier pemma" in proc.stderr and "--force" in proc.stderr
    assert "rerun with the same flags" not in proc.stderr


def test_update_asking_for_the_exact_route_of_a_full_finetuning_run_does_not_send_to_adapt() -> None:
    """'adapt again to change it' cannot be followed for full fine-tuning (adapt refuses --ct-route exact for it)."""
    from types import SimpleNamespace

    from pemma.methods.update import check_adaptation_settings

    def loaded(kind: str, route: str) -> SimpleNamespace:
        return SimpleNamespace(kind=kind, net=SimpleNamespace(config=AdapterConfig(ct_route=route)))

    with pytest.raises(PemmaError, match="full fine-tuning is one network") as exc:
        check_adaptation_settings(loaded("pemma_full", "shared"), Path("runs/full"), "exact", None)
    assert "adapt again" not in str(exc.value)
    with pytest.raises(PemmaError, match="adapt again to change it"):  # an earlier pemma's run: adapt gives shared
        check_adaptation_settings(loaded("pemma_full", "exact"), Path("runs/full"), "shared", None)
    with pytest.raises(PemmaError, match="adapt again to change it"):
        check_adaptation_settings(loaded("pemma", "shared"), Path("runs/lora"), "exact", None)
