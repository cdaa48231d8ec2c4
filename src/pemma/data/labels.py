"""Label values: pemma's are HECKTOR's (0 background, 1 GTVp, 2 GTVn); a dataset whose ``dataset.json`` names its
labels otherwise (GTVn = 1 and GTVp = 2, or other numbers) is remapped by name when its labels are read."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from pemma.errors import PemmaError
from pemma.vocab import LABEL_VALUES

#: (file value, pemma value) pairs; None when a dataset's label files already hold pemma's values
LabelMap = tuple[tuple[int, int], ...]
#: the data-dict key (:func:`pemma.data.dataset.case_dicts`) that carries a case's label map to the loader
LABEL_MAP_KEY = "label_map"

#: label names as datasets spell them (lower case, separators removed) -> pemma's value
LABEL_NAME_VALUES: dict[str, int] = {
    "background": 0, "bg": 0,
    "gtvp": 1, "gtvt": 1, "gtvprimary": 1, "primary": 1, "primarytumor": 1, "primarytumour": 1, "tumor": 1,
    "tumour": 1,
    "gtvn": 2, "gtvln": 2, "gtvnode": 2, "gtvnodes": 2, "node": 2, "nodes": 2, "lymphnode": 2, "lymphnodes": 2,
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def label_map_from_names(labels: Mapping[str, object], source: str) -> LabelMap | None:
    """The remapping that a ``dataset.json`` ``labels`` entry (``{"background": 0, "GTVp": 1, "GTVn": 2}``) asks for.

    Args:
        labels: label name -> value in the label files.
        source: the file named in errors.

    Returns:
        (file value, pemma value) pairs, or None when the files already hold pemma's values.

    Raises:
        PemmaError: a name that is not background / GTVp / GTVn, a region (list) label, or two names for one class.
    """
    pairs: dict[int, int] = {}
    for name, value in labels.items():
        pemma_value = LABEL_NAME_VALUES.get(_key(str(name)))
        if pemma_value is None:
            raise PemmaError(f"{source}: label {name!r} is not background, GTVp or GTVn (labels {dict(labels)}); "
                             f"pemma segments GTVp and GTVn: name them so in dataset.json")
        if isinstance(value, bool) or not isinstance(value, int):
            raise PemmaError(f"{source}: label {name!r} has value {value!r}; pemma needs one integer per label "
                             f"(region-based labels are not supported)")
        if pemma_value in pairs.values():
            raise PemmaError(f"{source}: two labels name the same class ({dict(labels)})")
        pairs[value] = pemma_value
    if all(k == v for k, v in pairs.items()):
        return None
    return tuple(sorted(pairs.items()))


def to_pemma_labels(array: np.ndarray, label_map: LabelMap | None, path: str, case: str) -> np.ndarray:
    """``array`` (a label volume as read) with pemma's values (0, 1, 2), checked.

    Args:
        array: label voxels. label_map: the dataset's (file value, pemma value) pairs, or None.
        path: the label file (named in errors). case: the case ID.

    Raises:
        PemmaError: a value outside {0, 1, 2} (or, with a map, a value the dataset's labels do not name).
    """
    values = np.unique(array).tolist()
    if label_map is None:
        bad = [v for v in values if v not in LABEL_VALUES]
        if bad:
            raise PemmaError(f"{path}: label of case {case} has values {bad[:5]} outside {{0, 1, 2}}")
        return array
    known = dict(label_map)
    bad = [v for v in values if v not in known]
    if bad:
        raise PemmaError(f"{path}: label of case {case} has values {bad[:5]} that dataset.json labels do not name "
                         f"(file values {sorted(known)})")
    out = np.zeros(array.shape, dtype=array.dtype)
    for file_value, pemma_value in label_map:
        out[array == file_value] = pemma_value
    return out
