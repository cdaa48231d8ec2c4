"""Deterministic synthetic PET/CT dataset in the HECKTOR 2022 layout (what ``pemma synth OUT`` writes).

Each case is a small head-and-neck phantom (see :mod:`pemma.data.phantom_anatomy`): body, fat, airway,
spine, mandible, skull and brain on CT; physiological PET uptake (brain, tonsils, salivary glands, vocal
cords) and unlabelled inflammation hot spots as confounders; a GTVp with modest CT contrast (+25..+40 HU
against 15-40 HU noise) and strong heterogeneous FDG uptake; 0-3 GTVn. Every centre has its own scanner
character (CT noise, PET resolution / noise / SUV calibration, field of view). PET is drawn as activity
on the CT grid, blurred, resampled through the affines onto its own coarser, offset grid and given
Poisson-like noise. Clinical variables have HECKTOR-like missingness and relapse-free survival follows a
Weibull hazard driven by tumour volume, PET uptake, HPV, age and performance status
(:mod:`pemma.data.phantom_survival`).
``PhantomConfig(difficulty="hard")`` weakens the CT contrast and adds unlabelled PET look-alikes and
physiological uptake on the same labels and grids (:mod:`pemma.data.phantom_hard`).

Output (patient IDs ``CENTRE-NNN`` from 000)::

    OUT/imagesTr/CHUM-000__CT.nii.gz   int16 HU on the CT grid
    OUT/imagesTr/CHUM-000__PT.nii.gz   float32 SUV on the PET grid
    OUT/imagesTr/CHUM-000__MR.nii.gz   float32 MR-like T2 (arbitrary units) on its own grid, only with
                                       ``modalities=("ct", "pet", "mr")`` (:mod:`pemma.data.phantom_mr`)
    OUT/imagesTr/CHUM-000__RTDOSE.nii.gz  float32 planned dose (Gy) on the CT grid, only with "dose" among the
                                       modalities (:mod:`pemma.data.phantom_dose`)
    OUT/labelsTr/CHUM-000.nii.gz       uint8 0/1 GTVp/2 GTVn on the CT grid
    OUT/hecktor2022_clinical_info_training.csv
    OUT/hecktor2022_endpoint_training.csv
    OUT/phantom.json                   the settings (difficulty, seed, ...), only for a non-default difficulty
                                       or modalities

Example:
    >>> from pemma.data.phantom import PhantomConfig, synthesize_phantom
    >>> ids = synthesize_phantom("phantom", PhantomConfig(cases_per_centre=2, centres=("CHUM", "MDA")))
    >>> ids
    ['CHUM-000', 'CHUM-001', 'MDA-000', 'MDA-001']
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from pemma.data.phantom_anatomy import (
    SCANNERS,
    LesionSummary,
    RefGrid,
    add_metal,
    paint_anatomy,
    paint_confounders,
    paint_lesions,
    smooth_noise,
)
from pemma.data.phantom_dose import paint_dose
from pemma.data.phantom_hard import DIFFICULTIES, HARD_HU_DELTA, paint_hard_confounders
from pemma.data.phantom_marker import PHANTOM_DESCRIP, refuse_other_dataset
from pemma.data.phantom_mr import MR_MAX_OFFSET_MM, MR_SPACING_MM, paint_mr
from pemma.data.phantom_survival import relapse_and_rfs
from pemma.errors import PemmaError
from pemma.io_utils import save_nifti, write_text_atomic
from pemma.modalities import CATALOGUE
from pemma.vocab import CLINICAL_FILE, ENDPOINT_FILE, HPV_COLUMN

CLINICAL_HEADER: tuple[str, ...] = ("PatientID", "Task 1", "Task 2", "CenterID", "Gender", "Age", "Weight",
                                    "Tobacco", "Alcohol", "Performance status", HPV_COLUMN, "Surgery",
                                    "Chemotherapy")
ENDPOINT_HEADER: tuple[str, ...] = ("PatientID", "Relapse", "RFS")
#: What was synthesised (the :class:`PhantomConfig` fields), written next to the CSVs for a phantom other than
#: the default one (a default phantom keeps exactly the HECKTOR layout).
PHANTOM_FILE = "phantom.json"
CT_RANGE: tuple[int, int] = (-1024, 3071)  # HU clip range; -1024 is also the padding value
#: Base missing rates of clinical columns; the centre's ``missing_boost`` is added to the boosted ones.
MISSING: dict[str, float] = {"Weight": 0.08, "Tobacco": 0.45, "Alcohol": 0.50, "Performance status": 0.45,
                             HPV_COLUMN: 0.30, "Surgery": 0.10}
BOOSTED = ("Tobacco", "Alcohol", "Performance status", HPV_COLUMN)

#: the file suffix of the phantom's dose (the first the ``dose`` modality spec declares: ``__RTDOSE``)
DOSE_SUFFIX = CATALOGUE["dose"].suffixes[0]
#: the images the phantom can write, in channel order
PHANTOM_MODALITIES: tuple[str, ...] = ("ct", "pet", "mr", "dose")


@dataclass
class PhantomConfig:
    """What to synthesise. Every field is validated on construction (``ValueError`` naming the field).

    Args:
        cases_per_centre: cases written per centre (IDs 000..N-1). Default 12.
        centres: centre names, each a key of ``SCANNERS``. Default the seven HECKTOR 2022 centres.
        ct_shape: CT grid (i, j, k) in voxels, each >= 16; k increases toward the head. Default (80, 80, 56).
        ct_spacing: CT voxel size in mm. Default (2.0, 2.0, 2.5).
        pet_spacing: PET voxel size in mm; the PET grid is offset by a fraction of a voxel and covers a
            slightly different field of view. Default (4.0, 4.0, 2.5).
        oblique_degrees: rotation of the direction cosines about k (and a quarter of it about i), in
            [-45, 45]; 0 gives an identity direction. Default 0.0.
        seed: non-negative base seed; case c of centre C uses its own streams derived from
            (seed, CenterID, c). Default 0.
        difficulty: ``normal`` (the default phantom) or ``hard`` (weaker CT contrast, more unlabelled PET
            hot spots and physiological uptake; same labels and grids, see :mod:`pemma.data.phantom_hard`).
        modalities: the images written: ``("ct", "pet")``, plus ``"mr"`` (an MR-like T2 channel from the case's
            own random stream) and / or ``"dose"`` (a planned RT dose in Gy on the CT grid,
            :mod:`pemma.data.phantom_dose`); CT, PET and labels stay those of the phantom without them.

    Example:
        >>> PhantomConfig(cases_per_centre=1, centres=("CHUM",), ct_shape=(32, 32, 24))
    """

    cases_per_centre: int = 12  # cases per centre, 1..1000 (IDs CENTRE-000 ...)
    centres: tuple[str, ...] = ("CHUM", "CHUP", "CHUS", "CHUV", "MDA", "HGJ", "HMR")  # keys of SCANNERS
    ct_shape: tuple[int, int, int] = (80, 80, 56)  # CT voxels (i, j, k), each 16..1024
    ct_spacing: tuple[float, float, float] = (2.0, 2.0, 2.5)  # CT voxel size, mm, each in (0, 20]
    pet_spacing: tuple[float, float, float] = (4.0, 4.0, 2.5)  # PET voxel size, mm, each in (0, 20]
    oblique_degrees: float = 0.0  # rotation of the direction cosines, degrees in [-45, 45]
    seed: int = 0  # base seed, >= 0
    difficulty: str = "normal"  # normal or hard (see pemma.data.phantom_hard)
    modalities: tuple[str, ...] = ("ct", "pet")  # images written; add "mr" (MR-like channel) / "dose" (RT dose)

    def __post_init__(self) -> None:
        self.cases_per_centre = _int("cases_per_centre", self.cases_per_centre, 1, 1000)
        if isinstance(self.centres, str) or not self.centres:
            raise ValueError(f"centres must be a non-empty sequence of names, got {self.centres!r}")
        self.centres = tuple(self.centres)
        unknown = [c for c in self.centres if c not in SCANNERS]
        if unknown:
            raise ValueError(f"centres: unknown {unknown}; known centres are {sorted(SCANNERS)}")
        if len(set(self.centres)) != len(self.centres):
            raise ValueError(f"centres must not repeat, got {self.centres}")
        self.ct_shape = _triple("ct_shape", self.ct_shape, lambda v: _int("ct_shape", v, 16, 1024))
        self.ct_spacing = _triple("ct_spacing", self.ct_spacing, lambda v: _mm("ct_spacing", v))
        self.pet_spacing = _triple("pet_spacing", self.pet_spacing, lambda v: _mm("pet_spacing", v))
        if isinstance(self.oblique_degrees, bool) or not isinstance(self.oblique_degrees, (int, float)) \
                or not -45.0 <= float(self.oblique_degrees) <= 45.0:
            raise ValueError(f"oblique_degrees must be a number in [-45, 45], got {self.oblique_degrees!r}")
        self.oblique_degrees = float(self.oblique_degrees)
        self.seed = _int("seed", self.seed, 0, 2**63 - 1)
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {self.difficulty!r}")
        mods = self.modalities.split(",") if isinstance(self.modalities, str) else list(self.modalities)
        mods = [str(m).strip().lower() for m in mods if str(m).strip()]
        if set(mods) - set(PHANTOM_MODALITIES) or not {"ct", "pet"} <= set(mods):
            raise ValueError(f"modalities must be ct,pet or ct,pet,mr, either with dose or without (the phantom always "
                             f"has CT and PET), got {self.modalities!r}")
        self.modalities = tuple(m for m in PHANTOM_MODALITIES if m in mods)


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _mm(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 20:
        raise ValueError(f"{name} values must be numbers of mm in (0, 20], got {value!r}")
    return float(value)


def _triple(name: str, value: object, check) -> tuple:
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 3:
        raise ValueError(f"{name} must have 3 values (i, j, k), got {value!r}")
    return tuple(check(v) for v in value)


@dataclass
class PhantomCase:
    """One synthesised case: images, geometry, tables' rows and ground-truth summary."""

    case_id: str
    ct: np.ndarray  # int16 HU, CT grid
    pet: np.ndarray  # float32 SUV, PET grid
    label: np.ndarray  # uint8, CT grid
    ct_affine: np.ndarray
    pet_affine: np.ndarray
    clinical: dict[str, object]  # CLINICAL_HEADER -> value (None = missing)
    relapse: int
    rfs: int  # days
    lesions: LesionSummary
    mr: np.ndarray | None = None  # float32 MR-like T2 (arbitrary units), MR grid; None unless asked for
    mr_affine: np.ndarray | None = None
    dose: np.ndarray | None = None  # float32 planned dose (Gy), CT grid; None unless asked for


