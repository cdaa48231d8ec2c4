"""PEMMA adapters (peft wiring): configuration, PET-pathway blocks, switching adapters, adapter artifacts and
merging.

The PEMMA models themselves (and their base class) live in :mod:`pemma.models`; parameter accounting in
:mod:`pemma.models.accounting`.
"""

from __future__ import annotations

from pemma.adapters.artifacts import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    format_load_report,
    load_adapter,
    load_base_state,
    read_adapter_config,
    save_adapter,
)
from pemma.adapters.config import AdapterConfig
from pemma.adapters.merging import merge_adapters
from pemma.adapters.state import AdaptedModel, adapter_active, adapters_disabled, unwrap_model

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdaptedModel",
    "AdapterConfig",
    "adapter_active",
    "adapters_disabled",
    "format_load_report",
    "load_adapter",
    "load_base_state",
    "merge_adapters",
    "read_adapter_config",
    "save_adapter",
    "unwrap_model",
]
