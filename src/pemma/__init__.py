"""pemma: parameter-efficient multi-modal adaptation for medical image segmentation and prognosis."""

from __future__ import annotations

__version__ = "0.1.0"

from pemma.vocab import LABELS, MODALITY_ORDER

__all__ = ["LABELS", "MODALITY_ORDER", "__version__"]
