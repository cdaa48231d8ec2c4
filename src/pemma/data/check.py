"""Check a whole dataset before any training: every file of every case, in one pass, every problem listed.

``pemma check DATA`` prints the report; ``train``, ``adapt``, ``update``, ``reproduce`` and ``demo`` run the same
check on the cases they will read before they train (:func:`preflight`), and ``--exclude-bad-cases`` leaves the
bad cases out instead of stopping, recording them in the run.

Per case: each image and the label is readable, 3-D, finite, with an invertible header affine; the CT is not a mask
or a normalised image and the PET not a CT (:mod:`pemma.data.intensity`; units that look wrong, such as a PET in
Bq/mL, are warnings); label values are HECKTOR's {0, 1, 2}; the PET covers at least half of the CT field of view in
world space (co-registered); the label grid overlaps the CT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from pemma.data.case import found_images
from pemma.data.intensity import intensity_problem, intensity_warnings
from pemma.data.labels import to_pemma_labels
from pemma.data.layout import CaseRecord
from pemma.data.overlap import affine_world_box, covered_fraction, pet_overlap_problem
from pemma.errors import PemmaError
from pemma.io_utils import file_stamp, load_nifti


@dataclass
class CheckReport:
    """Problems found per case (``{case_id: [one-line problem, ...]}``; a case without problems is good).

    Args:
        n_cases: cases checked.
        problems: the bad cases and their problems, in case order.
    """

    n_cases: int
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bad_cases(self) -> list[str]:
        return list(self.problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem, then the summary line."""
        out = [problem for problems in self.problems.values() for problem in problems]
        return out + [self.summary()]

    def summary(self) -> str:
        if self.ok:
            return f"{self.n_cases} case(s) checked: all good"
        return (f"{self.n_cases} case(s) checked: {len(self.problems)} bad "
                f"({', '.join(self.bad_cases[:10])}{', ...' if len(self.problems) > 10 else ''})")

    def to_dict(self) -> dict[str, object]:
        return {"n_cases": self.n_cases, "bad_cases": self.bad_cases, "problems": self.problems}


def _overlap(ref: nib.Nifti1Image, other: nib.Nifti1Image, pad: bool = False) -> float:
    """Share of ``ref``'s world box of voxel centres that ``other``'s covers (the loader's boxes,
    :mod:`pemma.data.overlap`); ``pad`` widens both boxes by half a ``ref`` voxel (so that thin grids one voxel apart
    still touch)."""
    a, b = affine_world_box(ref.affine, ref.shape), affine_world_box(other.affine, other.shape)
    if pad:
        half = np.abs(np.asarray(ref.header.get_zooms()[:3], dtype=float)) / 2
        a, b = np.stack([a[0] - half, a[1] + half]), np.stack([b[0] - half, b[1] + half])
    return covered_fraction(a, b)


def check_case(case: CaseRecord, modalities: Sequence[str], with_label: bool = True) -> list[str]:
    """The problems of one case, each a line naming the file (empty: the case is good).

    Args:
        case: the case. modalities: the images to check (``["ct", "pet"]``). with_label: check its label too.
    """
    problems: list[str] = []
    images: dict[str, nib.Nifti1Image] = {}
    for modality in modalities:
        path = case.images.get(modality)
        if path is None:
            problems.append(f"case {case.case_id}: no {modality.upper()} file ({found_images(case)})")
            continue
        try:
            images[modality] = load_nifti(path, what=f"{modality.upper()} of case {case.case_id}")
        except PemmaError as exc:
            problems.append(str(exc))
            continue
        voxels = np.asanyarray(images[modality].dataobj)
        problem = intensity_problem(modality, voxels, path, case.case_id)
        if problem:
            problems.append(problem)
            del images[modality]
            continue
        for unusual in intensity_warnings(modality, voxels, path, case.case_id):
            warnings.warn(unusual, UserWarning, stacklevel=2)
    label = label_voxels = None
    if with_label:
        if case.label is None:
            problems.append(f"case {case.case_id}: no label file")
        else:
            try:
                label = load_nifti(case.label, what=f"label of case {case.case_id}")
                label_voxels = to_pemma_labels(np.asanyarray(label.dataobj), case.label_map, case.label,
                                               case.case_id)
            except PemmaError as exc:
                problems.append(str(exc))
    ref = images.get("ct")
    for other in [m for m in images if m != "ct"] if ref is not None else []:  # the loader's rule (CheckOverlapd)
        problem = pet_overlap_problem(case.case_id, ref.affine, ref.shape, images[other].affine, images[other].shape,
                                      case.images[other], what=other.upper())
        if problem is not None:
            problems.append(problem)
    if ref is not None and label is not None and _overlap(ref, label, pad=True) <= 0.0:
        problems.append(f"{case.label}: label of case {case.case_id} does not overlap its CT in physical space")
    elif ref is not None and label_voxels is not None:
        from pemma.data.transforms import check_label_overlap  # torch / MONAI only when a label is checked

        try:  # the loader's own rule: also tumour voxels lying outside the CT field of view
            check_label_overlap(case.label, case.case_id, label_voxels, label.affine, ref.shape[:3], ref.affine)
        except PemmaError as exc:
            problems.append(str(exc))
        else:
            off_grid = label_grid_difference(label, ref)  # e.g. a truncated label or a shifted affine
            if off_grid:
                warnings.warn(f"{case.label}: label of case {case.case_id} is not on its CT grid ({off_grid}); it is "
                              f"resampled onto the CT (nearest neighbour): check that it belongs to this CT",
                              UserWarning, stacklevel=2)
    return problems


