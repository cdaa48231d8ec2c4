"""One run-folder format for every pemma run (segmentation, adapted, baseline and prognosis runs).

A run folder holds ``config.yaml`` (the :class:`~pemma.config.RunConfig`), its weights as safetensors, and one
metadata JSON (``model.json``; ``survival.json`` for prognosis runs) with

* ``kind``: what the folder holds (one of :data:`pemma.vocab.RUN_KINDS`);
* ``versions``: the versions of pemma, torch, MONAI and peft that wrote it;
* ``sha256``: the checksum of the weights file (``weights_sha256`` in prognosis runs);
* ``base_run`` / ``base_sha256``: for runs built on a CT base run, its path and the checksum of its weights;
* ``config_sha256``: the checksum of ``config.yaml`` (a run whose config was edited afterwards does not load).

Every file is written atomically (temporary file, then rename), and ``checkpoint.pt`` holds the resumable state.
Runs written before ``versions`` existed load unchanged; a ``model.json`` without ``kind`` is a backbone run.
A finished run is never overwritten by accident: every training verb opens its output with
:func:`pemma.run_folder.new_run_folder`, which also holds the run folder's lock while the command writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, load_tensors, save_tensors, sha256_file, write_text_atomic
from pemma.run_guards import hidden_sibling
from pemma.vocab import KIND_BACKBONE, KIND_SURVIVAL

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
CONFIG_FILE = "config.yaml"
STATE_FILE = "checkpoint.pt"
SURVIVAL_META = "survival.json"
#: metadata file of each kind of run folder, looked up in this order
META_FILES = (MODEL_META, SURVIVAL_META)
#: names of the temporary files of :func:`pemma.io_utils.atomic_path` (left behind only by a killed process)
PART_GLOB = ".*.part*"
#: suffixes of the hidden siblings a forced run is written into / the replaced run is moved to while swapping
NEW_SUFFIX, OLD_SUFFIX = ".pemma-new", ".pemma-old"


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
    """Write a run's metadata JSON atomically; ``meta`` must name its ``kind``. The checksum of the run's
    ``config.yaml`` (if written) is recorded as ``config_sha256``."""
    if "kind" not in meta:
        raise ValueError("run metadata must name its kind")
    config = Path(run_dir) / CONFIG_FILE
    meta = {k: v for k, v in meta.items() if k != "config_sha256"}  # never a record carried over from another run
    if config.is_file():
        meta["config_sha256"] = sha256_file(config)
    write_text_atomic(Path(run_dir) / name, json.dumps(meta, indent=2, default=str) + "\n")


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
        raise PemmaError(f"{run_dir}: was trained on base {str(expected)[:12]} but {base_dir} holds {str(held)[:12]} "
                         "(retrained or replaced since?); pass --base with the run it was trained on")
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
        old = hidden_sibling(run_dir, OLD_SUFFIX)
        if old.is_dir():
            raise PemmaError(f"{run_dir}: model folder not found, but {old} holds the run a killed --force was "
                             f"replacing; rename it back to {run_dir} (the next training command on it does so)")
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
    check_config(run_dir, meta)
    return meta


def check_config(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Check ``config.yaml`` of ``run_dir`` against the checksum its metadata records (runs written before the
    record existed pass).

    Raises:
        PemmaError: the config is missing or was changed after the run was written.
    """
    expected = meta.get("config_sha256")
    if not expected:
        return
    config = Path(run_dir) / CONFIG_FILE
    if not config.is_file():
        raise PemmaError(f"{config}: not found (the run's metadata records one)")
    if sha256_file(config) != expected:
        raise PemmaError(f"{config}: changed after the run was written (checksum does not match its metadata); "
                         "restore it, or train a new run with the new settings")


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



# ---- opening an output run folder


def finished_meta(folder: str | Path) -> Path | None:
    """The metadata file that makes ``folder`` a finished run (``model.json`` / ``survival.json``), or None."""
    for name in META_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def interrupted_meta(folder: str | Path) -> str | None:
    """:func:`interrupted_text` of the ``model.json`` in ``folder`` (None without one, or an unreadable one)."""
    path = Path(folder) / MODEL_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        return None
    return interrupted_text(meta) if isinstance(meta, dict) else None


