"""PET-to-CT registration (``--register rigid|affine``) with SimpleITK's framework, and a QC number per case.

The CT is fixed, the PET moves. Both are brought to an isotropic working grid (``register_spacing`` mm, smoothed
first), the CT clipped to the CT window and the PET to the SUV range of the run's preprocessing, and Mattes mutual
information is maximised over an Euler 3-D (rigid) or affine transform, on two resolution levels. The optimiser
starts from the header geometry (identity, rotation centre at the CT centre): a geometric centring initialiser
would shift the PET by the difference of the field-of-view centres, which differ by design between PET and CT.
An affine registration starts from the rigid result.

The result is a world-space transform ``T`` (fixed point -> moving point, RAS mm). It is applied by giving the PET
the header ``T^-1 @ affine``: the pipeline's single resampling of the PET onto the CT grid then goes through the
transform. Each transform is cached as an ITK ``.tfm`` (LPS, as ITK tools read it) with its QC beside it, keyed
by the identity of both files (path, size, mtime) and the settings, in ``<cache root>/registration`` (see
:func:`pemma.data.dataset.default_cache_dir`), so training, validation and prediction apply the same transform;
where the cache cannot be written the registration is recomputed, deterministically (fixed sampling seed, one
thread).

QC (:class:`RegistrationQC`): Mattes mutual information (nats, every voxel of the working grid) and the Dice
overlap of the CT body (CT above ``body_threshold_hu``) with the PET body (uptake above a share of the median
uptake inside the CT body), inside the PET field of view.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # SimpleITK is imported where it is used: runs without registration never load it
    import SimpleITK as sitk

from pemma.config import PreprocessConfig
from pemma.errors import PemmaError
from pemma.io_utils import atomic_path, load_nifti, write_text_atomic

log = logging.getLogger(__name__)

#: Mattes histogram bins (measured on the phantom, 10 mm + 5 degrees, 3 cases, 4 mm working grid: 48 bins recovered
#: 3.2-5.1 degrees with mean errors 0.6-1.6 mm on 48 x 48 x 32 CT voxels, where 32 bins recovered 2.7-7.6 degrees
#: with 1.6-2.3 mm; same time per case; benchmarks/README.md)
HISTOGRAM_BINS = 48
#: working-grid shrink factors of the resolution levels (coarse to fine) and their smoothing, in working voxels; the
#: working grid itself is the coarse level of the image (one level measured best on the phantom: a 2-voxel coarse
#: level left the search 10-20 mm off in some cases)
SHRINK_FACTORS: tuple[int, ...] = (1,)
SMOOTHING_VOXELS: tuple[float, ...] = (0.0,)
#: metric samples drawn per level (all voxels when the level has fewer); the seed makes the sampling repeatable
METRIC_SAMPLES = 20000
SAMPLING_SEED = 1234
#: the optimiser: Powell's derivative-free line searches ("powell"), or regular-step gradient descent ("gradient";
#: on the phantom its Mattes gradient drifted out of the PET where the fields of view differ); first step and the
#: step tolerance, mm of physical shift (rotations scaled by the physical shift they cause)
OPTIMIZER = "powell"
FIRST_STEP_MM, MIN_STEP_MM = 4.0, 0.1
#: the PET body: uptake above this share of the median PET uptake inside the CT body (QC only)
PET_BODY_SHARE = 0.25
#: the CT is clipped to [air, top of the CT window]: the body outline (air / tissue) is the feature PET shares most
AIR_HU = -1000.0
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


@dataclass(frozen=True)
class RegistrationSettings:
    """What a registration depends on (part of its cache key).

    Args:
        mode: ``rigid`` or ``affine`` (``none`` computes QC only).
        spacing_mm: working-grid voxel size. iterations: per level. max_shift_mm: divergence limit.
        ct_window, pet_range: intensity clipping of CT (HU) and PET (SUV). body_threshold_hu: the CT body.
    """

    mode: str
    spacing_mm: float
    iterations: int
    max_shift_mm: float
    ct_window: tuple[float, float]
    pet_range: tuple[float, float]
    body_threshold_hu: float

    @classmethod
    def from_preprocess(cls, cfg: PreprocessConfig, mode: str | None = None) -> RegistrationSettings:
        """The settings of a run's preprocessing (``mode`` overrides ``cfg.register``)."""
        return cls(mode or cfg.register, float(cfg.register_spacing), int(cfg.register_iterations),
                   float(cfg.register_max_shift_mm), tuple(map(float, cfg.ct_window)),  # type: ignore[arg-type]
                   tuple(map(float, cfg.pet_suv_range)), float(cfg.body_threshold_hu))  # type: ignore[arg-type]

    def key(self) -> str:
        text = json.dumps({**asdict(self), "bins": HISTOGRAM_BINS, "levels": [SHRINK_FACTORS, SMOOTHING_VOXELS],
                           "samples": METRIC_SAMPLES, "seed": SAMPLING_SEED, "steps": [FIRST_STEP_MM, MIN_STEP_MM]},
                          sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RegistrationQC:
    """How well PET and CT agree: mutual information (nats) and body-mask Dice in [0, 1]."""

    mi: float
    body_dice: float

    def text(self) -> str:
        return f"MI {self.mi:.3f}, body Dice {self.body_dice:.3f}"


@dataclass
class RegistrationResult:
    """A case's registration: ``matrix`` (4 x 4, RAS mm, CT point -> PET point) and its QC before / after."""

    case_id: str
    mode: str
    matrix: np.ndarray
    before: RegistrationQC
    after: RegistrationQC
    shift_mm: float
    rotation_deg: float
    transform_file: str | None = None

    def moved_affine(self, pet_affine: np.ndarray) -> np.ndarray:
        """The PET header that puts its voxels where the registration found them: ``T^-1 @ affine``."""
        return np.linalg.inv(self.matrix) @ np.asarray(pet_affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "before": asdict(self.before), "after": asdict(self.after),
                "shift_mm": round(self.shift_mm, 3), "rotation_deg": round(self.rotation_deg, 3),
                "matrix_ras": np.round(self.matrix, 6).tolist(), "transform_file": self.transform_file}

    def line(self) -> str:
        head = f"case {self.case_id}: PET-CT agreement on the header geometry: {self.before.text()}"
        if self.mode == "none":
            return head
        return (f"{head}; after {self.mode} registration: {self.after.text()} (moves up to {self.shift_mm:.1f} mm, "
                f"rotates {self.rotation_deg:.1f} degrees)")


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A float32 SimpleITK image of a 3-D array on a RAS voxel-to-world affine (nibabel's), in ITK's LPS world."""
    import SimpleITK as sitk
    lps = _FLIP @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).flatten()])
    return image


def _working(image: sitk.Image, spacing_mm: float, window: Sequence[float]) -> sitk.Image:
    """``image`` clipped to ``window``, smoothed where it is finer than ``spacing_mm`` and resampled to it."""
    import SimpleITK as sitk
    image = sitk.Clamp(image, sitk.sitkFloat32, float(window[0]), float(window[1]))
    old = np.asarray(image.GetSpacing())
    if float(old.min()) < spacing_mm:
        variance = [float(max(spacing_mm ** 2 - s ** 2, 0.0) / 2.355 ** 2) for s in old]  # FWHM to the new size
        image = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    size = [max(2, int(math.ceil(n * s / spacing_mm))) for n, s in zip(image.GetSize(), old, strict=True)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing_mm] * 3,
                         image.GetDirection(), float(window[0]), sitk.sitkFloat32)


def _matrix(transform: sitk.Transform) -> np.ndarray:
    """4 x 4 matrix (LPS) of an affine-class transform, read off the images of the origin and unit points."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    out = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        out[:3, axis] = np.asarray(transform.TransformPoint(unit)) - origin
    out[:3, 3] = origin
    return out


def _as_sitk(matrix_lps: np.ndarray) -> sitk.AffineTransform:
    import SimpleITK as sitk
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in matrix_lps[:3, :3].flatten()])
    transform.SetTranslation([float(v) for v in matrix_lps[:3, 3]])
    return transform


