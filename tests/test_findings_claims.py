"""Every claim of the paper on hand-made per-case tables: verdicts from the paired-bootstrap CI (holds / does not hold /
not shown), the relative-gain and C-index bootstraps against plain loops, routes, and findings.json's ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pemma.protocol.bootstrap import bootstrap_relative, dscagg_mean
from pemma.protocol.phases import Phase

PHASES = (Phase("pretrain", "pretrain", ("CHUM",), ("ct",)), Phase("adapt_mda", "adapt", ("MDA",), ("ct", "pet")),
          Phase("update_hgj", "update", ("HGJ",), ("pet",)))
SEEN = {0: ("CHUM",), 1: ("CHUM", "MDA"), 2: ("CHUM", "MDA", "HGJ")}
N = 10  # test cases per centre


def _counts(rng: np.random.Generator, quality: float) -> np.ndarray:
    """N cases of GTVp (GTVn empty): 100-voxel tumours predicted with about ``quality`` overlap."""
    inter = np.clip(rng.normal(quality, 0.08, N), 0.0, 1.0) * 100
    return np.stack([np.array([[i, 100, 100], [0, 0, 0]]) for i in np.round(inter)])


def _build(quality: dict[tuple[str, str, str], list[float | None]], backbone: str = "unetr", seed: int = 0,
           frozen: tuple[tuple[str, str, str], ...] = ()) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows and per-case rows: ``quality[(method, route, inputs)]`` per phase (None: not evaluated). The
    counts are drawn per centre and phase; ``frozen`` series keep a centre's first counts later (no change)."""
    rng = np.random.default_rng(seed)
    rows, cases = [], []
    for (method, route, inputs), per_phase in quality.items():
        kept: dict[str, np.ndarray] = {}
        for phase, q in enumerate(per_phase):
            if q is None:
                continue
            for centre in SEEN[phase]:
                if (method, route, inputs) in frozen and centre in kept:
                    counts = kept[centre]
                else:
                    counts = _counts(rng, q)
                kept[centre] = counts
                mean = float(dscagg_mean(counts))
                pair = {"route": route, "recipe": "pemma" if route else ""}
                rows.append({"backbone": backbone, "method": method, **pair, "variant": "v",
                             "phase": PHASES[phase].name, "phase_index": phase, "eval_centre": centre,
                             "inputs": inputs, "DSCagg_GTVp": mean, "DSCagg_GTVn": None, "DSCagg_mean": mean,
                             "trainable_params": 8 if route else 100, "percent_of_early_fusion": 8.0 if route else 100})
                cases += [{"backbone": backbone, "method": method, **pair, "variant": "v", "phase_index": phase,
                           "eval_centre": centre, "inputs": inputs, "case_id": f"{centre}-{i:03d}",
                           "counts": c.tolist()} for i, c in enumerate(counts)]
    return rows, cases


