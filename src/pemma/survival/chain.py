"""The lesion-feature prognosis chain CT -> CT+PET -> CT+PET+EHR, scored on held-out cases.

Each stage is a ridge-penalised Cox model (:class:`~pemma.survival.coxnet.PenalisedCox`) whose penalty is chosen
by inner cross-validation on the training cases only:

* **ct**: the CT segmentation's lesion features (:data:`~pemma.survival.lesion.CT_FEATURES`: GTVp and GTVn
  volume, node count), 3 features;
* **ct+pet**: the CT+PET segmentation's lesion features plus PET uptake inside it
  (:data:`~pemma.survival.lesion.PET_FEATURES`: SUVmax, SUVmean, MTV at SUV 2.5 and at 41 % SUVmax), 7 features;
* **ct+pet+ehr**: the ``ct+pet`` model's risk score (unpenalised, one coefficient) plus the clinical vector
  encoded by :class:`~pemma.survival.clinical.ClinicalEncoder` (fitted on the training cases: standardised
  numbers with missing indicators, one-hot categories with a missing level), ridge-penalised with its own
  cross-validated penalty. This is the linear equivalent of the paper's projected clinical token: a learnt
  linear map of the clinical vector added to the image model's evidence (as the neural chain's zero-initialised
  clinical projection), here shrunk by cross-validation instead of trained by gradient descent on a few dozen
  cases, and without shrinking the image evidence along with the ~30 clinical columns.

No pooled encoder features enter (0 of them): with ~50 training cases a Cox model on hundreds of pooled
channels fits the noise (training C-index ~0.99, held-out ~0.4 measured); a handful of measured quantities
does not.

A stage whose training C-index exceeds its cross-validated C-index by more than ``overfit_gap`` is flagged
(``overfitting`` true in the results and a warning in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pemma.survival.chain_config import ChainConfig
from pemma.survival.coxnet import PenalisedCox
from pemma.survival.lesion import CT_FEATURES, PET_FEATURES
from pemma.survival.metrics import bootstrap_c_index, c_index_or_none

log = logging.getLogger("pemma.run")

#: the chain's stages in order
STAGES: tuple[str, ...] = ("ct", "ct+pet", "ct+pet+ehr")


@dataclass
class ChainData:
    """Everything the chain fits on, one row per case.

    Attributes:
        case_ids: (N). time: (N,) RFS days. event: (N,) relapse flags.
        ct: (N, 3) :data:`CT_FEATURES` of the CT segmentation. pet: (N, 7) CT_FEATURES + PET_FEATURES of the
            CT+PET segmentation. clinical: (N, F) encoded clinical vector (None: no EHR stage).
        clinical_names: its F column names.
    """

    case_ids: list[str]
    time: np.ndarray
    event: np.ndarray
    ct: np.ndarray
    pet: np.ndarray
    clinical: np.ndarray | None = None
    clinical_names: list[str] = field(default_factory=list)

    def stage_matrix(self, stage: str) -> tuple[np.ndarray, list[str]]:
        """The (N, D) features of a stage and their names."""
        if stage == "ct":
            return self.ct, list(CT_FEATURES)
        names = list(CT_FEATURES) + list(PET_FEATURES)
        if stage == "ct+pet":
            return self.pet, names
        if stage == "ct+pet+ehr" and self.clinical is not None:
            return np.concatenate([self.pet, self.clinical], axis=1), names + [f"ehr:{n}" for n in self.clinical_names]
        raise ValueError(f"no features for stage {stage!r}")


def split_held_out(event: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices: a seeded ``fraction`` of the relapses and of the censored cases held out."""
    e = np.asarray(event) > 0
    rng = np.random.default_rng([seed, 31])
    test: list[int] = []
    for group in (np.flatnonzero(e), np.flatnonzero(~e)):
        test += rng.permutation(group)[:int(round(fraction * len(group)))].tolist()
    held = np.zeros(len(e), bool)
    held[test] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _score(model: PenalisedCox, x: np.ndarray, t: np.ndarray, e: np.ndarray, train: np.ndarray,
           test: np.ndarray, stage: str, cfg: ChainConfig) -> dict[str, Any]:
    """Training / held-out C-index, the held-out bootstrap CI and the overfitting flag of a fitted stage."""
    train_c = c_index_or_none(t[train], e[train], model.risk(x[train]))
    risk = model.risk(x[test]) if len(test) else np.zeros(0)
    test_c = c_index_or_none(t[test], e[test], risk) if len(test) else None
    ci = bootstrap_c_index(t[test], e[test], risk, cfg.bootstrap, seed=cfg.seed) if test_c is not None else None
    cv_c = model.cv_c_index
    overfit = train_c is not None and cv_c is not None and train_c - cv_c > cfg.overfit_gap
    if overfit:
        log.warning(f"stage {stage}: overfitting: training C-index {train_c:.3f} exceeds the cross-validated "
                    f"{cv_c:.3f} by more than {cfg.overfit_gap} ({len(model.names)} features, {len(train)} cases)")
    return {"stage": stage, "features": model.names, "n_features": len(model.names), "l2": model.l2,
            "cv": {str(k): v for k, v in model.cv.items()}, "cv_c_index": cv_c, "train_c_index": train_c,
            "test_c_index": test_c, "test_ci": None if ci is None else [ci.low, ci.high],
            "n_train": int(len(train)), "events_train": int(e[train].sum()), "n_test": int(len(test)),
            "events_test": int(e[test].sum()), "overfitting": bool(overfit),
            "coefficients": dict(zip(model.names, model.coef.tolist(), strict=True)), "model": model.to_dict(),
            "test_risk": risk.tolist()}