def _method(iterations: int, fixed: sitk.Image, full: bool = False) -> sitk.ImageRegistrationMethod:
    import SimpleITK as sitk
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetNumberOfThreads(1)
    if full:
        method.SetMetricSamplingStrategy(method.NONE)
        return method
    voxels = float(np.prod(fixed.GetSize()))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, METRIC_SAMPLES * f ** 3 / voxels) for f in SHRINK_FACTORS],
                                               SAMPLING_SEED)
    if OPTIMIZER == "powell":
        method.SetOptimizerAsPowell(numberOfIterations=iterations, maximumLineIterations=20, stepLength=FIRST_STEP_MM,
                                    stepTolerance=MIN_STEP_MM, valueTolerance=1e-5)
    else:
        method.SetOptimizerAsRegularStepGradientDescent(FIRST_STEP_MM, MIN_STEP_MM, iterations, relaxationFactor=0.5,
                                                        gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_VOXELS))
    return method


def _qc(fixed: sitk.Image, moving: sitk.Image, matrix_lps: np.ndarray, body_hu: float) -> RegistrationQC:
    """MI (every working voxel) and body Dice of ``moving`` seen through ``matrix_lps`` on ``fixed``'s grid."""
    import SimpleITK as sitk
    transform = _as_sitk(matrix_lps)
    method = _method(1, fixed, full=True)
    method.SetInitialTransform(transform)
    mi = -float(method.MetricEvaluate(fixed, moving))
    pet = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    inside = sitk.GetArrayFromImage(sitk.Resample(moving * 0 + 1, fixed, transform, sitk.sitkNearestNeighbor, 0.0))
    ct_body = sitk.GetArrayFromImage(fixed) > body_hu
    valid = inside > 0
    uptake = pet[ct_body & valid]
    pet_body = pet > PET_BODY_SHARE * (float(np.median(uptake)) if uptake.size else 0.0)
    a, b = ct_body & valid, pet_body & valid
    denominator = int(a.sum() + b.sum())
    return RegistrationQC(round(mi, 5), round(2.0 * float((a & b).sum()) / denominator, 5) if denominator else 0.0)