def _table(ef_ct_after: float = 0.2, ef_pet_after: float = 0.1, pemma_pet_after: float = 0.6,
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    quality = {
        ("pemma_lora", "exact", "ct"): [0.5, 0.5, 0.5], ("pemma_lora", "exact", "pet"): [None, 0.6, pemma_pet_after],
        ("pemma_lora", "exact", "ct+pet"): [None, 0.7, 0.7],
        ("early_fusion", "", "ct"): [0.5, 0.5, ef_ct_after], ("early_fusion", "", "pet"): [None, 0.4, ef_pet_after],
        ("early_fusion", "", "ct+pet"): [None, 0.72, 0.4],
        ("full_finetune", "", "ct"): [0.5, 0.5, 0.25], ("full_finetune", "", "pet"): [None, 0.4, 0.15],
        ("full_finetune", "", "ct+pet"): [None, 0.72, 0.45],
    }
    frozen = (("pemma_lora", "exact", "ct"), ("pemma_lora", "exact", "pet"), ("pemma_lora", "exact", "ct+pet"))
    return _build(quality, frozen=frozen)


def _by_name(claims: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["claim"]: c for c in claims}


def _check(rows: list, cases: list, **kwargs: Any) -> dict[str, dict[str, Any]]:
    from pemma.protocol.findings import check_findings

    return _by_name(check_findings(rows, PHASES, "v", cases=cases, forgetting_inputs=("ct", "pet", "ct+pet"),
                                   pet_gain=True, **kwargs))


def test_relative_gain_bootstrap_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    a, b = _counts(rng, 0.6), _counts(rng, 0.45)
    diff = bootstrap_relative(a, b, replicates=300, seed=5)
    draws = np.random.default_rng(5).integers(0, N, size=(300, N))
    ref = [float(dscagg_mean(a[d]) / dscagg_mean(b[d]) - 1) for d in draws]
    assert diff.estimate == pytest.approx(float(dscagg_mean(a) / dscagg_mean(b) - 1), abs=1e-12)
    assert (diff.low, diff.high) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1e-12)
    assert diff.low > 0 and diff.n_cases == N


def test_forgetting_on_every_input_set_and_the_pet_gain() -> None:
    rows, cases = _table()
    claims = _check(rows, cases)
    for inputs in ("CT", "PET", "CT+PET"):
        found = claims[f"less {inputs} forgetting after update_hgj (PET only)"]
        assert found["id"] == "less_forgetting" and found["holds"] is True and found["n_cases"] == 2 * N
        assert found["values"]["drop:pemma_lora"] == pytest.approx(0.0)  # frozen counts: nothing forgotten
        for ci in found["ci"].values():
            assert 0 < ci["ci95"][0] <= ci["estimate"] <= ci["ci95"][1]
    # the PET drop of early fusion from the table itself: mean over CHUM and MDA of (after adapt - after update)
    pet = {(r["phase_index"], r["eval_centre"]): r["DSCagg_mean"] for r in rows
           if (r["method"], r["inputs"]) == ("early_fusion", "pet")}
    drop = np.mean([pet[(1, c)] - pet[(2, c)] for c in ("CHUM", "MDA")])
    assert claims["less PET forgetting after update_hgj (PET only)"]["values"]["drop:early_fusion"] \
        == pytest.approx(drop)
    gain = claims["pemma_lora PET-input gain over early fusion after update_hgj (PET only)"]
    mine = np.mean([r["DSCagg_mean"] for r in rows if (r["method"], r["inputs"], r["phase_index"])
                    == ("pemma_lora", "pet", 2)])
    theirs = np.mean([r["DSCagg_mean"] for r in rows if (r["method"], r["inputs"], r["phase_index"])
                      == ("early_fusion", "pet", 2)])
    assert gain["id"] == "pet_gain_single_modality" and gain["holds"] is True and gain["paper_value"] == 0.28
    assert gain["values"]["relative_gain"] == pytest.approx(mine / theirs - 1)
    assert "+28 %" in gain["paper"] and gain["n_cases"] == 3 * N


def test_a_difference_inside_the_noise_is_not_shown_and_the_opposite_does_not_hold() -> None:
    rows, cases = _table(ef_ct_after=0.49, ef_pet_after=0.6, pemma_pet_after=0.61)
    claims = _check(rows, cases)
    close = claims["less CT forgetting after update_hgj (PET only)"]
    # early fusion barely forgets (0.50 -> 0.49, noise 0.08 over 2 x 10 cases): the CI straddles 0
    (ef_ci,) = [c for k, c in close["ci"].items() if k.startswith("early_fusion")]
    assert ef_ci["ci95"][0] < 0 < ef_ci["ci95"][1] and close["holds"] is None
    assert claims["pemma_lora PET-input gain over early fusion after update_hgj (PET only)"]["holds"] is None
    rows, cases = _table(pemma_pet_after=0.1, ef_pet_after=0.6)
    assert _check(rows, cases)["pemma_lora PET-input gain over early fusion after update_hgj (PET only)"]["holds"] \
        is False


