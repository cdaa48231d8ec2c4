"""Atomic file writing and checked NIfTI reading shared by every stage."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pemma.errors import PemmaError

#: environment variable naming the root folder of automatic disk caches (see :func:`default_cache_dir`)
CACHE_ENV = "PEMMA_CACHE_DIR"


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A crash or an exception leaves ``path`` untouched (either the old file or nothing). The file gets the mode a
    plain ``open()`` would give it (``0666`` less the umask).
    The temporary name keeps the suffix of ``path`` so writers that look at it (``.nii.gz``) work.

    Example:
        >>> with atomic_path("out/case.nii.gz") as tmp:
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos")
            if _disk_full(path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
            raise
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give what a plain open() would
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """True when the file system of ``folder`` has less than ``margin`` bytes (1 MiB) left for this user."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < margin


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike,
               header: nib.Nifti1Header | None = None, dtype: np.dtype | type | None = None) -> None:
    """Save ``array`` as NIfTI with ``affine`` atomically (temporary file, then rename).

    Args:
        array: voxel data, indexed like the nibabel data array (i, j, k).
        affine: 4x4 voxel-to-world (RAS+) matrix.
        path: destination, usually ``*.nii.gz``.
        header: header to copy (keeps qform/sform codes and units of an input image). Default None.
        dtype: on-disk data type. Default: the array's dtype.
    """
    data = np.asarray(array)
    if dtype is not None:
        data = data.astype(dtype)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=hdr)
    if hdr is not None:
        img.set_data_dtype(data.dtype)
        img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


