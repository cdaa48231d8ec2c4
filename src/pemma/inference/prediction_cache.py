"""Label maps already predicted in this process, so that no case is run through the same network twice.

``pemma reproduce`` predicts the same case with the same network several times: evaluation, then the overlay
figure (the test cases it shows were evaluated), then the lesion-feature prognosis chain (every case, segmented by
the CT model once per chain, and the test cases again with the PEMMA run). On the exact CT route a PEMMA run's
CT-only input runs the untouched CT base (:meth:`pemma.models.pemma_base.PemmaAdaptedModel.adapter_for` is None), so its
CT-only predictions *are* the base's. :class:`PredictionCache` keys a prediction by what determines it:

* the network that serves the input set: the run's weights (``model.json`` SHA-256, or the run folder and the time
  its ``model.json`` was written when it has none), or the CT base's weights for an exact-route CT-only input;
* the case, the input set, the output reference (``ct`` / ``pet``);
* the preprocessing and sliding-window settings (``PreprocessConfig``, roi, overlap, window batch, AMP) and device.

Label maps are kept zlib-compressed (a uint8 map of a phantom case is ~360 kB, compressed a few kB), with the
reference image (a nibabel image whose data stay on disk).

Example:
    >>> cache = PredictionCache()
    >>> label, ref = cache.predict(model, case, ["ct", "pet"], device)   # runs the network
    >>> label, ref = cache.predict(model, case, ["ct", "pet"], device)   # from memory
    >>> cache.cached(model.run_dir, case, ["ct", "pet"])                 # from memory, no model needed
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from pemma.adapters.state import unwrap_model
from pemma.data.layout import CaseRecord
from pemma.inference.predict import WindowSettings, output_reference, predict_case
from pemma.models.loaded import LoadedModel
from pemma.runs import MODEL_META
from pemma.vocab import KIND_PEMMA


def serving_network(model: LoadedModel, modalities: Sequence[str]) -> str:
    """Identity of the weights that compute ``model``'s output for ``modalities``: ``weights:<SHA-256>`` of the run
    (for an exact-route CT-only input of a PEMMA adapter run: of its CT base; not for full fine-tuning, which
    trains the base copy), else ``run:<folder>@<model.json mtime>``.

    Args:
        model: a loaded run. modalities: the input set.
    """
    net = unwrap_model(model.net)
    adapter_for = getattr(net, "adapter_for", None)
    # only an adapter run (kind "pemma") holds the base's own weights: its frozen base copy is loaded from the
    # base run (checked by SHA-256) and never saved; full fine-tuning ("pemma_full") trains that copy too
    if (model.kind == KIND_PEMMA and callable(adapter_for) and tuple(modalities) == ("ct",)
            and adapter_for(("ct",)) is None and not getattr(net, "_merged", False) and model.meta.get("base_sha256")):
        return f"weights:{model.meta['base_sha256']}"  # the exact CT route runs the untouched base
    if model.meta.get("sha256"):
        return f"weights:{model.meta['sha256']}"
    if model.run_dir is None:
        return f"object:{id(model)}"
    meta = Path(model.run_dir) / MODEL_META
    stamp = meta.stat().st_mtime_ns if meta.is_file() else 0
    return f"run:{Path(model.run_dir).resolve()}@{stamp}"


@dataclass
class _Entry:
    data: bytes
    shape: tuple[int, ...]
    ref: nib.Nifti1Image


@dataclass
class PredictionCache:
    """Predictions of this process by network, case, input set and settings (see the module docstring).

    Attributes:
        window: the sliding-window settings of a call that passes none (e.g. ``WindowSettings(amp=True)`` for a
            run that predicts in mixed precision throughout). Default: as each model was trained, fp32.
        hits, misses: how many :meth:`predict` / :meth:`cached` calls were served from memory / ran the network.
    """

    window: WindowSettings = field(default_factory=WindowSettings)
    hits: int = 0
    misses: int = 0
    _store: dict[tuple, _Entry] = field(default_factory=dict, repr=False)
    _aliases: dict[tuple, tuple] = field(default_factory=dict, repr=False)

    @staticmethod
    def _settings(model: LoadedModel, window: WindowSettings, device: torch.device) -> tuple:
        cfg = model.config
        return (repr(cfg.preprocess), tuple(window.roi_size or cfg.model.roi_size),
                cfg.train.overlap if window.overlap is None else window.overlap,
                window.sw_batch_size or cfg.train.sw_batch_size, window.amp, torch.device(device).type)

    def key(self, model: LoadedModel, case: CaseRecord, modalities: Sequence[str], device: torch.device,
            window: WindowSettings | None = None, reference: str = "ct") -> tuple:
        """The cache key of a prediction (also remembered under the run folder for :meth:`cached`)."""
        window = window or self.window
        network, settings = serving_network(model, modalities), self._settings(model, window, device)
        if model.run_dir is not None and window == self.window:
            self._aliases[(str(Path(model.run_dir).resolve()), tuple(modalities), reference)] = (network, settings)
        return self._key(network, settings, case, modalities, reference)

    @staticmethod
    def _key(network: str, settings: tuple, case: CaseRecord, modalities: Sequence[str], reference: str) -> tuple:
        return (network, tuple(modalities), output_reference(case, modalities, reference), settings, case.case_id)

    def predict(self, model: LoadedModel, case: CaseRecord, modalities: Sequence[str], device: torch.device,
                window: WindowSettings | None = None, inputs_cache: dict[tuple, Any] | None = None,
                reference: str = "ct") -> tuple[np.ndarray, nib.Nifti1Image]:
        """:func:`~pemma.inference.predict.predict_case`, or its earlier result for the same key.

        Args:
            model, case, modalities, device, window, inputs_cache, reference: as for ``predict_case``.

        Returns:
            (uint8 label map on the reference grid, the reference image); the array is a fresh copy.
        """
        window = window or self.window
        key = self.key(model, case, modalities, device, window, reference)
        entry = self._store.get(key)
        if entry is not None:
            self.hits += 1
            return self._unpack(entry), entry.ref
        self.misses += 1
        label, ref = predict_case(model, case, modalities, device, window, inputs_cache, reference)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        self._store[key] = _Entry(zlib.compress(label.tobytes(), 1), label.shape, ref)
        return label, ref

    def cached(self, run_dir: str | Path, case: CaseRecord, modalities: Sequence[str],
               reference: str = "ct") -> tuple[np.ndarray, nib.Nifti1Image] | None:
        """The prediction of the run in ``run_dir`` (this cache's window settings) if this cache holds it, without
        loading the model (the run must have been used through :meth:`predict` before); else None."""
        alias = self._aliases.get((str(Path(run_dir).resolve()), tuple(modalities), reference))
        entry = self._store.get(self._key(*alias, case, modalities, reference)) if alias is not None else None
        if entry is None:
            return None
        self.hits += 1
        return self._unpack(entry), entry.ref

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def _unpack(entry: _Entry) -> np.ndarray:
        return np.frombuffer(zlib.decompress(entry.data), dtype=np.uint8).reshape(entry.shape).copy()
