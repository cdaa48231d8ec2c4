"""What every claim shares: the paper's statements and numbers, the claim record, the CI verdict, and the view of a
results table that one (backbone, variant, route, recipe) reads.

A claim record (one object of ``findings.json``)::

    {"id": "ctpet_beats_ct", "claim": "CT+PET > CT", "holds": true, "detail": "...", "values": {...},
     "paper": "CT+PET segments better than CT alone", "paper_value": null, "route": "exact", "recipe": "pemma",
     "ci": {"pemma_lora - CT": {"estimate": 0.21, "ci95": [0.12, 0.30], "n_cases": 12, "replicates": 2000}},
     "n_cases": 12}

``holds`` is True / False only when every comparison's 95 % paired-bootstrap CI excludes the opposite; None means
not shown (the CI straddles) or not evaluated (the detail says which, e.g. a method or phase missing from the run).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pemma.protocol.bootstrap import Difference
from pemma.protocol.claim_ci import CaseIndex, ci_text, combine
from pemma.protocol.results import DEFAULT_RECIPE, DEFAULT_ROUTE, normalise_rows, route_recipe
from pemma.vocab import BASELINE_METHODS, PEMMA_METHODS

PEMMA: tuple[str, ...] = tuple(PEMMA_METHODS)
FUSION_BASELINES: tuple[str, ...] = BASELINE_METHODS
FORGETTING_BASELINES: tuple[str, ...] = ("early_fusion", "full_finetune")
#: pseudo-method of a view: the CT model (the pretrained base), read from a PEMMA method's exact CT route
CT_MODEL = "ct_model"

#: every claim id, in report order
CLAIM_IDS: tuple[str, ...] = ("ctpet_beats_ct", "matches_early_fusion", "parameter_budget", "less_forgetting",
                              "pet_gain_single_modality", "backbone_ranking", "cindex_gain_pet", "cindex_gain_pet_ehr")
#: the paper's statement of each claim (arXiv 2504.13645), printed beside the measured one
PAPER: dict[str, str] = {
    "ctpet_beats_ct": "CT+PET segments better than CT alone",
    "matches_early_fusion": "comparable to early fusion (checked here as non-inferiority: the CI of PEMMA − early "
                            "fusion lies above −0.03 DSCagg; PEMMA above early fusion also holds)",
    "parameter_budget": "8 % of early fusion's trainable parameters",
    "less_forgetting": "performance kept after a single-modality update, where the baselines forget",
    "pet_gain_single_modality": "+28 % Dice on PET input over early fusion when updated with a single modality",
    "backbone_ranking": "Swin UNETR + DoRA ≥ Swin UNETR + LoRA ≥ UNETR + LoRA",
    "cindex_gain_pet": "C-index +10 % with PET (relative to CT)",
    "cindex_gain_pet_ehr": "C-index +23 % with PET and EHR (relative to CT; 0.61 → 0.75 LoRA, 0.66 → 0.80 DoRA)",
}
#: the paper's number where it gives one (percent of early fusion; relative gains as fractions)
PAPER_VALUE: dict[str, float] = {"parameter_budget": 8.0, "pet_gain_single_modality": 0.28, "cindex_gain_pet": 0.10,
                                 "cindex_gain_pet_ehr": 0.23}


def pair_suffix(route: str, recipe: str) -> str:
    """``""`` for the default route and recipe, else `` [shared, authors]`` (appended to claim names)."""
    extra = [v for v, d in ((route, DEFAULT_ROUTE), (recipe, DEFAULT_RECIPE)) if v and v != d]
    return f" [{', '.join(extra)}]" if extra else ""


def claim(name: str, holds: bool | None, detail: str, values: Mapping[str, float | None], claim_id: str,
          ci: Mapping[str, Any] | None = None, pair: tuple[str, str] = (DEFAULT_ROUTE, DEFAULT_RECIPE),
          ) -> dict[str, Any]:
    """One claim record (see the module docstring); ``n_cases`` is the largest of the CIs' case counts."""
    out = {"id": claim_id, "claim": name + pair_suffix(*pair), "holds": holds, "detail": detail,
           "values": dict(values), "paper": PAPER.get(claim_id, ""), "paper_value": PAPER_VALUE.get(claim_id),
           "route": pair[0], "recipe": pair[1]}
    if ci is not None:
        out["ci"] = dict(ci)
        out["n_cases"] = max((c["n_cases"] for c in ci.values()), default=0)
    return out