def label_grid_difference(label: nib.Nifti1Image, ct: nib.Nifti1Image) -> str:
    """How a label's grid differs from its CT's by more than the one voxel HECKTOR's labels may be off: the world
    boxes of the two grids (their voxel centres; any axis order or orientation) compared; ``""`` when they agree.

    Example:
        >>> cut = nib.Nifti1Image(np.zeros((4, 4, 2)), np.eye(4))  # a label cut to 2 of the CT's 8 slices
        >>> label_grid_difference(cut, nib.Nifti1Image(np.zeros((4, 4, 8)), np.eye(4)))
        "its field of view is up to 6.0 mm from the CT's"
    """
    spacing = float(np.sqrt((np.asarray(ct.affine)[:3, :3] ** 2).sum(axis=0)).max())
    apart = np.abs(affine_world_box(label.affine, label.shape) - affine_world_box(ct.affine, ct.shape)).max()
    return f"its field of view is up to {apart:.1f} mm from the CT's" if apart > spacing * 1.01 else ""


#: results of :func:`check_case` in this process, keyed by the files' identity (path, size, mtime): ``reproduce``
#: checks every case up front and each phase's training checks its cases again, without reading them twice
_CHECKED: dict[tuple, list[str]] = {}


def _file_key(path: str | None) -> tuple:
    """A case file's :func:`~pemma.io_utils.file_stamp` (a file replaced under its name is checked again)."""
    return (None,) if path is None else tuple(file_stamp(path) or (path, None))


def _check_once(case: CaseRecord, modalities: Sequence[str], with_label: bool) -> list[str]:
    key = (case.case_id, tuple(modalities), with_label, *(_file_key(case.images.get(m)) for m in modalities),
           _file_key(case.label) if with_label else None)
    if key not in _CHECKED:
        _CHECKED[key] = check_case(case, modalities, with_label)
    return list(_CHECKED[key])


def check_cases(cases: Iterable[CaseRecord], modalities: Sequence[str], with_label: bool = True,
                progress: bool = False) -> CheckReport:
    """:func:`check_case` for every case (each case once, however often it is listed; unchanged files are not
    read again in the same process)."""
    unique = list({c.case_id: c for c in cases}.values())
    report = CheckReport(n_cases=len(unique))
    for case in tqdm(unique, desc="check", unit="case", disable=not progress):
        problems = _check_once(case, modalities, with_label)
        if problems:
            report.problems[case.case_id] = problems
    return report


def preflight(cases: Sequence[CaseRecord], modalities: Sequence[str], exclude_bad_cases: bool,
              with_label: bool = True, source: str = "") -> tuple[list[CaseRecord], CheckReport]:
    """Check the cases a command will read before it trains.

    Returns:
        the good cases (all of them when every case is good) and the report.

    Raises:
        PemmaError: a case is bad and ``exclude_bad_cases`` is False (names the first problem and the count).
    """
    report = check_cases(cases, modalities, with_label)
    if report.ok:
        return list(cases), report
    if not exclude_bad_cases:
        first = next(iter(report.problems.values()))[0]
        raise PemmaError(f"{first} ({len(report.problems)} of {report.n_cases} cases of {source or 'the data'} are "
                         f"bad: `pemma check` lists them; --exclude-bad-cases leaves them out)")
    bad = set(report.bad_cases)
    return [c for c in cases if c.case_id not in bad], report
