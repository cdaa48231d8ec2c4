"""A third (and N-th) modality stacked on an adapted CT+PET model (issue 14): the older input sets stay bit-identical
on the exact route (or train further on the shared one), the new level trains, its run folder loads back, merges
per level, and bad requests fail with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

import pemma
from pemma.adapters import AdapterConfig
from pemma.adapters.merging import merge_adapters
from pemma.errors import PemmaError
from pemma.methods import export_model, load_model
from pemma.methods.pemma import save_pemma_run
from pemma.methods.stacking import save_stacked_run
from pemma.models.loaded import build_pemma
from pemma.models.pemma_swin import PemmaSwinUNETR
from pemma.models.pemma_unetr import PemmaUNETR
from pemma.models.stacking import input_subsets, stacked_dropout
from pemma.runs import CONFIG_FILE

SPEC = {
    "unetr": (UNETR, {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
              PemmaUNETR, (1, 32, 32, 32)),
    "swin_unetr": (SwinUNETR, {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
                   PemmaSwinUNETR, (1, 64, 32, 32)),
}
#: pemma's defaults, and the authors' structure on the shared CT route (encoder1 copy as PET skip; UNETR: PET through
#: the CT patch embedding; Swin: projected single-modality adapters)
CONFIGS = {
    ("unetr", "pemma"): AdapterConfig(), ("swin_unetr", "pemma"): AdapterConfig(),
    ("unetr", "authors"): AdapterConfig(pet_skip_block="encoder1_copy", pet_patch_embedding="shared",
                                        ct_route="shared"),
    ("swin_unetr", "authors"): AdapterConfig(pet_skip_block="encoder1_copy", single_adapter="projected",
                                             ct_route="shared"),
}
OLD_SETS = (("ct", "pet"), ("ct",), ("pet",))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Pretend training happened: a seeded change of every trainable tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _adapted(backbone: str, cfg: AdapterConfig) -> tuple[torch.nn.Module, torch.Tensor]:
    """A 'trained' CT+PET model and a seeded (ct, pet, mr, dose) input."""
    net_class, kwargs, pemma_class, (batch, *spatial) = SPEC[backbone]
    torch.manual_seed(0)
    model = pemma_class(net_class(1, 3, **kwargs).eval(), cfg).eval()
    _perturb(model, 7)
    return model, torch.rand(batch, 4, *spatial, generator=torch.Generator().manual_seed(3))


def _channels(x: torch.Tensor, modalities: tuple[str, ...]) -> torch.Tensor:
    return x[:, [("ct", "pet", "mr", "dose").index(m) for m in modalities]]


def _outputs(model: torch.nn.Module, x: torch.Tensor, sets: tuple[tuple[str, ...], ...]) -> dict:
    with torch.no_grad():
        return {s: model(_channels(x, s), s) for s in sets}


def _train(model: torch.nn.Module, x: torch.Tensor, modalities: tuple[str, ...], steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(_channels(x, modalities), modalities).square().mean().backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("recipe", ["pemma", "authors"])
@pytest.mark.parametrize("backbone", list(SPEC))
def test_stacking_keeps_the_older_input_sets_bit_identical(backbone: str, recipe: str) -> None:
    model, x = _adapted(backbone, CONFIGS[backbone, recipe])
    before = _outputs(model, x, OLD_SETS)
    level = model.add_modality("mr")
    assert (level.modality, level.adapter, level.route) == ("mr", "ctpetmr", "exact")
    assert model.modalities == ("ct", "pet", "mr") and model.adapter_names == ["ctpet", "ctpetmr"]
    ct = "ctpet" if model.shared_route else "none (exact CT base)"  # CT alone as the CT+PET model ran it
    assert model.serving() == {"ct+pet+mr": "ctpetmr", "ct+pet": "ctpet", "ct+mr": "ctpetmr", "pet+mr": "ctpetmr",
                               "ct": ct, "pet": "ctpet", "mr": "ctpetmr"}
    after = _outputs(model, x, (*OLD_SETS, ("ct", "pet", "mr"), ("ct", "mr"), ("pet", "mr"), ("mr",)))
    for s in OLD_SETS:
        assert torch.equal(after[s], before[s]), s
    # only the new level trains: its adapter (a copy of ctpet's), its base-module copies and pathway modules
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("ctpetmr" in k.split(".") or k.startswith("stacked.mr.") for k in trainable)
    assert any(k.startswith("stacked.mr.skip.") for k in trainable)
    for key, value in model.level_state_dict(1).items():  # the copied adapter starts equal to the one below
        if "ctpetmr" in key.split("."):
            assert torch.equal(value, model.state_dict()[key.replace(".ctpetmr.", ".ctpet.")]), key


@pytest.mark.slow  # a few optimiser steps on both backbones
@pytest.mark.parametrize("backbone", list(SPEC))
def test_the_new_level_trains_and_the_older_sets_do_not_move(backbone: str) -> None:
    model, x = _adapted(backbone, AdapterConfig())
    before = _outputs(model, x, OLD_SETS)
    model.add_modality("mr")
    full = _outputs(model, x, (("ct", "pet", "mr"),))[("ct", "pet", "mr")]
    for s in (("ct", "pet", "mr"), ("mr",)):
        _train(model, x, s)
    after = _outputs(model, x, (*OLD_SETS, ("ct", "pet", "mr")))
    assert (after[("ct", "pet", "mr")] - full).abs().max() > 1e-4
    for s in OLD_SETS:
        assert torch.equal(after[s], before[s]), s


@pytest.mark.slow  # a few optimiser steps
def test_the_shared_route_trains_the_older_input_sets_further() -> None:
    model, x = _adapted("unetr", AdapterConfig())
    before = _outputs(model, x, OLD_SETS)
    model.add_modality("mr", route="shared")
    assert model.adapter_for(("ct", "pet")) == model.adapter_for(("ct",)) == "ctpetmr"
    start = _outputs(model, x, OLD_SETS)
    assert torch.equal(start[("ct", "pet")], before[("ct", "pet")])  # a copy of ctpet's adapter: the same start
    _train(model, x, ("ct", "pet"))
    assert (_outputs(model, x, (("ct", "pet"),))[("ct", "pet")] - before[("ct", "pet")]).abs().max() > 1e-4


def test_stacking_generalises_to_a_fourth_modality_and_merges_per_level() -> None:
    model, x = _adapted("unetr", AdapterConfig())
    model.add_modality("mr")
    _perturb(model, 11)
    three = tuple(s for s in input_subsets(("ct", "pet", "mr")))
    before = _outputs(model, x, three)
    model.add_modality("dose")
    assert model.modalities == ("ct", "pet", "mr", "dose") and len(model.serving()) == 15
    assert model.adapter_for(("mr", "dose")) == "ctpetmrdose" and model.adapter_for(("pet", "mr")) == "ctpetmr"
    after = _outputs(model, x, three)
    for s in three:
        assert torch.equal(after[s], before[s]), s
    merged = merge_adapters(model, ("ct", "pet", "mr"))
    with torch.no_grad():
        assert torch.allclose(merged(x[:, :3], ("ct", "pet", "mr")), before[("ct", "pet", "mr")], atol=1e-5)
        with pytest.raises(ValueError, match="merged model holds the adapter of the ct\\+pet\\+mr level only"):
            merged(x, ("ct", "pet", "mr", "dose"))
    with pytest.raises(ValueError, match="already has mr"):
        model.add_modality("mr")
    with pytest.raises(ValueError, match="cannot add a modality to a merged model"):
        merged.add_modality("t1")


def test_stacked_modality_dropout() -> None:
    subsets = input_subsets(("ct", "pet", "mr"))
    assert subsets == [("ct", "pet", "mr"), ("ct", "pet"), ("ct", "mr"), ("pet", "mr"), ("ct",), ("pet",), ("mr",)]
    with_mr = [s for s in subsets if "mr" in s]
    choices = dict(stacked_dropout(("ct", "pet", "mr"), 0.6, with_mr))
    assert choices[("ct", "pet", "mr")] == 0.6 and choices[("mr",)] == pytest.approx(0.4 / 3)
    assert sum(choices.values()) == pytest.approx(1.0) and set(choices) == set(with_mr)
    # two modalities: the default modality_dropout (0.6, 0.2, 0.2)
    assert dict(stacked_dropout(("ct", "pet"), 0.6, input_subsets(("ct", "pet")))) == \
        {("ct", "pet"): 0.6, ("ct",): pytest.approx(0.2), ("pet",): pytest.approx(0.2)}


# ---------------------------------------------------------------------------------------------- run folders
#: the tiny preset's networks and the ROI of the run-folder tests
TINY = {"unetr": (UNETR, {"img_size": 32, "feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}, 32),
        "swin_unetr": (SwinUNETR, {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4)}, 64)}


#: Swin's run-folder tests take about 15 s each; the model-level tests above cover its stacking in CI
SWIN_LONG = pytest.param("swin_unetr", marks=[pytest.mark.slow, pytest.mark.long])


@pytest.fixture(scope="module", params=["unetr", SWIN_LONG])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CT run (an imported seeded network), a CT+PET run and a CT+PET+MR run written without training (seeded
    'trained' tensors), as adapt would write them."""
    backbone = request.param
    net_class, kwargs, roi = TINY[backbone]
    root = tmp_path_factory.mktemp(f"stacked_{backbone}")
    torch.manual_seed(5)
    net = net_class(in_channels=1, out_channels=3, **kwargs)
    torch.save(net.state_dict(), root / "net.pt")
    ct = pemma.import_model(root / "net.pt", root / "ct", backbone=backbone, preset="tiny", roi=[roi] * 3,
                            spacing=[4, 4, 4]).path
    base = load_model(ct)
    model = build_pemma(base, AdapterConfig())
    _perturb(model, 1)
    (root / "ctpet").mkdir()
    shutil.copy(Path(ct) / CONFIG_FILE, root / "ctpet" / CONFIG_FILE)
    save_pemma_run(model, root / "ctpet", Path(ct), base.meta["sha256"], base.config, {})
    model.add_modality("mr")
    _perturb(model, 2)
    (root / "ctpetmr").mkdir()
    shutil.copy(Path(ct) / CONFIG_FILE, root / "ctpetmr" / CONFIG_FILE)
    save_stacked_run(model, root / "ctpetmr", root / "ctpet", base.config, {})
    torch.save(model, root / "model_in_memory.pt")
    return {"ct": Path(ct), "ctpet": root / "ctpet", "ctpetmr": root / "ctpetmr", "model": root / "model_in_memory.pt",
            "roi": roi}