def _shift_and_rotation(matrix: np.ndarray, fixed: sitk.Image) -> tuple[float, float]:
    """Largest displacement (mm) of the fixed grid's corners, and the rotation angle (degrees) of the matrix."""
    size = np.asarray(fixed.GetSize()) - 1
    corners = np.array(np.meshgrid(*[[0, s] for s in size], indexing="ij")).reshape(3, -1).T
    points = np.array([fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners])
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    shift = float(np.linalg.norm(moved - points, axis=1).max())
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    angle = math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))
    return shift, angle


def register_images(case_id: str, ct: np.ndarray, ct_affine: np.ndarray, pet: np.ndarray, pet_affine: np.ndarray,
                    settings: RegistrationSettings, pet_path: object = None) -> RegistrationResult:
    """Register one case's PET (moving) to its CT (fixed); ``mode == "none"`` measures the QC only.

    Args:
        case_id: named in errors. ct, ct_affine, pet, pet_affine: the 3-D images and their RAS affines.
        settings: the registration settings. pet_path: the PET file (named in errors).

    Raises:
        PemmaError: one line naming the case, when SimpleITK fails or the result moves the CT field of view by
            more than ``max_shift_mm`` (diverged).
    """
    import SimpleITK as sitk
    fixed = _working(to_sitk(ct, ct_affine), settings.spacing_mm, (AIR_HU, settings.ct_window[1]))
    moving = _working(to_sitk(pet, pet_affine), settings.spacing_mm, settings.pet_range)
    # the PET continued beyond its field of view by its edge values: samples that a move carries past the edge are
    # otherwise dropped by the metric, whose gradient does not see it (the optimiser then drifts out of the PET)
    pad = [int(math.ceil(settings.max_shift_mm / settings.spacing_mm))] * 3
    moving = sitk.ZeroFluxNeumannPad(moving, pad, pad)
    where = f" ({pet_path})" if pet_path else ""
    try:
        before = _qc(fixed, moving, np.eye(4), settings.body_threshold_hu)
        matrix = np.eye(4)
        if settings.mode != "none":
            centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
            rigid = sitk.Euler3DTransform()
            rigid.SetCenter(centre)
            method = _method(settings.iterations, fixed)
            method.SetInitialTransform(rigid, inPlace=True)
            method.Execute(fixed, moving)
            matrix = _matrix(rigid)
            if settings.mode == "affine":
                affine = sitk.AffineTransform(3)
                affine.SetCenter(centre)
                affine.SetMatrix(rigid.GetMatrix())
                affine.SetTranslation(rigid.GetTranslation())
                method = _method(settings.iterations, fixed)
                method.SetInitialTransform(affine, inPlace=True)
                method.Execute(fixed, moving)
                matrix = _matrix(affine)
            after = _qc(fixed, moving, matrix, settings.body_threshold_hu)
        else:
            after = before
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        reason = reason.split("what():")[-1].strip() or reason
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the PET to the CT failed: "
                         f"{reason[:200]}{where}") from None
    if not np.all(np.isfinite(matrix)):
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the PET to the CT diverged (a non-finite "
                         f"transform){where}")
    shift, angle = _shift_and_rotation(matrix, fixed)
    if shift > settings.max_shift_mm:
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the PET to the CT diverged: it moves the CT "
                         f"field of view by up to {shift:.1f} mm, more than register_max_shift_mm "
                         f"{settings.max_shift_mm:g}; check the images or raise the limit{where}")
    if settings.mode != "none" and after.mi < before.mi:
        log.warning(f"case {case_id}: {settings.mode} registration lowered the mutual information "
                    f"({before.mi:.3f} -> {after.mi:.3f}): the PET keeps its header geometry")
        matrix, after, shift, angle = np.eye(4), before, 0.0, 0.0
    return RegistrationResult(case_id, settings.mode, _FLIP @ matrix @ _FLIP, before, after, shift, angle)


