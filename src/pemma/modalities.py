"""Modalities as names: what an input channel is called, how its files are found and how its intensities are scaled.

A :class:`ModalitySpec` declares one modality: its ``name`` (``ct``, ``pet``, ``mr``, ``dose``, ``t2``...), the file
suffixes of the HECKTOR layout (``ID__CT.nii.gz``, ``ID__PT.nii.gz``, ``ID__MR.nii.gz``), the nnU-Net channel names
that mean it (``dataset.json`` ``channel_names``), and its intensity normalisation:

* ``range``: clip to ``[low, high]`` (CT: a HU window, PET: an SUV range, dose: a Gy range) and scale to [0, 1];
* ``zscore``: clip to the ``percentiles`` of the voxels inside the body, then subtract their mean and divide by
  their standard deviation (MR); voxels outside the body become 0;
* ``minmax``: clip to the ``percentiles`` inside the body and scale them to [0, 1] (MR); outside the body 0.

CT and PET are two entries of the same registry (their windows stay the ``preprocess.ct_window`` /
``preprocess.pet_suv_range`` settings); :data:`CATALOGUE` holds the defaults of modalities pemma knows without
being told (``mr``, ``dose``), and a config declares others (``preprocess.modality_specs``).

Example:
    >>> spec = ModalitySpec("t2", normalisation="zscore")
    >>> spec.suffixes, spec.channel_names
    (['__T2'], ['t2'])
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pemma.vocab import MODALITY_ALIASES, MODALITY_ORDER

#: intensity normalisations a modality may declare
NORMALISATIONS: tuple[str, ...] = ("range", "zscore", "minmax")
#: a modality name: lower case, a letter first (it becomes a dict key, a file suffix and an input-set token)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def _floats(owner: str, name: str, value: Any, length: int) -> list[float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{owner}.{name} must be a list of {length} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{owner}.{name} must be {length} finite numbers, got {list(value)!r}")
        out.append(float(v))
    if len(out) != length:
        raise ValueError(f"{owner}.{name} must be [low, high], got {out}")
    if not out[0] < out[1]:
        raise ValueError(f"{owner}.{name} must be [low, high] with low < high, got {out}")
    return out


def _names(owner: str, name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{owner}.{name} must be a list of names, got {value!r}")
    return [v.strip() for v in value]


@dataclass
class ModalitySpec:
    """One input modality (see the module docstring).

    Args:
        name: the modality's name (lower case), e.g. ``mr``.
        suffixes: HECKTOR-style file-name suffixes before the ending (``ID__MR.nii.gz``). Default ``[__<NAME>]``.
        channel_names: nnU-Net ``channel_names`` that mean this modality (case-insensitive; matched as the whole
            name or as one of its words). Default ``[<name>]``.
        normalisation: ``range``, ``zscore`` or ``minmax``.
        range: ``[low, high]`` of ``range`` (HU, SUV, Gy...), clipped and scaled to [0, 1].
        percentiles: ``[low, high]`` percentiles (0-100) of the body's voxels that ``zscore`` / ``minmax`` clip to.
        body_only: ``zscore`` / ``minmax`` statistics from the body only (the CT's body when there is a CT, else the
            voxels above the image's minimum); voxels outside become 0.
        unit: the intensity unit, for the run log (``HU``, ``SUV``, ``Gy``; empty for MR).
        register: registered to the CT when a run registers (``--register rigid|affine``,
            :mod:`pemma.data.registration`); false for a modality already on the CT grid (``dose``).
    """

    name: str = field(metadata={"help": "modality name (lower case), e.g. mr"})
    suffixes: list[str] = field(default_factory=list, metadata={
        "help": "HECKTOR-style file suffixes before the file ending (ID__MR.nii.gz); default [__<NAME>]"})
    channel_names: list[str] = field(default_factory=list, metadata={
        "help": "nnU-Net dataset.json channel names meaning this modality (case-insensitive); default [<name>]"})
    normalisation: str = field(default="range", metadata={
        "help": f"intensity normalisation: {', '.join(NORMALISATIONS)} (range: clip to range and scale to [0, 1]; "
                "zscore / minmax: clip to the percentiles inside the body, then z-score / scale to [0, 1])"})
    range: list[float] | None = field(default=None, metadata={
        "help": "[low, high] of the range normalisation (HU, SUV, Gy), clipped and scaled to [0, 1]"})
    percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5], metadata={
        "help": "[low, high] percentiles (0-100) of the body's voxels that zscore / minmax clip to"})
    body_only: bool = field(default=True, metadata={
        "help": "zscore / minmax statistics from the body only (the CT body, else voxels above the image minimum); "
                "outside it the channel is 0"})
    unit: str = field(default="", metadata={"help": "intensity unit for the run log (HU, SUV, Gy)"})
    register: bool = field(default=True, metadata={
        "help": "registered to the CT when a run registers (--register rigid / affine), like the PET; false for a "
                "modality already on the CT grid (dose from the planning system, a derived map), which keeps its "
                "header geometry"})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(f"modality name must be lower-case letters, digits or _ (a letter first), got "
                             f"{self.name!r}")
        owner = f"modality_specs.{self.name}"
        self.suffixes = _names(owner, "suffixes", self.suffixes) if self.suffixes else [f"__{self.name.upper()}"]
        self.channel_names = (_names(owner, "channel_names", self.channel_names) if self.channel_names
                              else [self.name])
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"{owner}.normalisation must be one of {', '.join(NORMALISATIONS)}, got "
                             f"{self.normalisation!r}")
        if self.normalisation == "range" and self.range is None:
            raise ValueError(f"{owner}.range must be set for the range normalisation, e.g. range: [0.0, 80.0]")
        if self.range is not None:
            self.range = _floats(owner, "range", self.range, 2)
        self.percentiles = _floats(owner, "percentiles", self.percentiles, 2)
        if self.percentiles[0] < 0 or self.percentiles[1] > 100:
            raise ValueError(f"{owner}.percentiles must lie in [0, 100], got {self.percentiles}")
        if not isinstance(self.body_only, bool):
            raise ValueError(f"{owner}.body_only must be true or false, got {self.body_only!r}")
        if not isinstance(self.unit, str):
            raise ValueError(f"{owner}.unit must be a string, got {self.unit!r}")
        if not isinstance(self.register, bool):
            raise ValueError(f"{owner}.register must be true or false, got {self.register!r}")

    @property
    def label(self) -> str:
        """The modality as users write it in messages (``CT``, ``PET``, ``MR``)."""
        return self.name.upper()

    def describe(self) -> str:
        """One line for the run log, e.g. ``MR: clip to percentiles [0.5, 99.5] inside the body, z-score``."""
        if self.normalisation == "range":
            unit = f"{self.unit} " if self.unit else ""
            return f"{self.label}: clip {unit}to {self.range}, scale to [0, 1]"
        where = "inside the body" if self.body_only else "of the image"
        how = "z-score" if self.normalisation == "zscore" else "scale to [0, 1]"
        return f"{self.label}: clip to percentiles {self.percentiles} {where}, {how}"


def ct_spec(window: list[float]) -> ModalitySpec:
    """CT: HECKTOR ``__CT``, nnU-Net ``CT``, clipped to the HU ``window`` (``preprocess.ct_window``)."""
    return ModalitySpec("ct", ["__CT"], ["ct", "ctres", "hu", "computed tomography"], "range", list(window), unit="HU")


def pet_spec(suv_range: list[float]) -> ModalitySpec:
    """PET: HECKTOR ``__PT``, nnU-Net ``PET`` / ``PT`` / ``FDG`` / ``SUV``, clipped to ``preprocess.pet_suv_range``."""
    return ModalitySpec("pet", ["__PT"], ["pet", "pt", "fdg", "fdgpet", "suv", "petres"], "range", list(suv_range),
                        unit="SUV")


#: modalities pemma knows without a declaration (a ``preprocess.modality_specs`` entry of the same name wins)
CATALOGUE: dict[str, ModalitySpec] = {
    "mr": ModalitySpec("mr", ["__MR"], ["mr", "mri", "t1", "t2", "t1w", "t2w", "flair"], "zscore"),
    "dose": ModalitySpec("dose", ["__RTDOSE", "__DOSE"], ["dose", "rtdose"], "range", [0.0, 80.0], unit="Gy",
                         register=False),  # computed on the planning CT: already on its grid
}


def declared_specs(raw: Any) -> dict[str, ModalitySpec]:
    """``preprocess.modality_specs`` (``{name: {suffixes, channel_names, normalisation, ...}}``) as specs.

    Raises:
        ValueError: not a mapping, CT / PET declared here (their windows are ``ct_window`` / ``pet_suv_range``), or
            an invalid spec (the message names the modality and the field).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"modality_specs must map names to specs, got {raw!r}; write e.g. modality_specs: "
                         f"{{t2: {{normalisation: zscore}}}}")
    out: dict[str, ModalitySpec] = {}
    known = {f.name for f in dataclasses.fields(ModalitySpec)}
    for key, value in raw.items():
        name = MODALITY_ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if name in MODALITY_ORDER:
            raise ValueError(f"modality_specs.{name}: CT and PET are built in; set ct_window / pet_suv_range instead")
        if isinstance(value, ModalitySpec):
            value = dataclasses.asdict(value)
        if value is None:
            value = dict(dataclasses.asdict(CATALOGUE[name])) if name in CATALOGUE else {}
        if not isinstance(value, Mapping):
            raise ValueError(f"modality_specs.{name} must be a mapping of spec fields, got {value!r}")
        bad = sorted(set(value) - known)
        if bad:
            raise ValueError(f"modality_specs.{name}: unknown keys {bad} (known: {', '.join(sorted(known))})")
        if value.get("name", name) != name:
            raise ValueError(f"modality_specs.{name}: name {value['name']!r} differs from its key")
        out[name] = ModalitySpec(**{**value, "name": name})
    return out


def registry(ct_window: list[float], pet_suv_range: list[float],
             declared: Mapping[str, ModalitySpec] | None = None) -> dict[str, ModalitySpec]:
    """Every modality a run can name, in channel order: CT, PET, the declared ones, then the catalogue's others."""
    out = {"ct": ct_spec(ct_window), "pet": pet_spec(pet_suv_range)}
    out.update(declared or {})
    for name, spec in CATALOGUE.items():
        out.setdefault(name, spec)
    return out


def default_registry() -> dict[str, ModalitySpec]:
    """:func:`registry` with pemma's default CT / PET windows and nothing declared (for file discovery)."""
    return registry([-250.0, 250.0], [0.0, 20.0])


def order_modalities(names: list[str], order: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in the channel ``order`` (names outside it after, in their given order), without duplicates."""
    unique = list(dict.fromkeys(names))
    return [m for m in order if m in unique] + [m for m in unique if m not in order]
