"""The lesion-feature chain beside the neural prognosis stages: its rows follow the neural ones (report table,
``prognosis.json``), and each C-index claim is made once, by one builder: the neural ones under "prognosis", the
lesion chain's from its ``chain.json`` under a label of its own (cached stages: nothing trains here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pemma.protocol.claims.cindex import cindex_claims, cindex_gain, prognosis_findings
from pemma.protocol.phases import PrognosisSpec
from pemma.protocol.prognosis import PROGNOSIS_COLUMNS, prognosis_markdown, run_prognosis, write_prognosis
from pemma.survival.metrics import concordance_index

STAGES = ("ct", "ct+pet", "ct+pet+ehr")
#: the keys every claim record has (pemma.protocol.claims.common.claim), with a CI
CLAIM_KEYS = {"id", "claim", "holds", "detail", "values", "paper", "paper_value", "route", "recipe", "ci", "n_cases"}


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _cached_run(out: Path, n: int = 40) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Finished neural stages (``stage.json`` + ``evaluation.json``) and a finished lesion chain (``chain.json``)."""
    rng = np.random.default_rng(3)
    time = rng.permutation(np.arange(100.0, 100.0 + 20 * n, 20.0))
    event = (rng.random(n) < 0.6).astype(int)
    risks = {"ct": rng.random(n), "ct+pet": -time + rng.normal(0, 200, n), "ct+pet+ehr": -time}
    for name, stage, c in (("ct", "ct", 0.55), ("lora_ct+pet", "ct+pet", 0.6), ("lora_ct+pet+ehr", "ct+pet+ehr", 0.7)):
        _write(out / name / "stage.json", {"stage": stage, "val_c_index": c, "trainable": 100, "steps": 1})
        _write(out / name / "evaluation.json", {"c_index": c, "ci_low": c - 0.1, "ci_high": c + 0.1, "n_cases": n,
                                                "events": int(event.sum())})
    _write(out / "lesion_lora" / "chain.json", {
        "test_cases": [f"MDA-{i:03d}" for i in range(n)], "test_time": time.tolist(), "test_event": event.tolist(),
        "stages": [{"stage": s, "test_risk": risks[s].tolist(),
                    "test_c_index": concordance_index(time, event, risks[s]), "test_ci": [0.4, 0.9], "n_test": n,
                    "events_test": int(event.sum()), "cv_c_index": 0.6,
                    "n_features": 3 + i, "overfitting": False} for i, s in enumerate(STAGES)]})
    return time, event, risks