# ------------------------------------------------------------------------------------------------------ caching
#: results in this process, keyed like the files of the disk cache
_MEMO: dict[str, RegistrationResult] = {}


def _identity(path: object) -> list[Any] | None:
    try:
        stat = os.stat(str(path))
    except (OSError, TypeError):
        return None
    return [os.path.abspath(str(path)), stat.st_size, stat.st_mtime_ns]


def cache_folder() -> Path:
    """``<cache root>/registration`` (``$PEMMA_CACHE_DIR`` or ``~/.cache/pemma/preprocessed``)."""
    from pemma.data.dataset import default_cache_dir

    return default_cache_dir("registration")


def _read_cached(stem: Path, case_id: str) -> RegistrationResult | None:
    import SimpleITK as sitk
    try:
        record = json.loads(stem.with_suffix(".json").read_text())
        matrix = _FLIP @ _matrix(sitk.ReadTransform(str(stem.with_suffix(".tfm")))) @ _FLIP
        return RegistrationResult(case_id, record["mode"], matrix, RegistrationQC(**record["before"]),
                                  RegistrationQC(**record["after"]), float(record["shift_mm"]),
                                  float(record["rotation_deg"]), str(stem.with_suffix(".tfm")))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None


def _write_cached(stem: Path, result: RegistrationResult) -> None:
    import SimpleITK as sitk
    try:
        with atomic_path(stem.with_suffix(".tfm")) as tmp:
            sitk.WriteTransform(_as_sitk(_FLIP @ result.matrix @ _FLIP), str(tmp))
        result.transform_file = str(stem.with_suffix(".tfm"))
        write_text_atomic(stem.with_suffix(".json"), json.dumps(result.to_dict(), indent=1))
    except (OSError, RuntimeError) as exc:
        result.transform_file = None
        log.warning(f"could not cache the registration of case {result.case_id} in {stem.parent} ({exc}); it is "
                    "recomputed (deterministically) where it is needed again")


def register_case(case_id: str, ct: np.ndarray, ct_affine: np.ndarray, ct_path: object, pet: np.ndarray,
                  pet_affine: np.ndarray, pet_path: object, settings: RegistrationSettings) -> RegistrationResult:
    """:func:`register_images`, cached per case by the files' identity and the settings (memory, then disk).

    Args:
        case_id, ct, ct_affine, pet, pet_affine, settings: as for :func:`register_images`.
        ct_path, pet_path: the files the images were read from (None: not cached).
    """
    key, stem, result = _lookup(case_id, ct_path, pet_path, settings)
    if result is not None:
        return result
    result = register_images(case_id, ct, ct_affine, pet, pet_affine, settings, pet_path)
    if key is not None and stem is not None:
        log.info(result.line())
        _write_cached(stem, result)
        _MEMO[key] = result
    return result


