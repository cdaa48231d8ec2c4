"""Prognosis (recurrence-free survival) stages as Python functions: ``survival_train``, ``survival_adapt``,
``survival_evaluate``, ``survival_predict``; what ``pemma survival train|adapt|evaluate|predict`` run."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from pemma.api.run import (
    Run,
    RunLike,
    absolute_data,
    check_kept_geometry,
    check_register,
    data_inputs,
    name_list,
    path_of,
    resolve_preset,
    run_config,
    warn_tiny_preset,
)
from pemma.errors import PemmaError

Names = str | Iterable[str] | None


def survival_train(base: RunLike, data: str | os.PathLike, out: str | os.PathLike, *, centres: Names = None,
                   modalities: Names = "ct", head: str | None = None, bins: int | None = None, l2: float | None = None,
                   endpoints: str | os.PathLike | None = None, preset: str | None = None,
                   config: str | os.PathLike | None = None, resume: bool = False, force: bool = False,
                   overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Run:
    """Train a survival head on the frozen encoder of a segmentation run (stage ``ct``).

    Args:
        base: segmentation run folder of :func:`pemma.train` (or its :class:`Run`).
        data: dataset folder with images and the endpoint CSV.
        out: prognosis run folder.
        centres: centres. Default all.
        modalities: inputs; must be the segmentation run's. Default ``ct``.
        head: ``mtlr`` or ``cox``. bins: MTLR time bins (default: sqrt of the training relapses).
        l2: L2 penalty on the head's weights. Default: chosen by inner cross-validation on the training cases.
        endpoints: endpoint CSV. Default: ``hecktor2022_endpoint_training.csv`` under ``data``.
        preset: size preset of the training settings. Default: the segmentation run's (:func:`resolve_preset`).
        config, overrides, settings: as for :func:`pemma.train` (``roi`` / ``spacing``, if given, must
            be the segmentation run's; no ``amp``: the survival stages run in fp32). resume: continue an
            interrupted stage in ``out``.
        force: replace a finished run in ``out`` (swapped in only on success).

    Returns:
        The :class:`Run` (kind ``survival``); ``run.summary`` holds the stage, parameters and C-indices.

    Example:
        >>> surv = pemma.survival_train(run, data="data/phantom", head="mtlr", out="runs/surv_ct")
    """
    from pemma.methods import load_model
    from pemma.run_folder import new_run_folder
    from pemma.run_guards import check_out_of_reads
    from pemma.survival.config import survival_settings
    from pemma.survival.training import train_survival

    _fp32_only(settings)
    check_out_of_reads(out, [path_of(base)])  # before reading anything
    preset = resolve_preset(preset, base, out if resume else None)
    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, modalities=modalities,
                                   **settings))
    warn_tiny_preset(preset, cfg)
    _fp32_only(settings, cfg)
    loaded = load_model(path_of(base))
    check_kept_geometry(settings, overrides, loaded.config, str(path_of(base)), "the segmentation run's")
    check_register(settings.get("register"), loaded.config.preprocess, str(path_of(base)))
    stage = survival_settings(**_given(head=head, bins=bins, l2=l2))
    with new_run_folder(out, force=force, resume=resume, reads=[path_of(base)],
                        data=[*data_inputs(cfg), _opt(endpoints)]) as folder:
        summary = train_survival(path_of(base), cfg, os.fspath(folder), stage, endpoints=_opt(endpoints),
                                 resume=resume)
    return Run.open(out, summary)


def survival_adapt(model: RunLike, out: str | os.PathLike, *, data: str | os.PathLike | None = None,
                   centres: Names = None, add_modality: str | None = None, add_ehr: bool = False,
                   method: str | None = None, rank: int | None = None, alpha: float | None = None,
                   numeric_column: Sequence[str] | None = None, categorical_column: Sequence[str] | None = None,
                   l2: float | None = None, encoder_lr_scale: float | None = None, init_adapters: RunLike | None = None,
                   freeze_adapters: bool = False, base: RunLike | None = None,
                   endpoints: str | os.PathLike | None = None, clinical: str | os.PathLike | None = None,
                   preset: str | None = None, config: str | os.PathLike | None = None, resume: bool = False,
                   force: bool = False, overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Run:
    """Add PET (PEMMA pathway + LoRA / DoRA) and/or clinical data to a prognosis model; ``model`` is unchanged.

    Args:
        model: prognosis run folder to extend.
        out: new prognosis run folder.
        data: dataset folder. Default: the one ``model`` was trained on.
        centres: centres. Default: as ``model`` was trained when ``data`` is its dataset (not given), else all.
        add_modality: ``pet`` or None. add_ehr: add the clinical vector (projected, zero-initialised).
        method: ``lora`` or ``dora``. Default: the model's, else lora.
        rank, alpha: adapter rank and alpha for new adapters.
        numeric_column, categorical_column: clinical columns (exact CSV names). Default: Age, Weight and
            Gender, Tobacco, Alcohol, Performance status, HPV status, Surgery, Chemotherapy.
        l2: L2 penalty on the head's and clinical projection's weights. Default: chosen by inner
            cross-validation on the training cases.
        encoder_lr_scale: learning rate of adapters and PET pathway relative to ``lr``.
        init_adapters: a PEMMA segmentation run (same base) whose adapters and PET pathway start the PET stage.
        freeze_adapters: train only the head and clinical projection, on image features computed once.
        base: the segmentation base run, if it moved since training.
        endpoints, clinical: CSV paths. Default: found under ``data``.
        preset: size preset of the training settings. Default: the preset ``model`` was trained with.
        config, overrides, settings: as for :func:`pemma.train` (no ``amp``: fp32 only).
        resume: continue an interrupted stage in ``out``. force: replace a finished run in ``out``.

    Example:
        >>> pemma.survival_adapt(surv, add_modality="pet", method="lora", out="runs/surv_ctpet")
    """
    from pemma.config import RunConfig
    from pemma.run_folder import new_run_folder
    from pemma.run_guards import check_out_of_reads
    from pemma.runs import run_family
    from pemma.survival.clinical import ClinicalConfig
    from pemma.survival.config import survival_settings
    from pemma.survival.runs import read_meta
    from pemma.survival.training import adapt_survival

    _fp32_only(settings)
    if encoder_lr_scale is not None and not encoder_lr_scale > 0:
        raise PemmaError(f"--encoder-lr-scale must be > 0, got {encoder_lr_scale}")
    previous = path_of(model)
    reads = [*run_family(previous), path_of(base), *run_family(path_of(init_adapters))]
    check_out_of_reads(out, reads)
    read_meta(previous)
    prev_cfg = RunConfig.load(f"{previous}/config.yaml")
    check_kept_geometry(settings, overrides, prev_cfg, str(previous), "the segmentation run's")
    check_register(settings.get("register"), prev_cfg.preprocess, str(previous))
    if centres is None and prev_cfg.data.centres and data is None:  # the model's centres of the model's data
        centres = list(prev_cfg.data.centres)
    data = data or prev_cfg.data.root
    clinical_config = None
    if numeric_column is not None or categorical_column is not None:
        try:
            clinical_config = ClinicalConfig(numeric=tuple(numeric_column or ()),
                                             categorical=tuple(categorical_column or ()))
        except ValueError as exc:
            raise PemmaError(f"invalid clinical columns: {exc}") from None
    preset = resolve_preset(preset, previous, out if resume else None)
    cfg = absolute_data(run_config(preset, config, overrides, data=data, centres=centres, **settings))
    warn_tiny_preset(preset, cfg)
    _fp32_only(settings, cfg)
    stage = survival_settings(**_given(add_modality=add_modality, add_ehr=add_ehr, method=method, rank=rank,
                                       alpha=alpha, encoder_lr_scale=encoder_lr_scale, l2=l2,
                                       train_adapters=not freeze_adapters))
    with new_run_folder(out, force=force, resume=resume, reads=reads,
                        data=[*data_inputs(cfg), _opt(endpoints), _opt(clinical)]) as folder:
        summary = adapt_survival(previous, cfg, os.fspath(folder), stage, clinical_config=clinical_config,
                                 endpoints=_opt(endpoints), clinical=_opt(clinical), base_run=path_of(base),
                                 init_adapters=path_of(init_adapters), resume=resume)
    return Run.open(out, summary)


def _fp32_only(settings: dict[str, Any], cfg: Any = None) -> None:
    """The survival stages train and predict in fp32 (the segmentation verbs' mixed precision is not implemented
    for them): ``amp=True`` is an error; with ``cfg``, its ``train.amp`` (from a config file) is ignored with a
    warning."""
    import warnings

    if settings.get("amp"):
        raise PemmaError("amp: the survival stages train and predict in fp32 (mixed precision is not implemented "
                         "for them); leave amp off")
    if cfg is not None and cfg.train.amp:
        warnings.warn("train.amp of the config is ignored: the survival stages run in fp32", stacklevel=3)


def _given(**values: Any) -> dict[str, Any]:
    """The settings the caller gave (``None`` = the :class:`~pemma.survival.config.SurvivalConfig` default)."""
    return {k: v for k, v in values.items() if v is not None}


def _opt(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def survival_evaluate(model: RunLike, data: str | os.PathLike, *, centres: Names = None, split: str = "all",
                      out: str | os.PathLike | None = None, bootstrap: int = 1000, seed: int = 0,
                      base: RunLike | None = None, cache_dir: str | os.PathLike | None = None,
                      endpoints: str | os.PathLike | None = None, clinical: str | os.PathLike | None = None,
                      device: str | None = None) -> dict[str, Any]:
    """C-index with a bootstrap CI, and a Kaplan–Meier plot of risk groups split at the training median.

    Args:
        model: prognosis run folder (or :class:`Run`).
        data: dataset folder with images and the endpoint CSV.
        centres: centres. Default all.
        split: ``all`` cases of ``data``, or only the model's ``train`` / held-out ``val`` cases.
        out: report folder. Default ``<model>/evaluation``.
        bootstrap: bootstrap resamples. seed: bootstrap seed.
        base: the segmentation base run, if it moved. cache_dir: persistent preprocessing cache folder.
        endpoints, clinical: CSV paths. Default: found under ``data``.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N``.

    Returns:
        The report (``c_index``, ``ci_low``, ``ci_high``, ``logrank_p``, ``report`` and ``km_plot`` paths, ...).

    Example:
        >>> pemma.survival_evaluate("runs/surv_ctpet", data="data/phantom", centres=["MDA"])["c_index"]
    """
    from pemma.runtime import run_logger
    from pemma.survival.evaluate import evaluate_survival

    if bootstrap < 1:
        raise PemmaError(f"--bootstrap must be >= 1, got {bootstrap}")
    run_logger(None)  # notes (skips, unseen clinical categories) go to stderr
    return evaluate_survival(path_of(model), os.fspath(data), centres=name_list(centres) or None, out_dir=_opt(out),
                             device=device or "auto", n_bootstrap=bootstrap, seed=seed, endpoints=_opt(endpoints),
                             clinical=_opt(clinical), base_run=path_of(base), cache_dir=_opt(cache_dir),
                             split=split)


def survival_predict(model: RunLike, data: str | os.PathLike, out: str | os.PathLike, *, centres: Names = None,
                     base: RunLike | None = None, cache_dir: str | os.PathLike | None = None,
                     clinical: str | os.PathLike | None = None, device: str | None = None) -> dict[str, Any]:
    """Write the HECKTOR Task-2 CSV ``PatientID,Prediction`` (risk: higher = earlier relapse).

    Args:
        model: prognosis run folder (or :class:`Run`).
        data: dataset folder (images [+ clinical CSV]).
        out: output CSV.
        centres: centres. Default all.
        base, cache_dir, clinical, device: as for :func:`survival_evaluate`.

    Returns:
        ``{"n": cases written, "path": out, "stage": ...}``.

    Example:
        >>> pemma.survival_predict("runs/surv_ctpet", data="data/phantom", out="risk.csv")
    """
    from pemma.runtime import run_logger
    from pemma.survival.evaluate import predict_survival

    if os.path.isdir(out):
        raise PemmaError(f"{os.fspath(out)}: is a folder; --out names the CSV file to write (e.g. risk.csv)")
    run_logger(None)
    return predict_survival(path_of(model), os.fspath(data), os.fspath(out), centres=name_list(centres) or None,
                            device=device or "auto", clinical=_opt(clinical), base_run=path_of(base),
                            cache_dir=_opt(cache_dir))
