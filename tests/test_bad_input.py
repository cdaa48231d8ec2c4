"""Bad input: one line naming the file or case and the problem, non-zero exit, no traceback, nothing
half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FAST

from pemma.cli.main import main
from pemma.io_utils import save_nifti


def _copy_case(phantom: Path, dst: Path, case: str = "CHUM-000") -> Path:
    for sub, names in (("imagesTr", [f"{case}__CT.nii.gz", f"{case}__PT.nii.gz"]), ("labelsTr", [f"{case}.nii.gz"])):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(phantom / sub / name, dst / sub / name)
    return dst


def _error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def ct_model(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ct"
    # also exercises mixed precision (bf16 autocast on CPU) and gradient checkpointing
    assert main(["train", "--data", str(phantom), "--centres", "CHUM", "--modalities", "ct", *FAST,
                 "--max-steps", "1", "--amp", "--gradient-checkpointing", "--out", str(out)]) == 0
    assert "amp True" in (out / "train.log").read_text()
    return out


def _train(data: Path, tmp_path: Path, modalities: str = "ct,pet") -> list[str]:
    return ["train", "--data", str(data), "--modalities", modalities, *FAST, "--max-steps", "1", "--val-fraction",
            "0", "--out", str(tmp_path / "run")]


def test_missing_file(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d")
    (data / "imagesTr" / "CHUM-000__PT.nii.gz").unlink()
    assert "CHUM-000: no PET image" in _error_line(capsys, _train(data, tmp_path))


def test_corrupt_nifti(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d")
    path = data / "imagesTr" / "CHUM-000__CT.nii.gz"
    path.write_bytes(path.read_bytes()[:300])
    line = _error_line(capsys, _train(data, tmp_path))
    assert "CHUM-000__CT.nii.gz: cannot read CT of case CHUM-000" in line


def test_pet_not_overlapping_ct(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d")
    path = data / "imagesTr" / "CHUM-000__PT.nii.gz"
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[:3, 3] += 500.0
    save_nifti(np.asanyarray(img.dataobj), affine, path)
    assert "case CHUM-000: PET covers only 0% of the CT field of view" in _error_line(capsys, _train(data, tmp_path))


def test_nan_voxels(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d")
    path = data / "imagesTr" / "CHUM-000__PT.nii.gz"
    img = nib.load(str(path))
    pet = np.asanyarray(img.dataobj).astype(np.float32)
    pet[3, 3, 3] = np.nan
    pet[4, 4, 4] = np.inf
    save_nifti(pet, img.affine, path)
    assert "CHUM-000__PT.nii.gz: PET of case CHUM-000 has 2 NaN/inf voxels" in _error_line(
        capsys, _train(data, tmp_path))


def test_label_value_outside_0_1_2(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d")
    path = data / "labelsTr" / "CHUM-000.nii.gz"
    img = nib.load(str(path))
    label = np.asanyarray(img.dataobj).copy()
    label[0, 0, 0] = 4
    save_nifti(label, img.affine, path, dtype=np.uint8)
    assert "CHUM-000.nii.gz: label of case CHUM-000 has values [4] outside {0, 1, 2}" in _error_line(
        capsys, _train(data, tmp_path))


def test_empty_selection(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _error_line(capsys, ["train", "--data", str(phantom), "--centres", "HMR", "--out", str(tmp_path / "r")])
    assert "no cases for centre(s) HMR (centres found: CHUM" in line
    # a misspelt centre beside a valid one was dropped silently (training on CHUM alone)
    line = _error_line(capsys, ["train", "--data", str(phantom), "--centres", "CHUM,XYZ", "--out", str(tmp_path / "r")])
    assert "no cases for centre(s) XYZ (centres found: CHUM" in line and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_wrong_channel_count_for_model(ct_model: Path, phantom: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    line = _error_line(capsys, ["predict", "--model", str(ct_model), "--modalities", "ct,pet", "--input",
                                str(phantom / "imagesTr"), "--out", str(tmp_path / "p")])
    assert "model expects input ct, got ct,pet (1 channel(s) expected)" in line


@pytest.mark.slow
def test_truncated_checkpoint(ct_model: Path, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ct_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = _error_line(capsys, ["predict", "--model", str(broken), "--input", str(phantom / "imagesTr"),
                                "--out", str(tmp_path / "p")])
    assert "model.safetensors" in line and "truncated" in line


@pytest.mark.slow
def test_failed_case_leaves_earlier_outputs_whole(ct_model: Path, phantom: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    data = _copy_case(phantom, tmp_path / "d", "CHUM-000")
    _copy_case(phantom, data, "CHUM-001")
    bad = data / "imagesTr" / "CHUM-001__CT.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "pred"
    out.mkdir()
    (out / "CHUM-001.nii.gz").write_bytes(b"previous result")
    line = _error_line(capsys, ["predict", "--model", str(ct_model), "--input", str(data / "imagesTr"),
                                "--out", str(out)])
    assert "CHUM-001" in line
    ct_shape = nib.load(str(data / "imagesTr" / "CHUM-000__CT.nii.gz")).shape
    assert nib.load(str(out / "CHUM-000.nii.gz")).shape == ct_shape
    assert (out / "CHUM-001.nii.gz").read_bytes() == b"previous result"
    assert sorted(p.name for p in out.iterdir()) == ["CHUM-000.nii.gz", "CHUM-001.nii.gz"]


def test_interrupted_predict_says_what_it_wrote(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while predicting into a folder: the label maps written stay whole, a file of an earlier run that was
    not rewritten yet is untouched, no temporary file is left, and the one line says which cases it wrote and
    which it did not (it said only "pemma: interrupted")."""
    from test_runs import _backbone_run

    import pemma.inference.predict as predicting

    model = _backbone_run(tmp_path / "ct")
    real, calls = predicting.predict_case, []

    def stopped_at_the_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predicting, "predict_case", stopped_at_the_second)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "CHUM-001.nii.gz").write_bytes(b"previous result")
    code = main(["predict", "--model", str(model), "--input", str(phantom / "imagesTr"), "--modalities", "ct",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"pemma: interrupted: {out} holds 1 of 6 label maps of this run, each "
                                            "complete; not written: CHUM-001, CHUP-000, CHUP-001 and 2 more")
    ct = nib.load(str(phantom / "imagesTr" / "CHUM-000__CT.nii.gz"))
    assert nib.load(str(out / "CHUM-000.nii.gz")).shape == ct.shape
    assert (out / "CHUM-001.nii.gz").read_bytes() == b"previous result"
    assert sorted(p.name for p in out.iterdir()) == ["CHUM-000.nii.gz", "CHUM-001.nii.gz"]


def test_predict_into_the_images_folder_it_reads_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--out data/imagesTs`` (the folder read) wrote ``case_003.nii.gz`` beside ``case_003_0000.nii.gz``: a label
    map among a dataset's images, which nnU-Net then reads as an image. Refused before anything is predicted."""
    from test_runs import _backbone_run

    images = tmp_path / "Dataset001_X" / "imagesTs"
    images.mkdir(parents=True)
    ct = np.full((24, 24, 16), -1000, np.int16)
    ct[4:20, 4:20, 2:14] = 40
    save_nifti(ct, np.diag([4.0, 4.0, 4.0, 1.0]), images / "case_003_0000.nii.gz")
    line = _error_line(capsys, ["predict", "--model", str(_backbone_run(tmp_path / "ct")), "--input", str(images),
                                "--out", str(images)])
    assert f"{images}: is the images folder the cases are read from" in line
    assert sorted(p.name for p in images.iterdir()) == ["case_003_0000.nii.gz"]


def test_predict_ct_truncated_after_its_header(ct_model: Path, phantom: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """``predict`` takes the output geometry from the CT's header alone: a CT whose header reads but whose voxels
    are cut off is still refused, in a warning line naming the file (by preprocessing, which reads the voxels),
    and fails only its case: the other cases are predicted, the error line names the failed case."""
    data = _copy_case(phantom, tmp_path / "d")
    shutil.copy(phantom / "imagesTr" / "CHUM-001__CT.nii.gz", data / "imagesTr")
    path = data / "imagesTr" / "CHUM-000__CT.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert nib.load(str(path)).shape  # the header still reads
    code = main(["predict", "--model", str(ct_model), "--input", str(data / "imagesTr"), "--modalities", "ct",
                 "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    (warning,) = [ln for ln in err.splitlines() if "warning:" in ln]
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert "CHUM-000__CT.nii.gz: cannot read CT of case CHUM-000" in warning
    assert "wrote 1 of 2 label maps; 1 case(s) failed: CHUM-000" in line
    assert not (tmp_path / "pred" / "CHUM-000.nii.gz").exists()
    assert (tmp_path / "pred" / "CHUM-001.nii.gz").is_file()


@pytest.mark.parametrize(("verb_args", "expected"), [
    (["predict", "--overlap", "1.5"], "--overlap must be in [0, 1), got 1.5"),
    (["predict", "--sw-batch-size", "-3"], "--sw-batch-size must be >= 1, got -3"),
    (["predict", "--roi", "48", "48", "48"], "--roi 48 48 48: UNETR predicts with the window it was trained with "
                                             "(32 32 32"),
    (["evaluate", "--overlap", "-0.5"], "--overlap must be in [0, 1), got -0.5"),
    (["adapt", "--target-modules", "attn.qkvv"], "invalid adapter settings for unetr: target module 'attn.qkvv' "
                                                 "matches no"),
    (["adapt", "--train-parts", "encoder9"], "invalid adapter settings for unetr: train_parts ['encoder9']"),
    (["train", "--cache-dir", "FILE"], "the cache folder (--cache-dir) is a file"),
])
def test_settings_that_do_not_fit_are_user_errors(bases: dict[str, Path], phantom: Path, tmp_path: Path,
                                                   verb_args: list[str], expected: str) -> None:
    """Were "unexpected error ... please report it" with a traceback log (MONAI's or a ValueError)."""
    from conftest import main_result

    verb, *rest = verb_args
    (tmp_path / "FILE").write_text("not a folder")
    rest = [str(tmp_path / "FILE") if a == "FILE" else a for a in rest]
    where = {"predict": ["--model", str(bases["unetr"]), "--input", str(phantom), "--centres", "MDA"],
             "evaluate": ["--model", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA"],
             "adapt": ["--base", str(bases["unetr"]), "--data", str(phantom), "--centres", "MDA", *FAST,
                       "--max-steps", "1"],
             "train": ["--data", str(phantom), "--centres", "CHUM", *FAST, "--max-steps", "1"]}[verb]
    result = main_result(verb, *where, *rest, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "unexpected" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_missing_image_of_the_default_input_set_names_the_other_input_sets(phantom: Path, tmp_path: Path) -> None:
    """A CT+PET model given CT alone (no --modalities): the one-line error says the model also takes CT alone."""
    from types import SimpleNamespace

    from pemma.api.inference import _missing_image_hint
    from pemma.data.layout import discover_cases, select_cases
    from pemma.errors import PemmaError

    ct_only = tmp_path / "ct_only"
    ct_only.mkdir()
    shutil.copy(phantom / "imagesTr" / "MDA-000__CT.nii.gz", ct_only / "MDA-000__CT.nii.gz")
    adapted = SimpleNamespace(input_sets=[["ct", "pet"], ["ct"], ["pet"]])
    with pytest.raises(PemmaError, match=r"case MDA-000: no PET image in .*; the model also takes ct or pet "
                                         r"\(--modalities\)$"):
        with _missing_image_hint(adapted, ["ct", "pet"], asked=False):
            select_cases(discover_cases(str(ct_only)), modalities=["ct", "pet"], source=str(ct_only))
    # asked for CT+PET explicitly, or a model with one input set: the message stays as it was
    for model, asked in ((adapted, True), (SimpleNamespace(input_sets=[["ct", "pet"]]), False)):
        with pytest.raises(PemmaError, match=r"no PET image in [^;]*$"):
            with _missing_image_hint(model, ["ct", "pet"], asked=asked):
                select_cases(discover_cases(str(ct_only)), modalities=["ct", "pet"], source=str(ct_only))
