"""What the training functions of :mod:`pemma.api` return, and how their keyword arguments become a config."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pemma.config import DataConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig, build_config
from pemma.errors import PemmaError

#: a run folder given as a path or as the :class:`Run` a training function returned
RunLike = Union[str, os.PathLike, "Run"]
SECTIONS: dict[str, type] = {"data": DataConfig, "preprocess": PreprocessConfig, "model": ModelConfig,
                             "train": TrainConfig}
#: keyword arguments named after a CLI flag whose config field has another name
ALIASES: dict[str, tuple[str, str]] = {"data": ("data", "root"), "roi": ("model", "roi_size"),
                                       "spacing": ("preprocess", "target_spacing")}


@dataclass(frozen=True, repr=False)
class Run:
    """A finished run folder: its path, kind, configuration and metadata.

    ``str(run)`` and ``os.fspath(run)`` give the folder, so a ``Run`` goes wherever a run folder path is
    accepted (``pemma.adapt(base=run, ...)``, ``pemma.predict(run, ...)``, ``Path(run)``).

    Attributes:
        path: the run folder.
        kind: ``backbone`` (``pemma train``, early fusion), ``pemma`` (adapters), ``pemma_stacked`` (a modality
            stacked on an adapted run), ``pemma_full``, ``late_fusion``, or ``survival`` (a prognosis run).
        config: the :class:`~pemma.config.RunConfig` saved in ``config.yaml``.
        meta: ``model.json`` (segmentation) or ``survival.json`` (prognosis).
        summary: what training reported (``steps``, ``best_dsc`` or C-indices); empty for :meth:`open`.

    Example:
        >>> run = Run.open("runs/ct")
        >>> run.kind, run.config.model.backbone
        ('backbone', 'unetr')
    """

    path: Path
    kind: str
    config: RunConfig
    meta: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, kind={self.kind!r})"

    @classmethod
    def open(cls, path: RunLike, summary: dict[str, Any] | None = None) -> Run:
        """Read the run folder ``path`` (a :class:`~pemma.errors.PemmaError` if it is not a finished run).

        Args:
            path: run folder of ``train``, ``adapt``, ``update`` or a survival stage.
            summary: what the training call returned, kept as :attr:`summary`. Default empty.
        """
        from pemma.runs import CONFIG_FILE, MODEL_META, SURVIVAL_META, read_meta
        from pemma.vocab import KIND_BACKBONE

        folder = Path(os.fspath(path))
        meta = read_meta(folder, SURVIVAL_META if (folder / SURVIVAL_META).is_file() else MODEL_META)
        kind = str(meta.get("kind", KIND_BACKBONE))
        config = RunConfig.load(folder / CONFIG_FILE)
        return cls(folder, kind, config, json.loads(json.dumps(meta)), dict(summary or {}))


def path_of(run: RunLike | None) -> str | None:
    """A run folder path as a string (``None`` stays ``None``)."""
    return None if run is None else os.fspath(run)


def name_list(value: str | Iterable[str] | None) -> list[str] | None:
    """``"CHUM,MDA"`` or ``["CHUM", "MDA"]`` -> ``["CHUM", "MDA"]``; ``None`` stays ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v.strip()]


def run_config(preset: str = "tiny", config: str | os.PathLike | None = None,
               overrides: dict[str, dict[str, Any]] | None = None, **settings: Any) -> RunConfig:
    """Compose a :class:`~pemma.config.RunConfig`: preset < ``config`` YAML < ``overrides`` < ``settings``.

    Args:
        preset: shipped preset name (``tiny`` or ``paper``).
        config: a YAML file with ``data`` / ``preprocess`` / ``model`` / ``train`` sections.
        overrides: ``{section: {field: value}}``.
        settings: CLI flag names (``data``, ``roi``, ``spacing``) or any config field name (``max_steps``,
            ``weight_decay``, ``ct_window``, ...); ``None`` means "not given".

    Raises:
        TypeError: a setting that is neither a flag nor a config field.

    Example:
        >>> cfg = run_config("tiny", data="data/phantom", centres=["CHUM"], max_steps=2, weight_decay=1e-4)
    """
    index = {f.name: section for section, klass in SECTIONS.items() for f in dataclasses.fields(klass)}
    merged: dict[str, dict[str, Any]] = {section: dict((overrides or {}).get(section) or {}) for section in SECTIONS}
    unknown_sections = sorted(set(overrides or {}) - set(SECTIONS))
    if unknown_sections:
        raise TypeError(f"unknown config sections {unknown_sections}; known: {', '.join(SECTIONS)}")
    for key, value in settings.items():
        if key in ALIASES:
            section, name = ALIASES[key]
        elif key in index:
            section, name = index[key], key
        else:
            raise TypeError(f"unknown setting {key!r}: neither a flag nor a config field "
                            f"(fields: {', '.join(sorted(index))})")
        if value is None:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if name == "centres":
            value = name_list(value)
        merged[section][name] = list(value) if isinstance(value, tuple) else value
    return build_config(preset, None if config is None else os.fspath(config), merged)


