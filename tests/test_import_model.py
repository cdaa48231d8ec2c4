"""``pemma import-model``: plain MONAI UNETR / Swin UNETR weights (state dict, safetensors, checkpoint dict, bundle)
become a CT base run whose logits are the source network's; a 14-class base is adapted and predicts end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import main_result, run_main
from monai.networks.nets import UNETR, SwinUNETR
from safetensors.torch import save_file

import pemma
from pemma.errors import PemmaError
from pemma.methods import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: the tiny preset's UNETR sizes at a 32^3 ROI (what ``--preset tiny --roi 32 32 32`` builds)
TINY_UNETR = {"img_size": [32, 32, 32], "feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4}
TINY_SWIN = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4]}
FLAGS = ["--preset", "tiny", "--roi", "32", "32", "32", "--spacing", "4", "4", "4"]


def monai_unetr(out_channels: int = 3, seed: int = 3, **sizes: object) -> UNETR:
    torch.manual_seed(seed)
    return UNETR(in_channels=1, out_channels=out_channels, **{**TINY_UNETR, **sizes}).eval()


def logits(net: torch.nn.Module, seed: int = 0, size: int = 32) -> torch.Tensor:
    x = torch.rand((1, 1, size, size, size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x)


def write_config(path: Path) -> Path:
    path.write_text("preprocess:\n  ct_window: [-200, 300]\n  target_spacing: [4, 4, 4]\n")
    return path


@pytest.mark.parametrize("form", ["pt", "safetensors", "checkpoint"])
def test_weights_forms_import_exactly(tmp_path: Path, form: str) -> None:
    source = monai_unetr()
    state = source.state_dict()
    if form == "pt":
        path = tmp_path / "unetr.pt"
        torch.save(state, path)
    elif form == "safetensors":
        path = tmp_path / "unetr.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a training checkpoint of a DDP model: the state dict under "state_dict", keys prefixed "module."
        path = tmp_path / "ckpt.pth"
        torch.save({"epoch": 7, "best_metric": 0.5, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml")
    stdout = run_main("import-model", str(path), "--backbone", "unetr", "--config", str(config), *FLAGS,
                      "--out", str(out))
    assert f"{len(state)} tensors matched, 0 missing, 0 unexpected, 0 shape mismatches; head loaded" in stdout
    loaded = load_model(out)
    assert loaded.kind == "backbone" and loaded.input_sets == [["ct"]]
    assert torch.equal(logits(loaded.net), logits(source))
    assert loaded.config.preprocess.ct_window == [-200, 300], "the declared preprocessing is stored in the run"
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "import" and meta["import"]["head"] == "loaded"
    assert meta["import"]["counts"]["matched"] == len(state)


def test_label_map_selects_classes_of_a_14_class_head(tmp_path: Path) -> None:
    source = monai_unetr(out_channels=14)
    torch.save(source.state_dict(), tmp_path / "btcv.pt")
    run = pemma.import_model(tmp_path / "btcv.pt", tmp_path / "run", backbone="unetr", preset="tiny",
                             roi=[32, 32, 32], label_map="GTVp=3,gtvn=5")
    assert run.summary["head"] == "selected" and run.summary["source_classes"] == 14
    assert run.summary["shape_mismatch"] == 0
    expected = logits(source)[:, [0, 3, 5]]
    torch.testing.assert_close(logits(load_model(run).net), expected, rtol=0, atol=1e-5)


def test_predicting_with_an_untrained_new_head_warns(tmp_path: Path) -> None:
    """A 14-class head imported without --label-map is replaced by a new, untrained head: predicting with that run
    wrote random label maps without a word (README: "adapt, or use a label map, before relying on them"). It now
    warns, naming the run; also for CT alone through an adapted run's exact route on such a base."""
    import warnings

    import nibabel as nib
    import numpy as np

    from pemma.methods.importing import untrained_head

    torch.save(monai_unetr(out_channels=14).state_dict(), tmp_path / "btcv.pt")
    new = pemma.import_model(tmp_path / "btcv.pt", tmp_path / "new", backbone="unetr", preset="tiny", roi=[32] * 3)
    mapped = pemma.import_model(tmp_path / "btcv.pt", tmp_path / "mapped", backbone="unetr", preset="tiny",
                                roi=[32] * 3, label_map="GTVp=3,GTVn=5")
    ct = np.full((24, 24, 16), -1000, np.int16)
    ct[4:20, 4:20, 2:14] = 40
    nib.save(nib.Nifti1Image(ct, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "ct.nii.gz")
    with pytest.warns(UserWarning, match=r"new: its head is new and untrained \(imported from a 14-class head "
                                         r"without --label-map\)"):
        pemma.predict(new, inputs=tmp_path / "ct.nii.gz", out=tmp_path / "p1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pemma.predict(mapped, inputs=tmp_path / "ct.nii.gz", out=tmp_path / "p2")
    adapted = {"method": "pemma_lora", "adapters": {"ct": "none (exact CT base)"}, "base_run": str(new.path)}
    assert "CT alone runs its untouched base" in untrained_head(adapted, tmp_path / "ad", ["ct"])
    assert untrained_head(adapted, tmp_path / "ad", ["ct", "pet"]) is None  # the adapted head trained
    assert untrained_head({**adapted, "base_run": str(mapped.path)}, tmp_path / "ad", ["ct"]) is None


def test_bundle_folder_gives_the_network_sizes(tmp_path: Path) -> None:
    sizes = {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 4}  # not the tiny preset's
    source = monai_unetr(**sizes)
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    torch.save(source.state_dict(), bundle / "models" / "model.pt")
    network_def = {"_target_": "UNETR", "in_channels": 1, "out_channels": 3, "img_size": "@roi", **sizes}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"roi": [32, 32, 32], "network_def": network_def}))
    run = pemma.import_model(bundle, tmp_path / "run", preset="tiny", config=write_config(tmp_path / "c.yaml"))
    assert run.config.model.backbone == "unetr" and run.config.model.roi_size == [32, 32, 32]
    assert run.config.model.unetr == sizes
    assert torch.equal(logits(load_model(run).net), logits(source))
    with pytest.raises(PemmaError, match="not --backbone swin_unetr"):
        pemma.import_model(bundle, tmp_path / "run2", backbone="swin_unetr", preset="tiny")


