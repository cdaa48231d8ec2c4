"""A class the CT base never learnt: the warning at adaptation, and the last decoder block that lets PEMMA learn it
(docs/phantom-difficulty.md: with a node-blind base, PEMMA LoRA's GTVn went 0.000 -> 0.356 once decoder2 trained)."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.networks.nets import UNETR

from pemma.adapters import AdapterConfig
from pemma.methods.adaptation import unlearnt_classes, warn_unlearnt_classes
from pemma.models.pemma_unetr import PemmaUNETR

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

UNETR_KW = {"img_size": 32, "feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
HEADER = "step,epoch,loss,lr,val_GTVp,val_GTVn,val_mean,seconds\n"


def _metrics(run, rows: str):
    run.mkdir(exist_ok=True)
    (run / "metrics.csv").write_text(HEADER + rows)
    return run


def test_unlearnt_classes_known_answers(tmp_path):
    # steps without validation leave the val_ cells empty; they do not count as zeros
    blind = _metrics(tmp_path / "a", "10,1,4.6,1e-3,,,,1.0\n100,4,4.5,1e-3,0.316,0.0000,0.158,44\n"
                                     "200,9,4.1,1e-3,0.334,0.0,0.167,95\n")
    assert unlearnt_classes(blind) == ["GTVn"]
    learnt = _metrics(tmp_path / "b", "100,4,4.6,1e-3,0.316,0.0,0.158,44\n200,9,4.1,1e-3,0.334,0.121,0.227,95\n")
    assert unlearnt_classes(learnt) == []  # one non-zero validation is enough
    nothing = _metrics(tmp_path / "c", "100,4,4.6,1e-3,0.0,0.0,0.0,44\n")
    assert unlearnt_classes(nothing) == ["GTVp", "GTVn"]
    assert unlearnt_classes(_metrics(tmp_path / "d", "10,1,4.6,1e-3,,,,1.0\n")) == []  # never validated
    assert unlearnt_classes(tmp_path / "e") == []  # no metrics.csv (an imported model)
    damaged = _metrics(tmp_path / "f", "100,4,4.6,1e-3,0.5,oops,0.25,44\n200,9,4.1,1e-3,0.5,0.0,0.25,95\n")
    assert unlearnt_classes(damaged) == ["GTVn"]  # a damaged cell is skipped, not a crash
    each = tmp_path / "g"  # a run validated on each input set: its per-set columns are not classes
    each.mkdir()
    (each / "metrics.csv").write_text("step,epoch,loss,lr,val_GTVp,val_GTVn,val_mean,val_ct+pet_mean,val_ct_mean,"
                                      "val_pet_mean,seconds\n100,4,4.6,1e-3,0.5,0.2,0.35,0.5,0.0,0.4,44\n")
    assert unlearnt_classes(each) == []


def test_warning_names_the_run_and_the_class(tmp_path):
    _metrics(tmp_path, "100,4,4.6,1e-3,0.5,0.0,0.25,44\n")
    with pytest.warns(UserWarning, match=r"base run .*: DSCagg of GTVn was 0.000 at every validation"):
        warn_unlearnt_classes(tmp_path)
    (tmp_path / "metrics.csv").write_text(HEADER + "100,4,4.6,1e-3,0.5,0.1,0.3,44\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unlearnt_classes(tmp_path)  # every class learnt: silent


def test_pemma_unetr_trains_the_last_decoder_block_and_keeps_the_base():
    """The default recipe trains a copy of decoder2 (a peft modules_to_save copy); the exact CT route still runs the
    untouched base decoder, so CT-only output equals the base after a training step."""
    torch.manual_seed(0)
    base = UNETR(1, 3, **UNETR_KW).eval()
    model = PemmaUNETR(base, AdapterConfig())
    assert "decoder2" in model.config.train_parts
    ct = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    x = torch.cat([ct, torch.rand_like(ct)], 1)
    with torch.no_grad():
        before = base(ct)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder2 = {n for n in trainable if ".decoder2." in n}
    assert decoder2 and all("modules_to_save" in n for n in decoder2)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x, ("ct", "pet")).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n in decoder2 and n.endswith("weight"))
    opt.step()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x[:, :1], ("ct",)), before)  # exact route: the base, bit for bit
        assert torch.equal(base(ct), before)  # the base module itself was never edited
