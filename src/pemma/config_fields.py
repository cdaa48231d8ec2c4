"""Type checks of the run-configuration dataclasses (:mod:`pemma.config`): every field against its annotation, with
an error that names the field, shows the value and its kind, and says how to write it.

Example:
    >>> triple("target_spacing", [1, 1, 1])
    [1, 1, 1]
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from numbers import Real
from typing import Any


def triple(name: str, value: Any, positive: bool = True) -> list[float]:
    """``value`` as a list of 3 (x, y, z) values, positive unless ``positive`` is False.

    Raises:
        ValueError: not 3 values, or a value <= 0 (naming ``name`` and how to write it).
    """
    vals = list(value)
    if len(vals) != 3:
        example = [vals[0]] * 3 if vals else "[a, b, c]"
        raise ValueError(f"{name} must have 3 values (x, y, z), got {vals}; write e.g. {name}: {example}")
    if positive and any(float(v) <= 0 for v in vals):
        raise ValueError(f"{name} must be positive, got {vals}")
    return vals


_TYPE_NAMES = {bool: "true/false", str: "a string", list: "a list", tuple: "a list", dict: "a mapping",
               type(None): "null"}


def shown(value: Any) -> str:
    """``value`` and its kind as an error message shows it: ``'1e-3' (a string)``."""
    kind = next((n for t, n in _TYPE_NAMES.items() if isinstance(value, t)), None)
    kind = kind or ("a number" if isinstance(value, Real) else type(value).__name__)
    return f"{value!r} ({kind})"


def _example(obj: Any, name: str) -> str:
    f = next(f for f in dataclasses.fields(obj) if f.name == name)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    return "" if default in (None, "", [], {}) else f", e.g. {name}: {default}"


def _number(name: str, value: Any, integer: bool, example: str) -> int | float:
    """``value`` as an int / a finite float (a YAML ``1e-3``, read as a string, counts as a number)."""
    if integer:
        if isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{name} must be a whole number, got {shown(value)}; write one integer without quotes"
                         f"{example}")
    number: float | None = None
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be one finite number, got {shown(value)}{example and '; write' + example[6:]}")
    return number


def check_field_types(obj: Any) -> None:
    """Check (and normalise) every field of a config dataclass against its annotation, before range checks.

    Raises:
        ValueError: ``"<field> must be ..., got <value> (<kind>); <the fix>"``.
    """
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        example = _example(obj, f.name)
        if kind.endswith(" | None"):
            if value is None:
                continue
            kind = kind[: -len(" | None")]
        if value is None:
            raise ValueError(f"{f.name} must be set, got null{example and '; write' + example[6:]}")
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {shown(value)}")
        elif kind in ("int", "float"):
            value = _number(f.name, value, kind == "int", example)
        elif kind == "str":
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string, got {shown(value)}{example and '; write' + example[6:]}")
        elif kind.startswith("list["):
            item = kind[len("list["):-1]
            if item == "str" and isinstance(value, str):  # "CHUM" or "CHUM,CHUP": names, never letters
                value = value.split(",")
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{f.name} must be a list, got {shown(value)}; write a list"
                                 f"{example or ' such as [a, b]'}")
            if item == "str":
                bad = [v for v in value if not isinstance(v, str)]
                if bad:
                    raise ValueError(f"{f.name} must be a list of names, got {list(value)!r}; write names such as "
                                     f"[CHUM, CHUP]")
                value = list(value)
            else:
                value = [_number(f"{f.name} entries", v, item == "int", example) for v in value]
        elif kind.startswith("dict[") and not isinstance(value, Mapping):
            raise ValueError(f"{f.name} must be a mapping of keyword arguments, got {shown(value)}; write e.g. "
                             f"{f.name}: {{feature_size: 16}}")
        setattr(obj, f.name, value)
