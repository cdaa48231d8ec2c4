"""Routes and recipes in the protocol: strategy keys, run folders, what reaches adapt / update, and the results
table's route / recipe columns (old tables keep loading)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from pemma.protocol.strategy import StrategyError
from pemma.protocol.strategy_file import parse_strategy

RAW: dict[str, Any] = {"name": "t", "methods": ["pemma_lora", "pemma_dora", "early_fusion"],
                       "phases": [{"name": "pretrain", "operation": "pretrain", "centres": ["CHUM"],
                                   "modalities": ["ct"]},
                                  {"name": "adapt", "operation": "adapt", "centres": ["MDA"],
                                   "modalities": ["ct", "pet"]}]}


def test_routes_and_recipes_of_a_strategy() -> None:
    from pemma.protocol.routes import method_folder, pairs

    plain = parse_strategy(RAW)
    assert plain.routes == ("exact",) and plain.recipes == ("pemma",)
    both = parse_strategy({**RAW, "routes": ["exact", "shared", "exact"], "recipes": ["authors", "pemma"]})
    assert both.routes == ("exact", "shared") and both.recipes == ("authors", "pemma")
    assert pairs(both, "pemma_dora") == [("exact", "authors"), ("exact", "pemma"), ("shared", "authors"),
                                         ("shared", "pemma")]
    assert pairs(both, "early_fusion") == [("", "")]  # baselines have no route and no recipe: trained once
    per_method = parse_strategy({**RAW, "routes": {"pemma_lora": ["exact", "shared"]}})
    assert pairs(per_method, "pemma_lora") == [("exact", "pemma"), ("shared", "pemma")]
    assert pairs(per_method, "pemma_dora") == [("exact", "pemma")] and per_method.all_routes == ("exact", "shared")
    assert parse_strategy(per_method.to_dict()) == per_method and parse_strategy(both.to_dict()) == both
    # --ct-route replaces the strategy's routes for every PEMMA method
    assert pairs(per_method.with_overrides(routes=["shared"]), "pemma_dora") == [("shared", "pemma")]
    # the default pair keeps the method's old run folder, so earlier result folders resume
    assert method_folder("pemma_lora", "exact", "pemma") == "pemma_lora"
    assert method_folder("early_fusion", "", "") == "early_fusion"
    assert method_folder("pemma_lora", "shared", "authors") == "pemma_lora_shared_authors"


def test_recipes_per_route() -> None:
    """``recipes: {route: [...]}``: each route runs its own recipes (the demo: pemma's on the exact route, the
    authors' on the paper's shared route), which the findings' views follow; a list applies to every route."""
    from pemma.protocol.routes import pairs
    from pemma.protocol.strategy_file import load_strategy

    raw = {**RAW, "routes": {"pemma_lora": ["exact", "shared"]},
           "recipes": {"exact": ["pemma"], "shared": ["authors"]}}
    per_route = parse_strategy(raw)
    assert per_route.recipes == {"exact": ("pemma",), "shared": ("authors",)}
    assert pairs(per_route, "pemma_lora") == [("exact", "pemma"), ("shared", "authors")]
    assert pairs(per_route, "pemma_dora") == [("exact", "pemma")]
    assert per_route.pairs == (("exact", "pemma"), ("shared", "authors"))
    assert parse_strategy(per_route.to_dict()) == per_route
    # a route the mapping does not name runs pemma's recipe; --recipe replaces the mapping for every route
    assert pairs(parse_strategy({**raw, "recipes": {"shared": ["authors", "pemma"]}}), "pemma_lora") == \
        [("exact", "pemma"), ("shared", "authors"), ("shared", "pemma")]
    assert pairs(per_route.with_overrides(recipes=["authors"]), "pemma_lora") == [("exact", "authors"),
                                                                                  ("shared", "authors")]
    assert pairs(per_route.with_overrides(routes=["shared"]), "pemma_dora") == [("shared", "authors")]
    assert parse_strategy(RAW).pairs == (("exact", "pemma"),)
    # the demo shows pemma's exact route beside the paper's method on the paper's route
    assert pairs(load_strategy("demo"), "pemma_lora") == [("exact", "pemma"), ("shared", "authors")]
    for bad, message in (({"exakt": ["pemma"]}, "recipes: 'exakt' is not a CT route"),
                         ({"shared": ["paper"]}, "recipes of shared: unknown name 'paper'"),
                         ({"shared": []}, "recipes of shared")):
        with pytest.raises(StrategyError, match=message):
            parse_strategy({**raw, "recipes": bad})


