"""Protocol pieces: strategy files and their errors, the seeded split, results files, forgetting, report, figures."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pemma.errors import PemmaError
from pemma.protocol.results import (
    COLUMNS,
    forgetting_table,
    markdown_report,
    mean_forgetting,
    read_results,
    write_results,
)
from pemma.protocol.strategy import SplitSpec, StrategyError, split_case_ids
from pemma.protocol.strategy_file import load_strategy, parse_strategy

SHIPPED = Path(__file__).resolve().parents[1] / "strategies" / "hecktor2022.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------- strategy
def test_shipped_strategy_is_the_authors_protocol() -> None:
    strategy = load_strategy(SHIPPED)
    assert strategy.name == "hecktor2022"
    # issue 10 part 9: both backbones (the backbone ranking), both CT routes and both recipes
    assert strategy.backbones == ("unetr", "swin_unetr") and strategy.preset == "tiny" and strategy.max_steps is None
    assert strategy.methods == ("pemma_lora", "pemma_dora", "early_fusion", "late_fusion", "full_finetune")
    assert strategy.routes == ("exact", "shared") and strategy.recipes == ("pemma", "authors")
    assert (strategy.split.val_fraction, strategy.split.test_fraction, strategy.split.seed) == (0.2, 0.2, 0)
    assert [(p.name, p.operation, p.centres, p.modalities) for p in strategy.phases] == [
        ("pretrain", "pretrain", ("CHUM", "CHUP", "CHUS", "CHUV"), ("ct",)),
        ("adapt_mda", "adapt", ("MDA",), ("ct", "pet")),
        ("update_hgj", "update", ("HGJ",), ("pet",)),
        ("update_hmr", "update", ("HMR",), ("pet",)),
    ]
    assert strategy.variant_names == ("pet_only", "ct_only", "ct_pet")
    updates = {v: [p.inputs for p in strategy.variant_phases(v)[2:]] for v in strategy.variant_names}
    assert updates == {"pet_only": ["pet", "pet"], "ct_only": ["ct", "ct"], "ct_pet": ["ct+pet", "ct+pet"]}
    assert strategy.centre_learnt_at("ct_only") == {"CHUM": 0, "CHUP": 0, "CHUS": 0, "CHUV": 0, "MDA": 1,
                                                   "HGJ": 2, "HMR": 3}
    assert strategy.prognosis is not None and strategy.prognosis.methods == ("lora", "dora")
    assert strategy.prognosis_centres == ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR")
    # the round trip through to_dict gives the same strategy
    assert parse_strategy(strategy.to_dict(), str(SHIPPED)) == strategy
    # the repository's strategies/hecktor2022.yaml is the shipped one, also loadable by name
    assert load_strategy("hecktor2022") == dataclasses.replace(strategy, source=load_strategy("hecktor2022").source)


def test_shipped_demo_strategy_checks_the_findings() -> None:
    from pemma.protocol.strategy_file import shipped_strategies

    assert {"demo", "hecktor2022"} <= set(shipped_strategies())
    demo = load_strategy("demo")
    # the methods and phases the three findings need: PEMMA, early fusion, full fine-tuning; adapt; a PET update
    assert {"pemma_lora", "early_fusion", "full_finetune"} <= set(demo.methods)
    assert [p.operation for p in demo.phases] == ["pretrain", "adapt", "update"]
    assert demo.phases[2].modalities == ("pet",) and demo.prognosis is not None
    assert demo.with_overrides(seed=3).split.seed == 3 and demo.split.seed == 0
    with pytest.raises(StrategyError, match="shipped strategies: demo, hecktor2022"):
        load_strategy("no_such_strategy")


def test_prognosis_section_is_validated(tmp_path: Path) -> None:
    raw = yaml.safe_load(SHIPPED.read_text())
    for change, message in (({"methods": ["lora", "ia3"]}, "unknown method 'ia3'"),
                            ({"head": "weibull"}, "unknown head 'weibull'"),
                            ({"epochs": 0}, "epochs must be null or a positive integer"),
                            ({"train_adapters": "yes"}, "train_adapters must be true or false"),
                            ({"centres": ["CHUM", "XYZ"]}, "unknown centre 'XYZ'"),
                            ({"adapters": True}, "unknown key 'adapters'")):
        bad = copy.deepcopy(raw)
        bad["prognosis"] = {**bad["prognosis"], **change}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(StrategyError, match=re.escape(message)) as err:
            load_strategy(path)
        assert str(err.value).startswith(str(path))


def test_plan_shares_runs_with_identical_history() -> None:
    plan = load_strategy(SHIPPED).plan()
    assert len(plan) == 12
    keys = {(p.variant, p.index): p.run_key for p in plan}
    assert keys["pet_only", 0] == keys["ct_only", 0] == keys["ct_pet", 0]
    assert keys["pet_only", 1] == keys["ct_only", 1] == keys["ct_pet", 1]
    assert len({keys[v, 2] for v in ("pet_only", "ct_only", "ct_pet")}) == 3
    assert keys["ct_only", 3].startswith("03_update_hmr_ct_")
    last = [p for p in plan if p.variant == "ct_only"][-1]
    assert last.parent_key == keys["ct_only", 2]
    assert last.eval_centres == ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR")


def test_overrides_are_revalidated() -> None:
    strategy = load_strategy(SHIPPED)
    quick = strategy.with_overrides(backbones=["swin_unetr"], preset="tiny", max_steps=3, variants=["pet_only"])
    assert (quick.backbones, quick.max_steps, quick.variant_names) == (("swin_unetr",), 3, ("pet_only",))
    # the flag that brought the bad value is named, not the (valid) file
    with pytest.raises(StrategyError, match=r"^--backbone \(over .*hecktor2022\.yaml\): unknown backbone 'vit'"):
        strategy.with_overrides(backbones=["vit"])
    with pytest.raises(StrategyError, match=r"^--max-steps \(over .*\): max_steps must be null or an integer >= 1"):
        strategy.with_overrides(max_steps=-3, seed=4, preset="tiny")  # only the flag at fault is named
    with pytest.raises(StrategyError, match=r"unknown variant 'mri_only' \(known: pet_only, ct_only, ct_pet\)"):
        strategy.with_overrides(variants=["mri_only"])


def _raw() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def _error(tmp_path: Path, raw: dict[str, Any], **kwargs: Any) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(StrategyError) as info:
        load_strategy(path, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, PemmaError)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def _edit(phase: int, **changes: Any) -> dict[str, Any]:
    raw = _raw()
    raw["phases"][phase].update(changes)
    return raw


def test_unknown_centre(tmp_path: Path) -> None:
    message = _error(tmp_path, _edit(1, centres=["MDX"]))
    assert message == ("phase 'adapt_mda' (#2): unknown centre 'MDX' "
                       "(known: CHUM, CHUP, CHUS, CHUV, MDA, HGJ, HMR, CHB, USZ)")


def test_dataset_centres_widen_and_restrict(tmp_path: Path) -> None:
    raw = _edit(3, centres=["site7"])
    raw["prognosis"]["centres"] = []  # = every centre of the phases
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw))
    dataset = ["CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "SITE7"]
    assert load_strategy(path, dataset_centres=dataset).phases[3].centres == ("SITE7",)  # dataset spelling
    message = _error(tmp_path, _raw(), dataset_centres=dataset)
    assert message == ("phase 'update_hmr' (#4): centre 'HMR' has no cases in the dataset "
                       "(found: CHUM, CHUP, CHUS, CHUV, HGJ, MDA, SITE7)")


def test_unknown_operation_and_modality(tmp_path: Path) -> None:
    assert _error(tmp_path, _edit(2, operation="finetune")) == \
        "phase 'update_hgj': unknown operation 'finetune' (known: pretrain, adapt, update)"
    assert _error(tmp_path, _edit(2, modalities=["mri"])) == \
        "phase 'update_hgj': unknown modality 'mri' (known: ct, pet, mr, dose)"


def test_phase_before_its_base(tmp_path: Path) -> None:
    raw = _raw()
    raw["phases"] = raw["phases"][1:]
    assert _error(tmp_path, raw) == ("phase 'adapt_mda' (#1): the first phase must be 'pretrain' "
                                     "(a CT base model), got 'adapt'")
    raw = _raw()
    del raw["phases"][1]
    raw["variants"] = {}
    assert _error(tmp_path, raw) == "phase 'update_hgj' (#2): 'update' needs an 'adapt' phase before it"
    assert _error(tmp_path, _edit(1, modalities=["ct"])) == \
        "phase 'adapt_mda' (#2): 'adapt' must add a modality not seen before (seen: ct)"
    raw = _raw()
    raw["phases"].append({"name": "again", "operation": "pretrain", "centres": ["CHB"], "modalities": ["ct"]})
    assert _error(tmp_path, raw) == "phase 'again' (#5): 'pretrain' must be the first phase only"
    assert _error(tmp_path, _edit(0, modalities=["ct", "pet"])) == \
        "phase 'pretrain' (#1): 'pretrain' trains the CT base model, so modalities must be [ct]"


def test_duplicate_phase_names(tmp_path: Path) -> None:
    assert _error(tmp_path, _edit(3, name="update_hgj")) == "phase 'update_hgj' (#4): duplicate phase name"


def test_unknown_keys(tmp_path: Path) -> None:
    raw = _raw()
    raw["phase"] = []
    assert _error(tmp_path, raw) == ("top level: unknown key 'phase' (allowed: name, backbones, preset, max_steps, "
                                     "amp, workers, split, methods, routes, recipes, phases, variants, prognosis)")
    raw = _raw()
    raw["phases"][1]["centers"] = ["MDA"]
    assert _error(tmp_path, raw) == \
        "phase 'adapt_mda': unknown key 'centers' (allowed: name, operation, centres, modalities, epochs)"
    raw = _raw()
    raw["split"]["train_fraction"] = 0.6
    assert _error(tmp_path, raw) == "split: unknown key 'train_fraction' (allowed: val_fraction, test_fraction, seed)"
    raw = _raw()
    raw["variants"]["ct_only"]["update_hgj"]["operation"] = "adapt"
    assert _error(tmp_path, raw) == ("variant 'ct_only', phase 'update_hgj': unknown key 'operation' "
                                     "(allowed: centres, modalities)")
    raw = _raw()
    raw["variants"]["ct_only"]["update_xyz"] = {"modalities": ["ct"]}
    assert _error(tmp_path, raw).startswith("variant 'ct_only' (phase names): unknown key 'update_xyz'")


def test_variants_are_validated_like_the_base(tmp_path: Path) -> None:
    raw = _raw()
    raw["variants"]["ct_only"]["update_hgj"]["modalities"] = ["mri"]
    assert _error(tmp_path, raw) == \
        "variant 'ct_only', phase 'update_hgj': unknown modality 'mri' (known: ct, pet, mr, dose)"
    raw = _raw()
    raw["variants"]["ct_only"]["adapt_mda"] = {"modalities": ["ct"]}
    assert _error(tmp_path, raw) == ("variant 'ct_only', phase 'adapt_mda' (#2): 'adapt' must add a modality not "
                                     "seen before (seen: ct)")
    raw = _raw()
    raw["variants"]["ct_pet"] = {"update_hmr": {"centres": ["HMX"]}}
    assert _error(tmp_path, raw).startswith("variant 'ct_pet', phase 'update_hmr' (#4): unknown centre 'HMX'")


def test_other_bad_values(tmp_path: Path) -> None:
    raw = _raw()
    raw["methods"] = ["pemma_lora", "adapter_soup"]
    assert _error(tmp_path, raw).startswith("unknown method 'adapter_soup' (known: pemma_lora, ")
    raw = _raw()
    raw["split"]["val_fraction"] = 1.5
    assert _error(tmp_path, raw) == "split: val_fraction must be a number in [0, 1), got 1.5"
    raw = _raw()
    raw["preset"] = "huge"
    assert _error(tmp_path, raw) == "unknown preset 'huge' (known: paper, tiny)"
    (tmp_path / "broken.yaml").write_text("phases: [\n")
    with pytest.raises(StrategyError, match=r"broken\.yaml: invalid YAML"):
        load_strategy(tmp_path / "broken.yaml")
    with pytest.raises(StrategyError, match=r"missing\.yaml: strategy file not found"):
        load_strategy(tmp_path / "missing.yaml")


def test_without_variants_there_is_one_default_variant() -> None:
    raw = copy.deepcopy(_raw())
    del raw["variants"]
    strategy = parse_strategy(raw, "inline")
    assert strategy.variant_names == ("default",)
    assert [p.variant for p in strategy.plan()] == ["default"] * 4


# ----------------------------------------------------------------------------------------------- split
def test_split_is_seeded_deterministic_and_per_centre() -> None:
    ids = {"CHUM": [f"CHUM-{i:03d}" for i in range(10)], "MDA": [f"MDA-{i:03d}" for i in range(5)],
           "HGJ": ["HGJ-000", "HGJ-001"], "HMR": ["HMR-000"]}
    spec = SplitSpec(val_fraction=0.2, test_fraction=0.2, seed=0)
    first = split_case_ids(ids, spec)
    assert first == split_case_ids({c: list(reversed(v)) for c, v in reversed(ids.items())}, spec)
    assert {c: tuple(len(first[c][k]) for k in ("train", "val", "test")) for c in ids} == {
        "CHUM": (6, 2, 2), "MDA": (3, 1, 1), "HGJ": (1, 0, 1), "HMR": (1, 0, 0)}
    for centre, parts in first.items():
        assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(ids[centre])
    assert first["CHUM"]["test"] == ["CHUM-002", "CHUM-009"]  # literal: changes here would reshuffle test sets
    assert split_case_ids({"CHUM": ids["CHUM"]}, spec)["CHUM"] == first["CHUM"]  # other centres do not matter
    other = split_case_ids(ids, SplitSpec(val_fraction=0.2, test_fraction=0.2, seed=1))
    assert other["CHUM"]["test"] != first["CHUM"]["test"]


# ----------------------------------------------------------------------------------------------- results
#: DSCagg mean by (method, inputs) -> centre -> one value per phase (None = undefined, e.g. PET on a CT model)
_MEANS: dict[tuple[str, str], dict[str, list[float | None]]] = {
    ("pemma_lora", "ct"): {"CHUM": [0.60, 0.60, 0.58], "MDA": [0.50, 0.45], "HGJ": [0.40]},
    ("pemma_lora", "pet"): {"CHUM": [None, 0.70, 0.72], "MDA": [0.65, 0.66], "HGJ": [0.61]},
    ("early_fusion", "ct"): {"CHUM": [0.60, 0.55, 0.30], "MDA": [0.52, 0.35], "HGJ": [0.42]},
}
_PHASES = ["pretrain", "adapt_mda", "update_hgj"]
_PARAMS = {"pemma_lora": (1234, 8.0), "early_fusion": (15425, 100.0)}


def _rows() -> list[dict[str, Any]]:
    rows = []
    for (method, inputs), by_centre in _MEANS.items():
        for centre, values in by_centre.items():
            first = len(_PHASES) - len(values)
            for offset, mean in enumerate(values):
                phase = first + offset
                rows.append({"backbone": "unetr", "method": method, "variant": "pet_only", "phase": _PHASES[phase],
                             "phase_index": phase, "eval_centre": centre, "inputs": inputs,
                             "DSCagg_GTVp": None if mean is None else mean + 0.05,
                             "DSCagg_GTVn": float("nan") if mean is None else mean - 0.05, "DSCagg_mean": mean,
                             "trainable_params": _PARAMS[method][0], "percent_of_early_fusion": _PARAMS[method][1]})
    return rows


def test_forgetting_on_a_hand_made_table() -> None:
    table = forgetting_table(_rows())
    got = {(r["method"], r["inputs"], r["centre"], r["phase"]): (r["reference_phase"], round(r["drop"], 6))
           for r in table}
    assert got == {
        ("pemma_lora", "ct", "CHUM", "adapt_mda"): ("pretrain", 0.0),
        ("pemma_lora", "ct", "CHUM", "update_hgj"): ("pretrain", 0.02),
        ("pemma_lora", "ct", "MDA", "update_hgj"): ("adapt_mda", 0.05),
        # PET input could not be evaluated right after pretraining: the reference is the first defined value
        ("pemma_lora", "pet", "CHUM", "update_hgj"): ("adapt_mda", -0.02),
        ("pemma_lora", "pet", "MDA", "update_hgj"): ("adapt_mda", -0.01),
        ("early_fusion", "ct", "CHUM", "adapt_mda"): ("pretrain", 0.05),
        ("early_fusion", "ct", "CHUM", "update_hgj"): ("pretrain", 0.3),
        ("early_fusion", "ct", "MDA", "update_hgj"): ("adapt_mda", 0.17),
    }
    assert all(r["learnt_phase"] == r["reference_phase"] for r in table if r["inputs"] == "ct")
    means = {(m["method"], m["inputs"], m["phase"]): (round(m["mean_drop"], 6), round(m["max_drop"], 6),
                                                       m["n_centres"]) for m in mean_forgetting(table)}
    assert means[("early_fusion", "ct", "update_hgj")] == (0.235, 0.3, 2)
    assert means[("pemma_lora", "ct", "update_hgj")] == (0.035, 0.05, 2)
    # an explicit learnt_at: MDA counted as learnt in phase 2 leaves no later phase to measure
    explicit = forgetting_table(_rows(), learnt_at={"MDA": 2})
    assert not [r for r in explicit if r["centre"] == "MDA"]


def test_write_and_read_results(tmp_path: Path) -> None:
    paths = write_results(_rows(), tmp_path / "out")
    with paths["csv"].open() as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == COLUMNS and len(table) == 18
    assert table[0]["DSCagg_mean"] == "0.6" and table[6]["DSCagg_GTVn"] == ""  # NaN / None -> empty cell
    data = json.loads(paths["json"].read_text())
    assert data[6]["DSCagg_GTVn"] is None and data[6]["DSCagg_mean"] is None
    assert read_results(tmp_path / "out") == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv", "results.json"]
    with pytest.raises(ValueError, match="row 0: missing key 'inputs'"):
        write_results([{k: v for k, v in _rows()[0].items() if k != "inputs"}], tmp_path / "bad")
    (tmp_path / "broken.json").write_text('[{"method": "x"}]')
    with pytest.raises(PemmaError, match=r"broken\.json: not a results table \(row 0: missing key 'variant'\)"):
        read_results(tmp_path / "broken.json")


def test_markdown_report_cells() -> None:
    report = markdown_report(_rows(), title="Tiny run", figures={"DSCagg across phases": "dsc_phases.png"},
                             notes=["Seed 0."])
    assert report.startswith("# Tiny run\n\nSeed 0.\n")
    assert "### unetr · variant pet_only" in report
    header = ("| Method | Inputs | Phase | DSCagg GTVp | DSCagg GTVn | DSCagg mean | Trainable params | "
              "% of early fusion |")
    assert header in report
    # mean over CHUM 0.58, MDA 0.45, HGJ 0.40 = 0.477; GTVp / GTVn are +- 0.05
    assert "| pemma_lora | ct | 2: update_hgj | 0.527 | 0.427 | 0.477 | 1,234 | 8.00% |" in report
    assert "| early_fusion | ct | 0: pretrain | 0.650 | 0.550 | 0.600 | 15,425 | 100.00% |" in report
    assert "| pemma_lora | pet | 0: pretrain | – | – | – | 1,234 | 8.00% |" in report
    assert "| Method | Inputs | Phase | CHUM | MDA | HGJ |" in report
    assert "| early_fusion | ct | 2: update_hgj | 0.300 | 0.350 | 0.420 |" in report
    assert "| Method | Inputs | Centre | Reference | after adapt_mda | after update_hgj |" in report
    assert "| early_fusion | ct | CHUM | pretrain | +0.050 | +0.300 |" in report
    assert "| early_fusion | ct | MDA | adapt_mda | – | +0.170 |" in report
    assert "| pemma_lora | pet | CHUM | adapt_mda | – | -0.020 |" in report
    assert "| early_fusion | ct | +0.050 | +0.235 |" in report
    assert "![DSCagg across phases](dsc_phases.png)" in report
    assert all(line.count("|") in (0, 9, 7, 5, 6, 4) for line in report.splitlines() if line.startswith("|"))


# ----------------------------------------------------------------------------------------------- figures
def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_dsc_plot_is_a_png(tmp_path: Path) -> None:
    from pemma.protocol.figures import plot_dsc_across_phases

    _check_png(plot_dsc_across_phases(_rows(), tmp_path / "dsc.png"))
    _check_png(plot_dsc_across_phases(_rows(), tmp_path / "dsc_chum.png", centres=["CHUM"], variant="pet_only"))
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_dsc_across_phases(_rows(), tmp_path / "x.png", metric="HD95")


def test_overlay_grid_is_a_png(tmp_path: Path) -> None:
    from pemma.protocol.figures import plot_overlays

    yy, xx = np.mgrid[:40, :48]
    ct = np.where((yy - 20) ** 2 + (xx - 24) ** 2 < 300, 40.0, -1000.0)
    label = np.zeros((40, 48), dtype=np.uint8)
    label[15:22, 20:28], label[25:28, 10:14] = 1, 2
    pet = 1.0 + 8.0 * (label == 1) + 3.0 * (label == 2)
    cases = [{"case_id": "HGJ-001", "ct": ct, "pet": pet, "label": label,
              "predictions": {"pemma_lora": np.roll(label, 1, axis=0), "early_fusion": np.roll(label, 2, axis=1)}},
             {"case_id": "HGJ-002", "ct": ct, "pet": pet, "label": label, "prediction": label}]
    _check_png(plot_overlays(cases, tmp_path / "overlays.png"))
    with pytest.raises(ValueError, match=re.escape("HGJ-009: PET must be a 2-D slice of shape (40, 48)")):
        plot_overlays([{"case_id": "HGJ-009", "ct": ct, "pet": pet[:10], "label": label, "prediction": label}],
                      tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ----------------------------------------------------------------------------------------------- findings
_FINDING_MEANS: dict[tuple[str, str], dict[str, list[float | None]]] = {
    ("pemma_lora", "ct"): {"CHUM": [0.40, 0.40, 0.40], "MDA": [0.30, 0.30]},
    ("pemma_lora", "ct+pet"): {"CHUM": [0.70, 0.69], "MDA": [0.72, 0.70]},
    ("pemma_dora", "ct"): {"CHUM": [0.40, 0.40, 0.40], "MDA": [0.30, 0.30]},
    ("pemma_dora", "ct+pet"): {"CHUM": [0.60, 0.60], "MDA": [0.62, 0.60]},
    ("early_fusion", "ct"): {"CHUM": [0.40, 0.35, 0.20], "MDA": [0.25, 0.10]},
    ("early_fusion", "ct+pet"): {"CHUM": [0.71, 0.60], "MDA": [0.74, 0.60]},
    ("full_finetune", "ct"): {"CHUM": [0.40, 0.33, 0.25], "MDA": [0.28, 0.20]},
    ("full_finetune", "ct+pet"): {"CHUM": [0.72, 0.61], "MDA": [0.73, 0.62]},
}
_FINDING_PARAMS = {"pemma_lora": 8.0, "pemma_dora": 8.5, "early_fusion": 100.0, "full_finetune": 100.0}


def _finding_rows() -> list[dict[str, Any]]:
    rows = []
    for (method, inputs), by_centre in _FINDING_MEANS.items():
        for centre, values in by_centre.items():
            first = 3 - len(values)
            for offset, mean in enumerate(values):
                rows.append({"backbone": "unetr", "method": method, "variant": "pet_only",
                             "phase": _PHASES[first + offset], "phase_index": first + offset, "eval_centre": centre,
                             "inputs": inputs, "DSCagg_GTVp": mean, "DSCagg_GTVn": mean, "DSCagg_mean": mean,
                             "trainable_params": int(_FINDING_PARAMS[method] * 100),
                             "percent_of_early_fusion": _FINDING_PARAMS[method]})
    return rows


def _finding_phases(update: list[str]) -> tuple:
    from pemma.protocol.phases import Phase

    return (Phase("pretrain", "pretrain", ("CHUM",), ("ct",)), Phase("adapt_mda", "adapt", ("MDA",), ("ct", "pet")),
            Phase("update_hgj", "update", ("HGJ",), tuple(update)))


def test_findings_on_a_hand_made_table() -> None:
    from pemma.protocol.findings import check_findings, findings_markdown, summarise_seeds

    claims = {c["claim"]: c for c in check_findings(_finding_rows(), _finding_phases(["pet"]), "pet_only")}
    first = claims["CT+PET > CT"]
    assert first["holds"] is True and first["values"]["ct"] == pytest.approx(0.35)
    assert first["values"]["ct+pet:early_fusion"] == pytest.approx(0.725)
    lora, dora = claims["pemma_lora ≥ early fusion − 0.03"], claims["pemma_dora ≥ early fusion − 0.03"]
    assert lora["holds"] is True and lora["values"]["gap"] == pytest.approx(-0.015)
    assert dora["holds"] is False and dora["values"]["gap"] == pytest.approx(-0.115)
    budget = claims["pemma_dora trains ≤ 10% of early fusion's parameters"]
    assert budget["holds"] is True and budget["values"]["percent"] == 8.5
    forgetting = claims["less CT forgetting after update_hgj (PET only)"]
    assert forgetting["holds"] is True
    assert forgetting["values"]["drop:pemma_lora"] == pytest.approx(0.0)
    assert forgetting["values"]["drop:early_fusion"] == pytest.approx(0.175)  # (0.40-0.20 + 0.25-0.10) / 2
    assert forgetting["values"]["drop:full_finetune"] == pytest.approx(0.115)
    # a parameter budget below PEMMA's share fails the budget claim, not the DSCagg one
    tight = check_findings(_finding_rows(), _finding_phases(["pet"]), "pet_only", max_percent=5.0, tolerance=0.01)
    assert next(c for c in tight if c["claim"] == "pemma_lora trains ≤ 5% of early fusion's parameters")["holds"] \
        is False
    # gap -0.015 < -0.01
    assert next(c for c in tight if c["claim"] == "pemma_lora ≥ early fusion − 0.01")["holds"] is False
    # a CT-only update is not a PET-only update: claim 3 is not checked there
    ct_update = check_findings(_finding_rows(), _finding_phases(["ct"]), "pet_only")
    assert not [c for c in ct_update if c["claim"].startswith("less CT forgetting")]
    lines = findings_markdown(list(claims.values()))
    assert sum("**holds**" in line for line in lines) == 5 and sum("does not hold" in line for line in lines) == 1
    seeds = {c["claim"]: c for c in summarise_seeds({"0": list(claims.values()), "1": tight})}
    # a claim checked with another tolerance is another claim: not pooled over seeds with the 0.03 one
    assert seeds["pemma_lora ≥ early fusion − 0.03"]["held"] == "1/1"
    assert seeds["pemma_lora ≥ early fusion − 0.01"]["held"] == "0/1"
    assert seeds["CT+PET > CT"]["held"] == "2/2" and seeds["CT+PET > CT"]["values"]["ct"][0] == pytest.approx(0.35)


def test_result_rows_count_the_cases_their_hd95_mean_is_over() -> None:
    from pemma.protocol.phases import Phase
    from pemma.protocol.runner import _rows
    from pemma.protocol.strategy import PlannedPhase

    phase = Phase("adapt_mda", "adapt", ("MDA",), ("ct", "pet"))
    planned = PlannedPhase("v", 1, phase, "01_adapt_mda_x", None, ("MDA",))
    # three test cases: GTVn missed in one (no HD95) and absent from another (no HD95 either)
    cases = [{"case_id": "MDA-001", "hd95_GTVp": 2.0, "hd95_GTVn": 4.0},
             {"case_id": "MDA-002", "hd95_GTVp": 6.0, "hd95_GTVn": None},
             {"case_id": "MDA-003", "hd95_GTVp": 4.0, "hd95_GTVn": float("nan")}]
    cache = {"MDA|ct+pet": {"GTVp": 0.7, "GTVn": 0.4, "mean": 0.55}, "MDA|ct+pet|cases": cases,
             "params": {"trainable": 10, "percent_of_early_fusion": 5.0}}
    (row,) = _rows(cache, "unetr", "pemma_lora", planned, ("exact", "pemma"), (("ct", "pet"),))
    assert (row["HD95_GTVp"], row["HD95_n_GTVp"]) == (4.0, 3)
    assert (row["HD95_GTVn"], row["HD95_n_GTVn"], row["n_cases"]) == (4.0, 1, 3)
