"""Crop the real chest CT and its tumour mask (pyradiomics test data, lung1) to a small box around the tumour.

Writes ``lung1_ct.nii.gz`` and ``lung1_tumour.nii.gz`` next to this script (int16, as the originals). The
crop is plain array slicing through nibabel's ``slicer``, which moves the origin to the first kept voxel and
keeps spacing and direction, so every kept voxel has the same physical position as in the original.

Usage:
    python tests/data/make_real_crop.py [SOURCE_DIR]   # default: ../shared/data/real beside the repository
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "real"
MARGIN_MM = (40.0, 40.0, 40.0)  # around the tumour's bounding box, per array axis


def crop_box(mask: np.ndarray, spacing: tuple[float, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of ``mask > 0`` grown by ``MARGIN_MM`` on every side, clipped to the image."""
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    grow = [int(np.ceil(m / s)) for m, s in zip(MARGIN_MM, spacing, strict=True)]
    return tuple(slice(max(0, int(a) - g), min(n, int(b) + g)) for a, b, g, n in zip(lo, hi, grow, shape, strict=True))


def crop(path: Path, box: tuple[slice, ...], out: Path) -> None:
    """Write ``path`` cropped to ``box`` (int16, geometry adjusted by nibabel) to ``out``."""
    img = nib.load(str(path))
    part = img.slicer[box]
    data = np.asarray(part.dataobj, dtype=np.int16)
    new = nib.Nifti1Image(data, part.affine, part.header)
    new.set_data_dtype(np.int16)
    new.set_qform(part.affine, int(img.header["qform_code"]))
    new.set_sform(part.affine, int(img.header["sform_code"]))
    nib.save(new, str(out))


def main(source: Path = DEFAULT_SOURCE) -> None:
    mask_img = nib.load(str(source / "lung1_tumour.nii.gz"))
    box = crop_box(np.asanyarray(mask_img.dataobj), mask_img.header.get_zooms()[:3], mask_img.shape)
    for name in ("lung1_ct.nii.gz", "lung1_tumour.nii.gz"):
        crop(source / name, box, HERE / name)
        print(f"{name}: voxels {[(s.start, s.stop) for s in box]} of {mask_img.shape} -> "
              f"{(HERE / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
