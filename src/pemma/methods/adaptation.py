"""``pemma adapt``: train a CT+PET model from a CT-only base run with any registered method.

The CT base run is read, never written. What trains and what the run folder holds is the method's business
(:mod:`pemma.methods.registry`); this module loads and checks the base, takes the base's model and
preprocessing settings, selects the CT+PET cases and runs the training engine.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import unwrap_model
from pemma.config import REGISTRATION_FIELDS, RunConfig
from pemma.data.layout import CaseRecord, CaseSplit
from pemma.errors import PemmaError
from pemma.evaluation.metrics import CLASS_NAMES
from pemma.io_utils import sha256_file
from pemma.methods.loading import load_model
from pemma.methods.registry import get_method
from pemma.models.loaded import LoadedModel
from pemma.runs import MODEL_META
from pemma.runtime import is_main_process
from pemma.training.loop import TrainingTask, train_task
from pemma.training.segmentation import select_split
from pemma.vocab import KIND_BACKBONE, METHODS, MODALITY_ORDER, PET_ONLY_METHODS

#: the channels an adaptation reads: every modality, in channel order
ALL_INPUTS: list[str] = list(MODALITY_ORDER)


def select_channels(image: torch.Tensor, modalities: tuple[str, ...],
                    order: list[str] | tuple[str, ...] = MODALITY_ORDER) -> torch.Tensor:
    """The channels of ``modalities`` from an image holding every modality of ``order`` (default
    :data:`MODALITY_ORDER`), in that order."""
    return image[:, [list(order).index(m) for m in modalities]]

#: the methods that can add a modality other than PET (their model names the added modality, or its channel)
OTHER_MODALITY_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in PET_ONLY_METHODS)


@dataclasses.dataclass
class AdaptationSetup:
    """A CT base run, the run configuration with the base's model / preprocessing, and the case split."""

    base: LoadedModel
    base_run: Path
    cfg: RunConfig
    train_cases: list[CaseRecord]
    val_cases: list[CaseRecord]
    added_modality: str = "pet"

    @property
    def meta(self) -> dict[str, Any]:
        return {"train_cases": [c.case_id for c in self.train_cases],
                "val_cases": [c.case_id for c in self.val_cases]}

    @property
    def base_reference(self) -> dict[str, str]:
        """``base_run`` (absolute) and ``base_sha256`` for the run's metadata."""
        return {"base_run": str(self.base_run.resolve()), "base_sha256": self.base.meta["sha256"]}


def run_reference(run_dir: str | Path, meta: dict[str, Any]) -> dict[str, str]:
    """The run another trains from, as a checkpoint records it for ``--resume`` to compare: its folder (shown) and
    the checksum of its weights (compared: a moved run with the same weights is the same run): ``model.json``'s
    ``sha256`` or ``weights_sha256``, else the checksum of that ``model.json`` (which records the weights')."""
    digest = meta.get("sha256") or meta.get("weights_sha256") or sha256_file(Path(run_dir) / MODEL_META)
    return {"run": str(Path(run_dir).resolve()), "sha256": str(digest)}


def record_resume_settings(task: TrainingTask, method: str, run_dir: str | Path, meta: dict[str, Any],
                           label: str = "base") -> None:
    """Add to ``task.settings`` what determines an adapted run's weights besides its config: the method, the run it
    starts from (``label``: ``base``, or ``model`` for an update) by weights checksum, and the adapter settings
    of a model that has them (:meth:`AdapterConfig.resume_settings`)."""
    adapter = getattr(unwrap_model(task.model), "config", None)
    task.settings.update({"method": method, label: run_reference(run_dir, meta),
                          **(adapter.resume_settings() if isinstance(adapter, AdapterConfig) else {})})


def prepare_adaptation(base_run: str | Path, cfg: RunConfig, out_dir: str | Path,
                       split: CaseSplit | None = None, added_modality: str = "pet") -> AdaptationSetup:
    """Load and check the CT-only base run, and select the CT+PET (CT + ``added_modality``) cases of ``cfg.data``.

    ``cfg.model`` and ``cfg.preprocess`` are taken from the base run (the adapted model must see what the
    base saw), except the PET registration (``register*``: the CT-only base never read a PET) and the declared
    modality specs (``modality_specs``: the caller's, which the CT base never used); ``cfg.data`` and
    ``cfg.train`` come from the caller.
    """
    base_run = Path(base_run)
    if Path(out_dir).resolve() == base_run.resolve():
        raise PemmaError(f"{out_dir}: the adapted run must not overwrite its base run")
    base = load_model(base_run)
    if base.kind != KIND_BACKBONE or base.meta.get("modalities") != ["ct"]:
        raise PemmaError(f"{base_run}: the base must be a CT-only run of `pemma train` "
                         f"(got {base.kind} on {base.meta.get('modalities')})")
    own = {f: getattr(cfg.preprocess, f) for f in REGISTRATION_FIELDS}  # the PET's: the adaptation's own
    if cfg.preprocess.modality_specs:  # a declared modality: the adaptation's (the base read CT only)
        own["modality_specs"] = cfg.preprocess.modality_specs
    inputs = ALL_INPUTS if added_modality == "pet" else ["ct", added_modality]
    cfg = dataclasses.replace(cfg, model=base.config.model,
                              preprocess=dataclasses.replace(base.config.preprocess, **own),
                              data=dataclasses.replace(cfg.data, modalities=inputs))
    train_cases, val_cases = split or select_split(cfg, inputs)
    warn_unlearnt_classes(base_run)
    return AdaptationSetup(base, base_run, cfg, train_cases, val_cases, added_modality)


