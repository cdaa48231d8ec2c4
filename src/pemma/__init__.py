"""pemma: parameter-efficient multi-modal adaptation for medical image segmentation and prognosis."""

from __future__ import annotations

__version__ = "0.1.0"

#: Fixed channel order of every multi-modal tensor in pemma.
MODALITY_ORDER: tuple[str, ...] = ("ct", "pet")
#: Label values of HECKTOR 2022.
LABELS: dict[str, int] = {"background": 0, "GTVp": 1, "GTVn": 2}
