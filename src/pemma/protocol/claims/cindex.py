"""``cindex_gain_pet`` and ``cindex_gain_pet_ehr``: a prognosis chain's C-index gain relative to its CT stage (the
paper: +10 % with PET, +23 % with PET and EHR), for every chain of a run: the neural stages per backbone and adapter
method, and the lesion-feature chain (``chain.json`` of :mod:`pemma.survival.chain_run`, also what
``pemma survival chain`` reports).

One builder, :func:`stage_claims`, makes both claims of a chain from its prognosis rows (a ``ct`` row and one per
compared stage; :data:`pemma.protocol.prognosis.PROGNOSIS_COLUMNS`). With per-case risks of both stages on the
held-out cases (a row's ``cases``: ``[{"PatientID", "risk", "RFS", "Relapse"}]``, as
:func:`pemma.survival.evaluate.evaluate_survival` reports them and :func:`pemma.protocol.prognosis.chain_rows` reads
them from a chain), the gain ``C(stage) / C(ct) - 1`` gets a seeded paired bootstrap CI over the common cases
(:func:`cindex_gain`: the same draws for both stages, so case difficulty cancels) and holds when the CI lies above
0, is refuted when it lies below, and is not shown (None) otherwise. Without them the point estimate is reported and
``holds`` stays None. A strategy without prognosis gives both claims as "not run". The records have the common
shape (:func:`pemma.protocol.claims.common.claim`).

Example:
    >>> claims = chain_claims(json.loads(Path("results/chain/chain.json").read_text()), seed=0)
    >>> [(c["id"], c["holds"]) for c in claims]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pemma.protocol.bootstrap import Difference, bootstrap_statistic
from pemma.protocol.claim_ci import ci_text
from pemma.protocol.claims.common import claim
from pemma.protocol.prognosis import chain_rows, is_lesion, lesion_method
from pemma.survival.metrics import concordance_index, pair_matrices

#: claim id -> (the stage compared with the CT stage, its name in the report)
GAINS: dict[str, tuple[str, str]] = {"cindex_gain_pet": ("ct+pet", "C-index gain with PET"),
                                     "cindex_gain_pet_ehr": ("ct+pet+ehr", "C-index gain with PET and EHR")}
#: the chain result file of ``pemma survival chain`` (and of the protocol's lesion-feature chain)
CHAIN_FILE = "chain.json"


def _weighted_c(comparable: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Harrell's C of each row of case weights (bootstrap multiplicities): ``w S wᵀ / w M wᵀ`` (a case drawn k
    times enters k copies of each of its pairs)."""
    return np.einsum("ri,ij,rj->r", weights, score, weights) / np.einsum("ri,ij,rj->r", weights, comparable, weights)


def cindex_gain(time: Any, event: Any, base_risk: Any, risk: Any, replicates: int = 2000, seed: int = 0,
                level: float = 0.95) -> Difference:
    """``C(risk) / C(base_risk) - 1`` on the same cases with a paired, seeded bootstrap CI over cases.

    Args:
        time, event: (N,) follow-up and relapse flags of the cases.
        base_risk, risk: (N,) risk scores of the CT stage and of the stage compared (higher = earlier relapse).
        replicates, seed, level: bootstrap replicates, seed and CI level
            (:func:`pemma.protocol.bootstrap.bootstrap_statistic`). Replicates without a comparable pair are left
            out; one whose base C is 0 has an infinite gain, which makes the bound infinite if there are enough.

    Raises:
        ValueError: lengths differ, no comparable pair, or the base C-index is 0.
    """
    t, e, a, b = (np.asarray(x, dtype=np.float64) for x in (time, event, base_risk, risk))
    if not (t.shape == e.shape == a.shape == b.shape) or t.ndim != 1:
        raise ValueError(f"time, event and both risks must be (N,) arrays of one length, got {t.shape}, {e.shape}, "
                         f"{a.shape}, {b.shape}")
    base = concordance_index(t, e, a)
    if base == 0:
        raise ValueError("the base risk's C-index is 0: the relative gain is undefined")
    estimate = concordance_index(t, e, b) / base - 1.0
    comparable, score_a = pair_matrices(t, e.astype(bool), a)
    _, score_b = pair_matrices(t, e.astype(bool), b)
    n = len(t)

    def gain(draws: np.ndarray) -> np.ndarray:
        weights = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
        return _weighted_c(comparable, score_b, weights) / _weighted_c(comparable, score_a, weights) - 1.0

    return dataclasses.replace(bootstrap_statistic(n, gain, lambda: estimate, replicates, seed, level), relative=True)


def _paired(base: Mapping[str, Any], other: Mapping[str, Any], seed: int, replicates: int) -> Difference | None:
    """The bootstrap of the gain from two rows' per-case risks on their common cases (None without them or without
    a comparable pair)."""
    left = {str(c["PatientID"]): c for c in base.get("cases") or []}
    right = {str(c["PatientID"]): c for c in other.get("cases") or []}
    common = sorted(set(left) & set(right))
    if not common:
        return None
    time = [float(left[i]["RFS"]) for i in common]
    event = [int(left[i]["Relapse"]) for i in common]
    try:
        return cindex_gain(time, event, [float(left[i]["risk"]) for i in common],
                           [float(right[i]["risk"]) for i in common], replicates, seed)
    except ValueError:
        return None


