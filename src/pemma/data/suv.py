"""PET activity concentration (Bq/ml) to body-weight SUV (SUVbw) from the DICOM tags of a PET series.

SUVbw = activity [Bq/ml] x patient weight [g] / injected dose decayed to the scan reference time [Bq]
(QIBA / Vendor-neutral SUV definition). The tags are read with pydicom; nothing here parses DICOM itself.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from pemma.errors import PemmaError

log = logging.getLogger("pemma.dicom")

#: tags SUVbw needs, with their (group, element) for the error messages
SUV_TAGS = {
    "Units": "(0054,1001)",
    "DecayCorrection": "(0054,1102)",
    "PatientWeight": "(0010,1030)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "SeriesTime": "(0008,0031)",
}


@dataclass(frozen=True)
class SuvFactor:
    """The multiplier from stored PET values (after rescale) to SUVbw, and how it was found (for the log)."""

    factor: float
    units: str
    decay_correction: str
    weight_kg: float
    dose_bq: float
    half_life_s: float
    elapsed_s: float

    def describe(self) -> str:
        """One line: units, decay correction, weight, dose, half-life, time from injection and the factor (for GML,
        already SUVbw, only that)."""
        if self.units == "GML":
            return "PET units GML: already SUVbw, read as it is (factor 1)"
        return (f"PET units {self.units}, decay correction {self.decay_correction}, weight {self.weight_kg:g} kg, "
                f"dose {self.dose_bq / 1e6:.4g} MBq, half-life {self.half_life_s:g} s, "
                f"{self.elapsed_s:.0f} s from injection to scan: SUVbw = value x {self.factor:.6g}")


def _missing(tag: str, where: str) -> PemmaError:
    return PemmaError(f"{where}: missing DICOM tag {tag} {SUV_TAGS.get(tag, '')}, needed to convert PET to SUVbw")


def _value(ds: Dataset, tag: str, where: str) -> object:
    value = ds.get(tag)
    if value is None or value == "":
        raise _missing(tag, where)
    return value


def _number(ds: Dataset, tag: str, where: str) -> float:
    try:
        value = float(_value(ds, tag, where))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PemmaError(f"{where}: DICOM tag {tag} {SUV_TAGS.get(tag, '')} is not a number ({ds.get(tag)!r})") \
            from None
    if value <= 0:
        raise PemmaError(f"{where}: DICOM tag {tag} {SUV_TAGS.get(tag, '')} must be positive, got {value:g}")
    return value


def _datetime(date: object, time: object) -> dt.datetime | None:
    """A datetime from DICOM DA and TM values (pydicom parses them); None when either is missing."""
    if not date or not time:
        return None
    return dt.datetime.combine(DA(str(date)), TM(str(time)))


DAY_S = 86400.0
#: a time-only injection this close before midnight, with the scan after it, is taken as the day before the scan
#: (no uptake time of a PET protocol comes near 12 h; an injection an hour after the scan's time of day stays an
#: error, not a 23-hour uptake)
MIDNIGHT_WINDOW_S = 12 * 3600.0


def _injection_time(info: Dataset, scan_date: object, where: str) -> dt.datetime:
    """RadiopharmaceuticalStartDateTime, else the scan date with RadiopharmaceuticalStartTime."""
    if info.get("RadiopharmaceuticalStartDateTime"):
        stamp = DT(str(info.RadiopharmaceuticalStartDateTime))
        return stamp.replace(tzinfo=None)
    start = _datetime(scan_date, info.get("RadiopharmaceuticalStartTime"))
    if start is None:
        raise _missing("RadiopharmaceuticalStartTime", where)
    return start


def _scan_time(first: Dataset, slices: Sequence[Dataset], where: str) -> dt.datetime:
    """The decay reference time of a START-corrected series: the series date/time, unless it is later than the
    earliest acquisition (a post-processed series), then the earliest acquisition date/time (QIBA)."""
    series = _datetime(first.get("SeriesDate") or first.get("StudyDate"), first.get("SeriesTime"))
    acquisitions = [t for t in (_datetime(s.get("AcquisitionDate") or first.get("SeriesDate"), s.get("AcquisitionTime"))
                                for s in slices) if t is not None]
    earliest = min(acquisitions) if acquisitions else None
    if series is None and earliest is None:
        raise _missing("SeriesTime", where)
    if series is None or (earliest is not None and series > earliest):
        return earliest  # type: ignore[return-value]
    return series


def suv_factor(slices: Sequence[Dataset], where: str) -> SuvFactor:
    """The factor that turns a PET series' rescaled values into SUVbw.

    Args:
        slices: the series' headers (pydicom datasets, pixel data not needed); the first gives the series tags,
            all of them the acquisition times.
        where: the series named in errors (e.g. ``PET series 1.2.3 in /dicom/p42/PT``).

    Returns:
        The :class:`SuvFactor`: ``factor`` is 1 for ``Units`` GML (already SUVbw).

    Raises:
        PemmaError: one line naming the missing or unusable tag and the series (units other than BQML / GML,
            decay correction other than START / ADMIN, an injection after the scan).
    """
    first = slices[0]
    units = str(_value(first, "Units", where)).upper()
    correction = str(_value(first, "DecayCorrection", where)).upper()
    if units == "GML":
        return SuvFactor(1.0, units, correction, 0.0, 0.0, 0.0, 0.0)
    if units != "BQML":
        raise PemmaError(f"{where}: PET Units {units} (0054,1001) cannot be converted to SUVbw (needs BQML, or GML "
                         f"for values already in SUVbw)")
    weight = _number(first, "PatientWeight", where)
    sequence = first.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise _missing("RadiopharmaceuticalInformationSequence", where)
    info = sequence[0]
    dose = _number(info, "RadionuclideTotalDose", where)
    half_life = _number(info, "RadionuclideHalfLife", where)
    if correction == "ADMIN":  # already decay corrected to the injection time
        elapsed = 0.0
    elif correction == "START":  # corrected to the scan reference time: decay the dose from injection to then
        injected = _injection_time(info, first.get("SeriesDate") or first.get("StudyDate"), where)
        elapsed = (_scan_time(first, slices, where) - injected).total_seconds()
        if elapsed < -DAY_S + MIDNIGHT_WINDOW_S and not info.get("RadiopharmaceuticalStartDateTime"):
            # a time-only injection late in the evening before a scan after midnight: the day before
            elapsed += DAY_S
            log.info(f"{where}: injection at {info.get('RadiopharmaceuticalStartTime')} after the scan's time of day: "
                     f"taken as the day before the scan ({elapsed:.0f} s from injection)")
        if elapsed < 0:
            raise PemmaError(f"{where}: injection (RadiopharmaceuticalStart*) is {-elapsed:.0f} s after the scan "
                             f"(SeriesTime / AcquisitionTime); check the dates and times")
    else:
        raise PemmaError(f"{where}: DecayCorrection {correction} (0054,1102) not supported: give a START- or "
                         f"ADMIN-corrected series (NONE needs a per-slice correction pemma does not do)")
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return SuvFactor(weight * 1000.0 / decayed, units, correction, weight, dose, half_life, elapsed)
