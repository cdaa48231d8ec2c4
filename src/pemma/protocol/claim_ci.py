"""Confidence intervals of the claims' comparisons from per-case results (``results_cases.csv`` rows).

Each comparison is paired on the test cases both sides were scored on (same centre and case ID) and bootstrapped
with :func:`pemma.protocol.bootstrap.bootstrap_contrast` (DSCagg mean of the pooled case counts, 95 % percentile CI).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pemma.protocol.bootstrap import Difference, bootstrap_contrast, bootstrap_relative

#: (method, inputs, phase_index) -> {(centre, case_id): counts (n_classes, 3)}
CaseIndex = dict[tuple[str, str, int], dict[tuple[str, str], np.ndarray]]


def contrast(index: CaseIndex, terms: Sequence[tuple[float, tuple[str, str, int] | Mapping[str, tuple]]],
             seed: int = 0, replicates: int = 2000) -> Difference | None:
    """``Σ weight · DSCagg mean`` of the terms on their common cases, with its CI (None: a term has no cases).

    A term's key is ``(method, inputs, phase_index)``, or ``{centre: (method, inputs, phase_index)}`` to take each
    centre's cases from its own phase (forgetting: each earlier centre at the phase that learnt it).
    """
    tables = []
    for _, key in terms:
        if isinstance(key, Mapping):
            table = {case: counts for centre, k in key.items() for case, counts in index.get(k, {}).items()
                     if case[0] == centre}
        else:
            table = index.get(key, {})
        tables.append(table)
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    if not common:
        return None
    arrays = [np.stack([t[case] for case in common]) for t in tables]
    return bootstrap_contrast([(w, a) for (w, _), a in zip(terms, arrays, strict=True)], replicates, seed)


def relative(index: CaseIndex, a: tuple[str, str, int], b: tuple[str, str, int], seed: int = 0,
             replicates: int = 2000) -> Difference | None:
    """``DSCagg mean(a) / DSCagg mean(b) - 1`` on the cases both were scored on, with its paired bootstrap CI
    (:func:`pemma.protocol.bootstrap.bootstrap_relative`; None: a side has no case)."""
    left, right = index.get(a, {}), index.get(b, {})
    common = sorted(set(left) & set(right))
    if not common:
        return None
    return bootstrap_relative(np.stack([left[c] for c in common]), np.stack([right[c] for c in common]),
                              replicates, seed)


def combine(verdicts: Iterable[bool | None]) -> bool | None:
    """All comparisons shown to hold: True; any shown not to hold: False; otherwise not shown (None)."""
    found = list(verdicts)
    if found and all(v is True for v in found):
        return True
    if any(v is False for v in found):
        return False
    return None


def ci_text(diff: Difference) -> str:
    """``+0.120 [95% CI +0.050, +0.190; n=15]``; a relative gain as a percentage (``+12.0 % [...]``). Differences
    that would all print as zero (every finite one below half the last digit, not all 0) get two significant digits
    instead (``+1.6e-05 [95% CI +1.1e-05, +2.0e-05; n=5]``): a verdict on a difference shown as "+0.000" reads as
    a verdict on nothing."""
    values = (diff.low, diff.estimate, diff.high)
    scale, digits = (100.0, 1) if diff.relative else (1.0, 3)
    finite = [abs(v) * scale for v in values if math.isfinite(v)]
    if finite and 0 < max(finite) < 0.5 * 10 ** -digits:
        unit = "%" if diff.relative else ""
        low, estimate, high = (f"{v * scale:+.2g}{unit}" for v in values)
    else:
        form = "{:+.1%}" if diff.relative else "{:+.3f}"
        low, estimate, high = (form.format(v) for v in values)
    return f"{estimate} [95% CI {low}, {high}; n={diff.n_cases}]"