def test_prognosis_starts_from_the_chosen_segmentation_run(capsys: pytest.CaptureFixture[str]) -> None:
    from pemma.protocol.chains import ProtocolData
    from pemma.protocol.prognosis_plan import prognosis_folder, prognosis_jobs, prognosis_source
    from pemma.protocol.strategy_file import load_strategy

    prognosis = {"centres": ["CHUM", "MDA"], "methods": ["lora", "dora"]}
    both = {**RAW, "routes": ["exact", "shared"], "recipes": ["pemma", "authors"]}
    first = parse_strategy({**both, "prognosis": prognosis})  # the method's first pair, as before
    chosen = parse_strategy({**both, "prognosis": {**prognosis, "segmentation_route": "shared",
                                                   "segmentation_recipe": "authors"}})
    data = ProtocolData("/data", {}, {c: {"train": [], "val": [], "test": []} for c in ("CHUM", "MDA")})
    for strategy, folders in ((first, ("pemma_lora", "pemma_dora")),
                              (chosen, ("pemma_lora_shared_authors", "pemma_dora_shared_authors"))):
        (_, neural, needs), = prognosis_jobs(strategy, data, Path("/out"))
        seg = neural["segmentation_adapters"]
        assert (seg["lora"].parent.name, seg["dora"].parent.name) == folders and set(seg.values()) <= set(needs)
    # narrowed to the pemma recipe: falls back to the method's first pair (exact, pemma), and says so
    narrowed = chosen.with_overrides(recipes=["pemma"])
    assert prognosis_jobs(narrowed, data, Path("/out"))[0][1]["segmentation_adapters"]["lora"].parent.name \
        == "pemma_lora"
    assert prognosis_source(narrowed, "lora") == ("pemma_lora (the prognosis asks for route shared, recipe "
                                                   "authors, which this run does not train)")
    # the prognosis folder of a strategy that does not choose is what it was (the demo's: stages reused)
    assert "segmentation_route" not in first.prognosis.to_dict()
    demo = load_strategy("demo")
    assert prognosis_folder(first) == f"prognosis_{first.prognosis.digest()}"
    assert prognosis_folder(demo) == f"prognosis_{demo.prognosis.digest()}"
    # stages started from another run are other stages: narrowing the run to another starting run changes the
    # folder (it reused the full run's stages, or they its)
    hecktor = load_strategy("hecktor2022")
    spec = hecktor.prognosis  # the paper's: the authors' recipe on the shared route
    assert (spec.segmentation_route, spec.segmentation_recipe) == ("shared", "authors")
    full, shared_only = (prognosis_folder(s) for s in (hecktor, hecktor.with_overrides(routes=["shared"])))
    pemma_only, exact_only = (prognosis_folder(hecktor.with_overrides(**k)) for k in ({"recipes": ["pemma"]},
                                                                                      {"routes": ["exact"]}))
    assert full == shared_only != pemma_only == exact_only  # the same starting run, the same stages
    with pytest.raises(StrategyError, match="segmentation_recipe must be null or one of pemma, authors"):
        parse_strategy({**both, "prognosis": {**prognosis, "segmentation_recipe": "paper"}})


@pytest.mark.parametrize(("change", "message"), [
    ({"routes": ["exact", "sharde"]}, "routes: unknown name 'sharde' (known: exact, shared)"),
    ({"recipes": "paper"}, "recipes: unknown name 'paper' (known: pemma, authors)"),
    ({"routes": []}, "routes must be a non-empty list of names"),
    ({"routes": {"early_fusion": ["shared"]}}, "routes: 'early_fusion' is not a PEMMA method"),
])
def test_bad_routes_and_recipes_are_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy({**RAW, **change}, source="s.yaml")
    assert str(info.value).startswith("s.yaml: ") and message in str(info.value) and "\n" not in str(info.value)


