"""The paper's three claims, checked on a protocol run's results table (and summarised over seeds).

1. **CT+PET beats CT alone**: after the ``adapt`` phase, each multi-modal method's CT+PET DSCagg mean
   against the CT model's (the pretrained base, evaluated through PEMMA's CT route, which is the base
   exactly) on the same centres.
2. **PEMMA matches early fusion with few parameters**: after ``adapt``, PEMMA's CT+PET DSCagg mean is at
   least early fusion's minus ``tolerance`` (0.03); and, checked separately, its trainable parameters are
   <= ``max_percent`` (10%) of early fusion's.
3. **Less forgetting after a PET-only update**: after each ``update`` phase that uses PET only, the mean
   drop of the CT-input DSCagg mean on the centres learnt before it (see
   :func:`pemma.protocol.results.forgetting_table`) is smaller for PEMMA than for early fusion and full
   fine-tuning.

Averages over centres are plain means of per-centre DSCagg (:func:`pemma.protocol.results.summarise`).
A claim whose methods or phases are absent from the run is reported as not evaluated (``holds`` None).

Example:
    >>> claims = check_findings(rows, phases=strategy.variant_phases("pet_only"), variant="pet_only")
    >>> print("\\n".join(findings_markdown(claims)))
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pemma.protocol.bootstrap import Difference
from pemma.protocol.claim_ci import ci_text, combine, contrast, index_cases
from pemma.protocol.phases import Phase
from pemma.protocol.results import forgetting_table, mean_forgetting, normalise_rows, summarise
from pemma.vocab import BASELINE_METHODS
from pemma.vocab import PEMMA_METHODS as PEMMA_METHOD_TYPES

PEMMA_METHODS: tuple[str, ...] = tuple(PEMMA_METHOD_TYPES)
FUSION_BASELINES: tuple[str, ...] = BASELINE_METHODS
FORGETTING_BASELINES: tuple[str, ...] = ("early_fusion", "full_finetune")


def _value(entries: Sequence[Mapping[str, Any]], method: str, inputs: str, phase_index: int,
           key: str = "DSCagg_mean") -> float | None:
    return next((e[key] for e in entries if e["method"] == method and e["inputs"] == inputs
                 and e["phase_index"] == phase_index), None)


#: the paper's statement of each claim (arXiv 2504.13645), printed beside the measured one
PAPER = {"ctpet_beats_ct": "CT+PET segments better than CT alone",
         "matches_early_fusion": "comparable to early fusion (within 0.03 DSCagg here)",
         "parameter_budget": "8 % of early fusion's trainable parameters",
         "less_forgetting": "CT performance kept after a PET-only update, where the baselines forget"}


def _claim(name: str, holds: bool | None, detail: str, values: Mapping[str, float | None], claim_id: str = "",
           ci: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": claim_id, "claim": name, "holds": holds, "detail": detail, "values": dict(values),
           "paper": PAPER.get(claim_id, "")}
    if ci is not None:
        out["ci"] = dict(ci)
        out["n_cases"] = max((c["n_cases"] for c in ci.values()), default=0)
    return out


def _with_ci(holds: bool | None, detail: str, diffs: Mapping[str, Difference | None], margin: float = 0.0,
             ) -> tuple[bool | None, str, dict[str, Any] | None]:
    """The verdict from the CIs when every comparison has per-case data (else the point estimate, marked)."""
    if not diffs or any(d is None for d in diffs.values()):
        return holds, detail + " (point estimate: no per-case results)", None
    verdict = combine(d.verdict(margin) for d in diffs.values())
    text = "; ".join(f"{name} {ci_text(d)}" for name, d in diffs.items())
    return verdict, f"{detail}; paired bootstrap over test cases: {text}", {k: d.to_dict() for k, d in diffs.items()}


def check_findings(rows: Iterable[Mapping[str, Any]], phases: Sequence[Phase], variant: str, backbone: str = "",
                   tolerance: float = 0.03, max_percent: float = 10.0,
                   cases: Iterable[Mapping[str, Any]] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Check the three claims on one (backbone, variant) of a results table.

    Args:
        rows: result rows (:data:`pemma.protocol.results.COLUMNS`).
        phases: the variant's phases in order (``Strategy.variant_phases(variant)``).
        variant: the variant whose rows are read.
        backbone: the backbone whose rows are read ("" = the first found).
        tolerance: claim 2's allowed DSCagg gap to early fusion. Default 0.03.
        max_percent: claim 2's parameter budget, % of early fusion (a claim of its own). Default 10.
        cases: per-case rows (``results_cases.csv`` with their ``counts``). With them every DSCagg comparison gets a
            paired bootstrap CI over the test cases and ``holds`` is True / False only when the CI excludes the
            opposite (None: not shown); without them the point estimates decide, and the detail says so.
        seed: the bootstrap's seed. Default 0.

    Returns:
        One dict per claim (and per PET-only update for claim 3): ``id`` (``ctpet_beats_ct``,
        ``matches_early_fusion``, ``parameter_budget``, ``less_forgetting``), ``claim``, ``holds`` (True / False /
        None = not evaluated or not shown), ``detail`` (one sentence with the numbers), ``values``, ``paper`` (the
        paper's statement) and, with per-case results, ``ci`` (per comparison: estimate, 95 % CI, n) and ``n_cases``.
    """
    clean = [r for r in normalise_rows(rows) if r["variant"] == variant]
    backbone = backbone or next((r["backbone"] for r in clean), "")
    clean = [r for r in clean if r["backbone"] == backbone]
    entries = summarise(clean)
    index = index_cases(cases or [], backbone, variant)
    adapt = next((i for i, p in enumerate(phases) if p.operation == "adapt"), None)
    out = []
    if adapt is None:
        return [_claim("CT+PET > CT", None, "no adapt phase", {}, "ctpet_beats_ct")]
    ct_method = next((m for m in PEMMA_METHODS if _value(entries, m, "ct", adapt) is not None), None)
    ct = None if ct_method is None else _value(entries, ct_method, "ct", adapt)
    fused = {m: _value(entries, m, "ct+pet", adapt) for m in (*PEMMA_METHODS, *FUSION_BASELINES)}
    fused = {m: v for m, v in fused.items() if v is not None}
    if ct is None or not fused:
        out.append(_claim("CT+PET > CT", None, "needs a PEMMA method (its CT route is the CT model) and a "
                                               "CT+PET result after adapt", {}, "ctpet_beats_ct"))
    else:
        better = [m for m, v in fused.items() if v > ct]
        diffs = {f"{m} - CT": contrast(index, [(1.0, (m, "ct+pet", adapt)), (-1.0, (ct_method, "ct", adapt))], seed)
                 for m in fused}
        holds, detail, ci = _with_ci(len(better) == len(fused), f"after {phases[adapt].name}: CT model {ct:.3f}; "
                                     "CT+PET " + ", ".join(f"{m} {v:.3f}" for m, v in fused.items()), diffs)
        out.append(_claim("CT+PET > CT", holds, detail, {"ct": ct, **{f"ct+pet:{m}": v for m, v in fused.items()}},
                          "ctpet_beats_ct", ci))
    ef = fused.get("early_fusion")
    ef_params = _value(entries, "early_fusion", "ct+pet", adapt, "trainable_params")
    for method in PEMMA_METHODS:
        if method not in fused:
            continue
        percent = _value(entries, method, "ct+pet", adapt, "percent_of_early_fusion")
        if ef is None or percent is None:
            out.append(_claim(f"{method} ≈ early fusion", None, "early fusion or the parameter count is missing",
                              {}, "matches_early_fusion"))
            continue
        gap = fused[method] - ef
        diffs = {f"{method} - early_fusion": contrast(
            index, [(1.0, (method, "ct+pet", adapt)), (-1.0, ("early_fusion", "ct+pet", adapt))], seed)}
        holds, detail, ci = _with_ci(gap >= -tolerance, f"CT+PET DSCagg mean {fused[method]:.3f} vs early fusion "
                                     f"{ef:.3f} (gap {gap:+.3f}, tolerance -{tolerance})", diffs, margin=-tolerance)
        out.append(_claim(f"{method} ≈ early fusion", holds, detail,
                          {"pemma": fused[method], "early_fusion": ef, "gap": gap}, "matches_early_fusion", ci))
        out.append(_claim(f"{method} trains ≤ {max_percent:g}% of early fusion's parameters", percent <= max_percent,
                          f"{percent:.2f}% of early fusion's {ef_params or 0:,} trainable parameters (a count, "
                          f"no sampling uncertainty)", {"percent": percent}, "parameter_budget"))
    learnt = {}
    for i, phase in enumerate(phases):
        for centre in phase.centres:
            learnt.setdefault(centre, i)
    drops = {(m["method"], m["phase_index"]): m["mean_drop"]
             for m in mean_forgetting(forgetting_table(clean, learnt)) if m["inputs"] == "ct"}
    for i, phase in enumerate(phases):
        if phase.operation != "update" or phase.modalities != ("pet",):
            continue
        mine = {m: drops.get((m, i)) for m in PEMMA_METHODS if drops.get((m, i)) is not None}
        theirs = {m: drops.get((m, i)) for m in FORGETTING_BASELINES if drops.get((m, i)) is not None}
        name = f"less CT forgetting after {phase.name} (PET only)"
        if not mine or not theirs:
            out.append(_claim(name, None, "needs PEMMA and early fusion / full fine-tuning results", {},
                              "less_forgetting"))
            continue
        holds = all(a < b for a in mine.values() for b in theirs.values())
        earlier = {c: r for c, r in learnt.items() if r < i}
        before = {m: {c: (m, "ct", r) for c, r in earlier.items()} for m in (*mine, *theirs)}
        after = {m: {c: (m, "ct", i) for c in earlier} for m in (*mine, *theirs)}
        # (their drop) - (PEMMA's drop) > 0 on the pooled test cases of the earlier centres
        diffs = {f"{b} drop - {a} drop": contrast(index, [(1.0, before[b]), (-1.0, after[b]), (-1.0, before[a]),
                                                          (1.0, after[a])], seed)
                 for a in mine for b in theirs}
        holds, detail, ci = _with_ci(holds, "mean drop of CT-input DSCagg mean on earlier centres: "
                                     + ", ".join(f"{m} {v:+.3f}" for m, v in {**mine, **theirs}.items()), diffs)
        out.append(_claim(name, holds, detail, {f"drop:{m}": v for m, v in {**mine, **theirs}.items()},
                          "less_forgetting", ci))
    return out


