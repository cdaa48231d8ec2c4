"""``pemma export``: TorchScript, ONNX (checked with ONNX Runtime against pemma's logits) and a MONAI bundle that
MONAI's ConfigParser reads, for a CT base, Swin UNETR, and an adapted run with each of its input sets."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import FAST, run_main
from monai.bundle import ConfigParser
from monai.networks.nets import UNETR, SwinUNETR

import pemma
from pemma.cli.main import main
from pemma.errors import PemmaError
from pemma.methods import export_merged, load_model
from pemma.methods.exporting import export_format

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CT base run (UNETR at 32^3) imported from a seeded MONAI network (no training needed)."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(5)
    net = UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4)
    torch.save(net.state_dict(), root / "unetr.pt")
    return pemma.import_model(root / "unetr.pt", root / "ct", backbone="unetr", preset="tiny", roi=[32, 32, 32],
                              spacing=[4, 4, 4]).path


def pemma_logits(run: Path, x: torch.Tensor, modalities: list[str]) -> np.ndarray:
    with torch.no_grad():
        return load_model(run)(x, modalities).numpy()


def ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    return session.run(None, {"image": x.numpy()})[0]


def test_format_from_suffix_and_mismatch() -> None:
    assert export_format(None, "m.onnx") == "onnx" and export_format(None, "m.pt") == "torchscript"
    assert export_format(None, "bundle_dir") == "bundle" and export_format("onnx", "m.onnx") == "onnx"
    assert export_format("onnx", "model") == "onnx" and export_format("bundle", "out/my.bundle") == "bundle"
    with pytest.raises(PemmaError, match="means onnx, but --format is torchscript"):
        export_format("torchscript", "m.onnx")
    with pytest.raises(PemmaError, match="means torchscript, but --format is onnx"):
        export_format("onnx", "m.pt")
    with pytest.raises(PemmaError, match="cannot tell the export format"):
        export_format(None, "m.zip")


def test_ct_run_to_onnx_equals_pemma(ct_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct.onnx"
    info = pemma.export(ct_run, out)
    assert info["format"] == "onnx" and info["modalities"] == ["ct"] and info["max_abs_diff"] <= TOLERANCE
    x = torch.rand((3, 1, 32, 32, 32), generator=torch.Generator().manual_seed(11))  # another batch size
    np.testing.assert_allclose(ort_logits(out, x), pemma_logits(ct_run, x, ["ct"]), rtol=0, atol=TOLERANCE)
    pre = json.loads((tmp_path / "ct.preprocessing.json").read_text())
    cfg = load_model(ct_run).config
    assert pre["target_spacing"] == [4.0, 4.0, 4.0] == cfg.preprocess.target_spacing
    assert pre["ct_window"] == cfg.preprocess.ct_window and pre["sliding_window"]["roi_size"] == [32, 32, 32]
    assert pre["input_shape"] == ["batch", 1, 32, 32, 32] and pre["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}


def test_ct_run_to_torchscript_and_bundle(ct_run: Path, tmp_path: Path) -> None:
    x = torch.rand((2, 1, 32, 32, 32), generator=torch.Generator().manual_seed(12))
    expected = pemma_logits(ct_run, x, ["ct"])
    pemma.export(ct_run, tmp_path / "ct.pt")
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "ct.pt"))(x).detach().numpy(), expected, atol=TOLERANCE)

    bundle = tmp_path / "bundle"
    stdout = run_main("export", "--model", str(ct_run), "--format", "bundle", "--out", str(bundle))
    assert "wrote" in stdout and "max |exported - pemma|" in stdout
    for name in ("configs/inference.json", "configs/metadata.json", "configs/preprocessing.json", "models/model.pt",
                 "models/model.ts"):
        assert (bundle / name).is_file(), name
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network")
    assert isinstance(net, UNETR), "a plain backbone run is a MONAI network_def + state dict"
    net.load_state_dict(torch.load(parser.get_parsed_content("weights"), map_location="cpu", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x).numpy(), expected, rtol=0, atol=TOLERANCE)
    assert list(parser.get_parsed_content("inferer").roi_size) == [32, 32, 32]
    assert parser.get_parsed_content("preprocessing") is not None
    parser.get_parsed_content("postprocessing")
    meta = ConfigParser.load_config_file(str(bundle / "configs" / "metadata.json"))
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["channel_def"] == {"0": "CT"}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "GTVp",
                                                                             "2": "GTVn"}


def test_bundle_is_written_plainly_and_swapped_in_once(ct_run: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the hidden folder that is moved onto the bundle path whole, files are written plainly: the only
    renames are that move and the preprocessing record written into the bundle after it (a regression of atomic
    writes inside the already-atomic swap would add one rename per file)."""
    import os

    renames: list[tuple[str, str]] = []
    replace = os.replace

    def spy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        renames.append((Path(src).name, str(Path(dst).relative_to(tmp_path))))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    bundle = tmp_path / "bundle"
    for _ in range(2):  # a new bundle, then one replacing it
        renames.clear()
        pemma.export(ct_run, bundle, format="bundle")
        assert [dst for _, dst in renames] == ["bundle", "bundle/configs/preprocessing.json"]
        assert renames[0][0] == ".bundle.pemma-new"
        assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
            "configs/inference.json", "configs/metadata.json", "configs/preprocessing.json", "models/model.pt",
            "models/model.ts"]
    assert not list(tmp_path.glob(".bundle*"))