def test_only_non_default_routes_and_recipes_reach_adapt_and_update() -> None:
    from pemma.adapters.recipes import recipe_values
    from pemma.protocol.routes import adapt_kwargs, update_kwargs

    def old_update(run: str, cfg: Any, mods: list, out: str) -> None: ...

    def new_update(run: str, cfg: Any, mods: list, out: str, ct_route: str | None = None,
                   recipe: str | None = None) -> None: ...

    assert adapt_kwargs("pemma_lora", "exact", "pemma", "unetr", "s.yaml") == {}
    assert adapt_kwargs("early_fusion", "", "", "unetr", "s.yaml") == {}
    shared = adapt_kwargs("pemma_lora", "shared", "pemma", "unetr", "s.yaml")["adapter_cfg"]
    assert shared.ct_route == "shared" and shared.recipe == "pemma" and shared.method == "lora"
    # the authors' recipe is resolved (its values, not just its name), and the pair's route wins over the recipe's
    authors = recipe_values("authors", "unetr")
    for route in ("exact", "shared"):
        cfg = adapt_kwargs("pemma_dora", route, "authors", "unetr", "s.yaml")["adapter_cfg"]
        assert (cfg.recipe, cfg.method, cfg.ct_route) == ("authors", "dora", route)
        assert cfg.target_modules == authors["target_modules"] and cfg.rank == authors["rank"]
    assert update_kwargs(new_update, "pemma_lora", "shared", "pemma") == {"ct_route": "shared"}
    assert update_kwargs(old_update, "pemma_lora", "shared", "authors") == {}


def test_results_carry_route_and_recipe(tmp_path: Path) -> None:
    from pemma.protocol.results import COLUMNS, normalise_rows, summarise, write_case_results, write_results

    old = {"backbone": "unetr", "variant": "v", "phase": "adapt", "phase_index": 1, "eval_centre": "MDA",
           "inputs": "ct+pet", "DSCagg_GTVp": 0.5, "DSCagg_GTVn": 0.3, "DSCagg_mean": 0.4}
    rows = [{**old, "method": "pemma_lora"}, {**old, "method": "early_fusion"},
            {**old, "method": "pemma_lora", "route": "shared", "recipe": "authors", "DSCagg_mean": 0.6}]
    clean = normalise_rows(rows)  # rows written before the columns existed get today's defaults
    assert [(r["route"], r["recipe"]) for r in clean] == [("exact", "pemma"), ("", ""), ("shared", "authors")]
    # the two PEMMA LoRA runs are separate entries, not averaged together
    assert sorted(e["DSCagg_mean"] for e in summarise(clean) if e["method"] == "pemma_lora") == [0.4, 0.6]
    write_results(rows, tmp_path)
    with open(tmp_path / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == COLUMNS and [r["route"] for r in table] == ["exact", "", "shared"]
    write_case_results([{**rows[2], "case_id": "MDA-001", "counts": [[1, 2, 2], [0, 0, 0]], "dice_GTVp": 0.5,
                         "dice_GTVn": float("nan"), "hd95_GTVn": None}], tmp_path)
    with open(tmp_path / "results_cases.csv", newline="") as fh:
        case = next(csv.DictReader(fh))
    assert (case["route"], case["recipe"], case["inter_vox_GTVp"]) == ("shared", "authors", "1")
    # undefined numbers are empty cells, as in results.csv (NaN was written "nan")
    assert (case["dice_GTVp"], case["dice_GTVn"], case["hd95_GTVn"]) == ("0.5", "", "")


def test_reproduce_ct_route_flag_reaches_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from pemma.cli.main import main
    from pemma.protocol import runner

    seen: dict[str, Any] = {}
    report = tmp_path / "report.md"
    report.write_text("# report\n")

    def fake(*args: Any, **kwargs: Any) -> Path:
        seen.update(kwargs)
        return report

    monkeypatch.setattr(runner, "reproduce", fake)
    base = ["reproduce", "--strategy", "demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--ct-route", "shared", "--recipe", "authors"]) == 0
    assert seen["ct_routes"] == ["shared"] and seen["recipes"] == ["authors"]
    assert main(base) == 0 and seen["ct_routes"] is None and seen["recipes"] is None
    with pytest.raises(SystemExit) as info:
        main([*base, "--ct-route", "sideways"])
    assert info.value.code == 2 and "invalid choice: 'sideways'" in capsys.readouterr().err