def _lookup(case_id: str, ct_path: object, pet_path: object, settings: RegistrationSettings,
            ) -> tuple[str | None, Path | None, RegistrationResult | None]:
    """(cache key, cache file stem, the cached result or None); key and stem None when the files are unknown."""
    ids = [_identity(ct_path), _identity(pet_path)]
    if None in ids:
        return None, None, None
    key = hashlib.sha256(json.dumps([ids, settings.key()]).encode("utf-8")).hexdigest()[:20]
    if key in _MEMO:
        return key, None, _MEMO[key]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case_id)
    stem = cache_folder() / f"{safe}-{settings.mode}-{key}"
    result = _read_cached(stem, case_id)
    if result is not None:
        _MEMO[key] = result
    return key, stem, result


def register_files(case_id: str, ct_path: str, pet_path: str, settings: RegistrationSettings) -> RegistrationResult:
    """:func:`register_case` of the CT and PET files of a case (read with the loader's checks only when the
    transform is not cached)."""
    cached = _lookup(case_id, ct_path, pet_path, settings)[2]
    if cached is not None:
        return cached
    ct = load_nifti(ct_path, what=f"CT of case {case_id}")
    pet = load_nifti(pet_path, what=f"PET of case {case_id}")
    return register_case(case_id, np.asanyarray(ct.dataobj).reshape(ct.shape[:3]), ct.affine, ct_path,
                         np.asanyarray(pet.dataobj).reshape(pet.shape[:3]), pet.affine, pet_path, settings)


def describe(settings: RegistrationSettings) -> str:
    """The run-log line of the registration decision."""
    if settings.mode == "none":
        return "registration: none (PET resampled onto the CT by its header geometry)"
    return (f"registration: PET -> CT {settings.mode} (Mattes mutual information, {HISTOGRAM_BINS} bins, "
            f"{settings.spacing_mm:g} mm working grid, CT clipped to [{AIR_HU:g}, {settings.ct_window[1]:g}] HU, "
            f"PET to {list(settings.pet_range)} SUV, {OPTIMIZER} optimiser, {settings.iterations} iterations, "
            f"starting from the header geometry; diverged beyond {settings.max_shift_mm:g} mm); transforms cached "
            f"in {cache_folder()}")


#: the run's record of its registrations (mode, settings, per case: QC before / after, transform)
REGISTRATION_FILE = "registration.json"


def record_registration(run_dir: str | os.PathLike, cases: Sequence[Any], modalities: Sequence[str],
                        cfg: PreprocessConfig) -> dict[str, Any] | None:
    """Write ``registration.json`` into a run folder: the mode, the settings, and per case the QC before and after
    and the transform (from the cache the preprocessing filled). Nothing for ``register: none`` or without CT+PET.

    Args:
        run_dir: the run folder. cases: the run's cases (:class:`~pemma.data.layout.CaseRecord`).
        modalities: the run's inputs. cfg: the run's preprocessing.

    Returns:
        the record written, or None.
    """
    if cfg.register == "none" or not {"ct", "pet"} <= set(modalities):
        return None
    settings = RegistrationSettings.from_preprocess(cfg)
    per_case = {}
    for case in {c.case_id: c for c in cases}.values():
        per_case[case.case_id] = register_files(case.case_id, case.images["ct"], case.images["pet"], settings).to_dict()
    afters = [r["after"]["body_dice"] for r in per_case.values()]
    befores = [r["before"]["body_dice"] for r in per_case.values()]
    record = {"mode": settings.mode, "settings": asdict(settings), "optimizer": OPTIMIZER,
              "mean_body_dice": {"before": round(float(np.mean(befores)), 5),
                                 "after": round(float(np.mean(afters)), 5)},
              "cases": per_case}
    write_text_atomic(Path(run_dir) / REGISTRATION_FILE, json.dumps(record, indent=1) + "\n")
    return record
