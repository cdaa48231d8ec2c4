"""Endpoint and clinical tables: the exact HECKTOR header, bad rows, matching to images, clinical encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pemma.data.layout import CaseRecord
from pemma.errors import PemmaError
from pemma.survival.clinical import ClinicalConfig, ClinicalEncoder
from pemma.survival.endpoints import find_table, match_endpoints, read_clinical, read_endpoints
from pemma.vocab import HPV_COLUMN

HEADER = ('PatientID,Task 1,Task 2,CenterID,Gender,Age,Weight,Tobacco,Alcohol,Performance status,'
          '"HPV status (0=-, 1=+)",Surgery,Chemotherapy')


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_clinical_header_with_quoted_hpv_column(tmp_path: Path) -> None:
    path = write(tmp_path / "clin.csv", HEADER + "\n"
                 "CHUM-001,1,1,1,M,61,82.5,1,,0,1,0,1\n"
                 "CHUM_002,1,1,1,F,58,,NaN,0,,,1.0,0\n")
    table = read_clinical(path)
    assert table.columns[10] == HPV_COLUMN and len(table.columns) == 13
    assert table.rows["CHUM-001"][HPV_COLUMN] == "1"
    row = table.row("CHUM-002")  # underscore in the table, hyphen in the image name
    assert row is not None and row["Weight"] is None and row["Tobacco"] is None and row["Surgery"] == "1.0"


def test_clinical_row_with_an_unquoted_comma_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "clin.csv", HEADER + "\nCHUM-001,1,1,1,M,61,82,1,0,0,1,0,1,extra\n")
    with pytest.raises(PemmaError, match=r"line 2 has 14 cells, the header 13"):
        read_clinical(path)


def test_clinical_row_with_fewer_cells_than_the_header_is_refused(tmp_path: Path) -> None:
    """An unquoted HPV header (a comma in its name) made 14 columns over 13-cell rows: each value slid under the
    next column's name (Surgery held Chemotherapy's), silently."""
    unquoted = HEADER.replace('"', "")
    path = write(tmp_path / "clin.csv", unquoted + "\nCHUM-001,1,1,1,M,61,82,1,0,0,1,0,1\n")
    with pytest.raises(PemmaError, match=r"clin\.csv: line 2 has 13 cells, the header 14 \(an unquoted comma in a "
                                         r"column name"):
        read_clinical(path)


def test_hpv_minus_is_a_value_not_missing(tmp_path: Path) -> None:
    """The HPV column is named "(0=-, 1=+)": "-" was read as missing, merging the negatives into it."""
    path = write(tmp_path / "clin.csv", HEADER + "\nCHUM-001,1,1,1,M,61,82,1,0,0,-,0,1\n"
                                                 "CHUM-002,1,1,1,M,61,82,1,0,0,+,0,1\nCHUM-003,1,1,1,M,61,82,1,0,0,,0,1\n")
    table = read_clinical(path)
    assert [table.rows[p][HPV_COLUMN] for p in ("CHUM-001", "CHUM-002", "CHUM-003")] == ["-", "+", None]
    enc = ClinicalEncoder(ClinicalConfig(numeric=(), categorical=(HPV_COLUMN,))).fit(list(table.rows.values()))
    assert enc.levels[HPV_COLUMN] == ["+", "-"]


def test_evaluating_against_a_table_the_encoder_does_not_fit(tmp_path: Path) -> None:
    """survival evaluate / predict encoded a renamed or dropped column (or another coding) as missing for every
    patient, exit 0: risks changed without a word. Training already refused the unknown column."""
    from pemma.survival.data import encode_clinical

    enc = ClinicalEncoder(ClinicalConfig(numeric=("Age",), categorical=("Gender",)))
    cases = [CaseRecord(f"CHUM-00{i}", "CHUM", {"ct": "x"}) for i in (1, 2)]
    good = read_clinical(write(tmp_path / "good.csv", "PatientID,Age,Gender\nCHUM-001,61,M\nCHUM-002,70,F\n"))
    enc.fit(list(good.rows.values()), source=str(good.path))
    renamed = read_clinical(write(tmp_path / "renamed.csv", "PatientID,Age,\"Gender (1=M,0=F)\"\nCHUM-001,61,1\n"
                                                            "CHUM-002,70,0\n"))
    with pytest.raises(PemmaError, match=r"renamed\.csv: unknown clinical column\(s\) \['Gender'\]"):
        encode_clinical(enc, cases, renamed)
    recoded = read_clinical(write(tmp_path / "recoded.csv", "PatientID,Age,Gender\nCHUM-001,61,1\nCHUM-002,70,0\n"))
    with pytest.warns(UserWarning, match=r"recoded\.csv: values the model never saw in training, encoded as "
                                         r"missing: Gender 2 of 2 cases"):
        encode_clinical(enc, cases, recoded)
    text = read_clinical(write(tmp_path / "text.csv", "PatientID,Age,Gender\nCHUM-001,65 years,M\n"))
    with pytest.raises(PemmaError, match=r"text\.csv: patient CHUM-001: clinical column 'Age' value '65 years'"):
        encode_clinical(enc, cases[:1], text)


def test_read_endpoints_and_phantom_files(phantom: Path) -> None:
    endpoints = read_endpoints(phantom / "hecktor2022_endpoint_training.csv")
    assert len(endpoints) == 6 and all(e.relapse in (0, 1) and e.rfs >= 0 for e in endpoints.values())
    table = read_clinical(phantom / "hecktor2022_clinical_info_training.csv")
    assert HPV_COLUMN in table.columns and set(table.rows) == set(endpoints)


@pytest.mark.parametrize(("row", "message"), [
    ("CHUM-002,1,abc", r"line 3 \(patient CHUM-002\): RFS 'abc' is not a number"),
    ("CHUM-002,1,-5", r"line 3 \(patient CHUM-002\): RFS -5 is negative"),
    ("CHUM-002,1,", r"RFS '' is not a number"),
    ("CHUM-002,1,nan", r"not a finite number"),
    ("CHUM-002,2,100", r"Relapse '2' must be 0 \(censored\) or 1"),
    ("CHUM-001,0,100", r"line 3: patient CHUM-001 appears twice"),
])
def test_bad_endpoint_rows(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path / "end.csv", f"PatientID,Relapse,RFS\nCHUM-001,1.0,300\n{row}\n")
    with pytest.raises(PemmaError, match=message) as info:
        read_endpoints(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_endpoint_file_without_a_column(tmp_path: Path) -> None:
    with pytest.raises(PemmaError, match=r"lacks column\(s\) \['RFS'\]"):
        read_endpoints(write(tmp_path / "end.csv", "PatientID,Relapse\nCHUM-001,1\n"))


def test_matching_skips_and_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "end.csv", "PatientID,Relapse,RFS\nCHUM-001,1,300\nCHUM-002,0,900\nMDA-007,1,50\n"
                                       "HGJ-001,0,10\n")
    cases = [CaseRecord("CHUM_001", "CHUM", {"ct": "x"}), CaseRecord("CHUM-003", "CHUM", {"ct": "y"}),
             CaseRecord("MDA-007", "MDA", {"ct": "z"})]
    report = match_endpoints(cases, read_endpoints(path), centres=["CHUM", "MDA"])
    assert [c.case_id for c in report.cases] == ["CHUM_001", "MDA-007"]
    assert report.images_without_endpoints == ["CHUM-003"]
    assert report.endpoints_without_images == ["CHUM-002"]  # HGJ is outside the selected centres
    assert "2 cases with images and endpoints; skipped 1 endpoint rows without images (CHUM-002), " \
           "1 image cases without endpoints (CHUM-003)" == report.summary()
    # a case left out on purpose (another split) has images: its row is not "without images"
    assert match_endpoints(cases, read_endpoints(path), ["CHUM", "MDA"], left_out=["CHUM_002"]) \
        .endpoints_without_images == []


def test_find_table(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "hecktor2022_clinical_info_testing.csv", HEADER + "\n")
    assert find_table(tmp_path, "hecktor2022_clinical_info_training.csv").name.endswith("_testing.csv")
    assert find_table(tmp_path, "hecktor2022_endpoint_training.csv") is None
    with pytest.raises(PemmaError, match="table file not found"):
        find_table(tmp_path, "x.csv", explicit=tmp_path / "missing.csv")
    # beside a datalist JSON: its folder only, not the datasets in folders next to it (they made `check` fail)
    (tmp_path / "other").mkdir()
    write(tmp_path / "other" / "hecktor2022_clinical_info_training.csv", HEADER + "\n")
    (tmp_path / "datalist.json").write_text("{}")
    assert find_table(tmp_path / "datalist.json", "hecktor2022_clinical_info_training.csv") is None
    assert find_table(tmp_path, "hecktor2022_clinical_info_training.csv").parent.name == "other"  # a folder: all
    write(tmp_path / "hecktor2022_clinical_info_training.csv", HEADER + "\n")
    assert find_table(tmp_path / "datalist.json", "hecktor2022_clinical_info_training.csv") == (
        tmp_path / "hecktor2022_clinical_info_training.csv")


ROWS = [
    {"PatientID": "A", "Age": "60", "Weight": "80", "Gender": "M", HPV_COLUMN: "1", "Performance status": "0"},
    {"PatientID": "B", "Age": None, "Weight": "70", "Gender": "F", HPV_COLUMN: None, "Performance status": "1.0"},
    {"PatientID": "C", "Age": "70", "Weight": None, "Gender": "M", HPV_COLUMN: "0", "Performance status": None},
    {"PatientID": "D", "Age": "90", "Weight": "90", "Gender": "M", HPV_COLUMN: "1.0", "Performance status": "1"},
]
CONFIG = ClinicalConfig(numeric=("Age", "Weight"), categorical=("Gender", HPV_COLUMN, "Performance status"))


def test_clinical_encoder_missing_values_use_training_statistics() -> None:
    enc = ClinicalEncoder(CONFIG).fit(ROWS)
    assert enc.levels[HPV_COLUMN] == ["0", "1"] and enc.levels["Performance status"] == ["0", "1"]
    assert enc.numeric_stats["Age"]["median"] == 70.0  # of the observed 60, 70, 90
    x = enc.transform(ROWS)
    assert x.shape == (4, enc.n_features) == (4, 4 + 3 + 3 + 3) and x.dtype == np.float32
    names = enc.feature_names
    age, age_missing = names.index("Age"), names.index("Age:missing")
    mean, std = np.mean([60, 70, 90]), np.std([60, 70, 90])
    assert x[1, age] == pytest.approx((70 - mean) / std) and x[1, age_missing] == 1.0 and x[0, age_missing] == 0.0
    assert x[0, age] == pytest.approx((60 - mean) / std)
    hpv_missing = names.index(f"{HPV_COLUMN}:missing")
    assert x[1, hpv_missing] == 1.0 and x[0, names.index(f"{HPV_COLUMN}=1")] == 1.0
    assert x[3, names.index(f"{HPV_COLUMN}=1")] == 1.0  # "1.0" and "1" are one level
    # each categorical block is one-hot
    for col in CONFIG.categorical:
        block = [i for i, n in enumerate(names) if n.startswith(col + "=") or n == f"{col}:missing"]
        assert np.all(x[:, block].sum(axis=1) == 1.0)


def test_clinical_encoder_unseen_category_and_statistics_from_training_only() -> None:
    enc = ClinicalEncoder(CONFIG).fit(ROWS[:2])
    test_row = {"PatientID": "Z", "Age": "200", "Weight": None, "Gender": "X",
                HPV_COLUMN: "1", "Performance status": "4"}
    x = enc.transform([test_row])
    names = enc.feature_names
    assert enc.unseen == {"Gender": 1, "Performance status": 1}
    assert x[0, names.index("Gender:missing")] == 1.0 and x[0, names.index("Performance status:missing")] == 1.0
    assert x[0, names.index("Weight")] == pytest.approx(0.0)  # median of 80, 70 == their mean
    assert enc.numeric_stats["Age"]["median"] == 60.0  # only A had an age in the training rows
    all_missing = enc.transform([None])
    assert all_missing[0, names.index("Age:missing")] == 1.0


def test_clinical_encoder_errors_and_json_round_trip(tmp_path: Path) -> None:
    enc = ClinicalEncoder(ClinicalConfig(numeric=("Age",), categorical=("Smoking",)))
    with pytest.raises(PemmaError, match=r"unknown clinical column\(s\) \['Smoking'\]; available: .*HPV status"):
        enc.fit(ROWS, columns=HEADER.replace('"', "").split(",")[:10] + [HPV_COLUMN, "Surgery", "Chemotherapy"])
    with pytest.raises(PemmaError, match="clinical CSV: patient B: clinical column 'Age' value 'old' is not a number"):
        ClinicalEncoder(CONFIG).fit([ROWS[0], {**ROWS[1], "Age": "old"}])
    with pytest.raises(PemmaError, match="not fitted"):
        ClinicalEncoder(CONFIG).transform(ROWS)
    with pytest.raises(ValueError, match="repeated"):
        ClinicalConfig(numeric=("Age",), categorical=("Age",))
    with pytest.raises(ValueError, match="cannot be predictors"):
        ClinicalConfig(numeric=("PatientID",))
    fitted = ClinicalEncoder(CONFIG).fit(ROWS)
    restored = ClinicalEncoder.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(restored.transform(ROWS), fitted.transform(ROWS))
    assert restored.feature_names == fitted.feature_names


def test_rfs_of_zero_days_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "end.csv", "PatientID,Relapse,RFS\nCHUM-001,1,0\nCHUM-002,0,900\n")
    with pytest.warns(UserWarning, match=r"end\.csv: 1 patient\(s\) with RFS 0 days \(CHUM-001\)"):
        assert read_endpoints(path)["CHUM-001"].rfs == 0.0