def test_a_route_is_its_own_view_and_the_ct_model_is_the_exact_route() -> None:
    rows, cases = _table()
    shared_q = {("pemma_lora", "shared", "ct"): [0.5, 0.55, 0.3], ("pemma_lora", "shared", "pet"): [None, 0.6, 0.6],
                ("pemma_lora", "shared", "ct+pet"): [None, 0.75, 0.7]}
    more_rows, more_cases = _build(shared_q, seed=1)
    claims = _check(rows + more_rows, cases + more_cases, route="shared")
    assert all(name.endswith(" [shared]") and c["route"] == "shared" for name, c in claims.items())
    first = claims["CT+PET > CT [shared]"]
    exact_ct = np.mean([r["DSCagg_mean"] for r in rows if (r["method"], r["inputs"], r["phase_index"])
                        == ("pemma_lora", "ct", 1)])
    assert first["values"]["ct"] == pytest.approx(exact_ct)  # the CT model: the exact route's CT input
    assert first["values"]["ct+pet:pemma_lora"] == pytest.approx(
        np.mean([r["DSCagg_mean"] for r in more_rows if (r["inputs"], r["phase_index"]) == ("ct+pet", 1)]))
    # the shared route's CT input changes with the update: its drop is measured, not zero by construction
    ct = {(r["phase_index"], r["eval_centre"]): r["DSCagg_mean"] for r in more_rows if r["inputs"] == "ct"}
    drop = np.mean([ct[(0, "CHUM")] - ct[(2, "CHUM")], ct[(1, "MDA")] - ct[(2, "MDA")]])
    assert claims["less CT forgetting after update_hgj (PET only) [shared]"]["values"]["drop:pemma_lora"] \
        == pytest.approx(drop)
    # the default view does not see the shared rows
    assert _check(rows + more_rows, cases + more_cases)["CT+PET > CT"]["values"]["ct+pet:pemma_lora"] \
        == pytest.approx(np.mean([r["DSCagg_mean"] for r in rows if (r["method"], r["inputs"], r["phase_index"])
                                  == ("pemma_lora", "ct+pet", 1)]))


def _ranking_tables(swin_dora: float, swin_lora: float, unetr_lora: float) -> tuple[list, list]:
    rows, cases = [], []
    for backbone, quality in (("swin_unetr", {("pemma_dora", "exact", "ct+pet"): [None, swin_dora],
                                              ("pemma_lora", "exact", "ct+pet"): [None, swin_lora]}),
                              ("unetr", {("pemma_lora", "exact", "ct+pet"): [None, unetr_lora]})):
        r, c = _build(quality, backbone=backbone, seed=len(backbone))
        rows, cases = rows + r, cases + c
    return rows, cases


def test_backbone_ranking() -> None:
    from pemma.protocol.claims.ranking import ranking_claim

    def rank(rows: list, cases: list) -> dict[str, Any]:
        return ranking_claim(rows, cases, PHASES, "v", ("exact", "pemma"))

    found = rank(*_ranking_tables(0.8, 0.65, 0.5))
    assert found["id"] == "backbone_ranking" and found["holds"] is True and len(found["ci"]) == 2
    assert found["values"]["swin_unetr:pemma_dora"] > found["values"]["unetr:pemma_lora"]
    assert rank(*_ranking_tables(0.5, 0.65, 0.8))["holds"] is False
    rows, cases = _ranking_tables(0.8, 0.65, 0.5)
    missing = rank([r for r in rows if r["backbone"] == "unetr"], cases)
    assert missing["holds"] is None and "swin_unetr + pemma_dora" in missing["detail"] and "ci" not in missing


def _plain_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    score = pairs = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and (time[j] > time[i] or (time[j] == time[i] and not event[j])):
                pairs += 1
                score += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return score / pairs


