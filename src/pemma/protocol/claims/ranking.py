"""``backbone_ranking``: Swin UNETR + DoRA ≥ Swin UNETR + LoRA ≥ UNETR + LoRA, on CT+PET DSCagg mean after ``adapt``.

Both backbones are evaluated on the same test cases (the split does not depend on the backbone), so each step of the
ranking is a paired bootstrap over those cases. The ranking holds when both steps' 95 % CIs lie above 0, fails when
either lies below 0, and is not shown otherwise; it is not evaluated (None, with the reason) when a backbone or
method of the ranking is missing from the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pemma.protocol.claim_ci import contrast
from pemma.protocol.claims.common import claim, value, view_cases, view_rows, with_ci
from pemma.protocol.phases import Phase
from pemma.protocol.results import summarise

#: the paper's order, best first: (backbone, method)
RANKING: tuple[tuple[str, str], ...] = (("swin_unetr", "pemma_dora"), ("swin_unetr", "pemma_lora"),
                                        ("unetr", "pemma_lora"))


def ranking_claim(rows: Sequence[Mapping[str, Any]], cases: Iterable[Mapping[str, Any]], phases: Sequence[Phase],
                  variant: str, pair: tuple[str, str], seed: int = 0) -> dict[str, Any]:
    """The ``backbone_ranking`` claim of one variant and (route, recipe).

    Args:
        rows: result rows of every backbone.
        cases: per-case rows of every backbone.
        phases: the variant's phases in order.
        variant: the variant read.
        pair: the (route, recipe) of the PEMMA runs compared.
        seed: the bootstrap's seed.
    """
    name = "Swin UNETR + DoRA ≥ Swin UNETR + LoRA ≥ UNETR + LoRA"
    adapt = next((i for i, p in enumerate(phases) if p.operation == "adapt"), None)
    if adapt is None:
        return claim(name, None, "no adapt phase", {}, "backbone_ranking", pair=pair)
    cases = list(cases)
    means: dict[tuple[str, str], float | None] = {}
    index: dict[tuple[str, str, str, int], Any] = {}
    for backbone in dict.fromkeys(b for b, _ in RANKING):
        entries = summarise(view_rows(rows, backbone, variant, pair))
        for b, method in RANKING:
            if b == backbone:
                means[(b, method)] = value(entries, method, "ct+pet", adapt)
        for (method, inputs, phase), table in view_cases(cases, backbone, variant, pair).items():
            index[(backbone, method, inputs, phase)] = table
    missing = [f"{b} + {m}" for (b, m), v in means.items() if v is None]
    if missing:
        return claim(name, None, f"{', '.join(missing)} not in this run (needs both backbones and "
                                 "both PEMMA methods)", {}, "backbone_ranking", pair=pair)
    steps = list(zip(RANKING, RANKING[1:], strict=False))
    diffs = {f"{a[0]}+{a[1]} - {b[0]}+{b[1]}": contrast(index, [(1.0, (*a, "ct+pet", adapt)),
                                                                (-1.0, (*b, "ct+pet", adapt))], seed)
             for a, b in steps}
    point = all(means[a] >= means[b] for a, b in steps)  # type: ignore[operator]
    holds, detail, ci = with_ci(point, f"CT+PET DSCagg mean after {phases[adapt].name}: "
                                + ", ".join(f"{b} + {m} {means[(b, m)]:.3f}" for b, m in RANKING), diffs)
    return claim(name, holds, detail, {f"{b}:{m}": means[(b, m)] for b, m in RANKING}, "backbone_ranking", ci, pair)
