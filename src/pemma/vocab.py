"""pemma's vocabulary: every name the code, the CLI, strategy files and run folders share, spelled once.

This module is the bottom of the package (it imports nothing from pemma), so any layer may use it.

* **Backbones**: ``unetr``, ``swin_unetr`` (MONAI ``UNETR`` / ``SwinUNETR``).
* **Modalities** and their fixed channel order ``[CT, PET]``; input sets such as ``("ct", "pet")`` and their
  text form ``"ct+pet"``. Other modalities (MR, dose...) are names declared by specs (``pemma.modalities``),
  ordered after CT and PET.
* **Methods** of adding PET to a CT model, with one canonical spelling each (the spelling of strategy files and
  ``results.csv``); the CLI's older spellings (``lora``, ``early-fusion``, ``full`` ...) are accepted aliases.
* **Run kinds**: what a run folder holds (``backbone``, ``pemma``, ``pemma_stacked``, ``pemma_full``, ``late_fusion``,
  ``survival``).
* **Centres** of HECKTOR 2022 and its **label values**.

Example:
    >>> canonical_method("early-fusion")
    'early_fusion'
    >>> input_set_name(parse_modalities("PET,ct"))
    'ct+pet'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# ---------------------------------------------------------------------------------------------- backbones
#: MONAI backbones pemma builds (``pemma.models.registry`` holds their builders).
BACKBONES: tuple[str, ...] = ("unetr", "swin_unetr")
#: Every ROI side of a backbone must be a multiple of this (UNETR: its 16-voxel patches; Swin UNETR: 2 x 2^4
#: downsampling of its windows). Checked when a config is built, before anything runs.
ROI_MULTIPLES: dict[str, int] = {"unetr": 16, "swin_unetr": 32}

# ---------------------------------------------------------------------------------------------- routes, recipes
#: How CT-only input runs in an adapted model: ``exact`` (pemma's default: the untouched CT base, so CT output
#: equals the base's before and after any update) or ``shared`` (the paper's: through the adapted network, CT-only
#: draws of modality dropout train, single-modality updates keep training the same adapter).
CT_ROUTES: tuple[str, ...] = ("exact", "shared")
#: Named sets of adaptation defaults (YAML files shipped with the package): ``pemma`` (pemma's defaults) and
#: ``authors`` (the configuration of the paper's released code, per backbone).
RECIPES: tuple[str, ...] = ("pemma", "authors")
#: What an adaptation validates on to keep its best weights: ``full`` (every modality together, e.g. CT+PET) or
#: ``each`` (every input set modality dropout trains, scored alone and averaged: the authors' "validation on all
#: three").
VALIDATION_INPUTS: tuple[str, ...] = ("full", "each")

# ---------------------------------------------------------------------------------------------- export formats
#: ``pemma export --format``: a TorchScript file, an ONNX file, or a MONAI bundle folder.
EXPORT_FORMATS: tuple[str, ...] = ("torchscript", "onnx", "bundle")
#: ``pemma import-model --backbone``: the MONAI networks whose plain weights pemma imports.
IMPORT_BACKBONES: tuple[str, ...] = BACKBONES

# ---------------------------------------------------------------------------------------------- modalities
#: ``--register`` choices: PET left on its header geometry, or registered to the CT (rigid: Euler 3-D; affine)
REGISTER_MODES: tuple[str, ...] = ("none", "rigid", "affine")
#: Fixed channel order of every multi-modal tensor in pemma.
MODALITY_ORDER: tuple[str, ...] = ("ct", "pet")
#: Other spellings users write for a modality (HECKTOR's file suffix ``__PT``).
MODALITY_ALIASES: dict[str, str] = {"pt": "pet"}
#: Input sets every centre is evaluated with (``pemma reproduce``), in report order.
EVAL_INPUT_SETS: tuple[tuple[str, ...], ...] = (("ct",), ("pet",), ("ct", "pet"))
#: The input sets of modality dropout, in the order of ``AdapterConfig.modality_dropout``.
DROPOUT_INPUT_SETS: tuple[tuple[str, ...], ...] = (("ct", "pet"), ("ct",), ("pet",))
#: Input sets a two-modality model (PEMMA, late fusion, full fine-tuning) accepts, in run-metadata order.
ALL_INPUT_SETS: tuple[tuple[str, ...], ...] = DROPOUT_INPUT_SETS


def parse_modalities(value: str | Iterable[str], known: Sequence[str] = MODALITY_ORDER) -> list[str]:
    """``"ct,pet"``, ``"ct+pet"`` or ``["PET", "ct"]`` (any order, case, ``pt`` for PET) as ``["ct", "pet"]``.

    Args:
        value: the names, as text or a sequence.
        known: the modalities allowed, in channel order. Default :data:`MODALITY_ORDER` (CT and PET); a run with
            other modalities passes its registry's names (``pemma.modalities``).

    Raises:
        ValueError: empty, or a name outside ``known``.
    """
    items = value.replace("+", ",").split(",") if isinstance(value, str) else list(value)
    names = [str(m).strip().lower() for m in items if str(m).strip()]
    names = [MODALITY_ALIASES.get(m, m) for m in names]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"modalities must be a non-empty subset of {list(known)}, got {items}")
    return [m for m in known if m in names]


def check_modalities(modalities: Any, known: Sequence[str] = MODALITY_ORDER) -> tuple[str, ...]:
    """``modalities`` as a tuple, checked to be a non-empty subset of ``known`` (default :data:`MODALITY_ORDER`) in
    that order (no parsing)."""
    if isinstance(modalities, str) or not hasattr(modalities, "__iter__"):
        raise ValueError(f"modalities must be a sequence of names such as ('ct', 'pet'), got {modalities!r}")
    mods = tuple(modalities)
    known = tuple(known)
    if not mods or any(m not in known for m in mods) or len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be a non-empty subset of {known}, got {mods!r}")
    if list(mods) != sorted(mods, key=known.index):
        raise ValueError(f"modalities must follow the channel order {known}, got {mods!r}")
    return mods


def input_set_name(modalities: Iterable[str]) -> str:
    """``("ct", "pet")`` -> ``"ct+pet"`` (the spelling of results tables and run metadata)."""
    return "+".join(modalities)


def input_set_of(name: str) -> tuple[str, ...]:
    """``"ct+pet"`` -> ``("ct", "pet")``; inverse of :func:`input_set_name`."""
    return tuple(name.split("+"))


#: The text form of :data:`EVAL_INPUT_SETS`: ``("ct", "pet", "ct+pet")``.
EVAL_INPUTS: tuple[str, ...] = tuple(input_set_name(s) for s in EVAL_INPUT_SETS)

# ---------------------------------------------------------------------------------------------- methods
#: Canonical method names (strategy files, results tables, ``pemma adapt --method``).
METHODS: tuple[str, ...] = ("pemma_lora", "pemma_dora", "early_fusion", "late_fusion", "full_finetune")
#: PEMMA methods (adapters on the frozen CT model) and the adapter type each uses.
PEMMA_METHODS: dict[str, str] = {"pemma_lora": "lora", "pemma_dora": "dora"}
#: Adapter types (``AdapterConfig.method``; prognosis stages name their adapters so): LoRA and DoRA.
ADAPTER_TYPES: tuple[str, ...] = tuple(PEMMA_METHODS.values())
#: Baselines of the paper, trained from the CT model like PEMMA.
BASELINE_METHODS: tuple[str, ...] = ("early_fusion", "late_fusion", "full_finetune")
#: Methods that add PET only (late fusion's second network is a PET network); the others add any modality (MR...).
PET_ONLY_METHODS: tuple[str, ...] = ("late_fusion",)
#: Older spellings still accepted (the CLI's ``--method`` values before the vocabulary was unified).
METHOD_ALIASES: dict[str, str] = {
    "lora": "pemma_lora", "dora": "pemma_dora", "early-fusion": "early_fusion", "late-fusion": "late_fusion",
    "full": "full_finetune", "full-finetune": "full_finetune", "pemma-lora": "pemma_lora",
    "pemma-dora": "pemma_dora",
}


def canonical_method(name: str) -> str:
    """The canonical spelling of a method name or alias.

    Raises:
        ValueError: an unknown method (the message lists the canonical names).
    """
    key = str(name).strip().lower()
    key = METHOD_ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return key


def adapter_type(name: str) -> str:
    """The adapter type (``lora``, ``dora``) that a PEMMA method names, in any spelling (``pemma_lora``, ``dora``,
    ``pemma-dora``): prognosis stages and ``AdapterConfig`` take the type, users may write the method.

    Raises:
        ValueError: a name that is neither an adapter type nor a PEMMA method.
    """
    key = str(name).strip().lower()
    method = METHOD_ALIASES.get(key, key)  # lora -> pemma_lora, pemma-dora -> pemma_dora
    if method not in PEMMA_METHODS:
        raise ValueError(f"unknown method {name!r} for an adapter; choose {', '.join(ADAPTER_TYPES)} (or "
                         f"{', '.join(PEMMA_METHODS)})")
    return PEMMA_METHODS[method]


def adapter_choices() -> list[str]:
    """Every spelling :func:`adapter_type` accepts (adapter types first), for argparse ``choices``."""
    return [*ADAPTER_TYPES, *PEMMA_METHODS,
            *(a for a, m in METHOD_ALIASES.items() if m in PEMMA_METHODS and a not in ADAPTER_TYPES)]


def method_choices() -> list[str]:
    """Every accepted spelling (canonical first), for argparse ``choices``."""
    return [*METHODS, *METHOD_ALIASES]


# ---------------------------------------------------------------------------------------------- run kinds
#: A plain MONAI network trained by ``pemma train`` (CT-only, or early fusion with several channels).
KIND_BACKBONE = "backbone"
#: A PEMMA-adapted run: adapters and PET pathway on a referenced CT base run.
KIND_PEMMA = "pemma"
#: A modality stacked on an adapted run (CT+PET -> CT+PET+MR): one more adapter level on a referenced PEMMA run.
KIND_PEMMA_STACKED = "pemma_stacked"
#: Full fine-tuning: the PEMMA model with every parameter trained (all weights stored).
KIND_PEMMA_FULL = "pemma_full"
#: Late fusion: a PET network whose logits are summed with the referenced CT base's.
KIND_LATE_FUSION = "late_fusion"
#: A prognosis (survival) run.
KIND_SURVIVAL = "survival"
RUN_KINDS: tuple[str, ...] = (KIND_BACKBONE, KIND_PEMMA, KIND_PEMMA_STACKED, KIND_PEMMA_FULL, KIND_LATE_FUSION,
                              KIND_SURVIVAL)

# ---------------------------------------------------------------------------------------------- prognosis
#: Survival heads (``pemma.survival.heads``).
SURVIVAL_HEADS: tuple[str, ...] = ("mtlr", "cox")

# ---------------------------------------------------------------------------------------------- data
#: Centres of HECKTOR 2022 (training: CHUM, CHUP, CHUS, CHUV, MDA, HGJ, HMR; test: CHB, USZ).
HECKTOR_CENTRES: tuple[str, ...] = ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR", "CHB", "USZ")
#: HECKTOR 2022's Task-2 tables (endpoints: PatientID, Relapse, RFS; clinical information), and its HPV column.
ENDPOINT_FILE = "hecktor2022_endpoint_training.csv"
CLINICAL_FILE = "hecktor2022_clinical_info_training.csv"
HPV_COLUMN = "HPV status (0=-, 1=+)"
#: Label values of HECKTOR 2022.
LABELS: dict[str, int] = {"background": 0, "GTVp": 1, "GTVn": 2}
#: The tumour classes scored by HECKTOR (DSCagg per class), in label order.
TUMOUR_CLASSES: tuple[str, ...] = ("GTVp", "GTVn")
#: Every valid label value.
LABEL_VALUES: tuple[int, ...] = tuple(LABELS.values())
#: How a predictions folder scored by ``evaluate --pred`` numbers its labels: pemma's (GTVp 1, GTVn 2, what
#: ``pemma predict`` writes) or the dataset's (its ``dataset.json`` labels, what nnU-Net predicts)
PRED_NUMBERINGS: tuple[str, ...] = ("pemma", "dataset")
#: class name -> the RTSTRUCT ROI / SEG segment names a user gave for it (lower case), ``--roi-names``
RoiNames = dict[str, tuple[str, ...]]


def parse_roi_names(value: str | Mapping[str, object] | None) -> RoiNames:
    """``"GTVp=GTV_primary,GTVn=GTV_LN+GTV_LN2"`` (or ``{"GTVp": ["GTV_primary"], ...}``) as
    ``{"GTVp": ("gtv_primary",), "GTVn": ("gtv_ln", "gtv_ln2")}``; empty / None: ``{}`` (the default names).

    Raises:
        ValueError: an item without ``=``, a class other than GTVp / GTVn, or an empty ROI name.
    """
    if not value:
        return {}
    if isinstance(value, str):
        pairs: list[tuple[str, str]] = []
        for item in (i.strip() for i in value.split(",")):
            if item:
                if "=" not in item:
                    raise ValueError(f"roi_names item {item!r} must be CLASS=ROI[+ROI...], e.g. GTVp=GTV_primary")
                cls, names = item.split("=", 1)
                pairs += [(cls, n) for n in names.split("+")]
    else:
        pairs = [(str(cls), str(n)) for cls, names in value.items()
                 for n in ([names] if isinstance(names, str) else list(names))]  # type: ignore[call-overload]
    chosen: dict[str, list[str]] = {}
    canonical = {c.lower(): c for c in TUMOUR_CLASSES}
    for cls, name in pairs:
        key = canonical.get(cls.strip().lower())
        if key is None:
            raise ValueError(f"roi_names class {cls.strip()!r} must be one of {', '.join(TUMOUR_CLASSES)}")
        if not name.strip():
            raise ValueError(f"roi_names gives an empty ROI name for {key}")
        chosen.setdefault(key, []).append(name.strip().lower())
    return {k: tuple(v) for k, v in chosen.items()}


#: Phantom difficulties of ``pemma synth --difficulty`` (``pemma.data.phantom_hard``).
PHANTOM_DIFFICULTIES: tuple[str, ...] = ("normal", "hard")