def test_bad_exports_are_one_line_errors(ct_run: Path, tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", "--model", str(ct_run), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--format is torchscript" in lines[0]
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(PemmaError, match="model expects input ct"):
        pemma.export(ct_run, tmp_path / "m.pt", modalities="ct,pet")
    with pytest.raises(PemmaError, match="only adapted .* runs have adapters to merge"):
        export_merged(ct_run, tmp_path / "merged.pt")
    assert not (tmp_path / "merged.pt").exists()


@pytest.mark.slow
@pytest.mark.long  # ONNX export of Swin UNETR takes 10-80 s on a loaded 2-core machine
def test_swin_unetr_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    torch.save(net.state_dict(), tmp_path / "swin.pt")
    run = pemma.import_model(tmp_path / "swin.pt", tmp_path / "ct", backbone="swin_unetr", preset="tiny",
                             roi=[64, 64, 64]).path
    pemma.export(run, tmp_path / "swin.onnx")
    x = torch.rand((1, 1, 64, 64, 64), generator=torch.Generator().manual_seed(13))
    np.testing.assert_allclose(ort_logits(tmp_path / "swin.onnx", x), pemma_logits(run, x, ["ct"]), rtol=0,
                               atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.long  # adapts a tiny base (2 steps)
def test_adapted_run_every_input_set(bases: dict[str, Path], phantom: Path, tmp_path: Path) -> None:
    run = tmp_path / "ad"
    run_main("adapt", "--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", *FAST[:2],
             "--spacing", "4", "4", "4", "--batch-size", "1", "--max-steps", "2", "--out", str(run))
    for modalities in (["ct", "pet"], ["pet"]):
        out = tmp_path / f"{'_'.join(modalities)}.onnx"
        stdout = run_main("export", "--model", str(run), "--modalities", ",".join(modalities), "--out", str(out))
        assert "merged" in stdout
        x = torch.rand((2, len(modalities), 32, 32, 32), generator=torch.Generator().manual_seed(14))
        np.testing.assert_allclose(ort_logits(out, x), pemma_logits(run, x, modalities), rtol=0, atol=TOLERANCE)
    # CT alone keeps the untouched CT path (a merged model has none): TorchScript of the unmerged model
    info = pemma.export(run, tmp_path / "ct.pt", modalities="ct")
    assert not info["merged"]
    x = torch.rand((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(15))
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "ct.pt"))(x).detach().numpy(),
                               pemma_logits(bases["unetr"], x, ["ct"]), rtol=0, atol=TOLERANCE)
    # the older entry point is the same CT+PET TorchScript export (its preprocessing record beside it)
    merged = export_merged(run, tmp_path / "merged.pt")
    assert merged["max_abs_diff"] <= TOLERANCE and (tmp_path / "merged.preprocessing.json").is_file()
    x = torch.rand((1, 2, 32, 32, 32), generator=torch.Generator().manual_seed(17))
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "merged.pt"))(x).detach().numpy(),
                               pemma_logits(run, x, ["ct", "pet"]), rtol=0, atol=TOLERANCE)
    bundle = tmp_path / "bundle"
    pemma.export(run, bundle, format="bundle")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    scripted = parser.get_parsed_content("network")
    x = torch.rand((1, 2, 32, 32, 32), generator=torch.Generator().manual_seed(16))
    np.testing.assert_allclose(scripted(x).detach().numpy(), pemma_logits(run, x, ["ct", "pet"]), atol=TOLERANCE)


@pytest.mark.slow  # a tiny MR phantom and a one-step adaptation of the imported base
def test_a_ct_mr_run_exports_merged_with_its_mr_preprocessing(ct_run: Path, tmp_path: Path) -> None:
    """An adapted CT+MR run exports as CT+PET runs do (merged, checked), its record names MR's z-score, and a bundle
    (MONAI's fixed-range transforms) is refused before any tracing instead of a KeyError."""
    data = tmp_path / "mr"
    pemma.synth(data, cases_per_centre=1, centres="CHUM,MDA", shape=[48, 48, 32], modalities="ct,pet,mr")
    run = pemma.adapt(ct_run, data, tmp_path / "ctmr", centres="MDA", add_modality="mr", max_steps=1,
                      batch_size=1, val_every=1).path
    info = pemma.export(run, tmp_path / "ctmr.pt", modalities="ct,mr")
    assert info["merged"] and info["max_abs_diff"] <= TOLERANCE
    x = torch.rand((1, 2, 32, 32, 32), generator=torch.Generator().manual_seed(18))
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "ctmr.pt"))(x).detach().numpy(),
                               pemma_logits(run, x, ["ct", "mr"]), rtol=0, atol=TOLERANCE)
    steps = json.loads((tmp_path / "ctmr.preprocessing.json").read_text())["steps"]
    assert "MR: clip to percentiles [0.5, 99.5] inside the body, z-score" in steps, steps
    assert export_merged(run, tmp_path / "merged.pt")["max_abs_diff"] <= TOLERANCE  # CT+MR, the run's set
    with pytest.raises(PemmaError, match=r"bundle cannot express MR: clip to percentiles.*z-score.*torchscript"):
        pemma.export(run, tmp_path / "bundle", format="bundle", modalities="ct,mr")
    assert not (tmp_path / "bundle").exists()