def unlearnt_classes(run_dir: str | Path) -> list[str]:
    """The classes a run's validation never segmented: every validated ``val_<class>`` of its ``metrics.csv`` is 0.

    Args:
        run_dir: a training run folder; without ``metrics.csv`` (an imported model) or without any validation
            row, nothing is reported.

    Returns:
        Class names (``GTVp``, ``GTVn``), in column order; empty when every class was segmented at some validation.
    """
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in (rows[0] if rows else {}) if c[4:] in CLASS_NAMES.values() and c.startswith("val_")]
    unlearnt = []
    for column in columns:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(column) or "nan"))
            except ValueError:  # an edited or damaged cell: no verdict from it
                continue
        values = [v for v in values if v == v]  # NaN: a step without validation
        if values and max(values) == 0.0:
            unlearnt.append(column[len("val_"):])
    return unlearnt


def warn_unlearnt_classes(base_run: str | Path) -> None:
    """Warn (one line) when the base run never segmented a class on its validation cases.

    Adaptation keeps most of the base frozen: a class the base never produces is learnt only through the parts
    that train (the ``pemma`` recipe trains the last decoder block and the head for this reason), and an early-fusion
    or fine-tuned model starts from a base that ignores it. Measured on the hard phantom: docs/phantom-difficulty.md.
    """
    missing = unlearnt_classes(base_run)
    if missing and is_main_process():
        warnings.warn(f"base run {base_run}: DSCagg of {', '.join(missing)} was 0.000 at every validation: the CT "
                      f"model never learnt {'it' if len(missing) == 1 else 'them'}; train it longer (more epochs) "
                      f"before adapting, or expect the adapted model to learn {'it' if len(missing) == 1 else 'them'} "
                      f"from the added modality alone", UserWarning, stacklevel=3)


def adapt(base_run: str | Path, cfg: RunConfig, out_dir: str | Path, method: str = "pemma_lora",
          adapter_cfg: AdapterConfig | None = None, resume: bool = False, progress: bool = True,
          split: CaseSplit | None = None, added_modality: str = "pet") -> dict[str, Any]:
    """Adapt the CT-only run ``base_run`` to CT+PET on ``cfg.data`` with ``method`` and write ``out_dir``.

    Args:
        base_run: the CT base run folder (``pemma train --modalities ct``), or an adapted run (PEMMA methods): then
            ``added_modality`` is stacked on it (:mod:`pemma.methods.stacking`).
        cfg: data and training settings (model and preprocessing come from the base).
        out_dir: the new run folder.
        method: a registered method or alias (``pemma_lora``/``lora``, ``pemma_dora``/``dora``, ``early_fusion``,
            ``late_fusion``, ``full_finetune``). Default ``pemma_lora``.
        adapter_cfg: adapter settings (rank, alpha, targets, ...) for the methods that use them; for PEMMA methods
            its ``method`` field is set from ``method``. Default: the defaults of :class:`AdapterConfig`.
        resume: continue an interrupted run in ``out_dir``. progress: progress bars.
        split: explicit (training, validation) cases; default: ``cfg.data`` split per centre.
        added_modality: the modality added to CT (default ``pet``); another one (``mr``, ``dose``, a declared
            one) with the PEMMA methods, early fusion and full fine-tuning (not late fusion).

    Returns:
        the training summary (steps, best_dsc, best_step, seconds; late fusion adds ``weight``).

    Example:
        >>> cfg = build_config("tiny", overrides={"data": {"root": "data/phantom", "centres": ["MDA"]}})
        >>> adapt("runs/ct_unetr", cfg, "runs/pemma_unetr", method="lora")
    """
    from pemma.methods.stacking import adapt_stacked, is_adapted_run  # (it builds on this module)

    if is_adapted_run(base_run):  # a CT+PET (...) run: the modality is stacked on it
        return adapt_stacked(base_run, cfg, out_dir, method, adapter_cfg, added_modality, resume, progress, split)
    spec = get_method(method)
    if added_modality != "pet" and spec.name not in OTHER_MODALITY_METHODS:
        raise PemmaError(f"--add-modality {added_modality}: only {', '.join(OTHER_MODALITY_METHODS)} add a modality "
                         f"other than pet (method {spec.name} adds pet only)")
    setup = prepare_adaptation(base_run, cfg, out_dir, split, added_modality)
    task = spec.build(setup, adapter_cfg)
    record_resume_settings(task, spec.name, setup.base_run, setup.base.meta)
    summary = train_task(task, setup.cfg, setup.train_cases, setup.val_cases, out_dir, resume=resume,
                         progress=progress, meta=setup.meta)
    if spec.finish is not None and is_main_process():
        summary = spec.finish(setup, Path(out_dir), summary)
    return summary
