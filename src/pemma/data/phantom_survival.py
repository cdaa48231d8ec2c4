"""The phantom's outcome model: relapse-free survival from a Weibull proportional hazard of the true lesions and
clinical factors, with independent administrative and loss-to-follow-up censoring.

:func:`lesion_hazard_terms` gives the image part of the linear predictor term by term, so that a benchmark can score
the true hazard of what CT shows (volume, nodes) and of what PET adds (SUVmax) on the same cases as a model
(``benchmarks/bench_prognosis.py --oracle``).

Example:
    >>> terms = lesion_hazard_terms(case.lesions)
    >>> ct_risk = terms["volume"] + terms["nodes"]
"""

from __future__ import annotations

import math

import numpy as np

from pemma.data.phantom_anatomy import LesionSummary
from pemma.vocab import HPV_COLUMN

#: Weibull proportional-hazards model of relapse and censoring (days).
#: PET uptake is the strongest image factor and HPV the strongest clinical one, so that each added input
#: carries information of its own. Harrell's C-index of the true linear predictor, measured on the default
#: phantom (84 cases, 39 relapses): 0.66 from the lesion terms alone (volume, nodes: what CT shows), 0.77
#: adding SUVmax (PET); in a 20,000-case simulation of this hazard with the phantom's covariate ranges 0.61,
#: 0.74 and 0.80 adding the clinical factors (EHR).
SURVIVAL: dict[str, float] = {
    "shape": 2.0, "scale_days": 1500.0, "log_volume": 1.0, "log_suvmax": 2.0, "hpv": -1.5,
    "age_per_year": 0.025, "performance": 0.25, "two_nodes": 0.3, "tobacco": 0.2,
    "admin_min_days": 600.0, "admin_max_days": 2200.0, "loss_mean_days": 3000.0,
}


def lesion_hazard_terms(les: LesionSummary) -> dict[str, float]:
    """The image terms of the linear predictor: ``volume`` (GTVp + GTVn, ml), ``suvmax`` and ``nodes`` (two or
    more), each already weighted by :data:`SURVIVAL`."""
    s = SURVIVAL
    volume = max(les.gtvp_ml + les.gtvn_ml, 1.0)
    return {"volume": s["log_volume"] * math.log(volume / 15.0),
            "suvmax": s["log_suvmax"] * math.log(max(les.suvmax, 1.0) / 10.0),
            "nodes": s["two_nodes"] * (les.n_nodes >= 2)}


def relapse_and_rfs(rng: np.random.Generator, true: dict, les: LesionSummary) -> tuple[int, int]:
    """Relapse flag and RFS (days) of one case from its true clinical values and lesions.

    Args:
        rng: the case's survival stream. true: its clinical values before missingness (``HPV_COLUMN``, ``Age``,
            ``Performance status``, ``Tobacco``). les: its lesion summary.
    """
    s = SURVIVAL
    image = lesion_hazard_terms(les)
    lp = (image["volume"] + image["suvmax"]
          + s["hpv"] * true[HPV_COLUMN] + s["age_per_year"] * (true["Age"] - 62)
          + s["performance"] * true["Performance status"] + image["nodes"]
          + s["tobacco"] * true["Tobacco"])
    t_event = s["scale_days"] * (rng.exponential() / math.exp(lp)) ** (1.0 / s["shape"])
    t_cens = min(rng.uniform(s["admin_min_days"], s["admin_max_days"]), rng.exponential(s["loss_mean_days"]))
    return int(t_event <= t_cens), int(max(1, round(min(t_event, t_cens))))