def direction_matrix(oblique_degrees: float) -> np.ndarray:
    """Direction cosines: rotation by ``oblique_degrees`` about k, then a quarter of it about i."""
    a, b = math.radians(oblique_degrees), math.radians(oblique_degrees) / 4
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rx @ rz


def grid_affine(direction: np.ndarray, spacing, shape, centre) -> np.ndarray:
    """RAS+ affine ``direction @ diag(spacing)`` whose voxel grid is centred on ``centre`` (mm)."""
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(spacing)
    aff[:3, 3] = np.asarray(centre, float) - aff[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    return aff


def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape,
                     order: int = 1, mode: str = "nearest", cval: float = 0.0) -> np.ndarray:
    """Sample ``data`` (on ``src_affine``) at the voxel centres of a grid ``dst_affine``/``dst_shape``.

    Args:
        order: spline order (0 nearest, 1 linear). Default 1.
        mode, cval: outside handling of ``scipy.ndimage.map_coordinates``. Default "nearest", 0.0.
    """
    m = np.linalg.inv(src_affine) @ dst_affine
    idx = np.indices(tuple(dst_shape), dtype=np.float64).reshape(3, -1)
    coords = m[:3, :3] @ idx + m[:3, 3:4]
    out = ndimage.map_coordinates(data, coords, order=order, mode=mode, cval=cval)
    return out.reshape(tuple(dst_shape))


