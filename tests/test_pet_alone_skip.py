"""PET alone's first skip on UNETR (``AdapterConfig.pet_alone_skip``): with ``replaces`` (the authors' recipe) it is the
PET skip block alone, so ``encoder1`` only ever reads CT and a PET-only update cannot re-fit it; runs recorded before
the setting keep the construction they trained with (``encoder1`` reads PET too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters import AdapterConfig
from pemma.adapters.recipes import recipe_config
from pemma.errors import PemmaError
from pemma.methods.pemma import _earlier_pet_alone_checkpoint
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.protocol.reuse import check_earlier_constructions
from pemma.training.resume_settings import refuse_other_settings

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}


def _model(config: AdapterConfig) -> PemmaUNETR:
    torch.manual_seed(0)
    return PemmaUNETR(UNETR(1, 3, **UNETR_KW).eval(), config).eval()


def _encoder1_parameters(model: PemmaUNETR) -> list[torch.nn.Parameter]:
    """The parameters of the ``encoder1`` the adapted network runs (a trained copy when it trains, else the base's)."""
    return [p for n, p in model.net.named_parameters()
            if n.startswith("encoder1.") and ("modules_to_save" in n or "original_module" not in n)]


def _outputs(model: PemmaUNETR, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"ct+pet": model(x, ("ct", "pet")), "ct": model(x[:, :1], ("ct",)), "pet": model(x[:, 1:], ("pet",))}


def test_authors_recipe_pet_alone_reads_its_copy_only() -> None:
    config = recipe_config("authors", "unetr")
    assert config.pet_alone_skip == "replaces"
    model = _model(config)
    x = torch.rand(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    before = _outputs(model, x)
    with torch.no_grad():
        for p in _encoder1_parameters(model):
            p.add_(torch.randn_like(p))
    after = _outputs(model, x)
    assert torch.equal(before["pet"], after["pet"])  # encoder1 is not on PET alone's path
    assert not torch.allclose(before["ct"], after["ct"]) and not torch.allclose(before["ct+pet"], after["ct+pet"])
    # a PET-alone loss reaches the PET copy, never encoder1
    model.train()
    model(x[:, 1:], ("pet",)).square().mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in _encoder1_parameters(model))
    assert any(p.grad is not None and p.grad.any() for p in model.pet_skip.parameters())


def test_added_is_the_earlier_construction_and_old_configs_keep_it() -> None:
    """Before the setting, PET alone's first skip was encoder1(PET) + pet_skip(PET); a recorded config without the
    key (an older run) and 'added' both build exactly that."""
    authors = recipe_config("authors", "unetr").to_dict()
    recorded = {k: v for k, v in authors.items() if k != "pet_alone_skip"}
    old = AdapterConfig.from_dict(recorded)
    assert old.pet_alone_skip is None
    x = torch.rand(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    outputs = {name: _outputs(_model(AdapterConfig.from_dict({**recorded, "pet_alone_skip": value})), x)
               for name, value in (("old", None), ("added", "added"), ("replaces", "replaces"))}
    for key in ("ct+pet", "ct", "pet"):
        assert torch.equal(outputs["old"][key], outputs["added"][key])
    assert torch.equal(outputs["old"]["ct+pet"], outputs["replaces"]["ct+pet"])
    assert torch.equal(outputs["old"]["ct"], outputs["replaces"]["ct"])
    assert not torch.allclose(outputs["old"]["pet"], outputs["replaces"]["pet"])
    model = _model(old)
    with torch.no_grad():
        for p in _encoder1_parameters(model):
            p.add_(torch.randn_like(p))
    assert not torch.allclose(_outputs(model, x)["pet"], outputs["old"]["pet"])  # encoder1 reads PET there


def test_pet_alone_skip_is_validated() -> None:
    with pytest.raises(ValueError, match="pet_alone_skip must be one of"):
        AdapterConfig(pet_alone_skip="both")
    with pytest.raises(ValueError, match="pet_alone_skip exists for unetr only"):
        AdapterConfig(pet_alone_skip="replaces").resolve("swin_unetr")
    assert recipe_config("authors", "swin_unetr").pet_alone_skip is None  # Swin's copy replaces by construction
    assert recipe_config("pemma", "unetr").pet_alone_skip is None
    swin = PemmaSwinUNETR(SwinUNETR(1, 3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
                          recipe_config("authors", "swin_unetr"))
    assert swin.config.pet_alone_skip is None


def test_reproduce_refuses_to_reuse_an_earlier_authors_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "unetr" / "pemma_lora_shared_authors" / "01_adapt_mda_ct-pet_0000"
    run.mkdir(parents=True)
    config = recipe_config("authors", "unetr").to_dict()
    (run / "model.json").write_text(json.dumps({"kind": "pemma", "adapter_config": config}))
    check_earlier_constructions(tmp_path)  # today's run is reused
    del config["pet_alone_skip"]
    (run / "model.json").write_text(json.dumps({"kind": "pemma", "adapter_config": config}))
    check_earlier_constructions(tmp_path, authors=False)  # a strategy without the authors' recipe would not reuse it
    with pytest.raises(PemmaError, match="01_adapt_mda_ct-pet_0000: authors'-recipe run of an earlier pemma"):
        check_earlier_constructions(tmp_path, ["unetr"])
    swin = tmp_path / "runs" / "swin_unetr" / "pemma_lora_shared_authors" / "01_adapt_mda_ct-pet_0000"
    swin.mkdir(parents=True)
    (swin / "model.json").write_text(json.dumps({"kind": "pemma", "adapter_config": config}))
    check_earlier_constructions(tmp_path, ["swin_unetr"])  # Swin's construction did not change


def test_resume_of_an_earlier_authors_checkpoint_says_why(tmp_path: Path) -> None:
    from pemma.adapters.config import RECORDED_BEFORE_FIELD

    current = recipe_config("authors", "unetr").resume_settings()
    recorded = {**RECORDED_BEFORE_FIELD, **{k: v for k, v in current.items() if k != "pet_alone_skip"}}
    with pytest.raises(PemmaError, match="authors'-recipe run of an earlier pemma .* start the run over"):
        refuse_other_settings(tmp_path, recorded, current)
    assert _earlier_pet_alone_checkpoint(recorded, {**current, "pet_alone_skip": None}) is None
    refuse_other_settings(tmp_path, current, dict(current))  # today's checkpoint resumes
    pemma_recipe = recipe_config("pemma", "unetr").resume_settings()
    refuse_other_settings(tmp_path, {**RECORDED_BEFORE_FIELD, **{k: v for k, v in pemma_recipe.items()
                                                                if k != "pet_alone_skip"}}, pemma_recipe)


def test_an_earlier_checkpoint_continues_with_the_construction_it_trained_with(tmp_path: Path) -> None:
    """A checkpoint recorded before the setting (None) built what ``added`` builds: ``--pet-alone-skip added``
    continues it, and the refusal without the flag says so (no flag repeats None, so "rerun with the same flags"
    would send the user in a circle)."""
    from pemma.adapters.config import RECORDED_BEFORE_FIELD

    current = recipe_config("authors", "unetr").resume_settings()
    recorded = {**RECORDED_BEFORE_FIELD, **{k: v for k, v in current.items() if k != "pet_alone_skip"}}
    with pytest.raises(PemmaError, match="continue it as it was built with --pet-alone-skip added"):
        refuse_other_settings(tmp_path, recorded, current)
    refuse_other_settings(tmp_path, recorded, {**current, "pet_alone_skip": "added"})
    refuse_other_settings(tmp_path, {**recorded, "pet_alone_skip": "added"}, {**current, "pet_alone_skip": None})
    with pytest.raises(PemmaError, match="pet_alone_skip added → replaces"):  # another construction stays refused
        refuse_other_settings(tmp_path, {**recorded, "pet_alone_skip": "added"}, current)


def test_reproduce_refuses_prognosis_stages_started_from_an_earlier_authors_run(tmp_path: Path) -> None:
    """The hecktor2022 prognosis starts +PET from the authors'-recipe segmentation adapters; once the refused
    segmentation run is deleted and trained again, its prognosis folder (keyed by the folder's name, not its weights)
    would be reused as it is: a stage that copied the earlier run's adapter config is refused too."""
    folder = tmp_path / "runs" / "unetr" / "prognosis_0123456789ab"
    stage = folder / "lora_ct+pet"
    stage.mkdir(parents=True)
    config = recipe_config("authors", "unetr").to_dict()
    (folder / "ct").mkdir()
    (folder / "ct" / "survival.json").write_text(json.dumps({"kind": "survival", "adapter_config": None}))
    (stage / "survival.json").write_text(json.dumps({"kind": "survival", "adapter_config": config}))
    check_earlier_constructions(tmp_path, ["unetr"])  # started from today's run
    del config["pet_alone_skip"]
    (stage / "survival.json").write_text(json.dumps({"kind": "survival", "adapter_config": config}))
    check_earlier_constructions(tmp_path, ["unetr"], authors=False)  # a strategy without the authors' recipe
    with pytest.raises(PemmaError, match=r"lora_ct\+pet: prognosis stage started from the adapters of an "
                                         r"authors'-recipe run of an earlier pemma.*delete that prognosis folder"):
        check_earlier_constructions(tmp_path, ["unetr"])


def test_a_checkpoint_that_never_recorded_the_setting_gets_no_pet_alone_reason(tmp_path: Path) -> None:
    """A prognosis stage's checkpoint records its adapter settings as they were (no RECORDED_BEFORE_FIELD): one of
    an earlier pemma lacks pet_alone_skip, which is then not compared, so another difference (here the epochs) must
    not be explained as the PET-alone skip (nor send the user to a flag ``pemma survival adapt`` does not have)."""
    current = {**recipe_config("authors", "unetr").resume_settings(), "train.epochs": 3}
    recorded = {**{k: v for k, v in current.items() if k != "pet_alone_skip"}, "train.epochs": 2}
    with pytest.raises(PemmaError, match="other settings than the interrupted run: train.epochs 2 → 3;"):
        refuse_other_settings(tmp_path, recorded, current)
