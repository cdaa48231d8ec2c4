"""Recipes (named adaptation defaults shipped as YAML), the authors' structural options, and the parameter budget
counted two ways (``pemma params`` without a run)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import main_result, run_main
from monai.networks.nets import UNETR, SwinUNETR

from pemma.adapters import AdapterConfig
from pemma.adapters.config import DEFAULT_TARGET_MODULES, DEFAULT_TRAIN_PARTS
from pemma.adapters.recipes import recipe_config, recipe_values
from pemma.errors import PemmaError
from pemma.models.accounting import count_parameters
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.vocab import BACKBONES, RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SWIN_KW = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pemma_recipe_is_todays_defaults(backbone):
    cfg = recipe_config("pemma", backbone).resolve(backbone)
    default = AdapterConfig().resolve(backbone)
    assert cfg == default and recipe_config(None, backbone) == recipe_config("pemma", backbone)
    assert cfg.target_modules == DEFAULT_TARGET_MODULES[backbone]
    assert cfg.train_parts == DEFAULT_TRAIN_PARTS[backbone]


def test_authors_recipe_values_and_overrides():
    unetr = recipe_config("authors", "unetr")
    assert (unetr.rank, unetr.alpha, unetr.target_modules) == (4, 4.0, ("attn.qkv.q", "attn.qkv.v"))
    assert unetr.train_parts == ("pet_skip", "encoder1", "encoder2", "encoder3", "encoder4", "out")
    assert (unetr.pet_patch_embedding, unetr.pet_skip_block, unetr.ct_route) == ("shared", "encoder1_copy", "shared")
    assert unetr.modality_dropout == (0.6, 0.2, 0.2) and unetr.recipe == "authors"
    swin = recipe_config("authors", "swin_unetr", "dora")
    assert (swin.method, swin.rank, swin.alpha, swin.dropout) == ("dora", 8, 16.0, 0.1)
    assert swin.target_modules == ("attn.qkv", "attn.proj", "mlp.linear1", "mlp.linear2")
    assert swin.single_adapter == "projected"
    # explicit values win; None counts as not given
    over = recipe_config("authors", "unetr", overrides={"rank": 16, "ct_route": "exact", "alpha": None})
    assert (over.rank, over.ct_route, over.alpha, over.recipe) == (16, "exact", 4.0, "authors")
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipe_values("nope", "unetr")
    with pytest.raises(ValueError, match="cannot be overridden"):
        recipe_config("authors", "unetr", overrides={"recipe": "pemma"})
    assert set(RECIPES) == {"pemma", "authors"}


def test_structural_options_are_validated():
    with pytest.raises(ValueError, match="pet_patch_embedding must be one of"):
        AdapterConfig(pet_patch_embedding="own")
    with pytest.raises(ValueError, match="pet_embedding"):
        AdapterConfig(pet_patch_embedding="shared", train_parts=("pet_embedding",))
    with pytest.raises(ValueError, match="unetr only"):
        AdapterConfig(pet_patch_embedding="shared").resolve("swin_unetr")
    with pytest.raises(ValueError, match="swin_unetr only"):
        AdapterConfig(single_adapter="projected").resolve("unetr")
    # old adapter configs (no new keys) load with today's behaviour
    old = AdapterConfig.from_dict({"method": "lora", "rank": 4})
    assert (old.ct_route, old.pet_patch_embedding, old.pet_skip_block, old.recipe) == ("exact", "copy", "conv",
                                                                                          "pemma")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_authors_structure_runs_every_input_set_and_trains(backbone):
    torch.manual_seed(0)
    if backbone == "unetr":
        base, cls, shape = UNETR(1, 3, **UNETR_KW).eval(), PemmaUNETR, (1, 32, 32, 32)
    else:
        base, cls, shape = SwinUNETR(1, 3, **SWIN_KW).eval(), PemmaSwinUNETR, (1, 64, 32, 32)
    model = cls(base, recipe_config("authors", backbone))
    x = torch.rand(1, 2, *shape[1:], generator=torch.Generator().manual_seed(1))
    if backbone == "unetr":
        assert model.pet_embedding is None  # PET through the CT model's frozen patch embedding
        assert isinstance(model.pet_skip, type(base.encoder1))
        lora = [n for n, p in model.named_parameters() if ".lora_A." in n]
        assert lora and all(".qkv.q." in n or ".qkv.v." in n for n in lora)
    else:
        assert set(model.fusion.single) == {"ct", "pet"}  # the shared route's CT adapter and the PET adapter
    model.train()
    loss = sum(model(x[:, idx], mods).square().mean()
               for idx, mods in (([0, 1], ("ct", "pet")), ([0], ("ct",)), ([1], ("pet",))))
    loss.backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "pet_skip" in grads and "base_model" in grads
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen


def test_authors_unetr_count_at_paper_size():
    """The paper counts 7,834,179 trainable parameters (feature size 48) against a feature-size-16 early fusion
    UNETR of 95,948,467. Our count of the authors' recipe gives 2,352 fewer (one 1x1x1 conv 48->48 with bias);
    pemma's conv PET skip block (encoder1-shaped block + that projection) gives their number exactly."""
    from pemma.models.budget import authors_count

    kwargs = {"img_size": [96, 96, 96], "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12,
              "out_channels": 3}
    authors = authors_count("unetr", kwargs, recipe_config("authors", "unetr"))
    assert (authors["authors_trainable"], authors["authors_reference"]) == (7_831_827, 95_948_467)
    assert round(authors["authors_percent"], 2) == 8.16
    conv_skip = recipe_config("authors", "unetr", overrides={"pet_skip_block": "conv"})
    assert authors_count("unetr", kwargs, conv_skip)["authors_trainable"] == 7_834_179