#: file endings nibabel reads; any other image file (``.mha``, ``.nrrd``, ``.mhd``...) is read by SimpleITK
NIFTI_ENDINGS = (".nii.gz", ".nii")
#: image file endings pemma looks for in folders of images (nnU-Net ``file_ending`` may name any SimpleITK reads)
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def read_sitk_image(path: str | os.PathLike) -> nib.Nifti1Image:
    """Read any image SimpleITK reads (MetaImage, NRRD, ...) as a NIfTI image in the same physical space.

    SimpleITK's geometry is LPS (origin, spacing, direction); NIfTI affines map voxels to RAS, so the
    first two world axes change sign. The voxel array is transposed from SimpleITK's (z, y, x) to (x, y, z).

    Args:
        path: the image file.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1")
    array = sitk.GetArrayFromImage(image)
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    linear = np.eye(3)
    linear[:dim, :dim] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ linear
    affine[:3, 3] = lps_to_ras @ origin
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def load_nifti(path: str | os.PathLike, *, what: str = "image", voxels: bool = True) -> nib.Nifti1Image:
    """Open an image file and check that it can be read, is 3-D and holds only finite values.

    NIfTI (``.nii``, ``.nii.gz``) is read by nibabel, any other format SimpleITK reads (``.mha``, ``.nrrd``...) by
    :func:`read_sitk_image`, as a NIfTI image in the same physical space.

    Args:
        voxels: read and check the voxels (default). False: a NIfTI file's header only (shape, affine), for a
            caller that needs the geometry of an image whose voxels are read elsewhere (``predict`` reads the
            CT's voxels once, in preprocessing, not twice); its voxels are then neither read nor checked here.

    Raises:
        PemmaError: one line naming the file and the problem (missing, corrupt, not 3-D, NaN/inf).
    """
    path = Path(path)
    if not path.is_file():
        raise PemmaError(f"{path}: {what} file not found")
    nifti = path.name.lower().endswith(NIFTI_ENDINGS)
    try:
        img = nib.load(str(path)) if nifti else read_sitk_image(path)
        data = np.asanyarray(img.dataobj) if voxels or not nifti else None
    except Exception as exc:  # nibabel and SimpleITK raise many types for truncated / corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "NIfTI" if nifti else "an image (SimpleITK)"
        raise PemmaError(f"{path}: cannot read {what} as {kind} ({reason[:200]})") from None
    shape = tuple(img.shape)
    if len(shape) == 4 and shape[-1] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise PemmaError(f"{path}: {what} must be a 3-D volume, got shape {shape}")
    if data is not None and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise PemmaError(f"{path}: {what} has {bad} NaN/inf voxels")
    linear = np.asarray(img.affine, dtype=float)[:3, :3]
    if not np.isfinite(linear).all() or abs(np.linalg.det(linear)) < 1e-12:
        spacing = tuple(round(float(z), 4) for z in np.linalg.norm(np.nan_to_num(linear), axis=0))
        raise PemmaError(f"{path}: {what} has a singular voxel-to-world affine (voxel spacing {spacing} mm); "
                         f"its header geometry is broken")
    if data is not None and nifti:  # keep the voxels read for the checks: the caller does not read them again
        img = type(img)(data, img.affine, img.header)
    return img


def file_stamp(path: object) -> list[Any] | None:
    """``[absolute path, size, mtime_ns]`` of a file (None: not a readable file): what the caches key an input by,
    so a file replaced under its name (a new ``mtime_ns``) is read again."""
    try:
        stat = os.stat(os.fspath(path))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return [os.path.abspath(os.fspath(path)), stat.st_size, stat.st_mtime_ns]  # type: ignore[arg-type]


def grid_difference(image: nib.Nifti1Image, reference: nib.Nifti1Image, atol: float = 1e-3) -> str | None:
    """What differs between two images' voxel grids, for an error message (None: the same grid to ``atol`` mm).

    Example: ``"orientation RAS vs LPS; origin 10.0 mm apart"`` (shape ``(i, j, k) vs (...)``, spacing in mm, the
    origin's distance, the axis codes of :func:`nibabel.aff2axcodes`, or "direction" for an oblique rotation).
    """
    shape, ref_shape = tuple(image.shape[:3]), tuple(reference.shape[:3])
    a, b = np.asarray(image.affine, dtype=np.float64), np.asarray(reference.affine, dtype=np.float64)
    if shape == ref_shape and np.allclose(a, b, atol=atol):
        return None
    parts = [f"shape {shape} vs {ref_shape}"] if shape != ref_shape else []
    spacing, ref_spacing = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(spacing, ref_spacing, atol=atol):
        parts.append(f"spacing {tuple(round(float(s), 3) for s in spacing)} vs "
                     f"{tuple(round(float(s), 3) for s in ref_spacing)} mm")
    codes, ref_codes = "".join(nib.aff2axcodes(a)), "".join(nib.aff2axcodes(b))
    if codes != ref_codes:
        parts.append(f"orientation {codes} vs {ref_codes}")
    elif not np.allclose(a[:3, :3] / spacing, b[:3, :3] / ref_spacing, atol=1e-4):
        parts.append("direction (a rotation) differs")
    if not np.allclose(a[:3, 3], b[:3, 3], atol=atol):
        parts.append(f"origin {float(np.linalg.norm(a[:3, 3] - b[:3, 3])):.1f} mm apart")
    return "; ".join(parts) or "affine differs"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (raises PemmaError naming the file when it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk_size):
                digest.update(block)
    except OSError as exc:
        raise PemmaError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    return digest.hexdigest()


def save_tensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> str:
    """Write tensors as safetensors atomically (CPU, contiguous copies); return the file's SHA-256.

    The same tensors and metadata always give the same bytes (so the same checksum): safetensors writes the
    metadata entries in a hash map's order, which changes from one call to the next; the header is rewritten with
    its keys sorted (:func:`_sort_header`)."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata or {"format": "pt"})
        _sort_header(Path(tmp))
    return sha256_file(path)


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header in place with its keys sorted (at every level), the same length:
    the tensors' offsets are relative to the data after the header, so nothing else moves."""
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(size)
        text = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
        if len(text) > size:  # cannot happen (same content, compact): leave the file as safetensors wrote it
            return
        fh.seek(8)
        fh.write(text + b" " * (size - len(text)))  # safetensors pads its header with spaces too


def load_tensors(path: str | os.PathLike, *, sha256: str | None = None, what: str = "weights file",
                 manifest: str = "its metadata") -> dict[str, torch.Tensor]:
    """Read a safetensors file, first checking it against the SHA-256 recorded in ``manifest``.

    Raises:
        PemmaError: one line naming the file: missing, checksum mismatch, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise PemmaError(f"{path}: {what} not found")
    if sha256 and sha256_file(path) != sha256:
        raise PemmaError(f"{path}: checksum does not match {manifest} (truncated, corrupt or replaced file)")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PemmaError(f"{path}: truncated or corrupt {what} ({reason})") from None


def copy_tensors_into(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                      optional: Sequence[str] = ()) -> list[str]:
    """Copy ``state`` into the tensors ``own`` (e.g. a module's state dict) after checking that it fits.

    Args:
        own: the target tensors by name.
        state: the tensors to copy.
        source: names ``state`` in the error (e.g. the file).
        optional: key prefixes of ``own`` that ``state`` may lack.

    Returns:
        The keys of ``own`` that ``state`` did not provide.

    Raises:
        ValueError: ``"<source>: does not fit this model (M missing, U unexpected, S wrong-shape tensors,
            e.g. KEY)"`` when ``state`` lacks a required key, has an unknown one, or a shape differs.
    """
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(tuple(optional)))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        first = (missing or unexpected or shapes)[0]
        raise ValueError(f"{source}: does not fit this model ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(shapes)} wrong-shape tensors, e.g. {first})")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    return sorted(set(own) - set(state))


def default_cache_dir(cache_key: str | None) -> Path:
    """Folder of automatic disk caches: ``$PEMMA_CACHE_DIR`` (or ``~/.cache/pemma/preprocessed``) / ``cache_key``."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pemma" / "preprocessed")
    return root / (cache_key or "default")
