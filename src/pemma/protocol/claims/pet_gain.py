"""``pet_gain_single_modality``: after an update with a single modality, PEMMA's PET-input DSCagg mean against early
fusion's, as a relative gain (the paper: +28 %).

The claim is that PEMMA is better (gain > 0); it holds when the 95 % paired-bootstrap CI of the relative gain over the
pooled test cases of every centre evaluated after the update lies above 0. The paper's +28 % is printed beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pemma.protocol.claim_ci import relative
from pemma.protocol.claims.common import PEMMA, CaseIndex, claim, value, with_ci
from pemma.protocol.phases import Phase


def pet_gain_claims(entries: Sequence[Mapping[str, Any]], index: CaseIndex, phases: Sequence[Phase],
                    pair: tuple[str, str], seed: int = 0) -> list[dict[str, Any]]:
    """One claim per single-modality update phase and PEMMA method (one "not evaluated" claim without either).

    Args:
        entries: :func:`pemma.protocol.results.summarise` of the view's rows.
        index: the view's per-case counts.
        phases: the variant's phases in order.
        pair: the view's (route, recipe).
        seed: the bootstrap's seed.
    """
    out = []
    updates = [(i, p) for i, p in enumerate(phases) if p.operation == "update" and len(p.modalities) == 1]
    if not updates:
        return [claim("PET-input gain over early fusion after a single-modality update", None,
                      "this variant has no single-modality update", {}, "pet_gain_single_modality",
                      pair=pair)]
    for i, phase in updates:
        ef = value(entries, "early_fusion", "pet", i)
        name = f"PET-input gain over early fusion after {phase.name} ({phase.modalities[0].upper()} only)"
        mine = {m: value(entries, m, "pet", i) for m in PEMMA}
        mine = {m: v for m, v in mine.items() if v is not None}
        if ef is None or not mine:
            out.append(claim(name, None, "needs PET-input results of PEMMA and early fusion after the update", {},
                             "pet_gain_single_modality", pair=pair))
            continue
        for method, mean in mine.items():
            gain = mean / ef - 1.0 if ef > 0 else None
            diffs = {f"{method} / early_fusion - 1": relative(index, (method, "pet", i), ("early_fusion", "pet", i),
                                                              seed)}
            shown = f"{gain:+.1%}" if gain is not None else "undefined (early fusion 0)"
            holds, detail, ci = with_ci(None if gain is None else gain > 0,
                                        f"PET-input DSCagg mean {method} {mean:.3f} vs early fusion {ef:.3f}: "
                                        f"relative gain {shown} (paper +28 %)", diffs)
            out.append(claim(f"{method} {name}", holds, detail,
                             {"pemma": mean, "early_fusion": ef, "relative_gain": gain},
                             "pet_gain_single_modality", ci, pair))
    return out
