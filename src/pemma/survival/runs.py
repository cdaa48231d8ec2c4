"""Prognosis run folders: what ``pemma survival train|adapt`` write and how a model is rebuilt from them.

A run folder holds

* ``config.yaml``: the :class:`~pemma.config.RunConfig` (model and preprocessing are the segmentation base's);
* ``survival.safetensors``: every tensor that is not the frozen base network (head, feature scaling, clinical
  projection; for adapted stages the LoRA/DoRA tensors and PET modules), written atomically;
* ``survival.json``: format, stage (``ct``, ``ct+pet``, ``ct+pet+ehr``, ...), backbone, head and MTLR bins,
  the base run and the SHA-256 of its weights, the adapter config, the fitted clinical encoder, the training
  median risk (the Kaplan–Meier split), the case split, the SHA-256 of the weights, and ``history``: one row
  per stage with its trainable parameters and validation C-index.

The base segmentation run is never written; a prognosis run refuses a base whose weights changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pemma.adapters.config import AdapterConfig
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.io_utils import load_tensors, save_tensors
from pemma.methods.loading import load_model
from pemma.models.loaded import LoadedModel, build_pemma
from pemma.models.pemma_base import PEMMA_MODELS
from pemma.runs import CONFIG_FILE, SURVIVAL_META, check_base, stamp, write_meta
from pemma.runs import read_meta as read_run_meta
from pemma.survival.clinical import ClinicalEncoder
from pemma.survival.heads import TimeBins, build_head
from pemma.survival.model import PrognosisModel, feature_dim
from pemma.vocab import KIND_BACKBONE, KIND_SURVIVAL

FORMAT = "pemma-survival"
FORMAT_VERSION = 1
META_FILE = SURVIVAL_META
WEIGHTS_FILE = "survival.safetensors"


def stage_name(modalities: tuple[str, ...] | list[str], ehr: bool) -> str:
    """``ct``, ``ct+pet``, ``ct+pet+ehr``, ``ct+ehr``."""
    return "+".join(list(modalities) + (["ehr"] if ehr else []))


def load_base(base_run: str | Path, expected_sha256: str | None = None, source: str = "") -> LoadedModel:
    """The segmentation base run (a plain backbone run), checked against ``expected_sha256`` if given."""
    base_run = Path(base_run)
    if expected_sha256 is not None:
        check_base(source or base_run, {"base_sha256": expected_sha256}, base_run)
    base = load_model(base_run)
    if base.kind != KIND_BACKBONE:
        raise PemmaError(f"{base_run}: the base of a prognosis model must be a plain segmentation run of "
                         f"`pemma train` (got a {base.kind} run)")
    return base


def pemma_adapter_config(backbone: str, method: str, rank: int, alpha: float) -> AdapterConfig:
    """Adapters on the transformer's attention (backbone default) and the PET pathway of the feature path."""
    try:
        # the PET parts on the feature path train when PET is added (besides the adapters)
        parts = PEMMA_MODELS[backbone].feature_pet_parts
        return AdapterConfig(method=method, rank=rank, alpha=alpha, train_parts=parts)
    except ValueError as exc:
        raise PemmaError(f"invalid adapter settings: {exc}") from None


def build_model(base: LoadedModel, head: str, bins: TimeBins | None, modalities: tuple[str, ...],
                adapter_cfg: AdapterConfig | None, n_clinical: int) -> PrognosisModel:
    """A prognosis model on ``base``: the plain network (``adapter_cfg`` None) or a PEMMA model around it."""
    encoder = base.net if adapter_cfg is None else build_pemma(base, adapter_cfg)
    encoder.requires_grad_(False)
    return PrognosisModel(encoder, build_head(head, feature_dim(encoder), bins), modalities, n_clinical)


