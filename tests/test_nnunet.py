"""nnU-Net raw datasets fully: channels and labels by name, any file ending SimpleITK reads, imagesTs / labelsTs,
nnU-Net ``-i`` folders, single channel files, folders of CT files of any names; IDs without a centre prefix; the
tiny-preset warning off the phantom."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pemma.data.layout import CaseRecord, discover_cases, select_cases, split_cases
from pemma.errors import PemmaError
from pemma.io_utils import load_nifti, save_nifti

OBLIQUE = np.array([[0.0, -2.0, 0.1, 12.0], [1.5, 0.0, 0.0, -30.0], [0.0, 0.1, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def _write(path: Path, array: np.ndarray, affine: np.ndarray = OBLIQUE) -> None:
    """NIfTI through pemma, any other ending through SimpleITK (its own geometry, read back from the NIfTI)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti = path.with_name(".tmp.nii.gz") if not path.name.endswith(".nii.gz") else path
    save_nifti(array, affine, nifti)
    if nifti != path:
        sitk.WriteImage(sitk.ReadImage(str(nifti)), str(path))
        nifti.unlink()


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_sitk_formats_read_in_the_same_physical_space(tmp_path: Path, ending: str) -> None:
    array = np.random.default_rng(0).normal(size=(7, 8, 9)).astype(np.float32)
    _write(tmp_path / f"a{ending}", array)
    img = load_nifti(tmp_path / f"a{ending}")
    np.testing.assert_allclose(np.asanyarray(img.dataobj), array)
    ref = sitk.ReadImage(str(tmp_path / f"a{ending}"))
    for index in [(0, 0, 0), (6, 0, 3), (2, 7, 8)]:  # SimpleITK's LPS world point = ours with x, y negated
        lps = np.asarray(ref.TransformIndexToPhysicalPoint(index))
        ras = nib.affines.apply_affine(img.affine, index)
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
    (tmp_path / f"bad{ending}").write_bytes(b"not an image")
    with pytest.raises(PemmaError, match=rf"bad{ending}: cannot read CT as an image \(SimpleITK\)"):
        load_nifti(tmp_path / f"bad{ending}", what="CT")


def _dataset(root: Path, channels: dict, labels: dict | None = None, ending: str = ".nii.gz",
             test_cases: tuple[str, ...] = ()) -> None:
    meta = {"channel_names": channels, "file_ending": ending, "numTraining": 1}
    if labels is not None:
        meta["labels"] = labels
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for folder, cid in [("Tr", "CHUM-001"), *[("Ts", c) for c in test_cases]]:
        for ch in channels:
            _write(root / f"images{folder}" / f"{cid}_{int(ch):04d}{ending}", np.zeros((8, 8, 6), np.float32))


@pytest.mark.parametrize(("channels", "ct", "pet"), [
    ({"0": "CT", "1": "FDG-PET"}, 0, 1), ({"0": "ct", "1": "PT"}, 0, 1), ({"0": "SUV", "1": "CT"}, 1, 0),
    ({"0": "CT", "1": "PET"}, 0, 1)])
def test_channels_found_by_name(tmp_path: Path, channels: dict, ct: int, pet: int) -> None:
    _dataset(tmp_path, channels)
    (case,) = discover_cases(tmp_path)
    assert case.images["ct"].endswith(f"_{ct:04d}.nii.gz") and case.images["pet"].endswith(f"_{pet:04d}.nii.gz")


def test_unrecognised_channel_names_are_listed(tmp_path: Path) -> None:
    _dataset(tmp_path, {"0": "CT", "1": "noNorm"})
    with pytest.raises(PemmaError, match=r"dataset.json: cannot tell which channel is PET: channel_names .*"
                                         r"\(1: 'noNorm' not recognised; CT is named CT, PET one of PET"):
        discover_cases(tmp_path)
    _dataset(tmp_path / "ct_only", {"0": "CT"})
    assert set(discover_cases(tmp_path / "ct_only")[0].images) == {"ct"}


