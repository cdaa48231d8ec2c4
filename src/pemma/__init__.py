"""pemma: parameter-efficient multi-modal adaptation for medical image segmentation and prognosis.

The Python API (``pemma.train``, ``pemma.adapt``, ``pemma.update``, ``pemma.predict``, ``pemma.evaluate``,
``pemma.reproduce``, ``pemma.demo``, ``pemma.params``, ``pemma.export``, ``pemma.import_model``, ``pemma.synth``,
``pemma.survival_train|adapt|evaluate|predict|chain`` and ``pemma.Run``) lives in :mod:`pemma.api` and is loaded
on first use, so ``import pemma`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from pemma.vocab import LABELS, MODALITY_ORDER

#: names served by :mod:`pemma.api` (PEP 562 lazy attributes)
API = ("Run", "adapt", "check", "convert_dicom", "demo", "evaluate", "export", "import_model", "params", "predict",
       "reproduce", "run_config", "survival_adapt", "survival_chain", "survival_evaluate", "survival_predict",
       "survival_train", "synth", "train", "update")

__all__ = ["LABELS", "MODALITY_ORDER", "__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from pemma import api

        return getattr(api, name)
    raise AttributeError(f"module 'pemma' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