def test_a_bundle_brings_its_preprocessing(tmp_path: Path) -> None:
    """A bundle's model was trained at its ``Spacingd`` pixdim and ``ScaleIntensityRanged`` window (a model-zoo
    bundle), or at the settings of pemma's own ``configs/preprocessing.json`` (``pemma export --format bundle``):
    the import takes them where the caller set none. Before, the preset's (paper: 1 mm, another CT window) were
    stored without a word, and the model was fed images at another scale."""
    sizes = {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 4}
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    torch.save(monai_unetr(**sizes).state_dict(), bundle / "models" / "model.pt")
    network_def = {"_target_": "UNETR", "in_channels": 1, "out_channels": 3, "img_size": [32, 32, 32], **sizes}
    transforms = [{"_target_": "LoadImaged", "keys": "image"},
                  {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim"},
                  {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
                   "b_max": 1.0, "clip": True}]
    (bundle / "configs" / "inference.json").write_text(json.dumps(
        {"pixdim": [1.5, 1.5, 2.0], "network_def": network_def, "preprocessing": {"_target_": "Compose",
                                                                                  "transforms": transforms}}))
    run = pemma.import_model(bundle, tmp_path / "zoo", preset="paper")
    assert run.config.preprocess.target_spacing == [1.5, 1.5, 2.0]
    assert run.config.preprocess.ct_window == [-57.0, 164.0]
    with pytest.warns(UserWarning) as caught:
        run = pemma.import_model(bundle, tmp_path / "mine", preset="paper", config=write_config(tmp_path / "c.yaml"))
    assert sorted(str(w.message).split(": ", 1)[1] for w in caught) == [
        "the bundle was trained with ct_window [-57.0, 164.0], your configuration says [-200.0, 300.0] (used)",
        "the bundle was trained with target_spacing [1.5, 1.5, 2.0], your configuration says [4.0, 4.0, 4.0] (used)"]
    assert run.config.preprocess.target_spacing == [4.0, 4.0, 4.0] and run.config.preprocess.ct_window == [-200, 300]
    # pemma's own export record wins over the transforms, and carries the crop
    record = {"target_spacing": [3.0, 3.0, 3.0], "ct_window": [-250.0, 250.0], "crop_mm": [150.0, 150.0, 120.0]}
    (bundle / "configs" / "preprocessing.json").write_text(json.dumps(record))
    run = pemma.import_model(bundle, tmp_path / "pemma", preset="paper")
    assert {k: getattr(run.config.preprocess, k) for k in record} == record


def test_a_swin_bundle_with_img_size_imports(tmp_path: Path) -> None:
    """The model zoo's Swin UNETR bundles still pass ``img_size`` (MONAI 1.5+ refuses it): pemma sets the window
    itself and leaves it out of the network's arguments."""
    torch.manual_seed(2)
    source = SwinUNETR(in_channels=1, out_channels=3, **TINY_SWIN).eval()
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    torch.save(source.state_dict(), bundle / "models" / "model.pt")
    network_def = {"_target_": "SwinUNETR", "img_size": 64, "in_channels": 1, "out_channels": 3, **TINY_SWIN}
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    run = pemma.import_model(bundle, tmp_path / "run", preset="tiny", roi=[64, 64, 64])
    assert run.config.model.backbone == "swin_unetr" and "img_size" not in run.config.model.swin_unetr
    assert torch.equal(logits(load_model(run).net, size=64), logits(source, size=64))


def test_swin_unetr_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = SwinUNETR(in_channels=1, out_channels=3, **TINY_SWIN).eval()
    torch.save(source.state_dict(), tmp_path / "swin.pt")
    run = pemma.import_model(tmp_path / "swin.pt", tmp_path / "run", backbone="swin_unetr", preset="tiny",
                             roi=[64, 64, 64])
    assert run.summary["missing"] == run.summary["unexpected"] == 0
    assert torch.equal(logits(load_model(run).net, size=64), logits(source, size=64))


def test_tensors_the_network_has_no_place_for_are_an_error(tmp_path: Path) -> None:
    """A Swin UNETR v2 (``use_v2=True``: a residual conv block before each stage) imported as v1 said "imported
    ...; 8 unexpected" and dropped those trained blocks: the run computed another function than the user's model.
    It is now an error naming the fix; with ``use_v2`` in the config the model is imported exactly."""
    torch.manual_seed(1)
    source = SwinUNETR(in_channels=1, out_channels=3, use_v2=True, **TINY_SWIN).eval()
    torch.save(source.state_dict(), tmp_path / "swin_v2.pt")
    with pytest.raises(PemmaError, match=r"swin_v2.pt: 8 of its tensors have no place in this swin_unetr \(e\.g\. "
                                         r"swinViT\.layers1c\..*set model\.swin_unetr\.use_v2: true in --config"):
        pemma.import_model(tmp_path / "swin_v2.pt", tmp_path / "v1", backbone="swin_unetr", preset="tiny",
                           roi=[64, 64, 64])
    assert not (tmp_path / "v1").exists()
    run = pemma.import_model(tmp_path / "swin_v2.pt", tmp_path / "v2", backbone="swin_unetr", preset="tiny",
                             roi=[64, 64, 64], overrides={"model": {"swin_unetr": {**TINY_SWIN, "use_v2": True}}})
    assert torch.equal(logits(load_model(run).net, size=64), logits(source, size=64))
    # an inexact import stays possible when asked for
    run = pemma.import_model(tmp_path / "swin_v2.pt", tmp_path / "v1b", backbone="swin_unetr", preset="tiny",
                             roi=[64, 64, 64], min_matched=0.99)
    assert run.summary["unexpected"] == 8


class _NotATensor:
    pass


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    torch.save(monai_unetr(hidden_size=48, mlp_dim=96).state_dict(), tmp_path / "other.pt")
    torch.save(monai_unetr().state_dict(), tmp_path / "good.pt")
    proc = main_result("import-model", str(tmp_path / "other.pt"), "--backbone", "unetr", *FLAGS, "--out",
                       str(tmp_path / "r1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tensors besides the head do not load" in proc.stderr and "--config" in proc.stderr
    assert not (tmp_path / "r1").exists(), "a failed import leaves no run folder"
    # one tensor off (the position embedding of another ROI) is an error too, not a silently broken model
    # (it said "only 191 of 192 unetr tensors match (193 matched, ...)": counts with and without the head mixed)
    with pytest.raises(PemmaError, match=r"1 of the 192 unetr tensors besides the head do not load: 1 shape mismatch "
                                         r"\(e\.g\. vit\.patch_embedding\.position_embeddings\)"):
        pemma.import_model(tmp_path / "good.pt", tmp_path / "r6", backbone="unetr", preset="tiny", roi=[48, 48, 48])

    with (tmp_path / "pickled.pt").open("wb") as f:
        pickle.dump({"net": _NotATensor()}, f, protocol=2)
    with pytest.raises(PemmaError, match="never unpickles") as err:
        pemma.import_model(tmp_path / "pickled.pt", tmp_path / "r2", backbone="unetr", preset="tiny")
    assert "weights_only=False" not in str(err.value)

    (tmp_path / "notes.pth").write_text("not weights at all")  # was "cannot read the weights (105)"
    with pytest.raises(PemmaError, match=r"notes.pth: not a PyTorch weights file"):
        pemma.import_model(tmp_path / "notes.pth", tmp_path / "r7", backbone="unetr", preset="tiny")

    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(PemmaError, match="holds no state dict"):
        pemma.import_model(tmp_path / "empty.pt", tmp_path / "r3", backbone="unetr", preset="tiny")
    with pytest.raises(PemmaError, match="pass --backbone"):
        pemma.import_model(tmp_path / "good.pt", tmp_path / "r4", preset="tiny")
    for bad, message in (("GTVp=3", "no index for GTVn"), ("tumour=3,GTVn=4", "unknown class"),
                         ("GTVp=3,GTVn=3", "share an index"), ("GTVp=3,GTVn=99", "outside the head")):
        with pytest.raises(PemmaError, match=message):
            pemma.import_model(tmp_path / "good.pt", tmp_path / "r5", backbone="unetr", preset="tiny",
                               roi=[32, 32, 32], label_map=bad)


def test_the_counts_of_a_failed_import_add_up(tmp_path: Path) -> None:
    """UNETR weights for a Swin UNETR said "101 of the 101 ... do not load: 20 shape mismatch; 82 missing": the
    reasons counted the head's tensors (one shape mismatch) among those besides the head."""
    import re

    torch.save(monai_unetr().state_dict(), tmp_path / "unetr.pt")
    with pytest.raises(PemmaError, match="swin_unetr tensors besides the head do not load") as err:
        pemma.import_model(tmp_path / "unetr.pt", tmp_path / "run", backbone="swin_unetr", preset="tiny")
    text = str(err.value)
    failed = int(re.search(r"(\d+) of the \d+ swin_unetr tensors", text).group(1))
    reasons = [int(n) for n in re.findall(r"(\d+) (?:shape mismatch|missing) \(e\.g\.", text)]
    assert len(reasons) == 2 and sum(reasons) == failed, text
    assert "out." not in text.split("; the source also holds")[0]  # no head tensor among the reasons
    assert re.search(r"the source also holds \d+ tensors this network has no place for \(e\.g\. ", text)


@pytest.mark.slow  # adapts and predicts (a few tiny steps)
def test_14_class_base_gets_a_new_head_and_adapts(tmp_path: Path, phantom: Path) -> None:
    torch.save(monai_unetr(out_channels=14).state_dict(), tmp_path / "btcv.pt")
    base = tmp_path / "base"
    stdout = run_main("import-model", str(tmp_path / "btcv.pt"), "--backbone", "unetr", *FLAGS, "--out", str(base))
    assert "new head in place of the 14-class head" in stdout and "2 shape mismatches" in stdout
    assert load_model(base).config.model.out_channels == 3
    ad = tmp_path / "ad"
    run_main("adapt", "--base", str(base), "--data", str(phantom), "--centres", "MDA", "--preset", "tiny",
             "--batch-size", "1", "--max-steps", "2", "--val-every", "1", "--out", str(ad))
    preds = tmp_path / "preds"
    run_main("predict", "--model", str(ad), "--modalities", "ct,pet", "--input", str(phantom / "imagesTr"),
             "--centres", "MDA", "--out", str(preds))
    assert len(list(preds.glob("*.nii.gz"))) == 2
