"""Saving and loading PEMMA adapters, and loading a CT base checkpoint with a key report.

An adapter directory holds only what adaptation adds (LoRA/DoRA tensors, trainable copies of base
modules, the PET modules) as ``adapter_model.safetensors`` and an ``adapter_config.json`` that names
the base checkpoint by SHA-256, so an adapter is never applied to a CT model it was not trained on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.adapters.config import AdapterConfig
from pemma.adapters.state import AdaptedModel, unwrap_model
from pemma.errors import PemmaError
from pemma.io_utils import copy_tensors_into, load_tensors, save_tensors, write_text_atomic

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "pemma-adapter"
FORMAT_VERSION = 1
_REQUIRED = ("format", "version", "backbone", "adapter_name", "adapter_config", "base_sha256", "weights_sha256")


def _check_sha(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{what} must be a 64-digit lower-case hex SHA-256, got {value!r}")
    return value


def save_adapter(model: AdaptedModel, out_dir: str | os.PathLike, base_sha256: str,
                 extra_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``model``'s adapter state and config to ``out_dir`` (each file atomically; weights first).

    Args:
        model: an unmerged PEMMA model (a DDP / torch.compile wrapper around one is unwrapped).
        out_dir: destination directory (created).
        base_sha256: SHA-256 of the CT base checkpoint the model was built from (:func:`sha256_file`).
        extra_config: JSON-serialisable description of the base (e.g. its MONAI hyper-parameters, preset
            name) stored under ``"base"``, so the base can be rebuilt before loading. Default None.

    Returns:
        The stored config dict plus ``"weights_path"`` and ``"config_path"``; ``"adapter_bytes"`` is the
        size of the safetensors file and ``"parameters"`` the number of values in it.
    """
    model = unwrap_model(model)
    if not isinstance(model, AdaptedModel) or model.merged:
        raise ValueError("save_adapter needs an unmerged PEMMA model")
    _check_sha(base_sha256, "base_sha256")
    extra = dict(extra_config or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra_config must be JSON-serialisable: {exc}") from None
    out = Path(out_dir)
    weights, config = out / WEIGHTS_NAME, out / CONFIG_NAME
    state = model.adapter_state_dict()
    weights_sha256 = save_tensors(state, weights, metadata={"format": "pt", "pemma": FORMAT})
    meta: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "backbone": model.backbone_name,
        "adapter_name": model.adapter_name, "adapter_config": model.config.to_dict(),
        "ct_adapter": model.ct_adapter,
        "base_sha256": base_sha256, "base": extra, "weights_file": WEIGHTS_NAME,
        "weights_sha256": weights_sha256, "adapter_bytes": weights.stat().st_size,
        "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values())),
    }
    write_text_atomic(config, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {**meta, "weights_path": str(weights), "config_path": str(config)}


def read_adapter_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The checked ``adapter_config.json`` of an adapter directory (to rebuild the model before loading).

    Raises:
        PemmaError: missing, unparsable or incomplete file (one line naming it).
    """
    path = Path(out_dir) / CONFIG_NAME
    if not path.is_file():
        raise PemmaError(f"{path}: adapter config file not found")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PemmaError(f"{path}: cannot parse adapter config ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PemmaError(f"{path}: not a pemma adapter config")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise PemmaError(f"{path}: adapter config lacks {missing}")
    if meta["version"] != FORMAT_VERSION:
        raise PemmaError(f"{path}: adapter format version {meta['version']} is not supported ({FORMAT_VERSION})")
    try:
        meta["adapter_config"] = AdapterConfig.from_dict(meta["adapter_config"]).to_dict()
    except (TypeError, ValueError) as exc:
        raise PemmaError(f"{path}: invalid adapter_config ({exc})") from None
    return meta


def load_adapter(model: AdaptedModel, out_dir: str | os.PathLike, base_sha256: str) -> dict[str, Any]:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (built from the same base and config).

    Returns:
        The stored config dict.

    Raises:
        PemmaError: the adapter was trained on another base (different SHA-256), is for another backbone,
            config or adapter name, or a file is missing, corrupt or does not fit the model.
    """
    model = unwrap_model(model)
    if not isinstance(model, AdaptedModel) or model.merged:
        raise ValueError("load_adapter needs an unmerged PEMMA model")
    _check_sha(base_sha256, "base_sha256")
    out = Path(out_dir)
    meta = read_adapter_config(out)
    config_path, weights = out / CONFIG_NAME, out / WEIGHTS_NAME
    if meta["base_sha256"] != base_sha256:
        raise PemmaError(f"{out}: adapter was trained on base {str(meta['base_sha256'])[:12]} "
                         f"but this base is {base_sha256[:12]}")
    if meta["backbone"] != model.backbone_name:
        raise PemmaError(f"{config_path}: adapter is for backbone {meta['backbone']!r}, "
                         f"the model is {model.backbone_name!r}")
    if meta["adapter_name"] != model.adapter_name:
        raise PemmaError(f"{config_path}: adapter is named {meta['adapter_name']!r}, "
                         f"the model's is {model.adapter_name!r}")
    saved = AdapterConfig.from_dict(meta["adapter_config"]).resolve(model.backbone_name).to_dict()
    ours = model.config.to_dict()
    differ = [k for k in ours if saved.get(k) != ours[k]]
    if differ:
        raise PemmaError(f"{config_path}: adapter config differs from the model's in {differ} "
                         f"(saved {[saved[k] for k in differ]}, model {[ours[k] for k in differ]})")
    state = load_tensors(weights, sha256=meta["weights_sha256"], what="adapter weights file", manifest=CONFIG_NAME)
    try:
        copy_tensors_into(model.adapter_state_dict(), state, str(weights))
    except ValueError as exc:
        raise PemmaError(str(exc)) from None
    return meta


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel / torch.compile wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_base_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load a CT base checkpoint into a plain MONAI network (``monai.networks.utils.copy_model_state``: tensor
    by tensor, where key and shape match) and report what happened.

    Load the base *before* building the PEMMA model (``PemmaUNETR(base, cfg)`` copies it). Keys with a
    ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix on every key are accepted.

    Returns:
        ``{"loaded": [...], "new": [...], "skipped": [...]}``: keys loaded; model keys the checkpoint does
        not have (they keep their initialisation); checkpoint keys not used, with the reason.
    """
    if isinstance(model, AdaptedModel):
        raise ValueError("load the base state into the MONAI network before building the PEMMA model")
    from monai.networks.utils import copy_model_state

    state = _strip_prefix(state_dict)
    own = model.state_dict()
    # copies every checkpoint tensor whose key and shape the model has, then loads the result in place;
    # its INFO line ("'dst' model updated ...") would go to stdout through MONAI's own handler
    monai_log = logging.getLogger(copy_model_state.__module__)
    level = monai_log.level
    monai_log.setLevel(logging.WARNING)
    try:
        _, loaded, _ = copy_model_state(model, state, inplace=True)
    finally:
        monai_log.setLevel(level)
    done = set(loaded)
    skipped = [f"{key} (not in model)" if key not in own else
               f"{key} (shape {tuple(value.shape)} != {tuple(own[key].shape)})"
               for key, value in state.items() if key not in done]
    return {"loaded": loaded, "new": [k for k in own if k not in done], "skipped": skipped}


def format_load_report(report: Mapping[str, list[str]], limit: int = 3) -> str:
    """One line such as ``loaded 120 tensors, new 0, skipped 2 (a (not in model), b (shape ...))``."""
    def names(items: list[str]) -> str:
        shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
        return f" ({shown})" if items else ""

    return (f"loaded {len(report['loaded'])} tensors, new {len(report['new'])}{names(report['new'])}, "
            f"skipped {len(report['skipped'])}{names(report['skipped'])}")