def _clinical(rng: np.random.Generator, case_id: str, centre: str) -> tuple[dict, dict]:
    """True clinical variables and the written row (with missing values as None)."""
    hpv = int(rng.uniform() < 0.6)
    male = rng.uniform() < 0.8
    true = {
        "Gender": "M" if male else "F",
        "Age": int(np.clip(round(rng.normal(59 if hpv else 64, 8.5)), 45, 85)),
        "Weight": round(float(np.clip(rng.normal(82 if male else 66, 14), 40, 150)), 1),
        "Tobacco": int(rng.uniform() < (0.45 if hpv else 0.75)),
        "Alcohol": int(rng.uniform() < (0.35 if hpv else 0.6)),
        "Performance status": int(rng.choice(5, p=(0.45, 0.35, 0.13, 0.05, 0.02))),
        HPV_COLUMN: hpv,
        "Surgery": int(rng.uniform() < 0.2),
        "Chemotherapy": int(rng.uniform() < (0.85 if hpv else 0.75)),
    }
    row: dict[str, object] = {"PatientID": case_id, "Task 1": 1, "Task 2": 1,
                              "CenterID": SCANNERS[centre].centre_id}
    for key, value in true.items():
        rate = MISSING.get(key, 0.0) + (SCANNERS[centre].missing_boost if key in BOOSTED else 0.0)
        row[key] = None if rng.uniform() < float(np.clip(rate, 0.0, 0.95)) else value
    return true, row


