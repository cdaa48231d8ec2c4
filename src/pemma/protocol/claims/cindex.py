"""``cindex_gain_pet`` and ``cindex_gain_pet_ehr``: the prognosis chain's C-index gain relative to the CT stage (the
paper: +10 % with PET, +23 % with PET and EHR), per backbone and adapter method.

With per-case risks of both stages on the held-out cases (a prognosis row's ``cases``: ``[{"PatientID", "risk",
"RFS", "Relapse"}]``, as :func:`pemma.survival.evaluate.evaluate_survival` reports them), the gain gets a paired
bootstrap CI over the common cases (the same draws for both stages) and holds when the CI lies above 0. Without them
the point estimate is reported and ``holds`` stays None (not shown). A strategy without prognosis gives both claims
as "not run".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pemma.protocol.bootstrap import Difference
from pemma.protocol.claim_ci import ci_text
from pemma.protocol.claims.common import claim
from pemma.survival.metrics import concordance_index

#: claim id -> (the stage compared with the CT stage, its name in the report)
GAINS: dict[str, tuple[str, str]] = {"cindex_gain_pet": ("ct+pet", "C-index gain with PET"),
                                     "cindex_gain_pet_ehr": ("ct+pet+ehr", "C-index gain with PET and EHR")}


def _weighted_c(comparable: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Harrell's C of each row of case weights (bootstrap multiplicities): ``w S wᵀ / w M wᵀ``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ri,ij,rj->r", weights, score, weights) / np.einsum("ri,ij,rj->r", weights, comparable,
                                                                             weights)


def _pairs(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) comparable pairs (i had the event first) and their concordance score (1, 0.5 for tied risks, 0)."""
    e = event.astype(bool)
    comparable = e[:, None] & ((time[None, :] > time[:, None]) | ((time[None, :] == time[:, None]) & ~e[None, :]))
    score = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    return comparable.astype(np.float64), score * comparable


def cindex_gain(time: Any, event: Any, base_risk: Any, risk: Any, replicates: int = 2000, seed: int = 0,
                level: float = 0.95) -> Difference:
    """``C(risk) / C(base_risk) - 1`` on the same cases with a paired, seeded bootstrap CI over cases.

    Args:
        time, event: (N,) follow-up and relapse flags of the cases.
        base_risk, risk: (N,) risk scores of the CT stage and of the stage compared (higher = earlier relapse).
        replicates, seed, level: bootstrap replicates, seed and CI level. Replicates without a comparable pair
            (or a base C of 0) are left out.

    Raises:
        ValueError: lengths differ or no comparable pair.
    """
    t, e, a, b = (np.asarray(x, dtype=np.float64) for x in (time, event, base_risk, risk))
    if not (t.shape == e.shape == a.shape == b.shape) or t.ndim != 1:
        raise ValueError(f"time, event and both risks must be (N,) arrays of one length, got {t.shape}, {e.shape}, "
                         f"{a.shape}, {b.shape}")
    estimate = concordance_index(t, e, b) / concordance_index(t, e, a) - 1.0
    comparable, score_a = _pairs(t, e, a)
    _, score_b = _pairs(t, e, b)
    n = len(t)
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = _weighted_c(comparable, score_b, weights) / _weighted_c(comparable, score_a, weights) - 1.0
    values = values[np.isfinite(values)]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (np.nan, np.nan)
    return Difference(float(estimate), float(low), float(high), n, level, replicates)


def _paired(base: Mapping[str, Any], other: Mapping[str, Any], seed: int) -> Difference | None:
    """The bootstrap of the gain from two rows' per-case risks (None without them or without a comparable pair)."""
    left = {str(c["PatientID"]): c for c in base.get("cases") or []}
    right = {str(c["PatientID"]): c for c in other.get("cases") or []}
    common = sorted(set(left) & set(right))
    if not common:
        return None
    time = [float(left[i]["RFS"]) for i in common]
    event = [int(left[i]["Relapse"]) for i in common]
    try:
        return cindex_gain(time, event, [float(left[i]["risk"]) for i in common],
                           [float(right[i]["risk"]) for i in common], seed=seed)
    except ValueError:
        return None


def cindex_claims(prognosis: Sequence[Mapping[str, Any]] | None, seed: int = 0) -> list[dict[str, Any]]:
    """Both C-index claims per backbone and method of the prognosis rows
    (:func:`pemma.protocol.prognosis.run_prognosis`), or both as "not run" (``prognosis`` None or empty).

    Args:
        prognosis: prognosis rows (``backbone``, ``method``, ``stage``, ``c_index`` and optionally ``cases``).
        seed: the bootstrap's seed.
    """
    if not prognosis:
        return [claim(name, None, "not run: the strategy has no prognosis section", {}, claim_id, pair=("", ""))
                for claim_id, (_, name) in GAINS.items()]
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in prognosis):
        mine = [r for r in prognosis if r["backbone"] == backbone]
        ct = next((r for r in mine if r["stage"] == "ct"), None)
        for method in dict.fromkeys(r["method"] for r in mine if r["stage"] != "ct"):
            for claim_id, (stage, name) in GAINS.items():
                row = next((r for r in mine if r["method"] == method and r["stage"] == stage), None)
                label = f"{backbone} {method}: {name}"
                if ct is None or row is None or ct.get("c_index") is None or row.get("c_index") is None:
                    note = next((r.get("note") for r in (ct, row) if r and r.get("note")), None)
                    out.append(claim(label, None, f"not computed ({note or 'a stage of the chain is missing'})", {},
                                     claim_id, pair=("", "")))
                    continue
                c0, c1 = float(ct["c_index"]), float(row["c_index"])
                gain = c1 / c0 - 1.0 if c0 > 0 else None
                values = {"c_index_ct": c0, f"c_index_{stage}": c1, "relative_gain": gain}
                detail = (f"C-index CT {c0:.3f} → {stage.upper()} {c1:.3f}: relative gain "
                          + ("undefined" if gain is None else f"{gain:+.1%}") + f" on {row.get('n_cases')} "
                          f"held-out cases")
                diff = _paired(ct, row, seed)
                if diff is None:
                    out.append(claim(label, None, detail + " (point estimate only: per-case risks not available, "
                                                           "not shown)", values, claim_id, pair=("", "")))
                    continue
                out.append(claim(label, diff.verdict(0.0), f"{detail}; paired bootstrap over held-out cases: "
                                 f"gain {ci_text(diff)}", values, claim_id, {"relative_gain": diff.to_dict()},
                                 ("", "")))
    return out
