"""Every claim of the paper (arXiv 2504.13645), measured on a protocol run with its uncertainty.

One module per kind of claim, each returning claim records (:func:`pemma.protocol.claims.common.claim`):

* :mod:`~pemma.protocol.claims.segmentation`: ``ctpet_beats_ct``, ``matches_early_fusion``, ``parameter_budget``;
* :mod:`~pemma.protocol.claims.forgetting`: ``less_forgetting`` (every input set, each route);
* :mod:`~pemma.protocol.claims.pet_gain`: ``pet_gain_single_modality``;
* :mod:`~pemma.protocol.claims.ranking`: ``backbone_ranking``;
* :mod:`~pemma.protocol.claims.cindex`: ``cindex_gain_pet``, ``cindex_gain_pet_ehr``.

:mod:`pemma.protocol.findings` assembles them into ``findings.json`` and the report.
"""

from __future__ import annotations

from pemma.protocol.claims.common import CLAIM_IDS, PAPER, PAPER_VALUE

__all__ = ["CLAIM_IDS", "PAPER", "PAPER_VALUE"]
