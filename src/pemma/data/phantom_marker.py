"""Recognising pemma's phantom on disk: the mark in its CT headers, and the refusal to write a phantom over a
dataset that is not one (:func:`pemma.data.phantom.synthesize_phantom`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pemma.errors import PemmaError
from pemma.vocab import CLINICAL_FILE, ENDPOINT_FILE

#: the NIfTI header ``descrip`` of every phantom CT: how pemma tells its phantom from real data (it survives a copy
#: of the files into another layout)
PHANTOM_DESCRIP = "pemma phantom"


def is_phantom_image(path: str | Path) -> bool:
    """True when the image file is a CT of pemma's phantom (its header carries :data:`PHANTOM_DESCRIP`); False for
    any other file, also one that cannot be read."""
    try:
        descrip = nib.load(str(path)).header.get("descrip")
        text = bytes(np.asarray(descrip).item()).decode("ascii", "ignore") if descrip is not None else ""
    except Exception:  # not NIfTI, unreadable: not the phantom
        return False
    return text.strip("\x00 ").startswith(PHANTOM_DESCRIP)


def refuse_other_dataset(out: Path) -> None:
    """Raise when ``out`` holds a dataset that is not pemma's phantom: a CT without the phantom's header mark,
    HECKTOR's tables without any phantom CT (:func:`pemma.data.phantom.synthesize_phantom` would replace them), or
    an nnU-Net raw dataset (``dataset.json``)."""
    if not out.is_dir():
        return
    cts = sorted(out.glob("imagesTr/*__CT.nii*"))
    other = next((ct for ct in cts if not is_phantom_image(ct)), None)
    if other is None and not cts:
        other = next((out / name for name in (ENDPOINT_FILE, CLINICAL_FILE) if (out / name).exists()), None)
    if other is None and (out / "dataset.json").is_file():  # an nnU-Net raw dataset: phantom files would join it
        other = out / "dataset.json"
    if other is not None:
        raise PemmaError(f"{out}: holds a dataset that is not pemma's phantom ({other}); synth would replace its "
                         "tables and same-named cases: write the phantom into another folder")