def test_cindex_gain_bootstrap_matches_a_plain_loop() -> None:
    from pemma.protocol.claims.cindex import cindex_gain

    rng = np.random.default_rng(0)
    time = rng.integers(100, 1000, 12).astype(float)
    event = (rng.random(12) < 0.6).astype(int)
    base, better = rng.random(12), -time + rng.normal(0, 150, 12)
    diff = cindex_gain(time, event, base, better, replicates=200, seed=4)
    assert diff.estimate == pytest.approx(_plain_c(time, event, better) / _plain_c(time, event, base) - 1)
    draws = np.random.default_rng(4).integers(0, 12, size=(200, 12))
    ref = []
    for d in draws:
        try:
            c_base, c_better = _plain_c(time[d], event[d], base[d]), _plain_c(time[d], event[d], better[d])
        except ZeroDivisionError:  # no comparable pair among the drawn cases: the replicate is left out
            continue
        ref.append(1e6 if c_base == 0 else c_better / c_base - 1)  # a base C of 0: an unbounded gain
    low, high = np.percentile(ref, [2.5, 97.5])
    assert sum(r == 1e6 for r in ref) > 5  # 12 cases: some draws hold a pair or two, ranked wrong by the base
    assert diff.low == pytest.approx(low, abs=1e-9) and high > 1e5 and diff.high == np.inf


def test_cindex_claims_with_and_without_per_case_risks() -> None:
    from pemma.protocol.claims.cindex import cindex_claims

    rng = np.random.default_rng(1)
    time = rng.integers(100, 2000, 60).astype(float)
    event = (rng.random(60) < 0.7).astype(int)
    risks = {"ct": rng.random(60), "ct+pet": -time + rng.normal(0, 400, 60), "ct+pet+ehr": -time}

    def row(method: str, stage: str, with_cases: bool) -> dict[str, Any]:
        from pemma.survival.metrics import concordance_index

        cases = [{"PatientID": f"P{i}", "risk": float(r), "RFS": float(t), "Relapse": int(e)}
                 for i, (r, t, e) in enumerate(zip(risks[stage], time, event, strict=True))]
        return {"backbone": "unetr", "method": method, "stage": stage, "n_cases": 60,
                "c_index": concordance_index(time, event, risks[stage]), **({"cases": cases} if with_cases else {})}

    rows = [row("CT model", "ct", True), row("lora", "ct+pet", True), row("lora", "ct+pet+ehr", True)]
    claims = {c["id"]: c for c in cindex_claims(rows, seed=0)}
    assert set(claims) == {"cindex_gain_pet", "cindex_gain_pet_ehr"}
    pet = claims["cindex_gain_pet"]
    assert pet["holds"] is True and pet["paper_value"] == 0.10 and pet["n_cases"] == 60
    assert pet["values"]["relative_gain"] == pytest.approx(rows[1]["c_index"] / rows[0]["c_index"] - 1)
    bare = [{k: v for k, v in r.items() if k != "cases"} for r in rows]
    point = {c["id"]: c for c in cindex_claims(bare)}["cindex_gain_pet_ehr"]
    assert point["holds"] is None and "per-case risks not available" in point["detail"]
    assert point["values"]["relative_gain"] > 0
    not_run = cindex_claims(None)
    assert [c["id"] for c in not_run] == ["cindex_gain_pet", "cindex_gain_pet_ehr"]
    assert all(c["holds"] is None and "not run" in c["detail"] for c in not_run)