def test_lesion_rows_follow_the_neural_ones_and_each_claim_is_made_once(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "unetr" / "prognosis_abcd"
    time, event, risks = _cached_run(out)
    rows = run_prognosis(PrognosisSpec(methods=("lora",)), data_root=str(tmp_path), base_run=tmp_path / "base",
                         out=out, backbone="unetr", preset="tiny", seed=0, max_steps=1, train_ids=[], val_ids=[],
                         held_out_ids=[], centres=["MDA"], segmentation_adapters={"lora": tmp_path / "seg"})
    assert [(r["method"], r["stage"]) for r in rows] == [("CT model", "ct"), ("lora", "ct+pet"), ("lora", "ct+pet+ehr")
                                                         ] + [("lesion-cox:lora", s) for s in STAGES]
    lesion = rows[3:]
    assert [r["c_index"] for r in lesion] == [concordance_index(time, event, risks[s]) for s in STAGES]
    assert [r["trainable_params"] for r in lesion] == [3, 4, 5] and all(set(r) == set(PROGNOSIS_COLUMNS) for r in rows)
    written = json.loads(write_prognosis(rows, tmp_path).read_text())
    assert [r["method"] for r in written].count("lesion-cox:lora") == 3
    table = "\n".join(prognosis_markdown(rows))
    c = [r["c_index"] for r in lesion]
    assert "| unetr | lesion-cox:lora | ct |" in table  # the lesion chain is ordered against its own CT stage
    assert f"unetr lesion-cox:lora: CT {c[0]:.3f} → CT+PET {c[1]:.3f} → CT+PET+EHR {c[2]:.3f}" in table
    # the neural claims ("prognosis") leave the lesion rows to the chain's own label
    assert [cl["claim"] for cl in cindex_claims(rows)] == ["unetr lora: C-index gain with PET",
                                                            "unetr lora: C-index gain with PET and EHR"]
    found = prognosis_findings(tmp_path, seed=0, folders="runs/*/prognosis_abcd")
    claims = found["unetr · prognosis (lesion_lora)"]
    assert [cl["claim"] for cl in claims] == ["unetr lesion-cox:lora: C-index gain with PET",
                                              "unetr lesion-cox:lora: C-index gain with PET and EHR"]
    assert all(set(cl) == CLAIM_KEYS and cl["n_cases"] == 40 for cl in claims)
    for cl, stage in zip(claims, STAGES[1:], strict=True):  # the same paired bootstrap as the neural claims'
        assert cl["values"]["c_index_ct"] == c[0]
        assert cl["ci"]["relative_gain"] == cindex_gain(time, event, risks["ct"], risks[stage], seed=0).to_dict()
        assert cl["values"]["relative_gain"] == pytest.approx(
            concordance_index(time, event, risks[stage]) / concordance_index(time, event, risks["ct"]) - 1)
    assert claims[1]["holds"] is True  # perfect ranking at CT+PET+EHR against random CT risks


def test_a_chain_stage_without_held_out_relapse_says_why() -> None:
    from pemma.protocol.claims.cindex import chain_claims
    from pemma.protocol.prognosis import chain_rows

    stage = {"test_c_index": None, "test_ci": None, "n_test": 3, "events_test": 0, "cv_c_index": 0.6,
             "n_features": 3, "overfitting": False, "test_risk": [0.1, 0.2, 0.3]}
    result = {"test_cases": ["a", "b", "c"], "test_time": [1.0, 2.0, 3.0], "test_event": [0, 0, 0],
              "stages": [{**stage, "stage": s} for s in STAGES]}
    rows = chain_rows(result, "unetr", "lesion-cox:ct")
    assert [r["note"] for r in rows] == ["no relapse among the held-out cases"] * 3
    assert "C-index not computed (no relapse among the held-out cases)" in "\n".join(prognosis_markdown(rows))
    claims = chain_claims(result)
    assert all(c["holds"] is None and c["detail"] == "not computed (no relapse among the held-out cases)"
               for c in claims)


def test_a_stage_left_out_is_named_not_another_stages_note() -> None:
    """``survival chain --no-ehr``: the PET+EHR claim is not computed because the chain has no such stage, not
    because of the CT stage's overfitting note (which it used to report)."""
    from pemma.protocol.claims.cindex import stage_claims

    time, event = np.arange(1.0, 9.0), np.array([1, 1, 0, 1, 1, 0, 1, 1])
    cases = [{"PatientID": f"p{i}", "RFS": t, "Relapse": e, "risk": -t}
             for i, (t, e) in enumerate(zip(time, event, strict=True))]
    rows = [{"stage": "ct", "c_index": 0.6, "n_cases": 8, "cases": cases,
             "note": "overfitting: training C-index exceeds the cross-validated one"},
            {"stage": "ct+pet", "c_index": 0.7, "n_cases": 8, "cases": cases}]
    pet, pet_ehr = stage_claims(rows)
    assert pet["values"]["c_index_ct"] == 0.6
    assert pet_ehr["holds"] is None and pet_ehr["detail"] == "not computed (the chain has no ct+pet+ehr stage)"


def test_a_ct_stage_of_c_index_zero_leaves_the_gain_undefined() -> None:
    """Reversed CT risks (C = 0): the relative gain is undefined, the claim says so instead of failing."""
    from pemma.protocol.claims.cindex import stage_claims

    time, event = np.arange(1.0, 9.0), np.array([1, 1, 0, 1, 1, 0, 1, 1])
    cases = {s: [{"PatientID": str(i), "risk": float(r), "RFS": float(t), "Relapse": int(e)}
                 for i, (r, t, e) in enumerate(zip(risk, time, event, strict=True))]
             for s, risk in (("ct", time), ("ct+pet", -time))}
    rows = [{"stage": s, "c_index": concordance_index(time, event, [c["risk"] for c in cases[s]]), "n_cases": 8,
             "cases": cases[s]} for s in cases]
    assert rows[0]["c_index"] == 0.0
    with pytest.raises(ValueError, match="C-index is 0"):
        cindex_gain(time, event, time, -time)
    pet = stage_claims(rows)[0]
    assert pet["holds"] is None and pet["values"]["relative_gain"] is None and "undefined" in pet["detail"]
