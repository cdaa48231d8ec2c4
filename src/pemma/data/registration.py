"""Registration of PET, or any added modality, to the CT (``--register rigid|affine``) with SimpleITK's framework, and a
QC number per case and modality.

The CT is fixed, the other modality moves (every non-CT modality whose :class:`~pemma.modalities.ModalitySpec`
says ``register: true``; ``dose`` from the planning system is on the CT grid already and says false). Both are
brought to an isotropic working grid (``register_spacing`` mm, smoothed first), the CT clipped to the CT window and
the moving image to the intensity clip of its spec (PET: the SUV range of the run's preprocessing; a ``range``
modality: its range; MR and other ``zscore`` / ``minmax`` modalities: the spec's percentiles of the image's voxels),
and Mattes mutual information is maximised over an Euler 3-D (rigid) or affine transform, on two resolution
levels. The optimiser starts from the header geometry (identity, rotation centre at the CT centre): a geometric
centring initialiser would shift the PET by the difference of the field-of-view centres, which differ by design
between PET and CT.
An affine registration starts from the rigid result.

The result is a world-space transform ``T`` (fixed point -> moving point, RAS mm). It is applied by giving the
moving image the header ``T^-1 @ affine``: the pipeline's single resampling of it onto the CT grid then goes
through the transform. Each transform is cached per (case, modality) as an ITK ``.tfm`` with its QC beside it
(:mod:`pemma.data.register`: :func:`~pemma.data.register.register_case` / ``register_files``, the entry points;
:mod:`pemma.data.registration_cache`: the files), so training, validation and prediction apply the same transform;
where the cache cannot be written the registration is recomputed, deterministically (fixed sampling seed, one
thread).

QC (:class:`RegistrationQC`): Mattes mutual information (nats, every voxel of the working grid) and the Dice
overlap of the CT body (CT above ``body_threshold_hu``) with the moving image's body (intensity above a share of
its median inside the CT body: PET uptake, MR signal), inside the moving image's field of view.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # SimpleITK is imported where it is used: runs without registration never load it
    import SimpleITK as sitk

from pemma.config import PreprocessConfig
from pemma.data.registration_cache import FLIP as _FLIP
from pemma.data.registration_cache import as_sitk as _as_sitk
from pemma.data.registration_cache import cache_folder
from pemma.data.registration_cache import matrix_of as _matrix
from pemma.errors import PemmaError

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
#: the moving body: intensity above this share of the moving image's median inside the CT body (QC only; PET
#: uptake, MR signal: air and the dark cortical bone fall below it)
MOVING_BODY_SHARE = 0.25
PET_BODY_SHARE = MOVING_BODY_SHARE  # the name before other modalities could be registered
#: the CT is clipped to [air, top of the CT window]: the body outline (air / tissue) is the feature PET shares most
AIR_HU = -1000.0


@dataclass(frozen=True)
class RegistrationSettings:
    """What a registration depends on (part of its cache key).

    Args:
        mode: ``rigid`` or ``affine`` (``none`` computes QC only).
        spacing_mm: working-grid voxel size. iterations: per level. max_shift_mm: divergence limit.
        ct_window: intensity clipping of the CT (HU). body_threshold_hu: the CT body.
        pet_range: intensity clipping of the moving image: PET SUV, a ``range`` modality's range, or (with
            ``percentile_clip``) the percentiles of the moving image's voxels that bound it.
        modality: the moving modality (``pet``, ``mr``...). percentile_clip: ``pet_range`` holds percentiles.
    """

    mode: str
    spacing_mm: float
    iterations: int
    max_shift_mm: float
    ct_window: tuple[float, float]
    pet_range: tuple[float, float]
    body_threshold_hu: float
    modality: str = field(default="pet")
    percentile_clip: bool = field(default=False)

    @classmethod
    def from_preprocess(cls, cfg: PreprocessConfig, mode: str | None = None,
                        modality: str = "pet") -> RegistrationSettings:
        """The settings of a run's preprocessing for ``modality`` (``mode`` overrides ``cfg.register``).

        Raises:
            PemmaError: ``modality`` has no spec in ``cfg`` or is the CT.
        """
        if modality == "pet":
            clip, percentile = tuple(map(float, cfg.pet_suv_range)), False
        else:
            specs = cfg.modality_registry()
            if modality not in specs or modality == "ct":
                raise PemmaError(f"cannot register {modality!r} to the CT (known: "
                                 f"{', '.join(m for m in specs if m != 'ct')})")
            spec = specs[modality]
            percentile = not (spec.normalisation == "range" and spec.range is not None)
            clip = tuple(map(float, spec.percentiles if percentile else spec.range))  # type: ignore[arg-type]
        return cls(mode or cfg.register, float(cfg.register_spacing), int(cfg.register_iterations),
                   float(cfg.register_max_shift_mm), tuple(map(float, cfg.ct_window)),  # type: ignore[arg-type]
                   clip, float(cfg.body_threshold_hu), modality, percentile)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """The moving modality as messages name it (``PET``, ``MR``)."""
        return self.modality.upper()

    def record(self) -> dict[str, Any]:
        """The settings as ``registration.json`` records them (PET: the fields it had before other modalities)."""
        out = asdict(self)
        if self.modality == "pet" and not self.percentile_clip:
            del out["modality"], out["percentile_clip"]
        return out

    def key(self) -> str:
        text = json.dumps({**self.record(), "bins": HISTOGRAM_BINS, "levels": [SHRINK_FACTORS, SMOOTHING_VOXELS],
                           "samples": METRIC_SAMPLES, "seed": SAMPLING_SEED, "steps": [FIRST_STEP_MM, MIN_STEP_MM]},
                          sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def registrable(modalities: Sequence[str], cfg: PreprocessConfig) -> list[str]:
    """The modalities of ``modalities`` that registration moves onto the CT: every one but the CT whose spec says
    ``register: true`` (PET always), in the given order. Nothing without a CT among ``modalities``.

    Args:
        modalities: the images of a case or the inputs of a run. cfg: the preprocessing (its modality specs).
    """
    if "ct" not in modalities:
        return []
    others = [m for m in modalities if m not in ("ct", "pet")]
    specs = cfg.modality_registry() if others else {}
    return [m for m in modalities if m == "pet" or (m in others and m in specs and specs[m].register)]


@dataclass
class RegistrationQC:
    """How well a modality (PET, MR...) and the CT agree: mutual information (nats) and body-mask Dice in [0, 1]."""

    mi: float
    body_dice: float

    def text(self) -> str:
        return f"MI {self.mi:.3f}, body Dice {self.body_dice:.3f}"


@dataclass
class RegistrationResult:
    """A case's registration: ``matrix`` (4 x 4, RAS mm, CT point -> moving point) and its QC before / after."""

    case_id: str
    mode: str
    matrix: np.ndarray
    before: RegistrationQC
    after: RegistrationQC
    shift_mm: float
    rotation_deg: float
    transform_file: str | None = None
    modality: str = "pet"

    def moved_affine(self, pet_affine: np.ndarray) -> np.ndarray:
        """The moving image's header that puts its voxels where the registration found them: ``T^-1 @ affine``."""
        return np.linalg.inv(self.matrix) @ np.asarray(pet_affine, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "before": asdict(self.before), "after": asdict(self.after),
                "shift_mm": round(self.shift_mm, 3), "rotation_deg": round(self.rotation_deg, 3),
                "matrix_ras": np.round(self.matrix, 6).tolist(), "transform_file": self.transform_file}

    def line(self) -> str:
        head = f"case {self.case_id}: {self.modality.upper()}-CT agreement on the header geometry: {self.before.text()}"
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
    pet_body = pet > MOVING_BODY_SHARE * (float(np.median(uptake)) if uptake.size else 0.0)
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
    """Register one case's PET or other modality (``settings.modality``, moving) to its CT (fixed);
    ``mode == "none"`` measures the QC only.

    Args:
        case_id: named in errors. ct, ct_affine: the CT and its RAS affine. pet, pet_affine: the moving image (PET,
            MR...) and its RAS affine. settings: the registration settings. pet_path: the moving file (in errors).

    Raises:
        PemmaError: one line naming the case, when SimpleITK fails or the result moves the CT field of view by
            more than ``max_shift_mm`` (diverged).
    """
    import SimpleITK as sitk
    fixed = _working(to_sitk(ct, ct_affine), settings.spacing_mm, (AIR_HU, settings.ct_window[1]))
    window = settings.pet_range
    if settings.percentile_clip:  # MR and other unitless modalities: the spec's percentiles of this image
        window = tuple(float(v) for v in np.percentile(np.asarray(pet, dtype=np.float32), settings.pet_range))
        if not window[0] < window[1]:
            window = (window[0], window[0] + 1.0)
    moving = _working(to_sitk(pet, pet_affine), settings.spacing_mm, window)
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
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the {settings.label} to the CT failed: "
                         f"{reason[:200]}{where}") from None
    if not np.all(np.isfinite(matrix)):
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the {settings.label} to the CT diverged "
                         f"(a non-finite transform){where}")
    shift, angle = _shift_and_rotation(matrix, fixed)
    if shift > settings.max_shift_mm:
        raise PemmaError(f"case {case_id}: {settings.mode} registration of the {settings.label} to the CT diverged: "
                         f"it moves the CT field of view by up to {shift:.1f} mm, more than register_max_shift_mm "
                         f"{settings.max_shift_mm:g}; check the images or raise the limit{where}")
    if settings.mode != "none" and after.mi < before.mi:
        log.warning(f"case {case_id}: {settings.mode} registration lowered the mutual information "
                    f"({before.mi:.3f} -> {after.mi:.3f}): the {settings.label} keeps its header geometry")
        matrix, after, shift, angle = np.eye(4), before, 0.0, 0.0
    return RegistrationResult(case_id, settings.mode, _FLIP @ matrix @ _FLIP, before, after, shift, angle,
                              modality=settings.modality)


def describe(settings: RegistrationSettings) -> str:
    """The run-log line of the registration decision (for ``settings.modality``)."""
    what = settings.label
    if settings.mode == "none":
        return f"registration: none ({what} resampled onto the CT by its header geometry)"
    if settings.percentile_clip:
        clip = f"{what} to its percentiles {list(settings.pet_range)}"
    else:
        clip = f"{what} to {list(settings.pet_range)}{' SUV' if settings.modality == 'pet' else ''}"
    return (f"registration: {what} -> CT {settings.mode} (Mattes mutual information, {HISTOGRAM_BINS} bins, "
            f"{settings.spacing_mm:g} mm working grid, CT clipped to [{AIR_HU:g}, {settings.ct_window[1]:g}] HU, "
            f"{clip}, {OPTIMIZER} optimiser, {settings.iterations} iterations, "
            f"starting from the header geometry; diverged beyond {settings.max_shift_mm:g} mm); transforms cached "
            f"in {cache_folder()}")
