"""Write the reference values that the survival tests compare against, from lifelines and torchsurv.

The tests read the JSON files next to this script, so the comparison runs even where lifelines or
torchsurv is not installed (where they are, the tests also compare against them live). Regenerate with

    python tests/reference/make_reference.py

and commit the JSON files with the script. Only the reference packages (and numpy / torch for the inputs)
are used here, never pemma, so the stored values are independent of the code under test.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

# fixed data with every kind of tie: equal event times, an event and a censoring at the same time,
# equal risks inside and across time groups
TIME = [5, 5, 5, 8, 8, 10, 12, 12, 15, 20, 20, 30]
EVENT = [1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0]
RISK = [2.0, 2.0, 1.5, 1.0, 1.0, 3.0, 0.5, 2.0, 0.2, 0.5, 0.1, 0.5]


def _random_ties(seed: int, n: int = 60) -> dict[str, list]:
    """Survival data with many tied times and tied (informative) risks."""
    rng = np.random.default_rng(seed)
    time = rng.integers(1, 15, n).astype(float)
    event = rng.uniform(size=n) < 0.6
    risk = np.round(rng.normal(size=n) - 0.1 * time, 1)
    return {"time": time.tolist(), "event": event.astype(int).tolist(), "risk": risk.tolist()}


def _continuous(seed: int = 3, n: int = 80) -> dict[str, list]:
    """Continuous survival times, risk informative with noise (for the bootstrap test)."""
    rng = np.random.default_rng(seed)
    time = rng.exponential(100, n)
    event = rng.uniform(size=n) < 0.7
    risk = -np.log(time) + rng.normal(0, 1.0, n)
    return {"time": time.tolist(), "event": event.astype(int).tolist(), "risk": risk.tolist()}


def lifelines_reference() -> dict[str, Any]:
    """Harrell's C, Kaplan–Meier and log-rank from lifelines."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test
    from lifelines.utils import concordance_index

    def c_index(data: dict[str, list]) -> dict[str, Any]:  # lifelines wants survival-like scores: -risk
        risk = np.asarray(data["risk"])
        return {**data, "c_index": float(concordance_index(data["time"], -risk, data["event"]))}

    time, event, risk = np.asarray(TIME, dtype=float), np.asarray(EVENT), np.asarray(RISK)
    km_times = np.concatenate([[0.0], np.unique(time)])  # the start (S = 1) and every distinct time
    km = KaplanMeierFitter().fit(time, event).survival_function_at_times(km_times).to_numpy()
    group = risk > np.median(risk)
    lr = logrank_test(time[group], time[~group], event[group], event[~group])
    return {
        "package": f"lifelines {version('lifelines')}",
        "ties": c_index({"time": TIME, "event": EVENT, "risk": RISK}),
        "random_ties": [c_index(_random_ties(seed)) for seed in range(5)],
        "continuous": c_index(_continuous()),
        "kaplan_meier": {"time": TIME, "event": EVENT, "times": km_times.tolist(), "survival": km.tolist()},
        "logrank": {"time": TIME, "event": EVENT, "group": group.astype(int).tolist(),
                    "statistic": float(lr.test_statistic), "p_value": float(lr.p_value)},
    }


def torchsurv_reference() -> dict[str, Any]:
    """Cox negative partial log-likelihood (sum over events, no tied times) from torchsurv."""
    import torch
    from torchsurv.loss.cox import neg_partial_log_likelihood

    g = torch.Generator().manual_seed(0)
    cases = []
    for _ in range(3):
        h = torch.randn(9, generator=g, dtype=torch.float64)
        time = torch.randperm(9, generator=g).double() + 1
        event = torch.rand(9, generator=g) < 0.6
        event[0] = True
        loss = neg_partial_log_likelihood(h, event, time, reduction="sum")
        cases.append({"log_hazard": h.tolist(), "event": event.int().tolist(), "time": time.tolist(),
                      "neg_partial_log_likelihood_sum": float(loss)})
    return {"package": f"torchsurv {version('torchsurv')}", "cox_no_ties": cases}


def main() -> None:
    for name, make in (("lifelines_survival.json", lifelines_reference), ("torchsurv_cox.json", torchsurv_reference)):
        path = HERE / name
        path.write_text(json.dumps(make(), indent=1) + "\n")
        print(f"wrote {path.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
