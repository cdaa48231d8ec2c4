"""One run-folder format for every pemma run (segmentation, adapted, baseline and prognosis runs).

A run folder holds ``config.yaml`` (the :class:`~pemma.config.RunConfig`), its weights as safetensors, and one
metadata JSON (``model.json``; ``survival.json`` for prognosis runs) with

* ``kind``: what the folder holds (one of :data:`pemma.vocab.RUN_KINDS`);
* ``versions``: the versions of pemma, torch, MONAI and peft that wrote it;
* ``sha256``: the checksum of the weights file (``weights_sha256`` in prognosis runs);
* ``base_run`` / ``base_sha256``: for runs built on a CT base run, its path and the checksum of its weights.

Every file is written atomically (temporary file, then rename), and ``checkpoint.pt`` holds the resumable state.
Runs written before ``versions`` existed load unchanged; a ``model.json`` without ``kind`` is a backbone run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, load_tensors, save_tensors, sha256_file, write_text_atomic
from pemma.vocab import KIND_BACKBONE, KIND_SURVIVAL

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
CONFIG_FILE = "config.yaml"
STATE_FILE = "checkpoint.pt"
SURVIVAL_META = "survival.json"
#: metadata file of each kind of run folder, looked up in this order
META_FILES = (MODEL_META, SURVIVAL_META)


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a run depends on (recorded in every run)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pemma", "torch", "monai", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def stamp(meta: dict[str, Any], kind: str) -> dict[str, Any]:
    """``meta`` with its ``kind`` and the package ``versions`` (kept when already there, e.g. an update)."""
    return {**meta, "kind": kind, "versions": package_versions()}


def write_meta(run_dir: str | Path, meta: dict[str, Any], name: str = MODEL_META) -> None:
    """Write a run's metadata JSON atomically; ``meta`` must name its ``kind``."""
    if "kind" not in meta:
        raise ValueError("run metadata must name its kind")
    write_text_atomic(Path(run_dir) / name, json.dumps(meta, indent=2, default=str) + "\n")


def run_kind(run_dir: str | Path) -> str:
    """The kind of the run in ``run_dir`` (``backbone`` for old model folders that predate the field)."""
    return str(read_meta(run_dir).get("kind", KIND_BACKBONE))


def check_base(run_dir: str | Path, meta: dict[str, Any], base_run: str | Path | None = None) -> Path:
    """The base run a run was built on (``base_run`` overrides the recorded path, e.g. when it moved), checked
    to hold the weights the run was trained on.

    Raises:
        PemmaError: no base recorded, the base folder or its weights are missing, or its weights changed.
    """
    recorded = meta.get("base_run")
    if base_run is None and not recorded:
        raise PemmaError(f"{run_dir}: records no base run")
    base_dir = Path(base_run or recorded)
    weights = base_dir / MODEL_FILE
    if not base_dir.is_dir():
        raise PemmaError(f"{base_dir}: model folder not found (base of {run_dir}; pass --base if it moved)")
    if not weights.is_file():
        raise PemmaError(f"{weights}: not found (is {base_dir} a finished pemma run?)")
    expected = meta.get("base_sha256")
    if expected and sha256_file(weights) != expected:
        held = read_meta(base_dir).get("sha256", "?")
        raise PemmaError(f"{run_dir}: was trained on base {str(expected)[:12]} but {base_dir} holds {str(held)[:12]}")
    return base_dir


def save_weights(model: nn.Module, run_dir: str | Path, meta: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (the network's state dict) and ``model.json``; return the SHA-256.

    ``meta`` names the run's ``kind`` (default ``backbone``); the package versions are added.
    """
    run_dir = Path(run_dir)
    digest = save_tensors(model.state_dict(), run_dir / MODEL_FILE)
    write_meta(run_dir, {**stamp(meta, str(meta.get("kind", KIND_BACKBONE))), "sha256": digest})
    return digest


def read_meta(run_dir: str | Path, name: str = MODEL_META) -> dict[str, Any]:
    """The metadata JSON ``name`` of a run folder (``model.json`` by default)."""
    path = Path(run_dir) / name
    if not Path(run_dir).is_dir():
        raise PemmaError(f"{run_dir}: model folder not found")
    if not path.is_file():
        if name == MODEL_META and (Path(run_dir) / SURVIVAL_META).is_file():
            raise PemmaError(f"{run_dir}: is a prognosis run (pemma survival), not a segmentation model")
        raise PemmaError(f"{path}: not found (is {run_dir} a finished pemma run?)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise PemmaError(f"{path}: corrupt model metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise PemmaError(f"{path}: corrupt model metadata (not a JSON object)")
    if name == SURVIVAL_META:
        meta.setdefault("kind", KIND_SURVIVAL)
    return meta


def load_weights(run_dir: str | Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` of a run; a truncated, corrupt or altered file is a :class:`PemmaError`."""
    sha = read_meta(run_dir).get("sha256") if verify else None
    return load_tensors(Path(run_dir) / MODEL_FILE, sha256=sha, what="model weights", manifest=MODEL_META)


def save_state(state: dict[str, Any], run_dir: str | Path) -> None:
    """Write the resumable training state atomically (a kill mid-write keeps the previous one)."""
    with atomic_path(Path(run_dir) / STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_state(run_dir: str | Path) -> dict[str, Any]:
    """Read the resumable training state of ``run_dir``."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise PemmaError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zip archives
        raise PemmaError(f"{path}: truncated or corrupt checkpoint ({_load_failure(exc)}); delete it to train "
                         f"again from the start") from None


def _load_failure(exc: BaseException) -> str:
    """What went wrong, without torch's advice to load with ``weights_only=False`` (that would run pickled code)."""
    text = str(exc)
    if "weights_only" in text or "weights only" in text.lower() or "unpickl" in text.lower():
        return "it holds Python objects besides tensors, which pemma never unpickles"
    first = text.splitlines()[0].strip() if text.strip() else ""
    return first or type(exc).__name__
