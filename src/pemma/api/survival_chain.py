"""The lesion-feature prognosis chain as a Python function, ``survival_chain``; what ``pemma survival chain`` runs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from pemma.api.run import RunLike, name_list, path_of
from pemma.errors import PemmaError


def survival_chain(seg_ct: RunLike | str, data: str | os.PathLike, out: str | os.PathLike, *,
                   seg_ctpet: RunLike | None = None, centres: str | Iterable[str] | None = None, ehr: bool = True,
                   train_ids: Sequence[str] | None = None, test_ids: Sequence[str] | None = None,
                   numeric_column: Sequence[str] | None = None, categorical_column: Sequence[str] | None = None,
                   endpoints: str | os.PathLike | None = None, clinical: str | os.PathLike | None = None,
                   device: str | None = None, progress: bool = False, **settings: Any) -> dict[str, Any]:
    """CT -> CT+PET -> CT+PET+EHR on lesion features of the model's own segmentation, ridge Cox per stage
    (penalty by inner CV on the training cases), scored on held-out cases, with the paper's C-index gain claims.

    Args:
        seg_ct: segmentation run that segments CT input (``pemma train``), or ``"labels"`` (reference labels:
            an oracle upper bound).
        data: dataset folder (CT, PET, endpoint and clinical CSVs).
        out: folder for ``features.csv`` and ``chain.json``.
        seg_ctpet: run that segments CT+PET input (e.g. ``pemma adapt``'s). Default: ``seg_ct`` on CT.
        centres: centres. Default all. ehr: fit the CT+PET+EHR stage. Default True.
        train_ids, test_ids: the split. Default: ``test_fraction`` held out, stratified by relapse, seeded.
        numeric_column, categorical_column: clinical columns (default: those of ``pemma survival adapt``).
        endpoints, clinical: CSV paths. Default: found under ``data``.
        device: where segmentation runs (``auto``, ``cpu``, ``cuda``...). Default auto.
        progress: show progress bars. Default False.
        settings: fields of :class:`~pemma.survival.chain.ChainConfig` (``grid``, ``folds``, ``seed``,
            ``overfit_gap``, ``suv_threshold``, ``suv_relative``, ``min_node_ml``, ``test_fraction``, ``bootstrap``).

    Returns:
        ``chain.json``'s content plus ``claims`` (``cindex_gain_pet``, ``cindex_gain_pet_ehr``).

    Example:
        >>> res = pemma.survival_chain("runs/ct_unetr", "data/phantom", "results/chain", seg_ctpet="runs/pemma_lora")
        >>> [(s["stage"], s["test_c_index"]) for s in res["stages"]]
    """
    from pemma.protocol.claims.cindex import chain_claims
    from pemma.runtime import resolve_device, run_logger
    from pemma.survival.chain_config import ChainConfig
    from pemma.survival.chain_run import ORACLE_LABELS
    from pemma.survival.chain_run import survival_chain as run
    from pemma.survival.clinical import ClinicalConfig

    try:
        cfg = ChainConfig(**{k: v for k, v in settings.items() if v is not None})
        clinical_config = None
        if numeric_column is not None or categorical_column is not None:
            clinical_config = ClinicalConfig(numeric=tuple(numeric_column or ()),
                                             categorical=tuple(categorical_column or ()))
    except (TypeError, ValueError) as exc:
        raise PemmaError(f"invalid chain settings: {exc}") from None
    run_logger(None)
    ct = ORACLE_LABELS if str(seg_ct) == ORACLE_LABELS else path_of(seg_ct)
    result = run(os.fspath(data), os.fspath(out), ct, path_of(seg_ctpet), centres=name_list(centres) or None, cfg=cfg,
                 clinical_config=clinical_config, train_ids=train_ids, test_ids=test_ids,
                 endpoints=None if endpoints is None else os.fspath(endpoints),
                 clinical=None if clinical is None else os.fspath(clinical), ehr=ehr,
                 device=str(resolve_device(device or "auto")), progress=progress)
    return {**result, "claims": chain_claims(result, seed=cfg.seed, replicates=cfg.bootstrap)}
