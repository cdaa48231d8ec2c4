"""HECKTOR 2022 Task-2 tables: relapse-free survival endpoints and clinical information, matched to image cases.

Files (HECKTOR 2022 Task 2, as released)::

    hecktor2022_endpoint_training.csv       PatientID,Relapse,RFS   (Relapse 1 = event, 0 = censored; RFS days)
    hecktor2022_clinical_info_training.csv  PatientID,Task 1,Task 2,CenterID,Gender,Age,Weight,Tobacco,Alcohol,
                                            Performance status,"HPV status (0=-, 1=+)",Surgery,Chemotherapy

Both are read with the :mod:`csv` module, so the quoted HPV column name (it contains a comma) is one column.

Bad input is handled like this:

* non-numeric, NaN or negative RFS, a Relapse flag other than 0/1, a missing column or a repeated patient:
  :class:`~pemma.errors.PemmaError` naming the file, the line and the patient;
* endpoint rows without images and image cases without an endpoint row: skipped, and counted in the
  :class:`MatchReport` (its :meth:`MatchReport.summary` line goes into the run log);
* patients missing from the clinical table: all their clinical values are missing (the encoder imputes them).

Example:
    >>> endpoints = read_endpoints("data/phantom/hecktor2022_endpoint_training.csv")  # pemma synth data/phantom
    >>> report = match_endpoints(discover_cases("data/phantom"), endpoints)
    >>> report.summary()  # the default phantom: 7 centres x 12 cases
    '84 cases with images and endpoints; skipped 0 endpoint rows without images, 0 image cases without endpoints'
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pemma.data.case import patient_key
from pemma.data.layout import CaseRecord, centre_of
from pemma.errors import PemmaError

ENDPOINT_COLUMNS: tuple[str, ...] = ("PatientID", "Relapse", "RFS")
#: Cell values read as "missing" (besides the empty cell), compared case-insensitively.
MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "none", "null", "?", "unknown"})  # not "-": HPV's negative


@dataclass(frozen=True)
class Endpoint:
    """Relapse-free survival of one patient.

    Args:
        patient_id: e.g. ``"CHUM-001"``.
        relapse: 1 = relapse observed (event), 0 = censored.
        rfs: days from the end of radiotherapy to relapse or censoring (>= 0).
    """

    patient_id: str
    relapse: int
    rfs: float


@dataclass
class ClinicalTable:
    """The clinical CSV: its header (exactly as written) and each patient's raw cells (``None`` = missing)."""

    path: Path
    columns: list[str]
    rows: dict[str, dict[str, str | None]]

    def row(self, patient_id: str) -> dict[str, str | None] | None:
        """The row of ``patient_id`` (also found when the table writes ``CHUM_001`` for ``CHUM-001``)."""
        if patient_id in self.rows:
            return self.rows[patient_id]
        return self._by_key().get(patient_key(patient_id))

    def _by_key(self) -> dict[str, dict[str, str | None]]:
        return {patient_key(pid): row for pid, row in self.rows.items()}


def is_missing(value: object) -> bool:
    """True for ``None``, an empty cell or a missing-value token such as ``NaN`` / ``NA``."""
    return value is None or str(value).strip().lower() in MISSING_TOKENS