def findings_markdown(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one bullet per claim, ``holds`` / ``does not hold`` / ``not evaluated``."""
    verdict = {True: "**holds**", False: "**does not hold**", None: "not evaluated"}
    return [f"- {c['claim']}: {verdict[c['holds']]} — {c['detail']}" for c in claims]


def summarise_seeds(per_seed: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Combine :func:`check_findings` outputs of several seeds: per claim, how many seeds hold and the mean,
    min and max of every value.

    Args:
        per_seed: ``{seed label: claims}``.

    Returns:
        Rows with ``claim``, ``held`` ("2/3": seeds where the claim holds / seeds where it was checked, i.e. had
        numbers), ``refuted`` and ``not_shown`` (seeds whose CI did not decide), and ``values``
        ``{name: (mean, min, max)}``.
    """
    names = list(dict.fromkeys(c["claim"] for claims in per_seed.values() for c in claims))
    out = []
    for name in names:
        found = [c for claims in per_seed.values() for c in claims if c["claim"] == name]
        evaluated = [c for c in found if c["holds"] is not None or c["values"]]
        keys = list(dict.fromkeys(k for c in found for k in c["values"]))
        values = {}
        for key in keys:
            numbers = [c["values"][key] for c in found if c["values"].get(key) is not None]
            if numbers:
                values[key] = (statistics.fmean(numbers), min(numbers), max(numbers))
        out.append({"claim": name, "held": f"{sum(c['holds'] is True for c in evaluated)}/{len(evaluated)}",
                    "refuted": sum(c["holds"] is False for c in evaluated),
                    "not_shown": sum(c["holds"] is None for c in evaluated), "values": values})
    return out
