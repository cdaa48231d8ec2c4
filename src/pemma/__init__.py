"""pemma: parameter-efficient multi-modal adaptation for medical image segmentation and prognosis.

The Python API, one function per ``pemma`` verb (``pemma.check``, ``pemma.convert_dicom``, ``pemma.synth``,
``pemma.train``, ``pemma.predict``, ``pemma.evaluate``, ``pemma.import_model``, ``pemma.adapt``, ``pemma.update``,
``pemma.params``, ``pemma.export``, ``pemma.survival_train``, ``pemma.survival_adapt``, ``pemma.survival_evaluate``,
``pemma.survival_predict``, ``pemma.survival_chain``, ``pemma.reproduce``, ``pemma.demo``), ``pemma.run_config``
(the configuration keyword arguments give) and ``pemma.Run`` (a run folder) live in :mod:`pemma.api`, whose
functions import torch and MONAI when they run, so ``import pemma`` stays light (no torch). ``pemma.LABELS``
(HECKTOR's label values, ``{"background": 0, "GTVp": 1, "GTVn": 2}``) and ``pemma.MODALITY_ORDER`` (the channel
order, CT first) come from :mod:`pemma.vocab`.

Example:
    >>> import pemma
    >>> run = pemma.train(data="data/phantom", centres=["CHUM"], modalities=["ct"], out="runs/ct")
    >>> help(pemma.adapt)  # every function: its arguments, defaults and an example
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
