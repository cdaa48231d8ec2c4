"""What a ``--resume`` must share with the interrupted run: the settings a checkpoint records
(:data:`RESUME_SETTINGS`, the number of torchrun processes, a method's own settings) and the one-line refusal when
they differ (:func:`check_resume_settings`, :func:`refuse_other_settings`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pemma.adapters.config import RECORDED_BEFORE_FIELD, SAME_CONSTRUCTION
from pemma.config import RunConfig
from pemma.errors import PemmaError
from pemma.runs import CONFIG_FILE, STATE_FILE, load_state
from pemma.vocab import BACKBONES

__all__ = ["PROCESSES_SETTING", "RECORD_KEY", "RESUME_REFUSALS", "RESUME_SETTINGS", "check_resume_settings",
           "config_settings", "refuse_other_settings"]


#: settings a resumed run must share with its checkpoint, per config section (None: the whole section). Deliberately
#: left out, free to change on ``--resume`` (how the run is carried out, not what trains): train.val_every, overlap,
#: sw_batch_size (validation only), checkpoint_every, device and amp (a run may continue on another machine),
#: data.cache_dir / memory_cache_share (caching), exclude_bad_cases (a bad case fails the data check without it),
#: model.gradient_checkpointing (recomputation, same weights), and the progress bars.
RESUME_SETTINGS: dict[str, tuple[str, ...] | None] = {
    "model": ("backbone", "roi_size", "out_channels", *BACKBONES), "preprocess": None,  # each backbone's sizes
    "data": ("root", "centres", "modalities", "val_fraction", "roi_names"),
    "train": ("seed", "epochs", "max_steps", "batch_size", "samples_per_case", "lr", "weight_decay", "label_ratios",
              "dice_batch", "dice_background", "class_weights"),
}
#: the checkpoint entry recording ``{label: value}`` of the settings outside ``config.yaml`` that determine the
#: trained weights (:attr:`TrainingTask.settings`; a prognosis stage records its config there too)
RECORD_KEY = "settings"
#: the :attr:`TrainingTask.settings` label of the number of processes (torchrun's ``--nproc_per_node`` times its
#: nodes; 1 without torchrun): an epoch has ``ceil(cases / (batch x processes))`` steps, each process its own
#: batch, so another number trains other weights. A checkpoint written before it was recorded is not compared.
PROCESSES_SETTING = "torchrun processes"
#: ``(recorded, current) -> reason or None``: a refused ``--resume`` whose settings no flag can give back (the
#: generic "rerun with the same flags" would send the user in a circle); registered by the methods that need one
RESUME_REFUSALS: list[Callable[[dict[str, Any], dict[str, Any]], str | None]] = []


def config_settings(cfg: RunConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of ``cfg``'s :data:`RESUME_SETTINGS`: the centres upper-case and sorted (another
    order or case names the same cases), the data root resolved (a dataset is identified by its folder or
    datalist)."""
    raw = cfg.to_dict()
    out = {f"{section}.{key}": raw[section].get(key)
           for section, keys in RESUME_SETTINGS.items() for key in (keys or raw[section])}
    if out.get("data.centres"):
        out["data.centres"] = sorted(str(c).upper() for c in out["data.centres"])
    if out.get("data.root"):
        out["data.root"] = str(Path(out["data.root"]).resolve())
    return out


def _same(old: Any, new: Any) -> bool:
    """A run reference (``{"run", "sha256"}``) is the same run by its weights checksum (a moved run is still it)."""
    if isinstance(old, dict) and isinstance(new, dict) and "sha256" in old and "sha256" in new:
        return old["sha256"] == new["sha256"]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    return bool(old == new)


def _as_built(key: str, value: Any) -> Any:
    """The value of setting ``key`` that builds the same network as ``value`` (:data:`SAME_CONSTRUCTION`)."""
    same = SAME_CONSTRUCTION.get(key)
    return same.get(value, value) if same else value


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "run" in value:
        return str(value["run"])
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def refuse_other_settings(out_dir: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a ``--resume`` whose settings differ from those the interrupted run ``recorded`` (``{label: value}``).
    Only what was recorded is compared: a checkpoint of an older pemma resumes on the settings it has.

    Raises:
        PemmaError: one line naming each differing setting, old → new (or the reason of a :data:`RESUME_REFUSALS`
            entry).
    """
    diffs = [f"{key} {_shown(old)} → {_shown(current[key])}" for key, old in recorded.items()
             if key in current and not _same(_as_built(key, old), _as_built(key, current[key]))]
    reason = next((r for r in (why(recorded, current) for why in RESUME_REFUSALS) if r), None) if diffs else None
    if reason:
        raise PemmaError(f"{out_dir}: {reason}")
    if diffs:
        raise PemmaError(f"{out_dir}: --resume with other settings than the interrupted run: {', '.join(diffs)}; "
                         "rerun with the same flags, or --force to start over")


def check_resume_settings(out_dir: Path, cfg: RunConfig, settings: dict[str, Any] | None = None
                          ) -> dict[str, Any] | None:
    """``--resume`` must use the settings the checkpoint was trained with (else ``config.yaml`` and ``model.json``
    would record settings the weights never saw): ``cfg``'s :data:`RESUME_SETTINGS` against the run's
    ``config.yaml``, and ``settings`` (:attr:`TrainingTask.settings`) against what the checkpoint recorded
    (:data:`RECORD_KEY`; a checkpoint without it: the config alone).

    Returns:
        the checkpoint, read here to report a truncated or corrupt one first, for the engine to restore without
        reading it again (None: no config or no checkpoint in ``out_dir``, nothing compared).

    Raises:
        PemmaError: a truncated or corrupt checkpoint; else naming the run and each differing setting.
    """
    path = out_dir / CONFIG_FILE
    if not (path.is_file() and (out_dir / STATE_FILE).is_file()):
        return None
    checkpoint = load_state(out_dir)  # a truncated or corrupt checkpoint is the first thing to report
    recorded = checkpoint.get(RECORD_KEY)
    if isinstance(recorded, dict):  # a setting added since the checkpoint was written: the value it trained with
        recorded = {**RECORDED_BEFORE_FIELD, **recorded}
    refuse_other_settings(out_dir, {**config_settings(RunConfig.load(path)),
                                    **(recorded if isinstance(recorded, dict) else {})},
                          {**config_settings(cfg), **(settings or {})})
    return checkpoint
