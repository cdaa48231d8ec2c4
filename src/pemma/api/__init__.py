"""The Python API: one function per ``pemma`` verb, with the CLI flags as keyword arguments.

::

    import pemma
    run = pemma.train(data="data/phantom", centres=["CHUM"], modalities=["ct"], preset="tiny", out="runs/ct")
    ad = pemma.adapt(base=run, data="data/phantom", centres=["MDA"], add_modality="pet", method="lora",
                     out="runs/ad")
    pemma.predict(ad, inputs="data/phantom/imagesTr", modalities=["ct", "pet"], out="preds/")
    scores = pemma.evaluate(ad, data="data/phantom", centres=["MDA"], modalities=["ct", "pet"])

Heavy modules (torch, MONAI) are imported when a function runs, not when this package is imported.
"""

from __future__ import annotations

from pemma.api.check import check, convert_dicom
from pemma.api.importing import import_model
from pemma.api.inference import evaluate, predict
from pemma.api.protocol import demo, reproduce
from pemma.api.run import Run, run_config
from pemma.api.segmentation import adapt, export, params, synth, train, update
from pemma.api.survival import survival_adapt, survival_evaluate, survival_predict, survival_train
from pemma.api.survival_chain import survival_chain

__all__ = ["Run", "adapt", "check", "convert_dicom", "demo", "evaluate", "export", "import_model", "params", "predict",
           "reproduce", "run_config", "survival_adapt", "survival_chain", "survival_evaluate", "survival_predict",
           "survival_train", "synth", "train", "update"]
