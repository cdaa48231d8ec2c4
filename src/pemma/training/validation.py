"""Validation during segmentation training: DSCagg on the validation cases by sliding window, for one input set or
each of several (an adaptation that validates CT+PET, CT and PET alone: ``AdapterConfig.validation_inputs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pemma.config import RunConfig
from pemma.evaluation.metrics import AggregatedDice, nanmean
from pemma.inference.sliding import labels_of, sliding_window_probs

if TYPE_CHECKING:
    from pemma.training.loop import TrainingTask


def set_score_key(inputs: tuple[str, ...]) -> str:
    """The key of one input set's mean DSCagg when several are validated (``"ct+pet_mean"``; ``val_`` before it in
    ``metrics.csv``)."""
    return f"{'+'.join(inputs)}_mean"


def validated_text(sets: tuple[tuple[str, ...], ...]) -> str:
    """What a best score was measured on, for people: ``"CT+PET"``, or ``"CT+PET, CT, PET averaged"``."""
    names = ", ".join("+".join(m.upper() for m in s) for s in sets)
    return names if len(sets) == 1 else f"{names} averaged"


def validate(task: TrainingTask, module: nn.Module, val_ds: Any, cfg: RunConfig, device: torch.device) -> dict:
    """DSCagg per class and mean over the validation cases (preprocessed grid, sliding window).

    With several :meth:`~TrainingTask.validated_sets`, each set is scored alone (:func:`set_score_key`, e.g.
    ``"ct+pet_mean"``); ``mean`` (what the best weights are chosen by) averages the sets' means, and ``GTVp`` /
    ``GTVn`` each class over the sets where it is defined (NaN left out): where a class is undefined in some sets
    (no such lesion labelled or predicted), ``mean`` need not be the mean of the averaged ``GTVp`` and ``GTVn``."""
    module.eval()
    sets = task.validated_sets()
    aggs = [AggregatedDice() for _ in sets]
    predictors = [task.predictor(module, inputs) for inputs in sets]
    channels = [[task.modalities.index(m) for m in inputs] for inputs in sets]
    for i in range(len(val_ds)):
        item = val_ds[i]
        image, label = item["image"].as_tensor(), item["label"][0].numpy().astype("uint8")
        for agg, predictor, chosen in zip(aggs, predictors, channels, strict=True):
            probs = sliding_window_probs(predictor, image[chosen], cfg.model.roi_size, cfg.train.sw_batch_size,
                                         cfg.train.overlap, device=device, amp=cfg.train.amp)
            agg.update(labels_of(probs).numpy(), label)
    module.train()
    scores = [agg.compute() for agg in aggs]
    if len(scores) == 1:
        return scores[0]
    out = {key: nanmean([s[key] for s in scores]) for key in scores[0]}
    out.update({set_score_key(inputs): s["mean"] for inputs, s in zip(sets, scores, strict=True)})
    return out