def test_a_stacked_run_loads_back_exactly(runs: dict[str, Any]) -> None:
    meta = json.loads((runs["ctpetmr"] / "model.json").read_text())
    assert meta["kind"] == "pemma_stacked" and meta["modalities"] == ["ct", "pet", "mr"]
    assert meta["level"] == {"modality": "mr", "adapter": "ctpetmr", "route": "exact"}
    assert meta["adapters"]["ct+pet"] == "ctpet" and meta["adapters"]["mr"] == "ctpetmr"
    original = torch.load(runs["model"], weights_only=False)
    loaded, ctpet = load_model(runs["ctpetmr"]), load_model(runs["ctpet"])
    assert loaded.input_sets[0] == ["ct", "pet", "mr"] and len(loaded.input_sets) == 7
    x = torch.rand(1, 4, *[runs["roi"]] * 3, generator=torch.Generator().manual_seed(4))
    for s in input_subsets(("ct", "pet", "mr")):
        with torch.no_grad():
            got = loaded(_channels(x, s), s)
            assert torch.equal(got, original(_channels(x, s), s)), s
            if "mr" not in s:  # the CT+PET run's own outputs
                assert torch.equal(got, ctpet(_channels(x, s), s)), s
    report = pemma.params(runs["ctpetmr"])
    assert report["kind"] == "pemma_stacked" and report["stacked"] == "ct+pet -> mr"
    assert report["adapter for ct+pet"] == "ctpet" and report["adapter for pet+mr"] == "ctpetmr"
    assert report["trainable"] == sum(p.numel() for p in original.parameters() if p.requires_grad) > 0
    assert report["ct_route"] == "exact"  # the key adapted runs use (was "route")
    assert report["percent_of_early_fusion"] == pytest.approx(100.0 * report["trainable"] / report["early_fusion"])


