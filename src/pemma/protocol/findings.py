"""The paper's claims checked on a protocol run: ``findings.json``, the report's findings, and their summary over seeds.

The claims themselves live in :mod:`pemma.protocol.claims` (one module per kind); this module assembles them:

* :func:`check_findings`: the claims of one (backbone, variant, route, recipe): ``ctpet_beats_ct``,
  ``matches_early_fusion``, ``parameter_budget``, ``less_forgetting`` and ``pet_gain_single_modality``;
* :func:`collect_findings`: every claim of a run, as ``findings.json`` holds it: ``{label: [claims]}`` with one label
  per backbone and variant (``"unetr · pet_only"``; `` · shared · authors`` appended for a route / recipe other
  than ``exact`` / ``pemma``), ``"all backbones"`` for ``backbone_ranking`` (per route / recipe likewise) and
  ``"prognosis"`` for ``cindex_gain_pet`` and ``cindex_gain_pet_ehr``;
* :func:`findings_markdown`: one line per claim with its verdict, numbers, 95 % CI, n and the paper's number.

Every DSCagg comparison gets a seeded paired bootstrap over the test cases when per-case results are given; ``holds``
is then True / False only when the CI excludes the opposite (None: not shown). A claim whose methods or phases are
absent from the run is reported as not evaluated (``holds`` None, the detail says why).

Example:
    >>> claims = check_findings(rows, phases=strategy.variant_phases("pet_only"), variant="pet_only")
    >>> print("\\n".join(findings_markdown(claims)))
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pemma.protocol.claims.cindex import cindex_claims
from pemma.protocol.claims.common import (
    FORGETTING_BASELINES,
    FUSION_BASELINES,
    PAPER,
    PAPER_VALUE,
    view_cases,
    view_rows,
)
from pemma.protocol.claims.common import PEMMA as PEMMA_METHODS
from pemma.protocol.claims.forgetting import forgetting_claims
from pemma.protocol.claims.pet_gain import pet_gain_claims
from pemma.protocol.claims.ranking import ranking_claim
from pemma.protocol.claims.segmentation import adapt_claims
from pemma.protocol.phases import Phase
from pemma.protocol.results import DEFAULT_RECIPE, DEFAULT_ROUTE, normalise_rows, summarise

__all__ = ["FORGETTING_BASELINES", "FUSION_BASELINES", "PAPER", "PAPER_VALUE", "PEMMA_METHODS", "check_findings",
           "collect_findings", "findings_markdown", "summarise_seeds"]


def check_findings(rows: Iterable[Mapping[str, Any]], phases: Sequence[Phase], variant: str, backbone: str = "",
                   tolerance: float = 0.03, max_percent: float = 10.0,
                   cases: Iterable[Mapping[str, Any]] | None = None, seed: int = 0, route: str = DEFAULT_ROUTE,
                   recipe: str = DEFAULT_RECIPE, forgetting_inputs: Sequence[str] = ("ct",),
                   pet_gain: bool = False) -> list[dict[str, Any]]:
    """Check the claims of one (backbone, variant, route, recipe) of a results table.

    Args:
        rows: result rows (:data:`pemma.protocol.results.COLUMNS`).
        phases: the variant's phases in order (``Strategy.variant_phases(variant)``).
        variant: the variant whose rows are read.
        backbone: the backbone whose rows are read ("" = the first found).
        tolerance: the allowed DSCagg gap to early fusion. Default 0.03.
        max_percent: the parameter budget, % of early fusion (a claim of its own). Default 10.
        cases: per-case rows (``results_cases.csv`` with their ``counts``). With them every DSCagg comparison gets a
            paired bootstrap CI over the test cases and ``holds`` is True / False only when the CI excludes the
            opposite (None: not shown); without them the point estimates decide, and the detail says so.
        seed: the bootstrap's seed. Default 0.
        route, recipe: the PEMMA runs read (baselines have neither). Default ``exact``, ``pemma``.
        forgetting_inputs: the input sets of the ``less_forgetting`` claims. Default CT only (the run's
            :func:`collect_findings` checks CT, PET and CT+PET).
        pet_gain: also check ``pet_gain_single_modality``. Default False (:func:`collect_findings`: True).

    Returns:
        One dict per claim (:func:`pemma.protocol.claims.common.claim`): ``id``, ``claim``, ``holds`` (True / False /
        None = not evaluated or not shown), ``detail``, ``values``, ``paper`` and ``paper_value``, ``route``,
        ``recipe`` and, with per-case results, ``ci`` (per comparison: estimate, 95 % CI, n) and ``n_cases``.
    """
    clean = normalise_rows(rows)
    backbone = backbone or next((r["backbone"] for r in clean if r["variant"] == variant), "")
    pair = (route, recipe)
    mine = view_rows(clean, backbone, variant, pair)
    entries = summarise(mine)
    index = view_cases(cases or [], backbone, variant, pair)
    out = adapt_claims(entries, index, phases, pair, tolerance, max_percent, seed)
    if not any(p.operation == "adapt" for p in phases):
        return out
    forgetting = forgetting_claims(mine, index, phases, pair, seed)
    out += [c for c in forgetting if any(c["claim"].startswith(f"less {x.upper()} forgetting")
                                         for x in forgetting_inputs)]
    if pet_gain:
        out += pet_gain_claims(entries, index, phases, pair, seed)
    return out


def collect_findings(rows: Sequence[Mapping[str, Any]], strategy: Any,
                     cases: Sequence[Mapping[str, Any]] | None = None,
                     prognosis: Sequence[Mapping[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every claim of a protocol run, as ``findings.json`` holds it (labels: see the module docstring).

    Args:
        rows: the run's result rows.
        strategy: the :class:`~pemma.protocol.strategy.Strategy` run (backbones, variants, routes, recipes, seed).
        cases: the run's per-case rows (with ``counts``).
        prognosis: the prognosis rows (None or empty: the C-index claims are "not run").
    """
    seed = strategy.split.seed
    out: dict[str, list[dict[str, Any]]] = {}
    for route, recipe in strategy.pairs:
        suffix = "" if (route, recipe) == (DEFAULT_ROUTE, DEFAULT_RECIPE) else f" · {route} · {recipe}"
        for backbone in strategy.backbones:
            for variant in strategy.variant_names:
                out[f"{backbone} · {variant}{suffix}"] = check_findings(
                    rows, strategy.variant_phases(variant), variant, backbone, cases=cases, seed=seed, route=route,
                    recipe=recipe, forgetting_inputs=("ct", "pet", "ct+pet"), pet_gain=True)
        first = strategy.variant_names[0]
        out[f"all backbones{suffix}"] = [ranking_claim(rows, cases or [], strategy.variant_phases(first), first,
                                                       (route, recipe), seed)]
    out["prognosis"] = cindex_claims(prognosis if strategy.prognosis is not None else None, seed)
    return out


def findings_markdown(claims: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one bullet per claim, ``holds`` / ``does not hold`` / ``not evaluated`` / ``not shown`` (null
    with CIs: they straddle, or the detail opens with ``not shown:`` and its reason), its numbers and CIs, and the
    paper's statement and number beside it."""
    verdict = {True: "**holds**", False: "**does not hold**", None: "not evaluated"}
    lines = []
    for c in claims:
        word = verdict[c["holds"]]
        if c["holds"] is None and c.get("ci"):  # null with CIs: they straddle, unless the detail gives its reason
            word = "not shown" if c["detail"].startswith("not shown:") else \
                "not shown (the 95% CI includes the opposite)"
        paper = c.get("paper") or ""
        lines.append(f"- {c['claim']}: {word} — {c['detail']} · paper: {paper}" if paper else
                     f"- {c['claim']}: {word} — {c['detail']}")
    return lines


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
