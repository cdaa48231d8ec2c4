"""Cached datasets and a step-seeded sampler, so that resumed and multi-process runs see the same crops."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose, RandomizableTrait, Transform
from monai.transforms.utils import convert_to_contiguous

from pemma.data.labels import LABEL_MAP_KEY
from pemma.data.layout import CaseRecord
from pemma.errors import PemmaError
from pemma.io_utils import CACHE_ENV, default_cache_dir, file_stamp  # noqa: F401 - CACHE_ENV: re-exported (tests, callers)

log = logging.getLogger(__name__)


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
                   progress: bool = True, memory_share: float | None = None, cache_key: str | None = None) -> Dataset:
    """Preprocess each case once: in memory (:class:`CacheDataset`) or on disk (:class:`PersistentDataset`).

    Args:
        items: MONAI data dicts (:func:`case_dicts`).
        transform: the deterministic preprocessing.
        cache_dir: cache on disk in this folder. Default None: in memory, unless ``memory_share`` says otherwise.
        progress: show a progress bar while caching in memory.
        memory_share: without ``cache_dir``, the largest share of the available memory (``MemAvailable``) the
            in-memory cache may take, estimated as the first case's preprocessed size times the number of cases
            (that case is then cached as preprocessed for the estimate, not preprocessed twice);
            when it would take more, the cases are cached on disk in :func:`default_cache_dir` ``(cache_key)``
            (the decision is logged). None: always in memory.
        cache_key: names the preprocessing (see :func:`preprocessing_key`), so that an automatic disk cache is
            reused by the runs and methods that preprocess alike and never by one that does not.
    """
    first = None
    if not cache_dir and memory_share is not None and items:
        first = transform(items[0])
        need = item_nbytes(first) * len(items)
        available = available_memory_bytes()
        if available is not None and need > memory_share * available:
            first = None  # the disk cache preprocesses its cases when first read
            cache_dir = str(default_cache_dir(cache_key))
            log.info(f"an in-memory cache of the {len(items)} preprocessed cases would take ~{need / 2**30:.2f} GiB, "
                     f"more than {memory_share:.0%} of the {available / 2**30:.1f} GiB available "
                     f"(data.memory_cache_share): caching them on disk in {cache_dir} (MONAI PersistentDataset; "
                     "--cache-dir chooses the folder)")
    if cache_dir:
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise PemmaError(f"{cache_dir}: the cache folder (--cache-dir) is a file; give a folder")
        return PersistentDataset(items, transform=transform, cache_dir=cache_dir, hash_func=_item_hash,
                                 hash_transform=partial(_transform_hash, cache_key=cache_key))
    if first is not None and _cached_part(transform) is None:  # the whole transform is what is cached
        return _PrimedCacheDataset(items, transform, first, progress)
    return CacheDataset(items, transform=transform, num_workers=1, progress=progress)


def _item_hash(item: Mapping[str, Any]) -> bytes:
    """The part of a disk-cache file's name that names the case (MONAI's ``hash_func``): its data dict and the size
    and modification time of each file it names. MONAI's default hashes the dict alone, i.e. the paths, so a CT or
    label replaced under the same name was read back as its old preprocessed self (a replaced file gets a new
    ``mtime_ns``; the registration cache keys its inputs the same way)."""
    stamps = {key: file_stamp(value) for key, value in item.items()
              if isinstance(value, (str, os.PathLike)) and os.path.isfile(value)}
    return json_hashing({"item": dict(item), "files": stamps})


def _transform_hash(transforms: Sequence[Transform], cache_key: str | None) -> bytes:
    """The part of a disk-cache file's name that names the preprocessing (MONAI's ``hash_transform``): the cached
    transforms in order and ``cache_key``, so a folder written by another pipeline or config is not read back."""
    return json_hashing({"transforms": [type(t).__name__ for t in transforms], "key": cache_key})


def _cached_part(transform: Compose) -> int | None:
    """Index of the first transform a :class:`CacheDataset` does not cache (None: it caches all of them)."""
    return transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))


class _PrimedCacheDataset(CacheDataset):
    """An in-memory cache whose first case was preprocessed already (to estimate the cache's size): that result is
    cached as it is instead of preprocessing the case again.

    Args:
        items: MONAI data dicts. transform: the deterministic preprocessing (cached whole).
        first: ``transform(items[0])``. progress: show a progress bar while caching.
    """

    def __init__(self, items: list[dict[str, Any]], transform: Compose, first: Any, progress: bool) -> None:
        self._first = first
        super().__init__(items, transform=transform, num_workers=1, progress=progress)

    def _load_cache_item(self, idx: int) -> Any:
        if idx == 0 and self._first is not None:
            item, self._first = self._first, None
            return convert_to_contiguous(item, memory_format=torch.contiguous_format) if self.as_contiguous else item
        return super()._load_cache_item(idx)


def item_nbytes(item: Any) -> int:
    """Bytes of the arrays / tensors in a preprocessed item (dicts and lists searched)."""
    if isinstance(item, dict):
        return sum(item_nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(item_nbytes(v) for v in item)
    return int(getattr(item, "nbytes", 0)) if isinstance(item, (np.ndarray, torch.Tensor)) else 0


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is none: not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def preprocessing_key(**parts: Any) -> str:
    """A short hash of what defines a preprocessing (config values, roi, modalities), for :func:`default_cache_dir`."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