def synthesize_case(centre: str, index: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate case ``index`` of ``centre`` in memory (what :func:`synthesize_phantom` writes).

    Depends only on ``config`` (shape, spacings, obliquity, seed), ``centre`` and ``index``.

    Example:
        >>> case = synthesize_case("CHUM", 0, PhantomConfig(ct_shape=(32, 32, 24)))
        >>> case.ct.dtype, case.pet.dtype, case.label.dtype
        (dtype('int16'), dtype('float32'), dtype('uint8'))
    """
    cfg = config or PhantomConfig()
    if centre not in SCANNERS:
        raise ValueError(f"unknown centre {centre!r}; known centres are {sorted(SCANNERS)}")
    sc = SCANNERS[centre]
    case_id = f"{centre}-{index:03d}"
    streams = np.random.SeedSequence([cfg.seed, sc.centre_id, index]).spawn(4)  # the 4th: hard-phantom draws
    r_clin, r_img, r_surv = (np.random.default_rng(s) for s in streams[:3])
    hard = cfg.difficulty == "hard"
    true, row = _clinical(r_clin, case_id, centre)

    shape, sp = np.array(cfg.ct_shape), np.array(cfg.ct_spacing)
    g = RefGrid.make(cfg.ct_shape, cfg.ct_spacing, size=r_img.uniform(0.92, 1.06),
                     shift=tuple(r_img.uniform(-4, 4, 2)), z_shift=sc.z_shift + r_img.uniform(-0.02, 0.02))
    hu, act, masks = paint_anatomy(g, r_img)
    les = paint_lesions(g, r_img, hu, act, masks, true[HPV_COLUMN], hu_delta=HARD_HU_DELTA if hard else None)
    paint_confounders(g, r_img, hu, act, masks, les.label)
    if hard:
        paint_hard_confounders(g, np.random.default_rng(streams[3]), hu, act, masks, les.label)
    tissue_hu = hu.copy() if "mr" in cfg.modalities else None  # the MR reads the painted tissues
    soft = masks["body"] & ~masks["airway"]
    hu += (6.0 * smooth_noise(r_img, hu.shape, 1.5)) * soft
    act *= 1.0 + 0.08 * smooth_noise(r_img, act.shape, 1.5) * masks["body"]

    direction = direction_matrix(cfg.oblique_degrees)
    ct_aff = grid_affine(direction, sp, shape, (r_img.uniform(-20, 20), r_img.uniform(-40, 0),
                                                 r_img.uniform(-700, -300)))
    # CT: reconstruction blur, calibration offset, metal, correlated noise, circular FOV padding.
    hu = ndimage.gaussian_filter(hu, sc.ct_blur_mm / sp, mode="nearest") + sc.ct_hu_offset
    add_metal(g, r_img, hu, masks["body"])
    hu += sc.ct_noise_sd * r_img.uniform(0.85, 1.15) * smooth_noise(r_img, hu.shape, 0.6)
    ii, jj = ((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape[:2], sp[:2], strict=True))
    outside = ii[:, None] ** 2 + jj[None, :] ** 2 > (0.5 * min(shape[:2] * sp[:2]) * 0.99) ** 2
    hu[outside] = CT_RANGE[0]
    ct = np.clip(np.rint(hu), *CT_RANGE).astype(np.int16)

    # PET: calibrated activity, scanner blur, resampling onto the offset PET grid, Poisson-like noise.
    act *= sc.suv_calibration * r_img.uniform(0.95, 1.05)
    act = ndimage.gaussian_filter(act, sc.pet_fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / sp, mode="nearest")
    pet_sp = np.array(cfg.pet_spacing)
    pet_shape = np.maximum(np.rint(shape * sp * np.array(sc.pet_fov_scale) / pet_sp), 2).astype(int)
    offset = np.array([r_img.uniform(0.15, 0.85), r_img.uniform(0.15, 0.85), r_img.uniform(-1.4, 1.4)])
    offset *= pet_sp  # fraction-of-a-voxel offset of the PET grid (and a slightly shifted z range)
    pet_aff = grid_affine(direction, pet_sp, pet_shape, ct_aff[:3, 3] + ct_aff[:3, :3] @ ((shape - 1) / 2)
                          + direction @ offset)
    pet = resample_to_grid(act, ct_aff, pet_aff, pet_shape, order=1, mode="nearest")
    sd = sc.pet_noise * r_img.uniform(0.85, 1.15) * np.sqrt(np.maximum(pet, 0.02))
    pet = np.maximum(pet + sd * smooth_noise(r_img, pet.shape, 0.6), 0.0).astype(np.float32)

    relapse, rfs = relapse_and_rfs(r_surv, true, les)
    mr = mr_aff = None
    if tissue_hu is not None:  # its own stream: CT, PET and label are those of the phantom without MR
        r_mr = np.random.default_rng(np.random.SeedSequence([cfg.seed, sc.centre_id, index]).spawn(5)[4])
        mr_sp = np.array(MR_SPACING_MM)
        mr_shape = np.maximum(np.rint(shape * sp / mr_sp), 2).astype(int)
        centre = ct_aff[:3, 3] + ct_aff[:3, :3] @ ((shape - 1) / 2)
        mr_aff = grid_affine(direction, mr_sp, mr_shape, centre + direction @ r_mr.uniform(-1, 1, 3)
                             * MR_MAX_OFFSET_MM)
        mr_ct_grid = paint_mr(tissue_hu, les.label, sp, r_mr)
        mr = np.maximum(resample_to_grid(mr_ct_grid, ct_aff, mr_aff, mr_shape, order=1, mode="nearest"),
                        0.0).astype(np.float32)
    dose = paint_dose(les.label, masks["body"], sp) if "dose" in cfg.modalities else None  # no random draw
    return PhantomCase(case_id, ct, pet, les.label, ct_aff, pet_aff, row, relapse, rfs, les, mr, mr_aff, dose)


def _csv_text(header: tuple[str, ...], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in header])
    return buf.getvalue()


def synthesize_phantom(out_dir: str | Path, config: PhantomConfig | None = None,
                       progress: bool = True) -> list[str]:
    """Write a synthetic HECKTOR-2022-layout dataset to ``out_dir``; return the case IDs written.

    Files are written atomically; existing files of the same names are replaced, others are left alone. A folder
    that holds a dataset other than a phantom (a CT without the phantom's header mark, or HECKTOR's tables without
    any phantom CT) is refused before anything is written: the tables would be rewritten with the phantom's
    patients only and same-named cases replaced.

    Args:
        out_dir: destination folder (created if missing).
        config: what to synthesise. Default ``PhantomConfig()`` (7 centres x 12 cases, 80 x 80 x 56 CT).
        progress: show a tqdm bar over cases. Default True.

    Raises:
        PemmaError: ``out_dir`` exists and is not a folder, or holds a dataset that is not a phantom.

    Example:
        >>> synthesize_phantom("phantom", PhantomConfig(cases_per_centre=1, centres=("CHUM",)))
        ['CHUM-000']
    """
    cfg = config or PhantomConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PemmaError(f"{out}: exists and is not a folder")
    refuse_other_dataset(out)
    jobs = [(c, i) for c in cfg.centres for i in range(cfg.cases_per_centre)]
    marker = nib.Nifti1Header()
    marker["descrip"] = PHANTOM_DESCRIP.encode()
    clinical, endpoint, ids = [], [], []
    for centre, index in tqdm(jobs, desc="synth", unit="case", disable=not progress):
        case = synthesize_case(centre, index, cfg)
        save_nifti(case.ct, case.ct_affine, out / "imagesTr" / f"{case.case_id}__CT.nii.gz", dtype=np.int16,
                   header=marker)
        save_nifti(case.pet, case.pet_affine, out / "imagesTr" / f"{case.case_id}__PT.nii.gz",
                   dtype=np.float32)
        if case.mr is not None:
            save_nifti(case.mr, case.mr_affine, out / "imagesTr" / f"{case.case_id}__MR.nii.gz", dtype=np.float32)
        if case.dose is not None:  # on the CT grid, under the dose spec's first suffix (__RTDOSE)
            save_nifti(case.dose, case.ct_affine, out / "imagesTr" / f"{case.case_id}{DOSE_SUFFIX}.nii.gz",
                       dtype=np.float32)
        save_nifti(case.label, case.ct_affine, out / "labelsTr" / f"{case.case_id}.nii.gz", dtype=np.uint8)
        clinical.append(case.clinical)
        endpoint.append({"PatientID": case.case_id, "Relapse": case.relapse, "RFS": case.rfs})
        ids.append(case.case_id)
    settings = asdict(cfg)
    if cfg.modalities == PhantomConfig.modalities:  # phantom.json of a CT / PET phantom as before
        settings.pop("modalities")
    if cfg.difficulty != "normal" or "modalities" in settings:  # the default phantom: the HECKTOR layout only
        write_text_atomic(out / PHANTOM_FILE, json.dumps({**settings, "cases": ids}, indent=1) + "\n")
    write_text_atomic(out / CLINICAL_FILE, _csv_text(CLINICAL_HEADER, clinical))
    # the endpoint table last: `pemma demo` takes a folder with it for a finished phantom (a hard one interrupted
    # before its phantom.json was written would have passed for a normal one)
    write_text_atomic(out / ENDPOINT_FILE, _csv_text(ENDPOINT_HEADER, endpoint))
    return ids


def read_phantom_config(folder: str | Path) -> PhantomConfig | None:
    """The :class:`PhantomConfig` recorded in ``folder/phantom.json``; None when the file is absent (the default
    phantom, one written before settings were recorded, or not a phantom).

    Raises:
        PemmaError: the file is unreadable or holds invalid settings (one line naming it).
    """
    path = Path(folder) / PHANTOM_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k != "cases"}
        return PhantomConfig(**fields)
    except (OSError, ValueError, TypeError) as exc:
        raise PemmaError(f"{path}: cannot read the phantom settings ({exc})") from None