def resolve_preset(preset: str | None, run: RunLike | None, resumed: str | os.PathLike | None = None) -> str:
    """``preset``, or when None: the preset of ``resumed`` (the run a ``--resume`` continues, when it has a
    ``config.yaml``: it keeps its own settings), else of the run a verb builds on (``tiny`` when neither can be
    read, the command then reports the run itself): adapting a paper-size base (``pemma import-model`` or
    ``train --preset paper``) keeps the paper's training settings unless the caller names another preset.

    Example:
        >>> resolve_preset(None, "runs/my_ct")  # an imported run  # doctest: +SKIP
        'paper'
    """
    from pemma.runs import CONFIG_FILE

    if preset is not None:
        return preset
    for folder in (resumed, path_of(run)):
        if folder is not None and (Path(folder) / CONFIG_FILE).is_file():
            try:
                return RunConfig.load(Path(folder) / CONFIG_FILE).preset
            except PemmaError:
                pass
    return "tiny"


def check_register(given: str | None, preprocess: PreprocessConfig, source: str) -> None:
    """``--register``, if given, must be the mode the run ``source`` was trained with (a trained model saw its PET
    registered that way; ``update``, prognosis and ``predict`` keep it)."""
    if given is not None and given != preprocess.register:
        raise PemmaError(f"{source}: --register {given} differs from the run's ({preprocess.register}); the run's "
                         f"registration is kept (leave the flag out)")


def check_kept_geometry(settings: dict[str, Any], overrides: dict[str, dict[str, Any]] | None, run: RunConfig,
                        source: str, whose: str = "the run's") -> None:
    """A window (``roi``) or voxel spacing a caller gave a verb that keeps those of the run ``source`` (adapt and
    update: the model must see what its base saw; the prognosis stages: the encoder's) must be the run's. Given
    means a keyword (``roi`` / ``roi_size``, ``spacing`` / ``target_spacing``: the flags) or ``overrides``;
    predict and evaluate take ``--roi`` for their sliding window instead.

    Raises:
        PemmaError: one line naming the flag, both values and ``source``.
    """
    sections = overrides or {}
    for flag, (section, field_name), have in (("--roi", ALIASES["roi"], run.model.roi_size),
                                              ("--spacing", ALIASES["spacing"], run.preprocess.target_spacing)):
        given = next((v for v in (settings.get(flag[2:]), settings.get(field_name),
                                  (sections.get(section) or {}).get(field_name)) if v is not None), None)
        if given is None:
            continue
        values = [given] * 3 if isinstance(given, (int, float)) else list(given)
        if [float(v) for v in values] != [float(v) for v in have]:
            shown = " ".join(f"{float(v):g}" for v in have)
            raise PemmaError(f"{source}: {flag} {' '.join(f'{float(v):g}' for v in values)} differs from {whose} "
                             f"({shown}); {whose} is kept (leave {flag} out)")


def absolute_data(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.root`` made absolute (what a run stores, so a later stage run from another folder
    finds the data)."""
    if not cfg.data.root or os.path.isabs(cfg.data.root):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.abspath(cfg.data.root)))


def data_inputs(cfg: RunConfig) -> list[str]:
    """What a training command reads of ``cfg.data.root`` that a run folder must not overlap
    (:func:`pemma.run_guards.check_out_of_reads`): the dataset folder, or a datalist and the folders of the files it
    lists (a datalist's images may lie anywhere). A datalist that cannot be read is left to the command to report."""
    root = cfg.data.root
    if not root or not (Path(root).is_file() and Path(root).suffix == ".json"):
        return [root] if root else []
    from pemma.data.layout import discover_cases

    try:
        cases = discover_cases(root)
    except PemmaError:
        return [root]
    folders = {str(Path(p).parent) for c in cases for p in (*c.images.values(), c.label) if p}
    return [root, *sorted(folders)]


def warn_tiny_preset(preset: str, cfg: RunConfig) -> None:
    """Warn (one line) when the ``tiny`` preset, the CPU test model and every training verb's default, trains on
    data that is not pemma's phantom (its CT headers carry :data:`pemma.data.phantom_marker.PHANTOM_DESCRIP`): any
    CT of the selected centres (``cfg.data.centres``; all when none) without the mark."""
    import warnings

    from pemma.data.layout import discover_cases
    from pemma.data.phantom_marker import is_phantom_image

    if preset != "tiny" or not cfg.data.root:
        return
    try:
        cases = discover_cases(cfg.data.root, roi_names=cfg.data.roi_names)  # DICOM: staged once, for the run too
    except PemmaError:
        return  # the command itself reports what is wrong with the data
    centres = {str(c).upper() for c in cfg.data.centres or []}
    cts = (c.images["ct"] for c in cases if "ct" in c.images and (not centres or c.centre.upper() in centres))
    if any(not is_phantom_image(ct) for ct in cts):
        warnings.warn(f"--preset tiny (the default: a CPU test model) on {cfg.data.root}, which is not pemma's "
                      f"phantom; real data needs --preset paper (or your --config)", UserWarning, stacklevel=3)