def interrupted_text(meta: dict[str, Any]) -> str | None:
    """How far a run whose training stopped before its end got (its ``model.json`` holds the best weights so far
    with ``"complete": false``), e.g. ``"best weights of step 40 of 120"``; None for a run that finished (or one
    written before pemma recorded it)."""
    if meta.get("complete") is not False:
        return None
    return f"best weights of step {meta.get('step')} of {meta.get('total_steps')}"


def run_family(run_dir: str | os.PathLike | None) -> list[Path]:
    """``run_dir`` and the base run its metadata records (what a command reading ``run_dir`` reads)."""
    if run_dir is None:
        return []
    family = [Path(os.fspath(run_dir))]
    meta_file = finished_meta(family[0])
    if meta_file is not None:
        try:
            base = json.loads(meta_file.read_text()).get("base_run")
        except ValueError:
            base = None
        if base:
            family.append(Path(str(base)))
    return family


#: metadata keys naming the runs a run was built on, followed in this order: the run an update continued, a
#: prognosis run's previous stage, the CT base (an adapted run's; a stacked level's adapted run)
LINEAGE_KEYS = ("updated_from", "parent", "base_run")


@dataclass(frozen=True)
class Ancestor:
    """A run in another's lineage: its folder, how its child names it (a :data:`LINEAGE_KEYS` key), the child's
    folder, and its metadata (None: no finished run at that path any more, or unreadable metadata)."""

    path: Path
    relation: str
    child: Path
    meta: dict[str, Any] | None


def run_lineage(run_dir: str | os.PathLike, meta: dict[str, Any],
                moved: dict[str, str | os.PathLike] | None = None) -> list[Ancestor]:
    """Every run ``run_dir`` was built on, each once, depth first in :data:`LINEAGE_KEYS` order (an update's
    parent run, its parent..., then the CT base; a stacked level's adapted run, then its base).

    ``moved`` maps a recorded path to where that run is now (``--base`` of a moved CT base). A run not found at
    its path is listed with ``meta`` None and not followed further; only metadata is read, never weights."""
    relocated = {_key(k): Path(os.fspath(v)) for k, v in (moved or {}).items()}
    out: list[Ancestor] = []
    _follow(Path(os.fspath(run_dir)), meta, relocated, {_key(run_dir)}, out)
    return out


def _follow(child: Path, meta: dict[str, Any], relocated: dict[str, Path], seen: set[str],
            out: list[Ancestor]) -> None:
    """Append to ``out`` the runs ``meta`` (of ``child``) names and, recursively, theirs, skipping ``seen``."""
    for relation in LINEAGE_KEYS:
        recorded = meta.get(relation)
        if not recorded or _key(recorded) in seen:
            continue
        path = relocated.get(_key(recorded), Path(str(recorded)))
        seen.update({_key(recorded), _key(path)})
        found = _lenient_meta(path)
        out.append(Ancestor(path, relation, child, found))
        if found is not None:
            _follow(path, found, relocated, seen, out)


def _key(path: str | os.PathLike) -> str:
    """A run folder's identity in a lineage (its absolute path)."""
    return os.path.abspath(os.fspath(path))


def _lenient_meta(folder: Path) -> dict[str, Any] | None:
    """The metadata JSON of a finished run folder, or None (no such folder, no metadata, or unreadable)."""
    path = finished_meta(folder)
    if path is None:
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def remove_stale_parts(folder: str | Path) -> list[Path]:
    """Delete the hidden ``.*.part*`` files a killed writer left in ``folder`` (and below); return them."""
    removed = []
    for part in Path(folder).rglob(PART_GLOB):
        if part.is_file():
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def final_path(folder: str | Path) -> Path:
    """The run folder a forced run's hidden sibling (``.<name>.pemma-new``) becomes; other folders unchanged."""
    folder = Path(folder)
    name = folder.name
    if name.startswith(".") and name.endswith(NEW_SUFFIX):
        return folder.parent / name[1:-len(NEW_SUFFIX)]
    return folder
