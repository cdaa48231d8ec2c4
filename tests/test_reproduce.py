"""``pemma reproduce`` on a tiny phantom: every phase for two methods, evaluation, report, and resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import run_main

STRATEGY = """
name: tiny
backbones: [unetr]
preset: tiny
max_steps: 1
split: {val_fraction: 0.2, test_fraction: 0.5, seed: 0}
methods: [pemma_lora, early_fusion]
phases:
  - {name: pretrain, operation: pretrain, centres: [CHUM], modalities: [ct]}
  - {name: adapt_mda, operation: adapt, centres: [MDA], modalities: [ct, pet]}
  - {name: update_chup, operation: update, centres: [CHUP], modalities: [pet]}
prognosis: {methods: [lora], epochs: 1, train_adapters: false}
"""


@pytest.fixture(scope="module")
def reproduced(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    (root / "tiny.yaml").write_text(STRATEGY)
    stdout = run_main("reproduce", "--strategy", str(root / "tiny.yaml"), "--data", str(phantom), "--out",
                      str(root / "out"))
    assert "report:" in stdout
    return root / "out"


def _inside(ci: dict) -> bool:
    """The estimate lies in its CI (a null bound is unbounded: a relative gain whose reference was 0 in a tail)."""
    low, high = (-math.inf if ci["ci95"][0] is None else ci["ci95"][0]), \
        (math.inf if ci["ci95"][1] is None else ci["ci95"][1])
    return low <= ci["estimate"] <= high


@pytest.mark.slow
@pytest.mark.long
def test_every_phase_and_method_evaluated(reproduced: Path) -> None:
    with open(reproduced / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen = {(r["method"], r["phase"], r["eval_centre"], r["inputs"]) for r in rows}
    # pretrain (CT-only model): CT input only, on CHUM
    assert ("pemma_lora", "pretrain", "CHUM", "ct") in seen and ("pemma_lora", "pretrain", "CHUM", "pet") not in seen
    # after adaptation and after the update every centre seen so far is evaluated with every input set
    for method in ("pemma_lora", "early_fusion"):
        for centre in ("CHUM", "MDA", "CHUP"):
            for inputs in ("ct", "pet", "ct+pet"):
                assert (method, "update_chup", centre, inputs) in seen
    # PEMMA's CT input keeps the CT model's DSCagg on CHUM exactly after adaptation and a PET update
    ct_chum = {r["phase"]: r["DSCagg_mean"] for r in rows
               if r["method"] == "pemma_lora" and r["eval_centre"] == "CHUM" and r["inputs"] == "ct"}
    assert ct_chum["pretrain"] == ct_chum["adapt_mda"] == ct_chum["update_chup"]
    report = (reproduced / "report.md").read_text()
    assert "pemma_lora" in report and "early_fusion" in report and "orgetting" in report
    assert (reproduced / "results.json").is_file() and list(reproduced.glob("dsc_*.png"))
    machine = json.loads((reproduced / "machine.json").read_text())
    assert f"Machine: {machine['cpu']} (bf16: {machine['cpu_bf16']})" in report
    # every run (phases, prognosis stages, lesion chains) records the machine that trained it: here, this one
    from pemma.protocol.provenance import run_machines
    from pemma.runtime import machine_line
    assert list(run_machines(reproduced)) == [machine_line(machine)] and "Runs reused" not in report
    # overlays: CT+PET after adaptation, and CT input after the last update (forgetting)
    for name in ("overlays_adapt.png", "overlays_default_last.png"):
        assert (reproduced / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({name})" in report
    # findings: checked on this run's numbers, in findings.json and the report
    claims = json.loads((reproduced / "findings.json").read_text())["unetr · default"]
    names = [c["claim"] for c in claims]
    assert names == ["CT+PET > CT", "pemma_lora ≥ early fusion − 0.03",
                     "pemma_lora trains ≤ 10% of early fusion's parameters",
                     "less CT forgetting after update_chup (PET only)",
                     "less PET forgetting after update_chup (PET only)",
                     "less CT+PET forgetting after update_chup (PET only)",
                     "pemma_lora PET-input gain over early fusion after update_chup (PET only)"]
    rows = {(r["method"], r["phase"], r["eval_centre"], r["inputs"]): float(r["DSCagg_mean"]) for r in rows
            if r["DSCagg_mean"] != ""}
    ct = (rows[("pemma_lora", "adapt_mda", "CHUM", "ct")] + rows[("pemma_lora", "adapt_mda", "MDA", "ct")]) / 2
    assert claims[0]["values"]["ct"] == pytest.approx(ct)
    assert "## Findings" in report and "## Prognosis" in report
    # every DSCagg claim carries its paired-bootstrap CI over the test cases, and its id and the paper's statement
    assert [c["id"] for c in claims] == ["ctpet_beats_ct", "matches_early_fusion", "parameter_budget",
                                         "less_forgetting", "less_forgetting", "less_forgetting",
                                         "pet_gain_single_modality"]
    for claim in (claims[0], claims[1], claims[3]):
        assert claim["n_cases"] >= 1 and claim["paper"] and "95% CI" in claim["detail"]
        assert all(_inside(ci) for ci in claim["ci"].values())


@pytest.mark.slow
@pytest.mark.long
def test_every_claim_in_findings_json(reproduced: Path) -> None:
    """Every claim id of the paper is in findings.json, each beside the paper's statement; the ones this run cannot
    show say why (one backbone: no ranking; the held-out cases have no relapse: no C-index)."""
    from pemma.protocol.claims import CLAIM_IDS

    found = json.loads((reproduced / "findings.json").read_text())
    assert list(found) == ["unetr · default", "all backbones", "prognosis", "unetr · prognosis (lesion_lora)"]
    # the lesion-feature chain (features of the run's own segmentation) carries the two C-index claims as well
    lesion = found.pop("unetr · prognosis (lesion_lora)")
    assert [c["id"] for c in lesion] == ["cindex_gain_pet", "cindex_gain_pet_ehr"]
    assert all(c["paper"] and c["holds"] in (True, False, None) for c in lesion)
    claims = [c for group in found.values() for c in group]
    assert {c["id"] for c in claims} == set(CLAIM_IDS)
    assert all(c["paper"] and c["holds"] in (True, False, None) for c in claims)
    ranking = next(c for c in claims if c["id"] == "backbone_ranking")
    assert ranking["holds"] is None and "swin_unetr + pemma_dora" in ranking["detail"]
    for claim in (c for c in claims if c["id"].startswith("cindex_gain")):
        assert claim["holds"] is None and "not computed" in claim["detail"]
    # the PET-input forgetting and the PET gain get their CI over the test cases of the evaluated centres
    for claim in claims[4:7]:
        assert claim["n_cases"] >= 1 and all(_inside(ci) for ci in claim["ci"].values())
    report = (reproduced / "report.md").read_text()
    assert all(c["claim"] in report for c in claims) and "paper: +28 %" in report
    # results.csv: route and recipe of the PEMMA runs (today's defaults), empty for the baselines
    with open(reproduced / "results.csv", newline="") as fh:
        pairs = {(r["method"], r["route"], r["recipe"]) for r in csv.DictReader(fh)}
    assert pairs == {("pemma_lora", "exact", "pemma"), ("early_fusion", "", "")}


@pytest.mark.slow
@pytest.mark.long
def test_per_case_results(reproduced: Path) -> None:
    from pemma.protocol.results import CASE_COLUMNS

    with open(reproduced / "results_cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    with open(reproduced / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(cases[0]) == CASE_COLUMNS
    for row in rows:  # n_cases of each results row = its per-case rows
        mine = [c for c in cases if all(c[k] == row[k] for k in ("method", "phase", "eval_centre", "inputs"))]
        assert len(mine) == int(row["n_cases"]) >= 1
        for cls in ("GTVp", "GTVn"):  # the HD95 mean's n: the cases whose HD95 is defined
            assert int(row[f"HD95_n_{cls}"]) == sum(c[f"hd95_{cls}"] != "" for c in mine)
        # DSCagg from the per-case voxel counts equals the reported one
        inter = sum(int(c["inter_vox_GTVp"]) for c in mine)
        size = sum(int(c["gt_vox_GTVp"]) + int(c["pred_vox_GTVp"]) for c in mine)
        if size and row["DSCagg_GTVp"]:
            assert 2 * inter / size == pytest.approx(float(row["DSCagg_GTVp"]), abs=1e-9)


@pytest.mark.slow
@pytest.mark.long
def test_prognosis_chain_in_the_report(reproduced: Path) -> None:
    """CT -> +PET -> +EHR trained on the split's training cases, then the lesion-feature chain's stages; the
    held-out cases of this phantom have no relapse, so the C-index is reported as not computed instead of failing
    the run."""
    rows = json.loads((reproduced / "prognosis.json").read_text())
    assert [(r["method"], r["stage"]) for r in rows] == [("CT model", "ct"), ("lora", "ct+pet"),
                                                          ("lora", "ct+pet+ehr"), ("lesion-cox:lora", "ct"),
                                                          ("lesion-cox:lora", "ct+pet"),
                                                          ("lesion-cox:lora", "ct+pet+ehr")]
    assert all(r["c_index"] is None and "no relapse" in r["note"] for r in rows)
    stage = json.loads((next(reproduced.glob("runs/unetr/prognosis_*/lora_ct+pet+ehr/stage.json"))).read_text())
    split = json.loads((reproduced / "split.json").read_text())
    meta = json.loads((next(reproduced.glob("runs/unetr/prognosis_*/lora_ct+pet+ehr/survival.json"))).read_text())
    assert sorted(meta["train_cases"]) == sorted(i for c in split.values() for i in c["train"])
    # ehr_trains_adapters: false -> only the clinical projection and the head train in the last stage
    assert stage["trainable"] == meta["parameters"]["trainable"]
    assert set(k for k in meta["parameters"] if k.startswith("trainable:")) == {"trainable:clinical", "trainable:head"}


@pytest.mark.slow
@pytest.mark.long
def test_rerun_skips_finished_phases(reproduced: Path, phantom: Path) -> None:
    phases = sorted(reproduced.glob("runs/*/*/*/phase.json"))
    assert len(phases) == 1 + 2 * 2  # shared pretrain + (adapt, update) per method
    stamps = {p: p.stat().st_mtime_ns for p in phases}
    before = (reproduced / "results.csv").read_text()
    run_main("reproduce", "--strategy", str(reproduced.parent / "tiny.yaml"), "--data", str(phantom), "--out",
             str(reproduced))
    assert {p: p.stat().st_mtime_ns for p in phases} == stamps
    assert (reproduced / "results.csv").read_text() == before


def test_invalid_strategy_is_one_line(tmp_path: Path, phantom: Path, capsys: pytest.CaptureFixture) -> None:
    from pemma.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(STRATEGY.replace("operation: update", "operation: upgrade"))
    assert main(["reproduce", "--strategy", str(bad), "--data", str(phantom), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "unknown operation 'upgrade'" in err and "Traceback" not in err
