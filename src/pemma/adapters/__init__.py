"""PEMMA adapters (peft wiring): configuration, PET-pathway blocks, switching adapters, adapter artifacts and
merging.

The PEMMA models themselves (and their base class) live in :mod:`pemma.models`; parameter accounting in
:mod:`pemma.models.accounting`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule; loaded on first use (PEP 562) so that ``pemma.adapters.config`` imports no torch
_EXPORTS = {
    "CONFIG_NAME": "artifacts", "WEIGHTS_NAME": "artifacts", "format_load_report": "artifacts",
    "load_adapter": "artifacts", "load_base_state": "artifacts", "read_adapter_config": "artifacts",
    "save_adapter": "artifacts", "AdapterConfig": "config", "merge_adapters": "merging", "AdaptedModel": "state",
    "adapter_active": "state", "adapters_disabled": "state", "unwrap_model": "state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pemma.adapters.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pemma.adapters' has no attribute {name!r}")
