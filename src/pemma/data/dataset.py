"""Cached datasets and a step-seeded sampler, so that resumed and multi-process runs see the same crops."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose

from pemma.data.labels import LABEL_MAP_KEY
from pemma.data.layout import CaseRecord


def case_dicts(cases: Sequence[CaseRecord], modalities: Sequence[str], with_label: bool) -> list[dict[str, Any]]:
    """MONAI data dicts (``case_id``, one key per modality, ``label``) for the given cases."""
    items = []
    for case in cases:
        item: dict[str, Any] = {"case_id": case.case_id, "centre": case.centre}
        item.update({m: case.images[m] for m in modalities})
        if with_label:
            item["label"] = case.label
            if case.label_map is not None:
                item[LABEL_MAP_KEY] = case.label_map
        items.append(item)
    return items


def cached_dataset(items: list[dict[str, Any]], transform: Compose, cache_dir: str | None = None,
                   progress: bool = True) -> Dataset:
    """Preprocess each case once: in memory (:class:`CacheDataset`) or on disk (:class:`PersistentDataset`)."""
    if cache_dir:
        return PersistentDataset(items, transform=transform, cache_dir=cache_dir)
    return CacheDataset(items, transform=transform, num_workers=1, progress=progress)


def step_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the random crops of one item: a pure function of (run seed, epoch, position in epoch)."""
    return int(np.random.default_rng([seed, epoch, position]).integers(0, 2**31 - 1))


class EpochPlan:
    """Per-epoch order of training cases and the seed of each visit, split across processes.

    The plan is a pure function of the seed and epoch, so a run resumed at any step, or run on N
    processes, sees the same sequence of crops (each process takes every N-th visit).
    """

    def __init__(self, n_cases: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n_cases, self.batch_size, self.seed = n_cases, batch_size, seed
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        per_step = self.batch_size * self.world_size
        return max(1, -(-self.n_cases // per_step))

    def visits(self, epoch: int) -> list[tuple[int, int]]:
        """(case index, crop seed) for every visit of this process in ``epoch`` (padded by wrapping)."""
        order = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n_cases).tolist()
        total = self.steps_per_epoch * self.batch_size * self.world_size
        order = (order * (total // max(1, self.n_cases) + 1))[:total]
        mine = list(range(self.rank, total, self.world_size))
        return [(order[p], step_seed(self.seed, epoch, p)) for p in mine]

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[list[tuple[int, int]]]:
        visits = self.visits(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield visits[step * self.batch_size:(step + 1) * self.batch_size]


class SeededCrops(torch.utils.data.Dataset):
    """Index ``(case index, seed)`` -> the random crops of that cached case drawn with that seed."""

    def __init__(self, cached: Dataset, augmentation: Compose) -> None:
        self.cached, self.augmentation = cached, augmentation

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, key: tuple[int, int]) -> list[dict[str, Any]]:
        index, seed = key
        self.augmentation.set_random_state(seed=seed)
        out = self.augmentation(self.cached[index])
        return out if isinstance(out, list) else [out]