def _label_volume() -> np.ndarray:
    label = np.zeros((8, 8, 6), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[5:7, 5:7, 3:5] = 2
    return label


def test_labels_are_remapped_by_name(tmp_path: Path) -> None:
    from pemma.data.check import check_case
    from pemma.data.dataset import case_dicts
    from pemma.data.transforms import LoadCased
    from pemma.evaluation.evaluate import label_on_grid

    _dataset(tmp_path, {"0": "CT"}, {"background": 0, "GTVn": 1, "GTVp": 2})
    in_file = _label_volume()
    save_nifti(in_file, OBLIQUE, tmp_path / "labelsTr" / "CHUM-001.nii.gz", dtype=np.uint8)
    (case,) = discover_cases(tmp_path)
    assert case.label_map == ((0, 0), (1, 2), (2, 1))
    expected = np.where(in_file == 1, 2, np.where(in_file == 2, 1, 0))  # the file's GTVn (1) is pemma's 2
    on_grid = label_on_grid(case, load_nifti(case.images["ct"]))
    np.testing.assert_array_equal(on_grid, expected)
    loaded = LoadCased(["ct", "label"])(case_dicts([case], ["ct"], with_label=True)[0])
    np.testing.assert_array_equal(loaded["label"][0].numpy(), expected)
    assert "label_map" not in loaded
    assert check_case(case, ["ct"]) == []

    in_file[0, 0, 0] = 3  # a value the file's labels do not name
    save_nifti(in_file, OBLIQUE, tmp_path / "labelsTr" / "CHUM-001.nii.gz", dtype=np.uint8)
    with pytest.raises(PemmaError, match=r"CHUM-001.nii.gz: label of case CHUM-001 has values \[3\] that dataset.json "
                                         r"labels do not name"):
        label_on_grid(case, load_nifti(case.images["ct"]))
    assert "do not name" in check_case(case, ["ct"])[0]


@pytest.mark.parametrize(("labels", "message"), [
    ({"background": 0, "liver": 1}, r"label 'liver' is not background, GTVp or GTVn"),
    ({"background": 0, "GTVp": [1, 2]}, r"label 'GTVp' has value \[1, 2\]"),
    ({"background": 0, "GTVp": 1, "gtv-p": 2}, r"two labels name the same class")])
def test_bad_label_names_are_errors(tmp_path: Path, labels: dict, message: str) -> None:
    _dataset(tmp_path, {"0": "CT"}, labels)
    with pytest.raises(PemmaError, match=message):
        discover_cases(tmp_path)


def test_nnunet_v1_labels_and_pemma_numbering_need_no_map(tmp_path: Path) -> None:
    _dataset(tmp_path, {"0": "CT"}, {"0": "background", "1": "GTVp", "2": "GTVn"})
    assert discover_cases(tmp_path)[0].label_map is None
    _dataset(tmp_path / "v1", {"0": "CT"}, {"0": "background", "1": "GTVn", "2": "GTVp"})
    assert discover_cases(tmp_path / "v1")[0].label_map == ((0, 0), (1, 2), (2, 1))


def test_every_input_form(tmp_path: Path) -> None:
    root = tmp_path / "Dataset501_HN"
    _dataset(root, {"0": "CT", "1": "PET"}, ending=".mha", test_cases=("MDA-001", "MDA-002"))
    _write(root / "labelsTr" / "CHUM-001.mha", _label_volume())
    _write(root / "labelsTs" / "MDA-001.mha", _label_volume())
    cases = {c.case_id: c for c in discover_cases(root)}
    assert sorted(cases) == ["CHUM-001", "MDA-001", "MDA-002"]
    assert not cases["CHUM-001"].test and cases["MDA-001"].test and cases["MDA-001"].label.endswith("MDA-001.mha")
    assert cases["MDA-002"].label is None
    # an unlabelled imagesTs case is left out of labelled selections instead of failing them
    assert [c.case_id for c in select_cases(list(cases.values()), require_label=True)] == ["CHUM-001", "MDA-001"]

    folder = discover_cases(root / "imagesTs")  # nnU-Net -i folder: channels and labels from the dataset
    assert [c.case_id for c in folder] == ["MDA-001", "MDA-002"]
    assert folder[0].images == cases["MDA-001"].images and folder[0].label == cases["MDA-001"].label
    (single,) = discover_cases(root / "imagesTs" / "MDA-002_0000.mha")  # one channel file: its PET comes along
    assert single.images == cases["MDA-002"].images

    loose = tmp_path / "loose"  # a copied -i folder without dataset.json: 0 = CT, 1 = PET
    for name in ("p7_0000.nii.gz", "p7_0001.nii.gz"):
        _write(loose / name, np.zeros((4, 4, 4), np.float32))
    (case,) = discover_cases(loose)
    assert Path(case.images["ct"]).name == "p7_0000.nii.gz" and Path(case.images["pet"]).name == "p7_0001.nii.gz"

    plain = tmp_path / "plain"  # CT files of any names
    for name in ("scan A.nii.gz", "patient_12.mha", "x.nrrd"):
        _write(plain / name, np.zeros((4, 4, 4), np.float32))
    assert {c.case_id: Path(c.images["ct"]).name for c in discover_cases(plain)} == {
        "scan A": "scan A.nii.gz", "patient_12": "patient_12.mha", "x": "x.nrrd"}
    _write(plain / "x.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(PemmaError, match=r"two files for case x, x.nii.gz and x.nrrd"):
        discover_cases(plain)
    (only,) = discover_cases(plain / "patient_12.mha")
    assert only.case_id == "patient_12" and set(only.images) == {"ct"}


def test_ids_without_centre_prefix_get_a_seeded_random_split() -> None:
    cases = [CaseRecord(f"case{i:02d}", f"case{i:02d}", {"ct": "x"}) for i in range(10)]
    with pytest.warns(UserWarning, match=r"case IDs carry no centre prefix .*2 of 10 cases drawn at random \(seed 3\)"):
        train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert split_cases(cases, 0.2, seed=3) == (train, val)
        assert split_cases(cases, 0.2, seed=4)[1] != val or split_cases(cases, 0.2, seed=5)[1] != val
    hecktor = [CaseRecord(f"CHUM-{i:03d}", "CHUM", {"ct": "x"}) for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # centre IDs: per-centre split, no warning
        assert len(split_cases(hecktor, 0.2, seed=3)[1]) == 1


def test_tiny_preset_warns_off_the_phantom(phantom: Path, tmp_path: Path) -> None:
    from pemma.api.run import run_config, warn_tiny_preset

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_tiny_preset("tiny", run_config("tiny", data=str(phantom)))  # the phantom: no warning
        warn_tiny_preset("paper", run_config("tiny", data=str(tmp_path)))
    save_nifti(np.zeros((4, 4, 4), np.int16), np.eye(4), tmp_path / "imagesTr" / "CHUM-001__CT.nii.gz")
    with pytest.warns(UserWarning, match=r"--preset tiny \(the default: a CPU test model\) on .* which is not pemma's "
                                         r"phantom; real data needs --preset paper"):
        warn_tiny_preset("tiny", run_config("tiny", data=str(tmp_path)))
    # a real centre beside phantom centres: --centres selecting it warns (the first CT alone was a phantom's)
    mixed = tmp_path / "mixed"
    shutil.copytree(phantom, mixed)
    save_nifti(np.zeros((4, 4, 4), np.int16), np.eye(4), mixed / "imagesTr" / "CHUV-000__CT.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_tiny_preset("tiny", run_config("tiny", data=str(mixed), centres="MDA"))
    with pytest.warns(UserWarning, match="which is not pemma's phantom"):
        warn_tiny_preset("tiny", run_config("tiny", data=str(mixed), centres="CHUV"))


def test_survival_train_warns_of_the_tiny_preset_off_the_phantom(tmp_path: Path) -> None:
    """The survival verbs warn as the segmentation verbs do (the same helper), before the base run is read."""
    import contextlib
    import io

    from pemma.cli.main import main

    save_nifti(np.zeros((4, 4, 4), np.int16), np.eye(4), tmp_path / "data" / "imagesTr" / "CHUM-001__CT.nii.gz")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["survival", "train", "--base", str(tmp_path / "no-run"), "--data", str(tmp_path / "data"),
                     "--out", str(tmp_path / "surv")])
    lines = err.getvalue().splitlines()
    assert code == 2 and lines[0].startswith("pemma survival: warning: --preset tiny (the default: a CPU test model)")
    assert lines[-1].startswith("pemma survival: error:") and "no-run" in lines[-1]


def test_a_case_in_both_imagesTr_and_imagesTs_is_refused(tmp_path: Path) -> None:
    _dataset(tmp_path, {"0": "CT"}, test_cases=("CHUM-001",))
    with pytest.raises(PemmaError, match="case CHUM-001 is in both imagesTr and imagesTs"):
        discover_cases(tmp_path)


def test_a_channel_named_as_another_modality_is_shown_in_the_error(tmp_path: Path) -> None:
    """channel_names {"0": "CT", "1": "MRI"} where 1 is the PET: "no PET file" alone hid that the _0001 file was
    read (as MR); the error now says what each file was read as."""
    from pemma.data.check import check_case
    from pemma.data.layout import select_cases

    _dataset(tmp_path, {"0": "CT", "1": "MRI"})
    (case,) = discover_cases(tmp_path)
    with pytest.raises(PemmaError, match=r"case CHUM-001: no PET image in .* \(found: CT CHUM-001_0000.nii.gz, "
                                         r"MR CHUM-001_0001.nii.gz\)"):
        select_cases([case], modalities=["ct", "pet"], source=str(tmp_path))
    problems = check_case(case, ["ct", "pet"], with_label=False)
    assert any("no PET file (found: CT CHUM-001_0000.nii.gz, MR CHUM-001_0001.nii.gz)" in p for p in problems)