def with_ci(holds: bool | None, detail: str, diffs: Mapping[str, Difference | None], margin: float = 0.0,
            ) -> tuple[bool | None, str, dict[str, Any] | None]:
    """The verdict from the CIs when every comparison has per-case data (else the point estimate, marked).

    The numbers in ``detail`` are the results table's (each centre's DSCagg, averaged over centres); the CIs, and
    so the verdict, are for the DSCagg pooled over all the test cases compared (HECKTOR's aggregation), whose
    estimate is printed with each CI. With 3 test cases a centre the two can differ by a few points."""
    if not diffs or any(d is None for d in diffs.values()):
        return holds, detail + " (point estimate: no per-case results)", None
    verdict = combine(d.verdict(margin) for d in diffs.values())
    text = "; ".join(f"{name} {ci_text(d)}" for name, d in diffs.items())
    detail = f"{detail}; paired bootstrap over test cases (DSCagg pooled over them, the verdict's statistic): {text}"
    return verdict, detail, {k: d.to_dict() for k, d in diffs.items()}


def value(entries: Sequence[Mapping[str, Any]], method: str, inputs: str, phase_index: int,
          key: str = "DSCagg_mean") -> float | None:
    """A summary entry's ``key`` (None when the method, input set or phase is absent)."""
    return next((e[key] for e in entries if e["method"] == method and e["inputs"] == inputs
                 and e["phase_index"] == phase_index), None)


def _mine(method: str, row: Mapping[str, Any], pair: tuple[str, str]) -> bool:
    """Whether a row belongs to the view of ``pair``: a PEMMA method with that pair, or a baseline."""
    return method not in PEMMA or route_recipe(method, row) == pair


def ct_source(found: Iterable[tuple[str, str]], pair: tuple[str, str]) -> tuple[str, str] | None:
    """The (method, recipe) whose exact CT route serves as the CT model: among the exact-route PEMMA runs
    ``found``, the view's recipe first, then the default recipe; the first PEMMA method of :data:`PEMMA`."""
    found = set(found)
    for recipe in dict.fromkeys((pair[1], DEFAULT_RECIPE)):
        for method in PEMMA:
            if (method, recipe) in found:
                return method, recipe
    return None


def view_rows(rows: Iterable[Mapping[str, Any]], backbone: str, variant: str,
              pair: tuple[str, str]) -> list[dict[str, Any]]:
    """The result rows one (backbone, variant, route, recipe) reads: its PEMMA rows, the baselines, and the CT model
    (:data:`CT_MODEL`: CT-input rows of a PEMMA method run with the exact route, whose CT input is the untouched
    base; see :func:`ct_source`)."""
    clean = [r for r in normalise_rows(rows) if r["variant"] == variant and r["backbone"] == backbone]
    out = [r for r in clean if _mine(r["method"], r, pair)]
    exact = [r for r in clean if r["method"] in PEMMA and r["route"] == DEFAULT_ROUTE and r["inputs"] == "ct"]
    source = ct_source(((r["method"], r["recipe"]) for r in exact), pair)
    return out + [{**r, "method": CT_MODEL} for r in exact if (r["method"], r["recipe"]) == source]


def view_cases(cases: Iterable[Mapping[str, Any]], backbone: str, variant: str, pair: tuple[str, str]) -> CaseIndex:
    """Per-case counts of the view (as :func:`view_rows`), by method, input set and phase.

    Args:
        cases: per-case rows (``results_cases.csv`` rows with their ``counts``).
        backbone, variant, pair: the view.
    """
    index: CaseIndex = {}
    exact: dict[tuple[str, str], CaseIndex] = {}
    for row in cases:
        if row.get("backbone", "") != backbone or row.get("variant") != variant or not row.get("counts"):
            continue
        method = str(row["method"])
        key = (method, str(row["inputs"]), int(row["phase_index"]))
        case = (str(row["eval_centre"]), str(row["case_id"]))
        counts = np.asarray(row["counts"], float)
        if _mine(method, row, pair):
            index.setdefault(key, {})[case] = counts
        route, recipe = route_recipe(method, row)
        if method in PEMMA and route == DEFAULT_ROUTE and key[1] == "ct":
            exact.setdefault((method, recipe), {}).setdefault(key, {})[case] = counts
    source = ct_source(exact, pair)
    for (_, inputs, phase), table in (exact[source] if source else {}).items():
        index[(CT_MODEL, inputs, phase)] = table
    return index