def test_a_stacked_run_exports_merged(runs: dict[str, Any], tmp_path: Path) -> None:
    info = export_model(runs["ctpetmr"], tmp_path / "m.pt")
    assert info["modalities"] == ["ct", "pet", "mr"] and info["merged"] and info["max_abs_diff"] < 1e-4
    info = export_model(runs["ctpetmr"], tmp_path / "ct.pt", modalities=["ct"])
    assert not info["merged"] and info["max_abs_diff"] == 0.0


def test_a_changed_base_is_refused(runs: dict[str, Any], tmp_path: Path) -> None:
    moved = tmp_path / "ctpet"
    shutil.copytree(runs["ctpet"], moved)
    weights = moved / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(PemmaError, match="was stacked on other adapter weights than"):
        load_model(runs["ctpetmr"], base_run=moved)


def test_stacking_errors_are_one_line(runs: dict[str, Any], phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(PemmaError, match=r"--add-modality pet: .*ctpet already has pet \(modalities ct, pet\)"):
        pemma.adapt(runs["ctpet"], phantom, tmp_path / "a", add_modality="pet", max_steps=1)
    with pytest.raises(PemmaError, match="no MR image"):  # the session phantom has CT and PET only
        pemma.adapt(runs["ctpet"], phantom, tmp_path / "b", add_modality="mr", max_steps=1)
    with pytest.raises(PemmaError, match="stacking a modality on it needs a PEMMA method"):
        pemma.adapt(runs["ctpet"], phantom, tmp_path / "c", add_modality="mr", method="early_fusion", max_steps=1)
    with pytest.raises(PemmaError, match="a stacked modality uses the same adapter type"):
        pemma.adapt(runs["ctpet"], phantom, tmp_path / "d", add_modality="mr", method="dora", max_steps=1)
    with pytest.raises(PemmaError, match="cannot be updated"):
        pemma.update(runs["ctpetmr"], phantom, ["ct", "pet", "mr"], tmp_path / "e", max_steps=1)
    assert not any((tmp_path / n).exists() for n in "abcde")


@pytest.mark.slow
@pytest.mark.long  # CLI: synth with MR, a CT base, CT+PET, then MR stacked; predict / params on the result
def test_cli_stack_mr_on_a_ct_pet_run(tmp_path: Path) -> None:
    from conftest import FAST, run_cli

    data = tmp_path / "phantom"
    run_cli("synth", str(data), "--cases-per-centre", "2", "--centres", "CHUM,MDA", "--shape", "48", "48", "32",
            "--modalities", "ct,pet,mr")
    run_cli("train", "--data", str(data), "--centres", "CHUM", "--modalities", "ct", *FAST, "--max-steps", "1",
            "--out", str(tmp_path / "ct"))
    run_cli("adapt", "--base", str(tmp_path / "ct"), "--data", str(data), "--centres", "MDA", *FAST,
            "--max-steps", "1", "--out", str(tmp_path / "ctpet"))
    proc = run_cli("adapt", "--base", str(tmp_path / "ctpet"), "--data", str(data), "--centres", "MDA",
                   "--add-modality", "mr", *FAST, "--max-steps", "2", "--out", str(tmp_path / "ctpetmr"))
    assert "DSCagg (CT+PET+MR)" in proc.stdout
    log = (tmp_path / "ctpetmr" / "train.log").read_text()
    assert "modality dropout per step: ct+pet+mr 0.60, ct+mr 0.13, pet+mr 0.13, mr 0.13" in log
    params = run_cli("params", str(tmp_path / "ctpetmr")).stdout
    assert "adapter for ct+pet: ctpet" in params and "adapter for ct+pet+mr: ctpetmr" in params
    x = torch.rand(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    stacked, ctpet = load_model(tmp_path / "ctpetmr"), load_model(tmp_path / "ctpet")
    with torch.no_grad():
        assert torch.equal(stacked(x[:, :2], ["ct", "pet"]), ctpet(x[:, :2], ["ct", "pet"]))
    for inputs in ("ct,pet,mr", "ct,pet", "ct"):
        out = tmp_path / f"pred_{inputs.replace(',', '')}"
        run_cli("predict", "--model", str(tmp_path / "ctpetmr"), "--input", str(data), "--centres", "MDA",
                "--modalities", inputs, "--out", str(out))
        assert len(list(out.glob("*.nii.gz"))) == 2


# ---------------------------------------------------------------------------------------------- strategies
def _strategy(phases: list[dict], methods: list[str]) -> dict:
    return {"name": "tiny_mr", "backbones": ["unetr"], "preset": "tiny", "max_steps": 1,
            "split": {"val_fraction": 0.2, "test_fraction": 0.5, "seed": 0}, "methods": methods, "phases": phases}


PRETRAIN = {"name": "pretrain", "operation": "pretrain", "centres": ["CHUM"], "modalities": ["ct"]}
ADAPT_PET = {"name": "adapt_pet", "operation": "adapt", "centres": ["MDA"], "modalities": ["ct", "pet"]}
STACK_MR = {"name": "stack_mr", "operation": "adapt", "centres": ["CHUM"], "modalities": ["ct", "pet", "mr"]}
ADAPT_MR = {"name": "adapt_mr", "operation": "adapt", "centres": ["MDA"], "modalities": ["MR", "ct"]}


def test_strategies_name_any_modality() -> None:
    from pemma.protocol.strategy_file import parse_strategy
    from pemma.vocab import EVAL_INPUT_SETS

    stacked = parse_strategy(_strategy([PRETRAIN, ADAPT_PET, STACK_MR], ["pemma_lora", "pemma_dora"]))
    assert stacked.modalities == ("ct", "pet", "mr") and stacked.phases[2].inputs == "ct+pet+mr"
    assert stacked.eval_input_sets == (("ct",), ("pet",), ("mr",), ("ct", "pet"), ("ct", "mr"), ("pet", "mr"),
                                       ("ct", "pet", "mr"))
    mr = parse_strategy(_strategy([PRETRAIN, ADAPT_MR], ["pemma_lora", "early_fusion", "full_finetune"]))
    assert mr.phases[1].modalities == ("ct", "mr") and mr.eval_input_sets == (("ct",), ("mr",), ("ct", "mr"))
    for name in ("demo", "hecktor2022"):  # the shipped CT+PET strategies evaluate what they always did
        from pemma.protocol.strategy_file import load_strategy

        assert load_strategy(name).eval_input_sets == EVAL_INPUT_SETS


@pytest.mark.parametrize(("phases", "methods", "message"), [
    ([PRETRAIN, {**ADAPT_PET, "modalities": ["ct", "pet", "mr"]}], ["pemma_lora"],
     "'adapt' adds one modality at a time, got pet, mr"),
    ([PRETRAIN, ADAPT_PET, {**STACK_MR, "modalities": ["ct", "mr"]}], ["pemma_lora"],
     "a second 'adapt' stacks mr on the adapted model, so its modalities must be every modality seen so far"),
    ([PRETRAIN, ADAPT_PET, STACK_MR], ["pemma_lora", "early_fusion"],
     "phase 'stack_mr': a second 'adapt' stacks a modality on the adapted model, which only the PEMMA methods"),
    ([PRETRAIN, ADAPT_MR], ["late_fusion"], "phase 'adapt_mr': late_fusion adds pet only, not mr"),
    ([PRETRAIN, ADAPT_PET, STACK_MR, {"name": "upd", "operation": "update", "centres": ["MDA"],
                                      "modalities": ["mr"]}], ["pemma_lora"],
     "phase 'upd': 'update' after a stacked modality (phase 'stack_mr') is not supported"),
    ([PRETRAIN, {**ADAPT_MR, "modalities": ["ct", "t2"]}], ["pemma_lora"],
     "unknown modality 't2' (known: ct, pet, mr, dose)"),
])
def test_strategy_modality_errors(phases: list[dict], methods: list[str], message: str) -> None:
    from pemma.protocol.strategy import StrategyError
    from pemma.protocol.strategy_file import parse_strategy

    with pytest.raises(StrategyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_strategy(_strategy(phases, methods))


@pytest.mark.slow
@pytest.mark.long  # two tiny reproduce runs: MR stacked on CT+PET (PEMMA), and CT+MR with the baselines
def test_reproduce_a_strategy_with_mr_phases(tmp_path: Path) -> None:
    import csv

    import yaml
    from conftest import run_main

    from pemma.data.phantom import PhantomConfig, synthesize_phantom

    data = tmp_path / "phantom"
    synthesize_phantom(data, PhantomConfig(cases_per_centre=2, centres=("CHUM", "MDA"), ct_shape=(48, 48, 32),
                                           seed=1, modalities=("ct", "pet", "mr")), progress=False)
    rows = {}
    for name, phases, methods in (("stacked", [PRETRAIN, ADAPT_PET, STACK_MR], ["pemma_lora"]),
                                  ("mr", [PRETRAIN, ADAPT_MR], ["pemma_lora", "early_fusion", "full_finetune"])):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_strategy(phases, methods)))
        run_main("reproduce", "--strategy", str(tmp_path / f"{name}.yaml"), "--data", str(data), "--out",
                 str(tmp_path / name))
        with open(tmp_path / name / "results.csv", newline="") as fh:
            rows[name] = {(r["method"], r["phase"], r["eval_centre"], r["inputs"]): r for r in csv.DictReader(fh)}
    stacked = rows["stacked"]
    for centre in ("CHUM", "MDA"):
        for inputs in ("ct", "pet", "mr", "ct+pet", "ct+mr", "pet+mr", "ct+pet+mr"):
            assert ("pemma_lora", "stack_mr", centre, inputs) in stacked
        for inputs in ("ct", "pet", "ct+pet"):  # the stacked model keeps the CT+PET model's results exactly
            assert stacked[("pemma_lora", "stack_mr", centre, inputs)]["DSCagg_mean"] == \
                stacked[("pemma_lora", "adapt_pet", centre, inputs)]["DSCagg_mean"]
    assert ("pemma_lora", "adapt_pet", "MDA", "mr") not in stacked  # the CT+PET model takes no MR
    for method in ("pemma_lora", "early_fusion", "full_finetune"):
        for inputs in ("ct", "mr", "ct+mr"):
            assert (method, "adapt_mr", "MDA", inputs) in rows["mr"]
    assert "pemma_lora" in (tmp_path / "stacked" / "report.md").read_text()
