"""Tests of the synthetic HECKTOR-2022-layout phantom (tiny grids: each test runs in well under 10 s)."""

from __future__ import annotations

import csv
import itertools
import math

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from pemma.data.phantom import (
    CLINICAL_FILE,
    CLINICAL_HEADER,
    ENDPOINT_FILE,
    PhantomConfig,
    synthesize_case,
    synthesize_phantom,
)
from pemma.errors import PemmaError

TINY = {"ct_shape": (32, 32, 24)}
EXACT_CLINICAL_HEADER = ('PatientID,Task 1,Task 2,CenterID,Gender,Age,Weight,Tobacco,Alcohol,'
                         'Performance status,"HPV status (0=-, 1=+)",Surgery,Chemotherapy')


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    cfg = PhantomConfig(cases_per_centre=2, centres=("CHUM", "MDA"), **TINY)
    return out, synthesize_phantom(out, cfg, progress=False)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _world_box(img):
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in img.shape])))
    world = nib.affines.apply_affine(img.affine, corners)
    return world.min(0), world.max(0)


def test_layout_file_names_and_headers(small_dataset):
    out, ids = small_dataset
    assert ids == ["CHUM-000", "CHUM-001", "MDA-000", "MDA-001"]
    expected = ["imagesTr", "labelsTr", CLINICAL_FILE, ENDPOINT_FILE]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert CLINICAL_FILE == "hecktor2022_clinical_info_training.csv"
    assert ENDPOINT_FILE == "hecktor2022_endpoint_training.csv"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(
        f"{i}__{m}.nii.gz" for i in ids for m in ("CT", "PT"))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{i}.nii.gz" for i in ids)

    first_line = (out / CLINICAL_FILE).read_text().splitlines()[0]
    assert first_line == EXACT_CLINICAL_HEADER
    rows = _read_csv(out / CLINICAL_FILE)
    assert tuple(rows[0]) == CLINICAL_HEADER
    assert rows[0][10] == "HPV status (0=-, 1=+)" and "," in rows[0][10]
    assert [r[0] for r in rows[1:]] == ids
    assert [r[3] for r in rows[1:]] == ["1", "1", "5", "5"]  # CenterID: one integer per centre
    assert all(r[1] == "1" and r[2] == "1" for r in rows[1:])
    ends = _read_csv(out / ENDPOINT_FILE)
    assert ends[0] == ["PatientID", "Relapse", "RFS"]
    assert [r[0] for r in ends[1:]] == ids


def test_images_grids_dtypes_and_ranges(small_dataset):
    out, ids = small_dataset
    for cid in ids:
        ct = nib.load(out / "imagesTr" / f"{cid}__CT.nii.gz")
        pt = nib.load(out / "imagesTr" / f"{cid}__PT.nii.gz")
        lb = nib.load(out / "labelsTr" / f"{cid}.nii.gz")
        assert ct.get_data_dtype() == np.int16 and pt.get_data_dtype() == np.float32
        assert lb.get_data_dtype() == np.uint8
        c, p, lab = (np.asarray(im.dataobj) for im in (ct, pt, lb))
        assert c.shape == (32, 32, 24) and c.min() == -1024 and c.max() <= 3071
        assert c.max() > 300  # bone is there
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() > 2
        assert set(np.unique(lab)) <= {0, 1, 2}
        # label on the CT grid; PET on its own grid that overlaps the CT in world space
        assert lab.shape == c.shape and np.allclose(lb.affine, ct.affine)
        assert p.shape != c.shape and not np.allclose(pt.affine, ct.affine)
        assert np.allclose(np.abs(np.diag(pt.affine)[:3]), (4.0, 4.0, 2.5))
        (clo, chi), (plo, phi) = _world_box(ct), _world_box(pt)
        inter = np.prod(np.clip(np.minimum(chi, phi) - np.maximum(clo, plo), 0, None))
        assert inter > 0.8 * np.prod(chi - clo)
        # the PET grid is offset by a fraction of a voxel: its centres do not fall on CT voxel centres
        shift = (np.linalg.inv(ct.affine) @ pt.affine)[:3, 3]
        assert np.abs(shift - np.rint(shift)).max() > 0.05