def _open_rows(path: Path, what: str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line number, row dict)`` of a CSV file; checks that ``required`` columns are present."""
    if not path.is_file():
        raise PemmaError(f"{path}: {what} file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader if any((v or "").strip() for v in row.values()
                                                                    if isinstance(v, str))]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PemmaError(f"{path}: cannot read {what} CSV ({str(exc).splitlines()[0]})") from None
    if not header:
        raise PemmaError(f"{path}: {what} CSV is empty (no header)")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise PemmaError(f"{path}: {what} CSV repeats column(s) {duplicated}")
    missing = [c for c in required if c not in header]
    if missing:
        raise PemmaError(f"{path}: {what} CSV lacks column(s) {missing} (header: {','.join(header)})")
    return header, rows


def _patient(path: Path, line: int, row: Mapping[str, str | None], seen: set[str]) -> str:
    pid = (row.get("PatientID") or "").strip()
    if not pid:
        raise PemmaError(f"{path}: line {line}: empty PatientID")
    if patient_key(pid) in seen:
        raise PemmaError(f"{path}: line {line}: patient {pid} appears twice")
    seen.add(patient_key(pid))
    return pid


def read_endpoints(path: str | Path) -> dict[str, Endpoint]:
    """Read ``PatientID,Relapse,RFS`` (other columns are ignored).

    Args:
        path: the endpoint CSV.

    Returns:
        ``{patient_id: Endpoint}`` in file order.

    Raises:
        PemmaError: missing file or column, empty or repeated PatientID, RFS not a finite number >= 0,
            Relapse not 0/1 (``1.0`` / ``0.0`` are accepted). The message names file, line and patient.

    Warns:
        UserWarning: patients with RFS 0 days (one line naming the first of them).

    Example:
        >>> read_endpoints("data/phantom/hecktor2022_endpoint_training.csv")["CHUM-001"]  # the default phantom
        Endpoint(patient_id='CHUM-001', relapse=1, rfs=597.0)
    """
    path = Path(path)
    _, rows = _open_rows(path, "endpoint", ENDPOINT_COLUMNS)
    out: dict[str, Endpoint] = {}
    seen: set[str] = set()
    for line, row in rows:
        pid = _patient(path, line, row, seen)
        where = f"{path}: line {line} (patient {pid})"
        rfs_text, relapse_text = (row.get("RFS") or "").strip(), (row.get("Relapse") or "").strip()
        try:
            rfs = float(rfs_text)
        except ValueError:
            raise PemmaError(f"{where}: RFS {rfs_text!r} is not a number of days") from None
        if not math.isfinite(rfs):
            raise PemmaError(f"{where}: RFS {rfs_text!r} is not a finite number of days")
        if rfs < 0:
            raise PemmaError(f"{where}: RFS {rfs_text} is negative (days from the end of radiotherapy)")
        try:
            relapse_value = float(relapse_text)
        except ValueError:
            relapse_value = float("nan")
        if relapse_value not in (0.0, 1.0):
            raise PemmaError(f"{where}: Relapse {relapse_text!r} must be 0 (censored) or 1 (relapse)")
        out[pid] = Endpoint(pid, int(relapse_value), rfs)
    if not out:
        raise PemmaError(f"{path}: endpoint CSV has no rows")
    zero = [pid for pid, e in out.items() if e.rfs == 0]
    if zero:  # legal, but a censored patient followed for 0 days adds nothing, and a day-0 relapse is rare
        warnings.warn(f"{path}: {len(zero)} patient(s) with RFS 0 days ({', '.join(zero[:3])}"
                      f"{', ...' if len(zero) > 3 else ''}): a relapse or censoring at the end of radiotherapy; "
                      "check these rows", UserWarning, stacklevel=2)
    return out


def read_clinical(path: str | Path) -> ClinicalTable:
    """Read the clinical CSV with its exact header (quoted names such as ``"HPV status (0=-, 1=+)"`` kept).

    Cells are stripped; empty cells and tokens such as ``NaN`` / ``NA`` become ``None``. Values are kept as
    text: :class:`~pemma.survival.clinical.ClinicalEncoder` parses the columns it is configured to use.

    Raises:
        PemmaError: missing file, no PatientID column, empty or repeated PatientID, a row with more or fewer
            cells than the header.

    Example:
        >>> table = read_clinical("hecktor2022_clinical_info_training.csv")
        >>> table.columns[10]
        'HPV status (0=-, 1=+)'
    """
    path = Path(path)
    header, rows = _open_rows(path, "clinical", ("PatientID",))
    out: dict[str, dict[str, str | None]] = {}
    seen: set[str] = set()
    for line, row in rows:
        if None in row:  # more cells than header columns: csv.DictReader collects them under None
            raise PemmaError(f"{path}: line {line} has {len(header) + len(row[None])} cells, the header "
                             f"{len(header)} (an unquoted comma in a value?)")
        if any(v is None for v in row.values()):  # fewer: the values would shift under the wrong columns
            raise PemmaError(f"{path}: line {line} has {sum(v is not None for v in row.values())} cells, the header "
                             f"{len(header)} (an unquoted comma in a column name, such as the HPV column's?)")
        pid = _patient(path, line, row, seen)
        out[pid] = {k: None if is_missing(v) else str(v).strip() for k, v in row.items() if k != "PatientID"}
    return ClinicalTable(path, header, out)


def find_table(root: str | Path, name: str, explicit: str | Path | None = None) -> Path | None:
    """Locate a table: ``explicit`` if given, else ``name`` anywhere under the folder ``root``, or beside the file
    ``root`` (a datalist JSON: its folder alone, not the folders next to it).

    Falls back to the matching pattern with any split (``*_clinical_info_*.csv``, ``*_endpoint_*.csv``)
    when the training name is absent, e.g. ``hecktor2022_clinical_info_testing.csv``.

    Raises:
        PemmaError: ``explicit`` does not exist, or several candidate files are found.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise PemmaError(f"{path}: table file not found")
        return path
    folder = Path(root)
    beside = folder.is_file()
    folder = folder.parent if beside else folder
    if not folder.is_dir():
        return None
    search = folder.glob if beside else folder.rglob
    hits = sorted(search(name))
    if not hits:
        pattern = name.replace("_training.csv", "_*.csv")
        hits = sorted(search(pattern))
    if len(hits) > 1:
        listed = ", ".join(str(h) for h in hits[:3])
        raise PemmaError(f"{folder}: several {name} candidates ({listed}); choose one explicitly")
    return hits[0] if hits else None


