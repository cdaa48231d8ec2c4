"""Reading strategy files: YAML on disk or shipped with pemma -> a validated :class:`~pemma.protocol.strategy.Strategy`.

The format and its rules are in :mod:`pemma.protocol.strategy` (module docstring); every violation raises
:class:`~pemma.protocol.phases.StrategyError` with one line naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pemma.protocol.phases import (
    OPTIONAL_PHASE_KEYS,
    PHASE_KEYS,
    SPLIT_KEYS,
    TOP_KEYS,
    Phase,
    PrognosisSpec,
    SplitSpec,
    StrategyError,
    check_keys,
)
from pemma.protocol.strategy import Strategy

__all__ = ["load_strategy", "parse_strategy", "shipped_strategies"]


def parse_strategy(raw: Any, source: str = "<strategy>", dataset_centres: Iterable[str] | None = None) -> Strategy:
    """Validate already-loaded YAML data; errors are prefixed with ``source``.

    Example:
        >>> parse_strategy({"name": "x", "phases": [{"name": "p", "operation": "pretrain",
        ...                 "centres": ["CHUM"], "modalities": ["ct"]}]}).variant_names
        ('default',)
    """
    try:
        check_keys(raw, TOP_KEYS, "top level")
        if not isinstance(raw.get("phases") or [], list):
            raise StrategyError("phases must be a list of phases")
        phases = []
        for i, entry in enumerate(raw.get("phases") or []):
            label = entry.get("name", f"#{i + 1}") if isinstance(entry, Mapping) else f"#{i + 1}"
            check_keys(entry, PHASE_KEYS + OPTIONAL_PHASE_KEYS, f"phase {label!r}")
            missing = [k for k in PHASE_KEYS if k not in entry]
            if missing:
                raise StrategyError(f"phase {label!r}: missing key {missing[0]!r}")
            phases.append(Phase(entry["name"], entry["operation"], entry["centres"], entry["modalities"],
                                entry.get("epochs")))
        for key in ("split", "variants"):
            if raw.get(key) is not None and not isinstance(raw[key], Mapping):
                raise StrategyError(f"{key} must be a mapping, got {raw[key]!r}")
        check_keys(raw.get("split") or {}, SPLIT_KEYS, "split")
        split = SplitSpec(**(raw.get("split") or {}))
        prognosis = PrognosisSpec.parse(raw.get("prognosis"))
    except StrategyError as exc:
        raise StrategyError(f"{source}: {exc}") from None
    kwargs = {k: raw[k] for k in ("backbones", "preset", "amp", "workers", "methods", "routes", "recipes")
              if raw.get(k) is not None}
    return Strategy(name=raw.get("name", ""), phases=tuple(phases), max_steps=raw.get("max_steps"), split=split,
                    variants=raw.get("variants") or {}, source=source, prognosis=prognosis,
                    dataset_centres=tuple(sorted(set(dataset_centres))) if dataset_centres is not None else None,
                    **kwargs)


def shipped_strategies() -> list[str]:
    """Names of the strategies shipped with pemma (``hecktor2022``, ``demo``)."""
    files = resources.files("pemma") / "strategies"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_strategy(path: str | Path, dataset_centres: Iterable[str] | None = None) -> Strategy:
    """Read and validate a strategy YAML file, or a shipped strategy by name (see :func:`shipped_strategies`).

    Args:
        path: the YAML file, or a shipped strategy's name such as ``"hecktor2022"``.
        dataset_centres: centres present in the dataset, if known (see :class:`Strategy`).

    Raises:
        StrategyError: one line, ``"<path>: phase 'adapt_mda' (#2): unknown centre 'MDX' (known: ...)"``.

    Example:
        >>> load_strategy("strategies/hecktor2022.yaml").variant_names
        ('pet_only', 'ct_only', 'ct_pet')
    """
    path = Path(path)
    if not path.is_file() and str(path) in shipped_strategies():
        path = Path(str(resources.files("pemma") / "strategies" / f"{path}.yaml"))
    if not path.is_file():
        raise StrategyError(f"{path}: strategy file not found (shipped strategies: {', '.join(shipped_strategies())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StrategyError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return parse_strategy(raw if raw is not None else {}, str(path), dataset_centres)
