"""PEMMA adapters: configuration, PET-pathway blocks, adapter artifacts, merging and parameter accounting.

The segmentation models live in :mod:`pemma.models.pemma_unetr` and :mod:`pemma.models.pemma_swin`.
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
from pemma.adapters.base import PemmaAdaptedModel, adapters_disabled, unwrap_model
from pemma.adapters.config import AdapterConfig, check_modalities
from pemma.adapters.export import (
    count_parameters,
    early_fusion_parameter_count,
    merge_adapters,
    parameter_report,
)
from pemma.io_utils import sha256_file  # re-exported: adapter files record the base's SHA-256

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "PemmaAdaptedModel",
    "adapters_disabled",
    "check_modalities",
    "count_parameters",
    "early_fusion_parameter_count",
    "format_load_report",
    "load_adapter",
    "load_base_state",
    "merge_adapters",
    "parameter_report",
    "read_adapter_config",
    "save_adapter",
    "sha256_file",
    "unwrap_model",
]
