"""``less_forgetting``: after each PET-only update, PEMMA's mean DSCagg drop on the centres learnt before it is smaller
than early fusion's and full fine-tuning's, for every input set (CT, PET, CT+PET) of the view's route.

Drops follow :func:`pemma.protocol.results.forgetting_table` (each earlier centre against its value right after the
phase that learnt it, or the first later phase that could take the input set). The CI is a paired bootstrap of
``(their drop) - (PEMMA's drop)`` over the pooled test cases of the earlier centres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pemma.protocol.claim_ci import contrast
from pemma.protocol.claims.common import CT_MODEL, FORGETTING_BASELINES, PEMMA, CaseIndex, claim, with_ci
from pemma.protocol.phases import Phase
from pemma.protocol.results import forgetting_table, mean_forgetting
from pemma.vocab import EVAL_INPUTS


def forgetting_claims(rows: Sequence[Mapping[str, Any]], index: CaseIndex, phases: Sequence[Phase],
                      pair: tuple[str, str], seed: int = 0) -> list[dict[str, Any]]:
    """One ``less_forgetting`` claim per PET-only update phase and input set.

    Args:
        rows: the view's result rows (:func:`~.common.view_rows`).
        index: the view's per-case counts.
        phases: the variant's phases in order.
        pair: the view's (route, recipe).
        seed: the bootstrap's seed.
    """
    learnt: dict[str, int] = {}
    for i, phase in enumerate(phases):
        for centre in phase.centres:
            learnt.setdefault(centre, i)
    table = forgetting_table([r for r in rows if r["method"] != CT_MODEL], learnt)
    drops = {(m["method"], m["inputs"], m["phase_index"]): m["mean_drop"] for m in mean_forgetting(table)}
    out = []
    for i, phase in enumerate(phases):
        if phase.operation != "update" or phase.modalities != ("pet",):
            continue
        for inputs in EVAL_INPUTS:
            out.append(_claim(table, drops, index, phase, i, inputs, pair, seed))
    return out


def _claim(table: Sequence[Mapping[str, Any]], drops: Mapping[tuple, float], index: CaseIndex, phase: Phase, i: int,
           inputs: str, pair: tuple[str, str], seed: int) -> dict[str, Any]:
    mine = {m: drops[(m, inputs, i)] for m in PEMMA if drops.get((m, inputs, i)) is not None}
    theirs = {m: drops[(m, inputs, i)] for m in FORGETTING_BASELINES if drops.get((m, inputs, i)) is not None}
    name = f"less {inputs.upper()} forgetting after {phase.name} (PET only)"
    if not mine or not theirs:
        return claim(name, None, f"needs {inputs.upper()}-input results of PEMMA and early fusion / full "
                                 "fine-tuning on earlier centres", {}, "less_forgetting", pair=pair)
    holds = all(a < b for a in mine.values() for b in theirs.values())
    before: dict[str, dict[str, tuple[str, str, int]]] = {}
    after: dict[str, dict[str, tuple[str, str, int]]] = {}
    for row in table:
        if row["inputs"] == inputs and row["phase_index"] == i and row["method"] in (*mine, *theirs):
            before.setdefault(row["method"], {})[row["centre"]] = (row["method"], inputs, row["reference_phase_index"])
            after.setdefault(row["method"], {})[row["centre"]] = (row["method"], inputs, i)
    # (their drop) - (PEMMA's drop) > 0 on the pooled test cases of the earlier centres
    diffs = {f"{b} drop - {a} drop": contrast(index, [(1.0, before[b]), (-1.0, after[b]), (-1.0, before[a]),
                                                      (1.0, after[a])], seed)
             for a in mine for b in theirs}
    detail = (f"mean drop of {inputs.upper()}-input DSCagg mean on earlier centres: "
              + ", ".join(f"{m} {v:+.3f}" for m, v in {**mine, **theirs}.items()))
    holds, detail, ci = with_ci(holds, detail, diffs)
    return claim(name, holds, detail, {f"drop:{m}": v for m, v in {**mine, **theirs}.items()}, "less_forgetting",
                 ci, pair)
