"""Seeded per-centre train / validation / test split of case IDs for the protocol runner."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from pemma.protocol.phases import StrategyError

if TYPE_CHECKING:
    from pemma.protocol.phases import SplitSpec


def split_case_ids(case_ids_by_centre: Mapping[str, Iterable[str]],
                   split: SplitSpec) -> dict[str, dict[str, list[str]]]:
    """Seeded train / val / test split within each centre, independent of the input order.

    Per centre of ``n`` cases: ``n_test = round(test_fraction * n)`` test cases are held out first (at least
    one when ``test_fraction > 0`` and ``n >= 2``), then ``n_val = round(val_fraction * rest)`` of the rest
    (at least one when ``val_fraction > 0`` and ``rest >= 2``); at least one case always trains. The
    permutation is seeded by ``split.seed`` and the centre name, so adding a centre changes no other.

    Args:
        case_ids_by_centre: ``{centre: case IDs}``.
        split: fractions and seed (the strategy's ``split``).

    Raises:
        StrategyError: the fractions would leave a centre (of two cases or more) without a training case.

    Returns:
        ``{centre: {"train": [...], "val": [...], "test": [...]}}``, each list sorted.

    Example:
        >>> from pemma.protocol.phases import SplitSpec
        >>> ids = {"MDA": [f"MDA-{i:03d}" for i in range(10)]}
        >>> split_case_ids(ids, SplitSpec(val_fraction=0.2, test_fraction=0.2, seed=0))["MDA"]["test"]
        ['MDA-003', 'MDA-004']
    """
    out: dict[str, dict[str, list[str]]] = {}
    for centre in sorted(case_ids_by_centre):
        ids = sorted(set(case_ids_by_centre[centre]))
        n = len(ids)
        order = [ids[i] for i in np.random.default_rng([split.seed, zlib.crc32(centre.encode())]).permutation(n)]
        wanted_test = max(int(round(split.test_fraction * n)), int(split.test_fraction > 0 and n >= 2))
        n_test = min(wanted_test, max(n - 1, 0))
        rest = n - n_test
        wanted_val = max(int(round(split.val_fraction * rest)), int(split.val_fraction > 0 and rest >= 2))
        n_val = min(wanted_val, max(rest - 1, 0))
        if n >= 2 and (wanted_test >= n or wanted_val >= rest):
            what = (f"test_fraction {split.test_fraction} holds out {wanted_test}" if wanted_test >= n else
                    f"test_fraction {split.test_fraction} and val_fraction {split.val_fraction} (a share of the "
                    f"rest) hold out {n_test} + {wanted_val}")
            raise StrategyError(f"split: {what} of the {n} cases of centre {centre}, leaving no training case; "
                                f"lower the fractions")
        out[centre] = {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
                       "test": sorted(order[:n_test])}
    return out