def test_determinism_and_independence(tmp_path):
    cfg = PhantomConfig(cases_per_centre=1, centres=("CHUS",), seed=3, **TINY)
    a, b = synthesize_case("CHUS", 0, cfg), synthesize_case("CHUS", 0, cfg)
    for x, y in ((a.ct, b.ct), (a.pet, b.pet), (a.label, b.label), (a.ct_affine, b.ct_affine)):
        assert x.tobytes() == y.tobytes()
    assert (a.clinical, a.relapse, a.rfs) == (b.clinical, b.relapse, b.rfs)
    c = synthesize_case("CHUS", 0, PhantomConfig(seed=4, **TINY))
    assert a.ct.tobytes() != c.ct.tobytes() and a.pet.tobytes() != c.pet.tobytes()
    assert synthesize_case("CHUS", 1, cfg).ct.tobytes() != a.ct.tobytes()
    # a case does not depend on how many cases / which other centres are generated
    synthesize_phantom(tmp_path / "one", cfg, progress=False)
    synthesize_phantom(tmp_path / "two", PhantomConfig(cases_per_centre=2, centres=("HMR", "CHUS"), seed=3,
                                                       **TINY), progress=False)
    for name in ("imagesTr/CHUS-000__CT.nii.gz", "imagesTr/CHUS-000__PT.nii.gz", "labelsTr/CHUS-000.nii.gz"):
        one, two = (np.asarray(nib.load(tmp_path / d / name).dataobj) for d in ("one", "two"))
        assert one.tobytes() == two.tobytes()
    assert _read_csv(tmp_path / "one" / CLINICAL_FILE)[1] == _read_csv(tmp_path / "two" / CLINICAL_FILE)[3]


@pytest.mark.parametrize("oblique", [0.0, 20.0])
def test_pet_strong_ct_weak_tumour_contrast(oblique):
    cfg = PhantomConfig(oblique_degrees=oblique, **TINY)
    tumour_suv, body_suv, tumour_hu, soft_hu = [], [], [], []
    for centre, index in itertools.product(("CHUM", "CHUV", "MDA"), range(3)):
        case = synthesize_case(centre, index, cfg)
        ref = nib.Nifti1Image(case.ct.astype(np.float32), case.ct_affine)
        pet = np.asarray(resample_from_to(nib.Nifti1Image(case.pet, case.pet_affine), ref, order=1).dataobj)
        gtvp, background = case.label == 1, (case.label == 0) & (case.ct > -200) & (case.ct < 200)
        tumour_suv.append(pet[gtvp])
        body_suv.append(pet[background])
        tumour_hu.append(case.ct[gtvp])
        soft_hu.append(case.ct[background & (case.ct > -50)])
    assert sum(t.size for t in tumour_suv) > 200
    assert np.concatenate(tumour_suv).mean() > 2.5 * np.concatenate(body_suv).mean()
    assert abs(np.concatenate(tumour_hu).mean() - np.concatenate(soft_hu).mean()) < 40


def test_clinical_missingness_and_survival(tmp_path):
    cfg = PhantomConfig(cases_per_centre=3, ct_shape=(16, 16, 16))
    ids = synthesize_phantom(tmp_path, cfg, progress=False)
    assert len(ids) == 21
    with open(tmp_path / CLINICAL_FILE, newline="") as f:
        clin = list(csv.DictReader(f))
    for col in ("Tobacco", "Alcohol", "Performance status", "HPV status (0=-, 1=+)"):
        values = [r[col] for r in clin]
        assert "" in values and set(values) - {""}, col
    for col in ("PatientID", "Task 1", "Task 2", "CenterID", "Gender", "Age", "Chemotherapy"):
        assert all(r[col] != "" for r in clin), col
    assert {r["Gender"] for r in clin} <= {"M", "F"}
    assert all(45 <= int(r["Age"]) <= 85 for r in clin)
    assert {r["Performance status"] for r in clin} <= {"", "0", "1", "2", "3", "4"}
    assert {r["HPV status (0=-, 1=+)"] for r in clin} <= {"", "0", "1"}
    assert len({r["CenterID"] for r in clin}) == 7
    with open(tmp_path / ENDPOINT_FILE, newline="") as f:
        ends = list(csv.DictReader(f))
    assert [r["PatientID"] for r in ends] == ids
    assert all(float(r["RFS"]) > 0 for r in ends)
    assert {r["Relapse"] for r in ends} == {"0", "1"}


def test_oblique_direction_is_kept_in_all_images(tmp_path):
    cfg = PhantomConfig(cases_per_centre=1, centres=("HGJ",), oblique_degrees=25.0, **TINY)
    synthesize_phantom(tmp_path, cfg, progress=False)
    for name in ("imagesTr/HGJ-000__CT.nii.gz", "imagesTr/HGJ-000__PT.nii.gz", "labelsTr/HGJ-000.nii.gz"):
        img = nib.load(tmp_path / name)
        rot = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
        assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-6)
        assert np.abs(rot - np.diag(np.diag(rot))).max() > 0.3
        assert math.isclose(float(np.linalg.det(rot)), 1.0, rel_tol=1e-6)
    straight = synthesize_case("HGJ", 0, PhantomConfig(**TINY))
    assert np.allclose(straight.ct_affine[:3, :3], np.diag((2.0, 2.0, 2.5)))


def test_progress_bar_and_output_errors(tmp_path, capsys):
    cfg = PhantomConfig(cases_per_centre=1, centres=("CHUP",), ct_shape=(16, 16, 16))
    synthesize_phantom(tmp_path / "quiet", cfg, progress=False)
    assert "case" not in capsys.readouterr().err
    synthesize_phantom(tmp_path / "loud", cfg, progress=True)
    assert "case" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(PemmaError, match="not a folder"):
        synthesize_phantom(tmp_path / "file", cfg, progress=False)


