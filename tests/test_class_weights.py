"""``train.class_weights``: validated, off by default, and weighting the loss as documented (known answers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pemma.config import TrainConfig
from pemma.training.loop import dice_ce_loss


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, 0.0, 1.0], [1.0, -1.0, 2.0]])
def test_invalid_class_weights_are_refused(bad):
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig(class_weights=bad)


def test_default_is_unweighted_and_equal_weights_change_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4)
    label = torch.randint(0, 3, (2, 1, 4, 4, 4))
    plain = dice_ce_loss(TrainConfig())(logits, label)
    ones = dice_ce_loss(TrainConfig(class_weights=[1.0, 1.0, 1.0]))(logits, label)
    assert TrainConfig().class_weights is None
    assert torch.allclose(plain, ones, atol=1e-6)


def test_cross_entropy_term_is_class_weighted():
    """With the Dice term equal in both, the difference of the losses is the difference of the CE terms,
    computed here by hand from torch's weighted cross-entropy."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4)
    label = torch.randint(0, 3, (2, 1, 4, 4, 4))
    w = [1.0, 2.0, 4.0]
    loss = dice_ce_loss(TrainConfig(class_weights=w))
    ce_w = F.cross_entropy(logits, label[:, 0], weight=torch.tensor(w))
    ce = F.cross_entropy(logits, label[:, 0])
    dice_w = loss.dice(logits, label)
    dice = dice_ce_loss(TrainConfig()).dice(logits, label)
    assert torch.allclose(loss(logits, label), dice_w + ce_w, atol=1e-5)
    assert torch.allclose(dice_ce_loss(TrainConfig())(logits, label), dice + ce, atol=1e-5)
    assert not torch.allclose(ce_w, ce)
