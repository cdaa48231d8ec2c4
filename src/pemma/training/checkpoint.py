"""Run-folder artifacts: model weights (safetensors + JSON), resumable training state (atomic writes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, load_tensors, save_tensors, write_text_atomic

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
CONFIG_FILE = "config.yaml"
STATE_FILE = "checkpoint.pt"


def save_weights(model: nn.Module, run_dir: str | Path, meta: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (the plain network's state dict) and ``model.json``; return the SHA-256."""
    run_dir = Path(run_dir)
    digest = save_tensors(model.state_dict(), run_dir / MODEL_FILE)
    write_text_atomic(run_dir / MODEL_META, json.dumps({**meta, "sha256": digest}, indent=2))
    return digest


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a run folder."""
    path = Path(run_dir) / MODEL_META
    if not Path(run_dir).is_dir():
        raise PemmaError(f"{run_dir}: model folder not found")
    if not path.is_file():
        raise PemmaError(f"{path}: not found (is {run_dir} a finished pemma run?)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PemmaError(f"{path}: corrupt model metadata ({exc})") from None


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
        raise PemmaError(f"{path}: truncated or corrupt checkpoint ({str(exc).splitlines()[0]})") from None