def test_a_real_dataset_is_not_overwritten(tmp_path):
    """synth into a folder holding a real dataset replaced same-named cases and rewrote HECKTOR's tables with the
    phantom's patients only; into a phantom (or an empty folder) it writes as before."""
    cfg = PhantomConfig(cases_per_centre=1, centres=("CHUP",), ct_shape=(16, 16, 16))
    synthesize_phantom(tmp_path / "phantom", cfg, progress=False)
    synthesize_phantom(tmp_path / "phantom", cfg, progress=False)  # again: a phantom's folder
    real = tmp_path / "real"
    (real / "imagesTr").mkdir(parents=True)
    ct = nib.load(tmp_path / "phantom" / "imagesTr" / "CHUP-000__CT.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj), ct.affine), real / "imagesTr" / "CHUP-000__CT.nii.gz")
    (real / "hecktor2022_endpoint_training.csv").write_text("PatientID,Relapse,RFS\nCHUP-000,1,300\nCHUP-001,0,900\n")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    with pytest.raises(PemmaError, match=r"real: holds a dataset that is not pemma's phantom \(.*CHUP-000__CT"):
        synthesize_phantom(real, cfg, progress=False)
    (real / "imagesTr" / "CHUP-000__CT.nii.gz").unlink()
    with pytest.raises(PemmaError, match="hecktor2022_endpoint_training.csv"):  # tables without any phantom CT
        synthesize_phantom(real, cfg, progress=False)
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == {
        p: b for p, b in before.items() if p.name != "CHUP-000__CT.nii.gz"}
    nnunet = tmp_path / "Dataset501_HN"
    nnunet.mkdir()
    (nnunet / "dataset.json").write_text("{}")
    with pytest.raises(PemmaError, match="dataset.json"):
        synthesize_phantom(nnunet, cfg, progress=False)


@pytest.mark.parametrize("kwargs", [
    {"cases_per_centre": 0}, {"cases_per_centre": -2}, {"cases_per_centre": 1.5}, {"cases_per_centre": True},
    {"centres": ()}, {"centres": "CHUM"}, {"centres": ("CHUM", "XYZ")}, {"centres": ("CHUM", "CHUM")},
    {"ct_shape": (32, 32)}, {"ct_shape": (8, 32, 32)}, {"ct_shape": (32, 32, 24.0)},
    {"ct_spacing": (0.0, 2.0, 2.0)}, {"ct_spacing": (-1.0, 2.0, 2.0)}, {"pet_spacing": (4.0, 4.0)},
    {"pet_spacing": (4.0, 4.0, float("nan"))}, {"oblique_degrees": 90.0}, {"oblique_degrees": float("nan")},
    {"oblique_degrees": "10"}, {"seed": -1}, {"seed": 1.0},
])
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PhantomConfig(**kwargs)


def test_config_normalises_lists():
    cfg = PhantomConfig(centres=["CHUM"], ct_shape=[32, 32, 24], ct_spacing=[2, 2, 2.5], oblique_degrees=5)
    assert cfg.centres == ("CHUM",) and cfg.ct_shape == (32, 32, 24)
    assert cfg.ct_spacing == (2.0, 2.0, 2.5) and isinstance(cfg.oblique_degrees, float)


def test_lesion_hazard_terms_known_answer() -> None:
    """The image terms of the phantom's hazard: zero at the reference lesion (15 ml, SUVmax 10, one node), the
    weights of :data:`SURVIVAL` per doubling / tenfold otherwise; tiny or uptake-free lesions are floored at 1."""
    import math

    import numpy as np

    from pemma.data.phantom_anatomy import LesionSummary
    from pemma.data.phantom_survival import SURVIVAL, lesion_hazard_terms

    def terms(ml: float, suvmax: float, nodes: int) -> dict[str, float]:
        return lesion_hazard_terms(LesionSummary(np.zeros((1, 1, 1), np.uint8), ml, 0.0, nodes, suvmax, 0.0, "x"))

    assert terms(15.0, 10.0, 1) == {"volume": 0.0, "suvmax": 0.0, "nodes": 0.0}
    big = terms(30.0, 100.0, 2)
    assert math.isclose(big["volume"], SURVIVAL["log_volume"] * math.log(2))
    assert math.isclose(big["suvmax"], SURVIVAL["log_suvmax"] * math.log(10))
    assert big["nodes"] == SURVIVAL["two_nodes"]
    none = terms(0.0, 0.0, 0)
    assert math.isclose(none["volume"], SURVIVAL["log_volume"] * math.log(1 / 15))
    assert math.isclose(none["suvmax"], SURVIVAL["log_suvmax"] * math.log(0.1))
