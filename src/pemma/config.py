"""Run configuration: dataclasses with per-field help, loaded from YAML presets and saved into every run.

Precedence (lowest to highest): dataclass defaults < preset YAML (``pemma/presets/<name>.yaml``)
< user YAML (``--config``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pemma.errors import PemmaError
from pemma.vocab import BACKBONES, parse_modalities

#: keys that older pemma versions wrote into ``config.yaml`` and that are now read and ignored
RETIRED_KEYS: dict[str, tuple[str, ...]] = {"data": ("num_workers",)}


def _triple(name: str, value: Any, positive: bool = True) -> list[float]:
    vals = list(value)
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values, got {vals}")
    if positive and any(float(v) <= 0 for v in vals):
        raise ValueError(f"{name} must be positive, got {vals}")
    return vals


@dataclass
class DataConfig:
    """Which cases to read."""

    root: str = field(default="", metadata={"help": "dataset folder (HECKTOR or nnU-Net raw) or datalist JSON"})
    centres: list[str] = field(default_factory=list, metadata={"help": "centres to use; empty = all"})
    modalities: list[str] = field(default_factory=lambda: ["ct"], metadata={"help": "input channels, [ct, pet] order"})
    val_fraction: float = field(default=0.2, metadata={"help": "validation share per centre (seeded split)"})
    cache_dir: str | None = field(default=None,
                                  metadata={"help": "persistent preprocessing cache folder (default: in memory)"})
    exclude_bad_cases: bool = field(default=False, metadata={
        "help": "leave out the cases that fail the data check (`pemma check`), listed in the run, instead of "
                "stopping before training"})

    def __post_init__(self) -> None:
        self.modalities = parse_modalities(self.modalities)
        self.centres = [c.strip() for c in self.centres if c.strip()]
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


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

    def __post_init__(self) -> None:
        self.target_spacing = _triple("target_spacing", self.target_spacing)
        self.crop_mm = _triple("crop_mm", self.crop_mm)
        for name in ("ct_window", "pet_suv_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be [low, high] with low < high, got {[lo, hi]}")


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
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        self.roi_size = [int(v) for v in _triple("roi_size", self.roi_size)]
        if self.out_channels < 2:
            raise ValueError(f"out_channels must be >= 2, got {self.out_channels}")

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
    val_every: int = field(default=5, metadata={"help": "validate every N epochs (and at the end)"})
    overlap: float = field(default=0.25, metadata={"help": "sliding-window overlap"})
    sw_batch_size: int = field(default=2, metadata={"help": "windows per forward pass (sliding window)"})
    checkpoint_every: int = field(default=10, metadata={"help": "save a resumable checkpoint every N steps"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    amp: bool = field(default=False, metadata={"help": "mixed precision (fp16 on CUDA, bf16 on CPU)"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "samples_per_case", "val_every", "checkpoint_every", "sw_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.label_ratios) != 3 or min(self.label_ratios) < 0 or sum(self.label_ratios) <= 0:
            raise ValueError(f"label_ratios must be 3 non-negative values, got {self.label_ratios}")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        sections = {"data": DataConfig, "preprocess": PreprocessConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = sorted(set(raw) - set(sections) - {"preset"})
        if unknown:
            raise ValueError(f"unknown config sections {unknown}")
        kwargs: dict[str, Any] = {"preset": raw.get("preset", "tiny")}
        for name, klass in sections.items():
            values = {k: v for k, v in (raw.get(name) or {}).items() if k not in RETIRED_KEYS.get(name, ())}
            known = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"unknown keys in {name}: {bad}")
            kwargs[name] = klass(**values)
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
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise PemmaError(f"{path}: config file not found")
        try:
            raw = _merge(raw, yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise PemmaError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    for section, values in (overrides or {}).items():
        clean = {k: v for k, v in values.items() if v is not None}
        raw = _merge(raw, {section: clean})
    raw["preset"] = preset
    model = raw.setdefault("model", {})
    if isinstance(model.get("roi_size"), dict):  # presets may size the window per backbone
        model["roi_size"] = model["roi_size"][model.get("backbone", "unetr")]
    try:
        return RunConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise PemmaError(f"invalid configuration: {str(exc).splitlines()[0]}") from None
