"""Run configuration: dataclasses with per-field help, loaded from YAML presets and saved into every run.

Precedence (lowest to highest): dataclass defaults < preset YAML (``pemma/presets/<name>.yaml``)
< user YAML (``--config``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any

import yaml

from pemma.config_fields import check_field_types, shown, triple
from pemma.errors import PemmaError
from pemma.modalities import NAME_PATTERN, ModalitySpec, declared_specs, order_modalities, registry
from pemma.vocab import (
    BACKBONES,
    MODALITY_ALIASES,
    MODALITY_ORDER,
    REGISTER_MODES,
    ROI_MULTIPLES,
    parse_modalities,
    parse_roi_names,
)

#: keys that older pemma versions wrote into ``config.yaml`` and that are now read and ignored
RETIRED_KEYS: dict[str, tuple[str, ...]] = {"data": ("num_workers",)}


def _modality_names(value: Any) -> list[str]:
    """Modality names: CT and PET first, in their order, then other names in the given order. Whether each other
    name has a spec is checked by :class:`RunConfig` (the specs are ``preprocess`` settings)."""
    items = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    names = [MODALITY_ALIASES.get(n, n) for n in (str(m).strip().lower() for m in items) if n]
    if all(m in MODALITY_ORDER for m in names):
        return parse_modalities(items)
    bad = [m for m in names if not NAME_PATTERN.match(m)]
    if bad:
        raise ValueError(f"modalities must be names such as ct, pet, mr (lower-case letters, digits, _), got {items}")
    return order_modalities(names, MODALITY_ORDER)


@dataclass
class DataConfig:
    """Which cases to read."""

    root: str = field(default="", metadata={"help": "dataset folder (HECKTOR or nnU-Net raw) or datalist JSON"})
    centres: list[str] = field(default_factory=list, metadata={"help": "centres to use; empty = all"})
    modalities: list[str] = field(default_factory=lambda: ["ct"], metadata={
        "help": "input channels, [ct, pet] order, then other modalities (mr, dose, or declared in "
                "preprocess.modality_specs) in their registry order"})
    val_fraction: float = field(default=0.2, metadata={"help": "validation share per centre (seeded split)"})
    cache_dir: str | None = field(default=None,
                                  metadata={"help": "persistent preprocessing cache folder (default: in memory)"})
    memory_cache_share: float = field(default=0.5, metadata={
        "help": "without cache_dir: the largest share of the available memory the in-memory cache of preprocessed "
                "cases may take (estimated from the first case); beyond it cases are cached on disk in "
                "$PEMMA_CACHE_DIR or ~/.cache/pemma/preprocessed (0: always on disk)"})
    roi_names: str = field(default="", metadata={
        "help": "DICOM data: the RTSTRUCT ROI / SEG segment names of each class, e.g. "
                "GTVp=GTV_primary,GTVn=GTV_LN+GTV_LN2 (case-insensitive; replaces the default names of the classes "
                "named: GTVp, GTV_T, GTV_primary...; GTVn, GTVn1, GTV_LN, GTV_node...)"})
    exclude_bad_cases: bool = field(default=False, metadata={
        "help": "leave out the cases that fail the data check (`pemma check`), listed in the run, instead of "
                "stopping before training"})

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            self.modalities = _modality_names(self.modalities)
        check_field_types(self)
        self.modalities = _modality_names(self.modalities)
        self.centres = [c.strip() for c in self.centres if c.strip()]
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.memory_cache_share <= 1.0:
            raise ValueError(f"memory_cache_share must be in [0, 1], got {self.memory_cache_share}")
        parse_roi_names(self.roi_names)  # ValueError naming the bad item


#: the PreprocessConfig fields of the PET-to-CT registration (an adaptation takes them from its own settings, the
#: rest of the preprocessing from its CT-only base)
REGISTRATION_FIELDS: tuple[str, ...] = ("register", "register_spacing", "register_iterations", "register_max_shift_mm")


@dataclass
class PreprocessConfig:
    """Preprocessing declared per modality; echoed in the run log."""

    target_spacing: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0],
                                        metadata={"help": "target spacing in mm (RAS)"})
    ct_window: list[float] = field(default_factory=lambda: [-250.0, 250.0],
                                   metadata={"help": "CT HU window, clipped and scaled to [0, 1]"})
    pet_suv_range: list[float] = field(default_factory=lambda: [0.0, 20.0],
                                       metadata={"help": "PET SUV range, clipped and scaled to [0, 1]"})
    crop_mm: list[float] = field(default_factory=lambda: [200.0, 200.0, 200.0],
                                 metadata={"help": "head-and-neck box (mm) below the top of the body"})
    body_threshold_hu: float = field(default=-500.0, metadata={"help": "CT HU above which a voxel is body"})
    register: str = field(default="none", metadata={
        "help": f"register the PET (and every other modality whose spec says register: true, e.g. MR; not dose) "
                f"to the CT before it is resampled onto the CT grid: {', '.join(REGISTER_MODES)} "
                "(none: trust the header geometry; rigid: rotation + shift; affine: also scale / shear); mutual "
                "information, the transform cached per case and modality; prediction applies the run's setting"})
    register_spacing: float = field(default=4.0, metadata={
        "help": "isotropic voxel size (mm) on which the registration runs (coarser is faster)"})
    register_iterations: int = field(default=100, metadata={
        "help": "optimizer iterations per resolution level of the registration"})
    register_max_shift_mm: float = field(default=50.0, metadata={
        "help": "a registration that moves any corner of the CT field of view by more than this (mm) has diverged "
                "(an error naming the case)"})
    modality_specs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "modalities beyond CT and PET: name -> spec (suffixes, channel_names, normalisation range / zscore "
                "/ minmax, range, percentiles, body_only, unit; see pemma.modalities); mr and dose have built-in "
                "defaults, an entry here replaces them"})

    def __post_init__(self) -> None:
        check_field_types(self)
        self.target_spacing = triple("target_spacing", self.target_spacing)
        self.crop_mm = triple("crop_mm", self.crop_mm)
        if self.register not in REGISTER_MODES:
            raise ValueError(f"register must be one of {', '.join(REGISTER_MODES)}, got {self.register!r}")
        for name in ("register_spacing", "register_max_shift_mm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.register_iterations < 1:
            raise ValueError(f"register_iterations must be >= 1, got {self.register_iterations}")
        self.modality_specs = {name: {k: v for k, v in dataclasses.asdict(spec).items() if k != "name"}
                               for name, spec in declared_specs(self.modality_specs).items()}
        for name in ("ct_window", "pet_suv_range"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name} must be [low, high], got {getattr(self, name)}")
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be [low, high] with low < high, got {[lo, hi]}")


    def modality_registry(self) -> dict[str, ModalitySpec]:
        """Every modality this preprocessing knows, in channel order (CT and PET with this config's windows, the
        declared ones, then the catalogue's others; see :func:`pemma.modalities.registry`)."""
        return registry(self.ct_window, self.pet_suv_range, declared_specs(self.modality_specs))


@dataclass
class ModelConfig:
    """Backbone and its size (a preset fills the per-backbone keyword arguments)."""

    backbone: str = field(default="unetr", metadata={"help": f"network: {' or '.join(BACKBONES)}"})
    roi_size: list[int] = field(default_factory=lambda: [64, 64, 64], metadata={"help": "crop / window size in voxels"})
    out_channels: int = field(default=3, metadata={"help": "background, GTVp, GTVn"})
    unetr: dict[str, Any] = field(default_factory=dict, metadata={"help": "monai UNETR keyword arguments"})
    swin_unetr: dict[str, Any] = field(default_factory=dict, metadata={"help": "monai SwinUNETR keyword arguments"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations (less GPU memory)"})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        self.roi_size = [int(v) for v in triple("roi_size", self.roi_size)]
        multiple = ROI_MULTIPLES[self.backbone]
        if any(v % multiple for v in self.roi_size):
            fit = [max(multiple, math.ceil(v / multiple) * multiple) for v in self.roi_size]
            raise ValueError(f"roi_size {self.roi_size} does not fit {self.backbone}, which needs every side to be a "
                             f"multiple of {multiple}; use e.g. {' '.join(map(str, fit))} (--roi)")
        if self.out_channels < 2:
            raise ValueError(f"out_channels must be >= 2, got {self.out_channels}")
        self._check_backbone_kwargs()

    def _check_backbone_kwargs(self) -> None:
        """Sizes MONAI would refuse only when the network is built (after data loading)."""
        unetr = self.unetr
        hidden, heads = unetr.get("hidden_size", 768), unetr.get("num_heads", 12)
        for key, value in (("hidden_size", hidden), ("num_heads", heads)):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"unetr.{key} must be a positive integer, got {shown(value)}")
        if hidden % heads:
            raise ValueError(f"unetr.hidden_size {hidden} is not divisible by unetr.num_heads {heads}; choose "
                             f"num_heads dividing it, e.g. {max(d for d in range(1, heads + 1) if hidden % d == 0)}")
        feature = self.swin_unetr.get("feature_size", 24)
        if isinstance(feature, bool) or not isinstance(feature, Integral) or feature < 12 or feature % 12:
            raise ValueError(f"swin_unetr.feature_size must be a positive multiple of 12, got {shown(feature)}")
        for key, least in (("depths", 0), ("num_heads", 1)):  # one entry per Swin stage (MONAI's SwinUNETR has 4)
            value = self.swin_unetr.get(key)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4 or any(
                    isinstance(v, bool) or not isinstance(v, Integral) or v < least for v in value):
                kind = "positive integers" if least else "integers >= 0"
                raise ValueError(f"swin_unetr.{key} must be 4 {kind} (one per stage), got {shown(value)}")

    @property
    def backbone_kwargs(self) -> dict[str, Any]:
        return dict(getattr(self, self.backbone))


@dataclass
class TrainConfig:
    """Optimisation, sampling and validation."""

    seed: int = field(default=0, metadata={"help": "seeds weights, split and every random crop"})
    epochs: int = field(default=30, metadata={"help": "passes over the training cases"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    batch_size: int = field(default=2, metadata={"help": "crops per optimizer step (per process)"})
    samples_per_case: int = field(default=1, metadata={"help": "random crops drawn from each case visit"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate (cosine decay to 0)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW weight decay"})
    label_ratios: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0],
                                      metadata={"help": "crop-centre ratios for background, GTVp, GTVn"})
    dice_batch: bool = field(default=True, metadata={
        "help": "Dice over the whole batch (nnU-Net's batch Dice) instead of per crop: a crop without a class "
                "then does not reward predicting none of it everywhere"})
    dice_background: bool = field(default=False, metadata={"help": "include the background class in the Dice term"})
    class_weights: list[float] | None = field(default=None, metadata={
        "help": "loss weights of background, GTVp, GTVn (cross-entropy; the Dice term takes the tumour ones); "
                "None weighs every class 1"})
    val_every: int = field(default=5, metadata={"help": "validate every N epochs (and at the end)"})
    overlap: float = field(default=0.25, metadata={"help": "sliding-window overlap"})
    sw_batch_size: int = field(default=2, metadata={"help": "windows per forward pass (sliding window)"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a resumable checkpoint every N steps"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    amp: bool = field(default=False, metadata={"help": "mixed precision (fp16 on CUDA, bf16 on CPU)"})

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("epochs", "batch_size", "samples_per_case", "val_every", "checkpoint_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.label_ratios) != 3 or min(self.label_ratios) < 0 or sum(self.label_ratios) <= 0:
            raise ValueError(f"label_ratios must be 3 non-negative values, got {self.label_ratios}")
        if self.class_weights is not None and (len(self.class_weights) != 3 or min(self.class_weights) <= 0):
            raise ValueError(f"class_weights must be 3 positive values (background, GTVp, GTVn), got "
                             f"{self.class_weights}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run folder."""

    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        specs = self.preprocess.modality_registry()
        unknown = [m for m in self.data.modalities if m not in specs]
        if unknown:
            raise ValueError(f"data.modalities: no spec for {', '.join(unknown)} (known: {', '.join(specs)}); "
                             f"declare it in preprocess.modality_specs, e.g. modality_specs: "
                             f"{{{unknown[0]}: {{normalisation: zscore}}}}")
        self.data.modalities = order_modalities(self.data.modalities, list(specs))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not out["preprocess"]["modality_specs"]:  # CT / PET runs: config.yaml as before specs could be declared
            del out["preprocess"]["modality_specs"]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        sections = {"data": DataConfig, "preprocess": PreprocessConfig, "model": ModelConfig, "train": TrainConfig}
        if not isinstance(raw, Mapping):
            raise ValueError(f"a config must be a mapping of sections ({', '.join(sections)}), got {shown(raw)}")
        unknown = sorted(set(raw) - set(sections) - {"preset"})
        if unknown:
            raise ValueError(f"unknown config sections {unknown}")
        kwargs: dict[str, Any] = {"preset": raw.get("preset", "tiny")}
        for name, klass in sections.items():
            section = raw.get(name) or {}
            if not isinstance(section, Mapping):
                raise ValueError(f"{name} must be a mapping of settings, got {shown(section)}")
            values = {k: v for k, v in section.items() if k not in RETIRED_KEYS.get(name, ())}
            known = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"unknown keys in {name}: {bad}")
            try:
                kwargs[name] = klass(**values)
            except (ValueError, TypeError) as exc:  # every field message starts with the field's name
                raise ValueError(f"{name}.{str(exc).splitlines()[0]}") from None
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        from pemma.io_utils import write_text_atomic  # torch-free import of this module (fast `pemma --help`)

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise PemmaError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            return cls.from_dict(raw)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            raise PemmaError(f"{path}: invalid config ({str(exc).splitlines()[0]})") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_dict(name: str) -> dict[str, Any]:
    """The raw settings of a shipped preset (``tiny`` or ``paper``)."""
    files = resources.files("pemma") / "presets"
    available = sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))
    if name not in available:
        raise PemmaError(f"unknown preset {name!r}; available: {', '.join(available)}")
    return yaml.safe_load((files / f"{name}.yaml").read_text()) or {}


def build_config(preset: str = "tiny", config_file: str | Path | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Compose a :class:`RunConfig` from a preset, an optional YAML file and overrides.

    Args:
        preset: shipped preset name. Default ``"tiny"``.
        config_file: user YAML with any of the sections ``data``, ``preprocess``, ``model``, ``train``.
        overrides: ``{section: {key: value}}``; ``None`` values are ignored.

    Example:
        >>> cfg = build_config("tiny", overrides={"model": {"backbone": "swin_unetr"}})
    """
    raw: dict[str, Any] = _merge({}, preset_dict(preset))
    user: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise PemmaError(f"{path}: config file not found")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PemmaError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(user, dict) or not all(isinstance(v, dict) or v is None for v in user.values()):
            raise PemmaError(f"{path}: invalid configuration: the file must map sections (data, preprocess, model, "
                             f"train) to their settings, e.g. 'train: {{seed: 1}}'")
        raw = _merge(raw, user)
    flags: dict[str, dict[str, Any]] = {}
    for section, values in (overrides or {}).items():
        flags[section] = {k: v for k, v in values.items() if v is not None}
        raw = _merge(raw, {section: flags[section]})
    raw["preset"] = preset
    model = raw.setdefault("model", {})
    if isinstance(model.get("roi_size"), dict):  # presets may size the window per backbone
        model["roi_size"] = model["roi_size"][model.get("backbone", "unetr")]
    try:
        return RunConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0]
        raise PemmaError(f"{_source_of(message, user, flags, config_file)}invalid configuration: "
                         f"{message}") from None


def _source_of(message: str, user: dict[str, Any], flags: dict[str, dict[str, Any]],
               config_file: str | Path | None) -> str:
    """``"<file>: "`` when the setting an error names came from the user's YAML file (not from a flag)."""
    if config_file is not None and message.startswith("unknown"):  # an unknown name the user's file holds
        names = set(re.findall(r"'([^']+)'", message))
        in_file = set(user) | {k for v in user.values() if isinstance(v, dict) for k in v}
        return f"{config_file}: " if names & in_file else ""
    section, _, rest = message.partition(".")
    name = rest.split(" ", 1)[0].split(".")[0]
    if config_file is None or name in flags.get(section, {}) or name not in (user.get(section) or {}):
        return ""
    return f"{config_file}: "
