"""What validation scores to keep an adaptation's best weights (``AdapterConfig.validation_inputs``): ``full`` (CT and
PET together, pemma's) or ``each`` (every input set modality dropout trains, scored alone and averaged: the authors'
"validation on all three")."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNETR

from pemma.adapters import AdapterConfig
from pemma.adapters.recipes import recipe_config
from pemma.config import build_config
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.training.loop import TrainingTask, validate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(ct_route: str) -> PemmaUNETR:
    torch.manual_seed(0)
    base = UNETR(1, 3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()
    model = PemmaUNETR(base, AdapterConfig(ct_route=ct_route, validation_inputs="each")).eval()
    with torch.no_grad():  # adapters and PET pathway away from their "no change" start, so the sets differ
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return model


def _cases(channels: list[int]) -> list[dict[str, MetaTensor]]:
    g = torch.Generator().manual_seed(2)
    cases = []
    for _ in range(2):
        image = torch.rand(2, 32, 32, 32, generator=g)
        label = torch.zeros(1, 32, 32, 32, dtype=torch.uint8)
        label[0, 8:20, 8:20, 8:20] = 1
        label[0, 22:28, 22:28, 22:28] = 2
        cases.append({"image": MetaTensor(image[channels]), "label": MetaTensor(label)})
    return cases


def _task(model: PemmaUNETR, modalities: list[str], sets: tuple[tuple[str, ...], ...] = ()) -> TrainingTask:
    return TrainingTask(model=model, modalities=modalities, forward=lambda m, x, s: m(x, tuple(modalities)),
                        predictor=lambda m, chosen: (lambda x: m(x, chosen)), save=lambda *a: None, describe=[],
                        validation_sets=sets)


def test_each_input_set_is_scored_alone_and_averaged():
    cfg = build_config("tiny", overrides={"model": {"roi_size": [32, 32, 32]}, "train": {"amp": False}})
    model = _model("shared")
    sets = model.config.validation_sets(trainable_only=False)
    assert sets == (("ct", "pet"), ("ct",), ("pet",))
    device = torch.device("cpu")
    scores = validate(_task(model, ["ct", "pet"], sets), model, _cases([0, 1]), cfg, device)
    # each set scored alone = a validation that has only that input (its channels only, in the data too)
    alone = {
        "ct+pet": validate(_task(model, ["ct", "pet"]), model, _cases([0, 1]), cfg, device),
        "ct": validate(_task(model, ["ct"]), model, _cases([0]), cfg, device),
        "pet": validate(_task(model, ["pet"]), model, _cases([1]), cfg, device),
    }
    for name, single in alone.items():
        assert scores[f"{name}_mean"] == pytest.approx(single["mean"], abs=0, rel=0)
    assert len({round(s["mean"], 9) for s in alone.values()}) > 1  # the sets give different scores here
    for key in ("GTVp", "GTVn", "mean"):
        values = [s[key] for s in alone.values() if not math.isnan(s[key])]
        assert scores[key] == pytest.approx(sum(values) / len(values))
    # "full": one score, CT and PET together, no per-set keys (metrics.csv as before)
    assert set(alone["ct+pet"]) == {"GTVp", "GTVn", "mean"}


def test_which_sets_each_recipe_and_route_validate():
    assert AdapterConfig().validation_sets() == ()  # pemma's default: CT+PET together
    assert recipe_config("pemma", "unetr").validation_inputs == "full"
    for backbone in ("unetr", "swin_unetr"):
        authors = recipe_config("authors", backbone)
        assert authors.validation_inputs == "each"
        assert authors.validation_sets() == (("ct", "pet"), ("ct",), ("pet",))
    # the exact route's CT alone is the untouched base (nothing to choose by): not scored
    exact = AdapterConfig(validation_inputs="each")
    assert exact.validation_sets(trainable_only=True) == (("ct", "pet"), ("pet",))
    # a set modality dropout never draws is not validated either
    assert AdapterConfig(validation_inputs="each", modality_dropout=(0.5, 0.0, 0.5)).validation_sets() \
        == (("ct", "pet"), ("pet",))
    assert AdapterConfig(validation_inputs="each").validation_sets(added="mr") == (("ct", "mr"), ("ct",), ("mr",))
    with pytest.raises(ValueError, match="validation_inputs must be one of"):
        AdapterConfig(validation_inputs="all")


def test_the_methods_tasks_validate_what_the_config_says():
    """PEMMA and full fine-tuning (the PEMMA pathway, every parameter trained) validate each input set under
    ``each`` and CT+PET together under ``full``; the exact route leaves out CT alone only where it is the base."""
    from pathlib import Path

    from pemma.methods.adaptation import AdaptationSetup
    from pemma.methods.full_finetune import full_finetune_task
    from pemma.methods.pemma import pemma_task
    from pemma.models.loaded import LoadedModel
    from pemma.models.registry import build_backbone

    cfg = build_config("tiny", overrides={"model": {"roi_size": [32, 32, 32]}})
    base = LoadedModel(net=build_backbone(cfg.model, in_channels=1), config=cfg, meta={}, input_sets=[["ct"]],
                       run_dir=Path("base"))
    setup = AdaptationSetup(base, Path("base"), cfg, [], [])
    for route, pemma_sets in (("exact", (("ct", "pet"), ("pet",))), ("shared", (("ct", "pet"), ("ct",), ("pet",)))):
        each = AdapterConfig(validation_inputs="each", ct_route=route)
        assert pemma_task(base, Path("base"), each, cfg).validated_sets() == pemma_sets
        assert full_finetune_task(setup, each).validated_sets() == (("ct", "pet"), ("ct",), ("pet",))
        full = AdapterConfig(ct_route=route)
        assert pemma_task(base, Path("base"), full, cfg).validated_sets() == (("ct", "pet"),)
        assert full_finetune_task(setup, full).validated_sets() == (("ct", "pet"),)