def _not_run() -> list[dict[str, Any]]:
    return [claim(name, None, "not run: the strategy has no prognosis section", {}, claim_id, pair=("", ""))
            for claim_id, (_, name) in GAINS.items()]


def _missing_reason(ct: Mapping[str, Any] | None, row: Mapping[str, Any] | None, stage: str) -> str:
    """Why a claim has no C-index pair: the missing stage, or the note of the stage without a C-index (not a
    note of the other stage, e.g. the CT stage's overfitting flag when the EHR stage was not run)."""
    for name, r in (("ct", ct), (stage, row)):
        if r is None:
            return f"the chain has no {name} stage"
        if r.get("c_index") is None:
            return r.get("note") or f"the {name} stage has no C-index"
    return "a stage of the chain is missing"


def stage_claims(rows: Sequence[Mapping[str, Any] | None], label: str = "", seed: int = 0,
                 replicates: int = 2000) -> list[dict[str, Any]]:
    """Both C-index claims of one chain, from its prognosis rows.

    Args:
        rows: the chain's rows: its ``ct`` stage and the stages compared (``stage``, ``c_index``, ``n_cases``,
            optionally ``note`` and ``cases``); None entries and missing stages give "not computed".
        label: prefix of the claims' names (``"<backbone> <method>"``; "" for none).
        seed, replicates: the paired bootstrap's seed and replicates.

    Returns:
        One claim per id of :data:`GAINS`.
    """
    rows = [r for r in rows if r is not None]
    ct = next((r for r in rows if r["stage"] == "ct"), None)
    out = []
    for claim_id, (stage, name) in GAINS.items():
        row = next((r for r in rows if r["stage"] == stage), None)
        title = f"{label}: {name}" if label else name
        if ct is None or row is None or ct.get("c_index") is None or row.get("c_index") is None:
            out.append(claim(title, None, f"not computed ({_missing_reason(ct, row, stage)})", {}, claim_id,
                             pair=("", "")))
            continue
        c0, c1 = float(ct["c_index"]), float(row["c_index"])
        gain = c1 / c0 - 1.0 if c0 > 0 else None
        values = {"c_index_ct": c0, f"c_index_{stage}": c1, "relative_gain": gain}
        detail = (f"C-index CT {c0:.3f} → {stage.upper()} {c1:.3f}: relative gain "
                  + ("undefined" if gain is None else f"{gain:+.1%}") + f" on {row.get('n_cases')} held-out cases")
        diff = _paired(ct, row, seed, replicates)
        if diff is None:
            out.append(claim(title, None, detail + " (point estimate only: per-case risks not available, not shown)",
                             values, claim_id, pair=("", "")))
            continue
        out.append(claim(title, diff.verdict(0.0), f"{detail}; paired bootstrap over held-out cases: gain "
                         f"{ci_text(diff)}", values, claim_id, {"relative_gain": diff.to_dict()}, ("", "")))
    return out


def cindex_claims(prognosis: Sequence[Mapping[str, Any]] | None, seed: int = 0) -> list[dict[str, Any]]:
    """Both C-index claims per backbone and adapter method of the neural prognosis rows
    (:func:`pemma.protocol.prognosis.run_prognosis`; the backbone's ``ct`` row is every method's CT stage), or both
    as "not run" (``prognosis`` None or empty). The lesion chain's rows are left out: their claims come from its
    ``chain.json`` (:func:`prognosis_findings`), under a label of their own.

    Args:
        prognosis: prognosis rows (``backbone``, ``method``, ``stage``, ``c_index`` and optionally ``cases``).
        seed: the bootstrap's seed.
    """
    if not prognosis:
        return _not_run()
    neural = [r for r in prognosis if not is_lesion(r["method"])]
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in neural):
        mine = [r for r in neural if r["backbone"] == backbone]
        ct = next((r for r in mine if r["stage"] == "ct"), None)
        for method in dict.fromkeys(r["method"] for r in mine if r["stage"] != "ct"):
            out += stage_claims([ct, *(r for r in mine if r["method"] == method and r["stage"] != "ct")],
                                f"{backbone} {method}", seed)
    return out


def chain_claims(result: Mapping[str, Any], seed: int = 0, replicates: int = 2000,
                 label: str = "") -> list[dict[str, Any]]:
    """:func:`stage_claims` of a chain result (``chain.json`` of :mod:`pemma.survival.chain_run`).

    Args:
        result: the chain result (``stages`` with ``test_risk``, ``test_cases``, ``test_time``, ``test_event``).
        seed, replicates: the paired bootstrap. label: prefix of the claims' names.
    """
    return stage_claims(chain_rows(result), label, seed, replicates)


def prognosis_findings(out: str | Path, seed: int = 0, folders: str = "runs/*/prognosis_*",
                       ) -> dict[str, list[dict[str, Any]]]:
    """``{"<backbone> · prognosis (<chain>)": claims}`` for every chain result ``<folders>/lesion_*/chain.json``
    under a protocol output folder; empty when there is none (the hook of the findings report).

    Args:
        out: the protocol output folder. seed: the bootstrap's seed.
        folders: the prognosis folders read, relative to ``out`` (a glob; the current settings' digest).
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(out).glob(f"{folders}/lesion_*/{CHAIN_FILE}")):
        backbone = path.relative_to(Path(out) / "runs").parts[0]
        method = lesion_method(path.parent.name)
        found[f"{backbone} · prognosis ({path.parent.name})"] = chain_claims(
            json.loads(path.read_text()), seed, label=f"{backbone} {method}")
    return found
