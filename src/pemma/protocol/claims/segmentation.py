"""The segmentation claims after the ``adapt`` phase: ``ctpet_beats_ct``, ``matches_early_fusion``,
``parameter_budget``.

* ``ctpet_beats_ct``: each multi-modal method's CT+PET DSCagg mean against the CT model's (the pretrained base,
  read from a PEMMA method's exact CT route) on the same centres.
* ``matches_early_fusion``: PEMMA's CT+PET DSCagg mean is at least early fusion's minus ``tolerance`` (0.03).
* ``parameter_budget``: PEMMA's trainable parameters are <= ``max_percent`` (10 %) of early fusion's (a count: no
  sampling uncertainty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pemma.protocol.claim_ci import contrast
from pemma.protocol.claims.common import CT_MODEL, FUSION_BASELINES, PEMMA, CaseIndex, claim, value, with_ci
from pemma.protocol.phases import Phase


def adapt_claims(entries: Sequence[Mapping[str, Any]], index: CaseIndex, phases: Sequence[Phase],
                 pair: tuple[str, str], tolerance: float = 0.03, max_percent: float = 10.0,
                 seed: int = 0, min_reference: float = 0.05) -> list[dict[str, Any]]:
    """The three claims of the ``adapt`` phase on one view.

    Args:
        entries: :func:`pemma.protocol.results.summarise` of the view's rows (:func:`~.common.view_rows`).
        index: the view's per-case counts (:func:`~.common.view_cases`).
        phases: the variant's phases in order.
        pair: the view's (route, recipe).
        tolerance: the allowed DSCagg gap to early fusion. Default 0.03.
        max_percent: the parameter budget, % of early fusion. Default 10.
        seed: the bootstrap's seed.
        min_reference: early fusion's CT+PET DSCagg mean below which ``matches_early_fusion`` is not shown (null):
            matching a reference that segments nothing says nothing. Default 0.05.
    """
    adapt = next((i for i, p in enumerate(phases) if p.operation == "adapt"), None)
    if adapt is None:
        return [claim("CT+PET > CT", None, "no adapt phase", {}, "ctpet_beats_ct", pair=pair)]
    out = []
    ct = value(entries, CT_MODEL, "ct", adapt)
    fused = {m: value(entries, m, "ct+pet", adapt) for m in (*PEMMA, *FUSION_BASELINES)}
    fused = {m: v for m, v in fused.items() if v is not None}
    if ct is None or not fused:
        out.append(claim("CT+PET > CT", None, "needs a PEMMA method run with the exact route (its CT route is the "
                                              "CT model) and a CT+PET result after adapt", {}, "ctpet_beats_ct",
                         pair=pair))
    else:
        better = [m for m, v in fused.items() if v > ct]
        diffs = {f"{m} - CT": contrast(index, [(1.0, (m, "ct+pet", adapt)), (-1.0, (CT_MODEL, "ct", adapt))], seed)
                 for m in fused}
        holds, detail, ci = with_ci(len(better) == len(fused), f"after {phases[adapt].name}: CT model {ct:.3f}; "
                                    "CT+PET " + ", ".join(f"{m} {v:.3f}" for m, v in fused.items()), diffs)
        out.append(claim("CT+PET > CT", holds, detail, {"ct": ct, **{f"ct+pet:{m}": v for m, v in fused.items()}},
                         "ctpet_beats_ct", ci, pair))
    ef = fused.get("early_fusion")
    ef_params = value(entries, "early_fusion", "ct+pet", adapt, "trainable_params")
    for method in PEMMA:
        if method not in fused:
            continue
        percent = value(entries, method, "ct+pet", adapt, "percent_of_early_fusion")
        if ef is None or percent is None:
            out.append(claim(f"{method} ≥ early fusion − {tolerance:g}", None,
                             "early fusion or the parameter count is missing", {}, "matches_early_fusion", pair=pair))
            continue
        gap = fused[method] - ef
        _append_match(out, index, method, fused[method], ef, gap, adapt, tolerance, seed, pair, min_reference)
        out.append(claim(f"{method} trains ≤ {max_percent:g}% of early fusion's parameters", percent <= max_percent,
                         f"{percent:.2f}% of early fusion's {ef_params or 0:,} trainable parameters (a count, "
                         f"no sampling uncertainty)", {"percent": percent}, "parameter_budget", pair=pair))
    return out


def _append_match(out: list[dict[str, Any]], index: CaseIndex, method: str, pemma: float, ef: float, gap: float,
                  adapt: int, tolerance: float, seed: int, pair: tuple[str, str], min_reference: float) -> None:
    """``matches_early_fusion`` of one PEMMA method, decided on the paired bootstrap CI of the gap; not shown (null)
    when early fusion itself segments (almost) nothing (then matching it says nothing)."""
    diffs = {f"{method} - early_fusion": contrast(
        index, [(1.0, (method, "ct+pet", adapt)), (-1.0, ("early_fusion", "ct+pet", adapt))], seed)}
    holds, detail, ci = with_ci(gap >= -tolerance, f"CT+PET DSCagg mean {pemma:.3f} vs early fusion "
                                f"{ef:.3f} (gap {gap:+.3f}, tolerance -{tolerance})", diffs, margin=-tolerance)
    if ef < min_reference:
        holds, detail = None, (f"not shown: early fusion segments (almost) nothing (CT+PET DSCagg mean {ef:.3f} < "
                               f"{min_reference}), so matching it would show nothing; {detail}")
    out.append(claim(f"{method} ≥ early fusion − {tolerance:g}", holds, detail,
                     {"pemma": pemma, "early_fusion": ef, "gap": gap}, "matches_early_fusion", ci, pair))