@dataclass
class PrognosisRun:
    """A loaded prognosis model, its metadata, run configuration, base and clinical encoder."""

    model: PrognosisModel
    meta: dict[str, Any]
    config: RunConfig
    base: LoadedModel
    base_run: Path
    clinical_encoder: ClinicalEncoder | None
    run_dir: Path | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta["modalities"])

    @property
    def ehr(self) -> bool:
        return bool(self.meta.get("ehr"))

    @property
    def stage(self) -> str:
        return stage_name(self.modalities, self.ehr)

    @property
    def adapter_config(self) -> AdapterConfig | None:
        raw = self.meta.get("adapter_config")
        return None if raw is None else AdapterConfig.from_dict(raw)

    @property
    def bins(self) -> TimeBins | None:
        raw = self.meta.get("time_bins")
        return None if raw is None else TimeBins(tuple(raw))


def save_run(model: PrognosisModel, cfg: RunConfig, out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``config.yaml``, ``survival.safetensors`` and ``survival.json`` (atomically, weights first).

    Returns:
        The metadata written (``meta`` plus format, checksum and tensor count).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / CONFIG_FILE)
    state = model.saved_state()
    weights_sha256 = save_tensors(state, out / WEIGHTS_FILE, metadata={"format": "pt", "pemma": FORMAT})
    info = {"format": FORMAT, "version": FORMAT_VERSION, **stamp(meta, KIND_SURVIVAL), "weights_file": WEIGHTS_FILE,
            "weights_sha256": weights_sha256, "tensors": len(state)}
    write_meta(out, info, META_FILE)
    return info


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``survival.json`` of a prognosis run."""
    path = Path(run_dir) / META_FILE
    if not Path(run_dir).is_dir():
        raise PemmaError(f"{run_dir}: prognosis model folder not found")
    if not path.is_file():
        raise PemmaError(f"{path}: not found (is {run_dir} a run of `pemma survival train|adapt`?)")
    meta = read_run_meta(run_dir, META_FILE)
    if meta.get("format") != FORMAT:
        raise PemmaError(f"{path}: not a pemma prognosis model")
    if meta.get("version") != FORMAT_VERSION:
        raise PemmaError(f"{path}: prognosis format version {meta.get('version')} is not supported")
    missing = [k for k in ("modalities", "head", "base_run", "base_sha256", "weights_sha256") if k not in meta]
    if missing:
        raise PemmaError(f"{path}: lacks {missing}")
    return meta


def load_run(run_dir: str | Path, device: torch.device | str = "cpu",
             base_run: str | Path | None = None) -> PrognosisRun:
    """Rebuild a prognosis model from its run folder (and its segmentation base run).

    Args:
        run_dir: the prognosis run.
        device: where the model goes. Default CPU.
        base_run: the base segmentation run if it moved (its weights must still match). Default: recorded path.

    Example:
        >>> run = load_run("runs/surv_ctpet_ehr")
        >>> run.stage, run.model.n_clinical
        ('ct+pet+ehr', 23)
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    config = RunConfig.load(run_dir / CONFIG_FILE)
    base_dir = Path(base_run or meta["base_run"])
    base = load_base(base_dir, meta["base_sha256"], str(run_dir))
    clinical = None
    try:
        if meta.get("clinical_encoder"):
            clinical = ClinicalEncoder.from_dict(meta["clinical_encoder"])
        adapter = None if meta.get("adapter_config") is None else AdapterConfig.from_dict(meta["adapter_config"])
        bins = None if meta.get("time_bins") is None else TimeBins(tuple(meta["time_bins"]))
        model = build_model(base, meta["head"], bins, tuple(meta["modalities"]), adapter,
                            clinical.n_features if clinical else 0)
    except (ValueError, KeyError, TypeError) as exc:
        raise PemmaError(f"{run_dir / META_FILE}: cannot rebuild the model ({exc})") from None
    weights = run_dir / WEIGHTS_FILE
    state = load_tensors(weights, sha256=meta["weights_sha256"], what="prognosis weights", manifest=META_FILE)
    try:
        model.load_saved_state(state, str(weights))
    except ValueError as exc:
        raise PemmaError(str(exc)) from None
    model.to(device).eval()
    return PrognosisRun(model, meta, config, base, base_dir, clinical, run_dir)
