"""Networks: the backbone registry, the PEMMA models (their base class in :mod:`pemma.models.pemma_base`), late
fusion, parameter accounting, and the loaded-model wrapper.

Importing this package registers every backbone (each PEMMA model module registers its own).
"""

from __future__ import annotations

from pemma.models import pemma_swin, pemma_unetr  # noqa: F401  (registration)
