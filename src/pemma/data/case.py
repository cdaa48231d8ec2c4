"""One patient's files (:class:`CaseRecord`) and its centre: what every layout's discovery returns
(:mod:`pemma.data.layout`, :mod:`pemma.data.nnunet`, :mod:`pemma.data.dicom_stage`) and everything downstream reads."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pemma.modalities import ModalitySpec
from pemma.vocab import HECKTOR_CENTRES

#: modality name -> spec (what discovery reads of it: the HECKTOR file suffixes, the nnU-Net channel names)
Specs = Mapping[str, ModalitySpec]


@dataclass(frozen=True)
class CaseRecord:
    """One patient: image paths by modality (``ct``, ``pet``, ``mr``...) and an optional label path.

    ``label_map`` holds the (file value, pemma value) pairs of a dataset whose ``dataset.json`` numbers GTVp and
    GTVn otherwise than 1 and 2 (None: the files hold pemma's values); ``test`` marks a test case (an ``imagesTs``
    folder's, a datalist's ``"test"`` entry), which training never uses.
    """

    case_id: str
    centre: str
    images: dict[str, str] = field(hash=False)
    label: str | None = None
    label_map: tuple[tuple[int, int], ...] | None = None
    test: bool = False


#: (training cases, validation cases)
CaseSplit = tuple[list[CaseRecord], list[CaseRecord]]


def found_images(case: CaseRecord) -> str:
    """``"found: CT MDA_000_0000.nii.gz, MR MDA_000_0001.nii.gz"``: what a case's files were read as, for the error
    naming a missing modality (an nnU-Net channel named as another modality in ``dataset.json`` shows here)."""
    return "found: " + (", ".join(f"{m.upper()} {Path(p).name}" for m, p in case.images.items()) or "no image")


def patient_key(case_id: str) -> str:
    """A case ID with its separators and case unified (``CHUM_001``, ``chum-001`` -> ``CHUM-001``): HECKTOR's folders
    spell an ID with ``-``, nnU-Net copies of them with ``_``, and both name the same patient (so a model's
    training cases are recognised under either spelling)."""
    return re.sub(r"[-_\s]+", "-", case_id.strip()).upper()


def centre_of(case_id: str) -> str:
    """Centre from a case ID: a known HECKTOR centre token, else the prefix before ``-`` or ``_``."""
    tokens = re.split(r"[-_]", case_id)
    for token in tokens:
        if token.upper() in HECKTOR_CENTRES:
            return token.upper()
    return tokens[0]