def test_params_without_a_run_cli_matches_api():
    import pemma

    proc = main_result("params", "--backbone", "unetr", "--preset", "tiny", "--recipe", "authors", "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    api = pemma.params(backbone="unetr", preset="tiny", recipe="authors")
    for key in ("trainable", "total", "early_fusion", "authors_trainable", "authors_reference", "ct_route"):
        assert shown[key] == api[key], key
    assert shown["recipe"] == "authors" and shown["serves ct"].startswith("the adapted network")
    assert shown["trainable"] < shown["total"] and 0 < shown["authors_percent"] < 100
    # the same-size count is an honest count of the model the recipe builds (tiny preset)
    from dataclasses import replace

    from pemma.config import build_config
    from pemma.models.budget import build_for_count
    from pemma.models.registry import constructor_kwargs

    model_cfg = replace(build_config("tiny").model, backbone="unetr")
    model = build_for_count("unetr", constructor_kwargs(model_cfg, 1), recipe_config("authors", "unetr"))
    assert count_parameters(model) == (shown["trainable"], shown["total"])
    text = run_main("params", "--backbone", "unetr", "--recipe", "pemma")  # text output, in this process
    assert "percent_of_early_fusion" in text and "feature size 48" in text and "serves ct" in text
    bad = main_result("params")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    with pytest.raises(PemmaError, match="either a run folder"):
        pemma.params()


def test_adapter_config_says_what_to_import_before_resolving() -> None:
    """In a fresh interpreter the backbone defaults are registered by the model modules (a layer above the
    adapters): resolving before importing them says so (it said "backbone must be one of [], got 'swin_unetr'"),
    and the docstring example, which imports them, gives its documented answer."""
    import subprocess
    import sys

    code = ("from pemma.adapters.config import AdapterConfig\n"
            "try:\n    AdapterConfig().resolve('swin_unetr')\nexcept ValueError as exc:\n    print(exc)\n"
            "import pemma.models\n"
            "print(AdapterConfig(method='dora', rank=8, alpha=16).resolve('swin_unetr').target_modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "no backbone's adapter defaults are registered yet: import pemma.models first (each PEMMA model module "
        "registers its backbone's)", "('attn.qkv', 'attn.proj')"]


@pytest.mark.parametrize("recipe", ["pemma", "authors"])
def test_params_without_a_run_counts_swin_at_the_tiny_preset(recipe):
    # the tiny preset's window is per backbone (UNETR 48, Swin 64): params took UNETR's and refused Swin
    import pemma
    from pemma.config import build_config
    from pemma.models.budget import build_for_count
    from pemma.models.registry import constructor_kwargs

    shown = json.loads(run_main("params", "--backbone", "swin_unetr", "--recipe", recipe, "--json"))
    assert shown["backbone"] == "swin_unetr" and shown["preset"] == "tiny"
    model_cfg = build_config("tiny", overrides={"model": {"backbone": "swin_unetr"}}).model
    assert model_cfg.roi_size == [64, 64, 64]
    model = build_for_count("swin_unetr", constructor_kwargs(model_cfg, 1), recipe_config(recipe, "swin_unetr"))
    assert count_parameters(model) == (shown["trainable"], shown["total"])
    assert pemma.params(backbone="swin_unetr", recipe=recipe, method="dora")["trainable"] > shown["trainable"]


def test_params_without_a_run_on_the_other_route():
    # Swin's CT adapter exists on the shared route only: the authors' recipe on the exact route counts without it
    # (a run adapted with --recipe authors --ct-route exact had fewer parameters than params could show)
    import pemma
    from pemma.config import build_config
    from pemma.models.budget import build_for_count
    from pemma.models.registry import constructor_kwargs

    shared = pemma.params(backbone="swin_unetr", recipe="authors")
    exact = json.loads(run_main("params", "--backbone", "swin_unetr", "--recipe", "authors", "--ct-route", "exact",
                                "--json"))
    assert (shared["ct_route"], exact["ct_route"]) == ("shared", "exact")
    assert exact["serves ct"].startswith("the untouched")
    kwargs = constructor_kwargs(build_config("tiny", overrides={"model": {"backbone": "swin_unetr"}}).model, 1)
    cfg = recipe_config("authors", "swin_unetr", overrides={"ct_route": "exact"})
    model = build_for_count("swin_unetr", kwargs, cfg)
    assert count_parameters(model)[0] == exact["trainable"] < shared["trainable"]
    with_ct = build_for_count("swin_unetr", kwargs, recipe_config("authors", "swin_unetr"))
    ct_adapter = sum(p.numel() for n, p in with_ct.named_parameters() if n.startswith("fusion.single.ct."))
    assert shared["trainable"] - exact["trainable"] == ct_adapter > 0