def test_collect_findings_has_every_claim_id() -> None:
    from pemma.protocol.claims import CLAIM_IDS
    from pemma.protocol.findings import collect_findings, findings_markdown
    from pemma.protocol.strategy_file import parse_strategy

    strategy = parse_strategy({"name": "t", "methods": ["pemma_lora", "early_fusion", "full_finetune"],
                               "phases": [{"name": p.name, "operation": p.operation, "centres": list(p.centres),
                                           "modalities": list(p.modalities)} for p in PHASES],
                               "variants": {"v": {}}})
    rows, cases = _table()
    found = collect_findings(rows, strategy, cases, prognosis=None)
    assert list(found) == ["unetr · v", "all backbones", "prognosis"]
    claims = [c for group in found.values() for c in group]
    assert {c["id"] for c in claims} == set(CLAIM_IDS)
    assert next(c for c in claims if c["id"] == "backbone_ranking")["holds"] is None
    lines = findings_markdown(claims)
    assert len(lines) == len(claims)
    assert all("paper:" in line for line in lines)
    assert any("95% CI" in line and "n=" in line for line in lines)


def test_prognosis_rows_get_the_per_case_risks_of_their_evaluation(tmp_path: Path) -> None:
    """reproduce hands the C-index claims each stage's held-out risks from ``<stage>/evaluation/survival_*.json``."""
    import json

    from pemma.protocol.runner import _with_risks
    from pemma.protocol.strategy_file import parse_strategy

    strategy = parse_strategy({"name": "t", "phases": [{"name": p.name, "operation": p.operation,
                                                        "centres": list(p.centres), "modalities": list(p.modalities)}
                                                       for p in PHASES], "prognosis": {"methods": ["lora"]}})
    assert strategy.prognosis is not None
    folder = tmp_path / "runs" / "unetr" / f"prognosis_{strategy.prognosis.digest()}"
    cases = [{"PatientID": "MDA-001", "risk": 0.3, "RFS": 400.0, "Relapse": 1}]
    for name, stage in (("ct", "ct"), ("lora_ct+pet", "ct+pet")):
        (folder / name / "evaluation").mkdir(parents=True)
        (folder / name / "evaluation" / f"survival_{stage}.json").write_text(json.dumps({"cases": cases}))
    rows = [{"backbone": "unetr", "method": "CT model", "stage": "ct"},
            {"backbone": "unetr", "method": "lora", "stage": "ct+pet"},
            {"backbone": "unetr", "method": "lora", "stage": "ct+pet+ehr"}]
    found = _with_risks(strategy, tmp_path, rows)
    assert [r.get("cases") for r in found] == [cases, cases, None]


def test_matching_an_early_fusion_that_segments_nothing_is_not_shown() -> None:
    quality = {("pemma_lora", "exact", "ct"): [0.0, 0.0, None], ("pemma_lora", "exact", "ct+pet"): [None, 0.0, None],
               ("early_fusion", "", "ct+pet"): [None, 0.0, None]}
    rows, cases = _build(quality)
    found = [c for c in _check(rows, cases).values() if c["id"] == "matches_early_fusion"]
    assert len(found) == 1 and found[0]["holds"] is None and "segments (almost) nothing" in found[0]["detail"]
    # the report gives that reason, not "the CI includes the opposite" (early fusion at 0.02: its CI is clear of it)
    from pemma.protocol.findings import findings_markdown

    quality[("pemma_lora", "exact", "ct+pet")] = [None, 0.7, None]
    quality[("early_fusion", "", "ct+pet")] = [None, 0.02, None]
    rows, cases = _build(quality)
    found = [c for c in _check(rows, cases).values() if c["id"] == "matches_early_fusion"]
    assert found[0]["holds"] is None and found[0]["ci"]["pemma_lora - early_fusion"]["ci95"][0] > 0.5
    (line,) = findings_markdown(found)
    assert ": not shown — not shown: early fusion segments (almost) nothing" in line and "includes the opposite" \
        not in line
    quality[("pemma_lora", "exact", "ct+pet")] = [None, 0.6, None]
    quality[("early_fusion", "", "ct+pet")] = [None, 0.6, None]
    rows, cases = _build(quality)
    assert [c for c in _check(rows, cases).values() if c["id"] == "matches_early_fusion"][0]["holds"] is True