def run_chain(data: ChainData, cfg: ChainConfig | None = None, train: Sequence[int] | None = None,
              test: Sequence[int] | None = None) -> dict[str, Any]:
    """Fit every stage the data has on ``train`` (penalty by inner CV) and score it on ``test``.

    ``ct`` and ``ct+pet`` are ridge Cox models on their lesion features. ``ct+pet+ehr`` (only with a clinical
    matrix) stacks: its covariates are the ``ct+pet`` model's linear predictor (out-of-fold on the training
    cases, so its weight is learnt on honest scores; the full ``ct+pet`` model's on held-out cases), left
    unpenalised, and the clinical vector, ridge-penalised with its own cross-validated ``l2``.

    Args:
        data: features and outcomes of all cases.
        cfg: settings. Default :class:`ChainConfig` ().
        train, test: row indices; default a stratified split with ``cfg.test_fraction`` held out.

    Returns:
        ``settings``, ``train_cases``, ``test_cases``, ``test_time``, ``test_event``, and ``stages``: per stage
        ``stage``, ``features``, ``l2``, ``cv`` (the grid's CV C-indices), ``cv_c_index``, ``train_c_index``,
        ``test_c_index`` with ``test_ci`` [low, high], counts, ``overfitting``, ``coefficients`` (per raw unit),
        ``model`` (:meth:`PenalisedCox.to_dict`) and ``test_risk`` (held-out risks in ``test_cases`` order).
    """
    cfg = cfg or ChainConfig()
    if train is None or test is None:
        tr, te = split_held_out(data.event, cfg.test_fraction, cfg.seed)
    else:
        tr, te = np.asarray(train, int), np.asarray(test, int)
    t, e = data.time, data.event
    results, image_model = [], None
    for stage in ("ct", "ct+pet"):
        x, names = data.stage_matrix(stage)
        model = PenalisedCox.fit_cv(x[tr], t[tr], e[tr], names, cfg.grid, cfg.folds, cfg.seed)
        results.append(_score(model, x, t, e, tr, te, stage, cfg))
        image_model = model
    if data.clinical is not None and image_model is not None:
        x_pet, _ = data.stage_matrix("ct+pet")
        score = image_model.risk(x_pet)
        score[tr] = image_model.oof
        x = np.concatenate([score[:, None], data.clinical], axis=1)
        names = ["ct+pet_risk"] + [f"ehr:{n}" for n in data.clinical_names]
        weights = np.r_[0.0, np.ones(data.clinical.shape[1])]
        model = PenalisedCox.fit_cv(x[tr], t[tr], e[tr], names, cfg.grid, cfg.folds, cfg.seed, weights)
        results.append(_score(model, x, t, e, tr, te, "ct+pet+ehr", cfg))
    for r in results:
        log.info(f"stage {r['stage']}: {r['n_features']} features, l2 {r['l2']:g} (inner {cfg.folds}-fold CV "
                 f"C {_fmt(r['cv_c_index'])}); C-index train {_fmt(r['train_c_index'])}, held-out "
                 f"{_fmt(r['test_c_index'])} ({r['n_test']} cases, {r['events_test']} relapses)")
    return {"settings": cfg.to_dict(), "train_cases": [data.case_ids[i] for i in tr],
            "test_cases": [data.case_ids[i] for i in te], "test_time": t[te].tolist(),
            "test_event": e[te].astype(int).tolist(), "stages": results}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