@dataclass
class MatchReport:
    """Image cases paired with endpoints, and what was skipped (with counts, for the run log)."""

    pairs: list[tuple[CaseRecord, Endpoint]] = field(default_factory=list)
    endpoints_without_images: list[str] = field(default_factory=list)
    images_without_endpoints: list[str] = field(default_factory=list)

    @property
    def cases(self) -> list[CaseRecord]:
        return [c for c, _ in self.pairs]

    def summary(self) -> str:
        """One line with the counts (and the first few skipped IDs)."""
        def first(ids: list[str]) -> str:
            return f" ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})" if ids else ""

        return (f"{len(self.pairs)} cases with images and endpoints; skipped "
                f"{len(self.endpoints_without_images)} endpoint rows without images"
                f"{first(self.endpoints_without_images)}, {len(self.images_without_endpoints)} image cases "
                f"without endpoints{first(self.images_without_endpoints)}")


def match_endpoints(cases: Sequence[CaseRecord], endpoints: Mapping[str, Endpoint],
                    centres: Sequence[str] | None = None, left_out: Iterable[str] = ()) -> MatchReport:
    """Pair image cases with endpoint rows by patient ID (``CHUM_001`` matches ``CHUM-001``).

    Args:
        cases: image cases (already restricted to the wanted centres and modalities).
        endpoints: from :func:`read_endpoints`.
        centres: when given, endpoint rows of other centres are not counted as "without images".
        left_out: IDs of cases whose images exist but were left out on purpose (another split): their rows are
            not counted as "without images" either.

    Returns:
        :class:`MatchReport`; skipped rows and cases are listed, never an error.
    """
    by_key = {patient_key(pid): e for pid, e in endpoints.items()}
    report = MatchReport()
    used: set[str] = set()
    for case in cases:
        endpoint = by_key.get(patient_key(case.case_id))
        if endpoint is None:
            report.images_without_endpoints.append(case.case_id)
        else:
            report.pairs.append((case, endpoint))
            used.add(patient_key(case.case_id))
    wanted = {c.upper() for c in centres or []}
    used |= {patient_key(i) for i in left_out}
    report.endpoints_without_images = [pid for pid in endpoints if patient_key(pid) not in used
                                       and (not wanted or centre_of(pid).upper() in wanted)]
    return report
