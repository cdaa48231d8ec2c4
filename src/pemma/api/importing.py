"""``pemma.import_model``: a CT base run from plain MONAI UNETR / Swin UNETR weights (``pemma import-model``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pemma.api.run import Run, run_config
from pemma.errors import PemmaError

if TYPE_CHECKING:
    from pemma.config import RunConfig


def import_model(weights: str | os.PathLike, out: str | os.PathLike, *, backbone: str | None = None,
                 config: str | os.PathLike | None = None, preset: str = "paper",
                 label_map: str | Mapping[str, int] | None = None, min_matched: float = 1.0, force: bool = False,
                 overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Run:
    """Write the CT base run ``out`` (the format ``pemma train`` writes) from plain MONAI weights.

    Args:
        weights: ``.pt`` / ``.pth`` / ``.safetensors`` state dict, a checkpoint dict holding one (``state_dict``,
            ``model``, ``net``), or a MONAI bundle folder (``configs/inference.json|yaml`` + ``models/model.pt``).
        out: run folder.
        backbone: ``unetr`` or ``swin_unetr`` (a bundle's ``network_def`` names it; a mismatch is an error).
        config: YAML with pemma's config fields: the network sizes (``model``) and the preprocessing the model
            was trained with (``preprocess``: spacing, CT window, crop); stored in the run.
        preset: size preset under ``config``. Default ``paper`` (96³; MONAI's default UNETR sizes, Swin UNETR at the
            paper's feature size 48 where MONAI's default is 24).
        label_map: ``"GTVp=3,GTVn=5"`` (or a mapping): the head's classes to keep as GTVp / GTVn (background 0
            unless given). Default: keep a 3-class head, or put a new head (trained during adaptation) in place
            of a head with another number of classes.
        min_matched: share of the network's tensors besides the head that must load. Default 1.0: every tensor (a
            position embedding sized for another ROI, say, is an error, not a silently broken model).
        force: replace a finished run in ``out``.
        overrides, settings: as for :func:`pemma.train` (``roi``, ``spacing``, ``seed``, any config field).

    Returns:
        The :class:`Run`; ``run.summary`` holds the key report counts (``matched``, ``missing``, ``unexpected``,
        ``shape_mismatch``), ``head`` (``loaded``, ``selected`` or ``new``) and ``source_classes``.

    Example:
        >>> run = pemma.import_model("btcv_unetr.pt", "runs/my_ct", backbone="unetr", config="my_ct.yaml")
    """
    from pemma.config import ModelConfig
    from pemma.methods.importing import bundle_model_settings, import_weights, parse_label_map, read_bundle
    from pemma.run_folder import new_run_folder

    source = Path(os.fspath(weights))
    if not source.exists():
        raise PemmaError(f"{source}: weights file or bundle folder not found")
    bundle: dict[str, Any] = {}
    if source.is_dir():
        bundle = bundle_model_settings(read_bundle(source)[1], backbone, source)
        backbone = bundle["backbone"]
    elif backbone is None:
        raise PemmaError(f"{source}: pass --backbone unetr or swin_unetr (a plain weights file does not say)")
    mapping = parse_label_map(label_map)
    if not 0.0 < min_matched <= 1.0:
        raise PemmaError(f"--min-matched must be in (0, 1], got {min_matched}")
    cfg = run_config(preset, config, overrides, backbone=backbone, **settings)
    if bundle:  # the network the weights need, exactly (not merged with the preset's sizes)
        try:
            cfg.model = ModelConfig(**{**dataclasses.asdict(cfg.model), **bundle})
        except ValueError as exc:
            raise PemmaError(f"{source}: invalid network_def for pemma ({str(exc).splitlines()[0]})") from None
        _bundle_preprocessing(cfg, source, _given_preprocess(config, overrides, settings))
    with new_run_folder(out, force=force, data=[source]) as folder:
        summary = import_weights(source, cfg, Path(folder), label_map=mapping, min_matched=min_matched)
    return Run.open(out, summary)


def _given_preprocess(config: str | os.PathLike | None, overrides: dict[str, dict[str, Any]] | None,
                      settings: Mapping[str, Any]) -> set[str]:
    """The ``preprocess`` fields the caller set: in the ``config`` YAML, ``overrides`` or ``settings`` (by field or
    flag name)."""
    import yaml

    from pemma.api.run import ALIASES

    given = set((overrides or {}).get("preprocess") or {})
    if config is not None:  # already read and validated by run_config
        user = yaml.safe_load(Path(os.fspath(config)).read_text()) or {}
        given |= set(user.get("preprocess") or {})
    for key, value in settings.items():
        if value is not None:
            given.add(ALIASES[key][1] if key in ALIASES and ALIASES[key][0] == "preprocess" else key)
    return given


def _bundle_preprocessing(cfg: RunConfig, source: Path, given: set[str]) -> None:
    """Take the preprocessing a bundle states (spacing, CT window...; :func:`bundle_preprocessing`) into ``cfg``
    where the caller did not set it: the weights were trained with it, and the preset's (paper: 1 mm) would feed
    them another spacing or intensity scale without a word. A value the caller set otherwise wins, with a warning."""
    import logging
    import warnings

    from pemma.config import PreprocessConfig
    from pemma.methods.importing import bundle_preprocessing

    stated = bundle_preprocessing(source)
    current = dataclasses.asdict(cfg.preprocess)
    taken = {k: v for k, v in stated.items() if k not in given}
    for name in sorted(set(stated) & given):
        if not _same(current[name], stated[name]):
            warnings.warn(f"{source}: the bundle was trained with {name} {stated[name]}, your configuration says "
                          f"{current[name]} (used)", UserWarning, stacklevel=3)
    if taken:
        try:
            cfg.preprocess = PreprocessConfig(**{**current, **taken})
        except ValueError as exc:
            raise PemmaError(f"{source}: invalid preprocessing for pemma ({str(exc).splitlines()[0]})") from None
        logging.getLogger("pemma.methods.importing").info(
            "import: preprocessing from the bundle: %s", ", ".join(f"{k} {v}" for k, v in taken.items()))


def _same(a: Any, b: Any) -> bool:
    try:
        return [float(x) for x in a] == [float(x) for x in b]
    except TypeError:
        return float(a) == float(b)
