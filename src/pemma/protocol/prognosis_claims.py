"""The paper's prognosis claims, ``cindex_gain_pet`` and ``cindex_gain_pet_ehr``, with paired bootstrap CIs.

The paper reports Harrell's C-index rising from CT to CT+PET (+10 %) and to CT+PET+EHR (+23 %; 0.61 -> 0.75 with
LoRA, 0.66 -> 0.80 with DoRA): relative gains over the CT model. Here each gain ``C(stage) / C(ct) - 1`` is
computed on the same held-out cases, and its 95 % CI comes from a seeded paired bootstrap over those cases (each
replicate draws cases with replacement and scores every stage on the same draw, so case difficulty cancels; a
case drawn k times enters k copies of each of its pairs). A claim ``holds`` when the CI lies above 0, is refuted
when it lies below, and is not shown (None) otherwise. The claim objects have the shape of
:mod:`pemma.protocol.findings`' (``id``, ``claim``, ``holds``, ``detail``, ``values``, ``paper``, ``ci``,
``n_cases``).

Example:
    >>> claims = cindex_gain_claims(time, event, {"ct": r0, "ct+pet": r1, "ct+pet+ehr": r2}, seed=0)
    >>> [(c["id"], c["holds"]) for c in claims]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: claim id -> (stage compared with ``ct``, the paper's statement)
GAINS: dict[str, tuple[str, str]] = {
    "cindex_gain_pet": ("ct+pet", "C-index +10 % adding PET to CT"),
    "cindex_gain_pet_ehr": ("ct+pet+ehr", "C-index +23 % adding PET and EHR (LoRA 0.61 -> 0.75, DoRA 0.66 -> 0.80)"),
}
#: the chain result file of ``pemma survival chain`` (and of the protocol's prognosis chain)
CHAIN_FILE = "chain.json"


def _pairs(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """(N, N) comparable pairs of Harrell's C (i relapsed before j, or at j's censoring time)."""
    t, e = time[:, None], event[:, None] > 0
    return e & ((time[None, :] > t) | ((time[None, :] == t) & ~(event[None, :] > 0)))


def _score(risk: np.ndarray) -> np.ndarray:
    """(N, N): 1 where risk_i > risk_j, 0.5 on ties."""
    return (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])


def paired_cindex_bootstrap(time: Any, event: Any, risks: Mapping[str, Any], replicates: int = 2000,
                            seed: int = 0) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """C-index of every risk on all cases, and its value on each paired bootstrap replicate.

    Args:
        time, event: (N,) held-out outcomes. risks: ``{stage: (N,) risk}`` on the same cases.
        replicates: bootstrap replicates. seed: their seed.

    Returns:
        (``{stage: C or None}``, ``{stage: (R,) replicate C}``; replicates without a comparable pair are NaN).
    """
    t = np.asarray(time, float).reshape(-1)
    e = np.asarray(event, float).reshape(-1)
    comparable = _pairs(t, e).astype(float)
    scores = {k: _score(np.asarray(r, float).reshape(-1)) * comparable for k, r in risks.items()}
    total = comparable.sum()
    point = {k: (float(s.sum() / total) if total else None) for k, s in scores.items()}
    n = len(t)
    rng = np.random.default_rng([seed, 37])
    draws = {k: np.full(replicates, np.nan) for k in risks}
    for b in range(replicates):
        counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        weight = counts[:, None] * counts[None, :]
        pairs = float((comparable * weight).sum())
        if pairs:
            for k, s in scores.items():
                draws[k][b] = float((s * weight).sum()) / pairs
    return point, draws


def cindex_gain_claims(time: Any, event: Any, risks: Mapping[str, Any], seed: int = 0, replicates: int = 2000,
                       label: str = "", level: float = 0.95) -> list[dict[str, Any]]:
    """The two claims from held-out risks of the chain's stages (a claim whose stage is absent: not evaluated).

    Args:
        time, event: (N,) held-out outcomes.
        risks: ``{"ct": ..., "ct+pet": ..., "ct+pet+ehr": ...}`` (N,) risks on those cases.
        seed, replicates, level: the paired bootstrap.
        label: prefix of the claims' names (e.g. the backbone and method).

    Returns:
        One claim per id of :data:`GAINS`.
    """
    point, draws = paired_cindex_bootstrap(time, event, risks, replicates, seed)
    n, events = len(np.asarray(time).reshape(-1)), int(np.asarray(event, float).sum())
    tail = (1 - level) / 2 * 100
    out = []
    for claim_id, (stage, paper) in GAINS.items():
        name = f"{label + ': ' if label else ''}C-index CT -> {stage.upper()}"
        base, new = point.get("ct"), point.get(stage)
        if base is None or new is None or base <= 0:
            out.append({"id": claim_id, "claim": name, "holds": None, "values": {}, "paper": paper,
                        "detail": f"not evaluated: needs held-out risks of ct and {stage} with a comparable pair"})
            continue
        gain = new / base - 1
        reps = draws[stage] / draws["ct"] - 1
        reps = reps[np.isfinite(reps)]
        low, high = (float(v) for v in np.percentile(reps, [tail, 100 - tail])) if reps.size else (np.nan, np.nan)
        holds = True if low > 0 else False if high < 0 else None
        out.append({"id": claim_id, "claim": name, "holds": holds, "paper": paper,
                    "values": {"c_ct": base, f"c_{stage}": new, "relative_gain": gain},
                    "ci": {f"{stage} / ct - 1": {"estimate": gain, "ci95": [low, high], "n_cases": n,
                                                 "replicates": replicates}},
                    "n_cases": n, "events": events,
                    "detail": f"C-index {base:.3f} -> {new:.3f} on {n} held-out cases ({events} relapses): "
                              f"{100 * gain:+.1f} % [95% CI {100 * low:+.1f}, {100 * high:+.1f} %; paired bootstrap, "
                              f"{replicates} replicates, seed {seed}]; paper {paper}"})
    return out


def chain_claims(result: Mapping[str, Any], seed: int = 0, replicates: int = 2000,
                 label: str = "") -> list[dict[str, Any]]:
    """:func:`cindex_gain_claims` of a chain result (``chain.json`` of :mod:`pemma.survival.chain_run`)."""
    risks = {s["stage"]: s["test_risk"] for s in result["stages"]}
    return cindex_gain_claims(result["test_time"], result["test_event"], risks, seed, replicates, label)


def prognosis_findings(out: str | Path, seed: int = 0, folders: str = "runs/*/prognosis_*",
                       ) -> dict[str, list[dict[str, Any]]]:
    """``{"<backbone> · prognosis (<chain>)": claims}`` for every chain result ``<folders>/lesion_*/chain.json``
    under a protocol output folder; empty when there is none (the hook of the findings report)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).glob(f"{folders}/lesion_*/{CHAIN_FILE}")):
        backbone = path.relative_to(Path(out) / "runs").parts[0]
        label = f"{backbone} · prognosis ({path.parent.name})"
        found[label] = chain_claims(json.loads(path.read_text()), seed, label=backbone)
    return found
