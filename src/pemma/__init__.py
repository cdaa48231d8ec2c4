"""pemma: parameter-efficient multi-modal adaptation for medical image segmentation and prognosis.

The Python API (``pemma.train``, ``pemma.adapt``, ``pemma.update``, ``pemma.predict``, ``pemma.evaluate``,
``pemma.reproduce``, ``pemma.demo``, ``pemma.params``, ``pemma.export``, ``pemma.import_model``, ``pemma.synth``,
``pemma.survival_train|adapt|evaluate|predict|chain`` and ``pemma.Run``) lives in :mod:`pemma.api`, whose
functions import torch and MONAI when they run, so ``import pemma`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from pemma import api as _api  # light: each function imports torch / MONAI when it runs
from pemma.vocab import LABELS, MODALITY_ORDER

#: names served by :mod:`pemma.api` (its ``__all__``: one list to keep)
API: tuple[str, ...] = tuple(_api.__all__)

__all__ = ["LABELS", "MODALITY_ORDER", "__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(_api, name)
    raise AttributeError(f"module 'pemma' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
