"""The preprocessing cache: in memory while it fits in the configured share of memory, on disk (MONAI
PersistentDataset) when it would not or when a cache folder is given."""

from __future__ import annotations

import numpy as np
import pytest
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, DeleteItemsd, Lambda

from pemma.config import DataConfig
from pemma.data.dataset import (
    CACHE_ENV,
    available_memory_bytes,
    cached_dataset,
    default_cache_dir,
    item_nbytes,
    preprocessing_key,
)

SIDE = 16


def _pre() -> Compose:
    return Compose([Lambda(lambda d: {**d, "image": np.full((2, SIDE, SIDE, SIDE), d["value"], np.float32),
                                      "idx": [np.arange(10, dtype=np.int64)]})])


def _items(n: int) -> list[dict]:
    return [{"case_id": f"c{i}", "value": float(i)} for i in range(n)]


def test_item_size_and_memory_reading():
    assert item_nbytes(_pre()(_items(1)[0])) == 2 * SIDE**3 * 4 + 80
    available = available_memory_bytes()
    assert available is None or available > 0


def test_memory_cache_while_it_fits(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert isinstance(cached_dataset(_items(3), _pre(), progress=False), CacheDataset)  # no share: as before
    ds = cached_dataset(_items(3), _pre(), progress=False, memory_share=1.0, cache_key="k")
    assert isinstance(ds, CacheDataset) and not isinstance(ds, PersistentDataset)
    assert not (tmp_path / "k").exists()


def test_memory_estimate_preprocesses_no_case_twice(tmp_path, monkeypatch):
    """The case preprocessed to estimate the cache's size is the one cached, not preprocessed again."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[str] = []
    pre = _pre()
    counting = Compose([Lambda(lambda d: calls.append(d["case_id"]) or d), *pre.transforms])
    ds = cached_dataset(_items(3), counting, progress=False, memory_share=1.0, cache_key="k")
    assert isinstance(ds, CacheDataset) and sorted(calls) == ["c0", "c1", "c2"]
    assert [float(ds[i]["image"][1, 2, 3, 4]) for i in range(3)] == [0.0, 1.0, 2.0]
    assert item_nbytes(ds[0]) == item_nbytes(pre(_items(1)[0]))
    assert len(calls) == 3  # reading the cache preprocesses nothing


def test_disk_cache_when_it_would_not_fit_and_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    key = preprocessing_key(modalities=["ct", "pet"], roi_size=[SIDE] * 3)
    assert key != preprocessing_key(modalities=["ct", "pet"], roi_size=[SIDE * 2] * 3)
    with caplog.at_level("INFO", logger="pemma.data.dataset"):
        ds = cached_dataset(_items(4), _pre(), progress=False, memory_share=0.0, cache_key=key)
    assert isinstance(ds, PersistentDataset)
    assert "caching them on disk in" in caplog.text and str(default_cache_dir(key)) in caplog.text
    assert [float(ds[i]["image"][1, 2, 3, 4]) for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
    files = sorted((tmp_path / key).iterdir())
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    again = cached_dataset(_items(4), _pre(), progress=False, memory_share=0.0, cache_key=key)
    assert float(again[3]["image"][0, 0, 0, 0]) == 3.0
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / key).iterdir())] == stamps  # read, not rewritten


def test_explicit_cache_dir_wins(tmp_path):
    ds = cached_dataset(_items(2), _pre(), cache_dir=str(tmp_path / "mine"), memory_share=1.0)
    assert isinstance(ds, PersistentDataset)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_memory_cache_share_is_checked(bad):
    with pytest.raises(ValueError, match="memory_cache_share"):
        DataConfig(memory_cache_share=bad)


def test_disk_cache_is_not_read_by_another_pipeline_or_config(tmp_path):
    """A cache folder given explicitly (``--cache-dir``) keeps one file per case and preprocessing: files written
    by another order of transforms (pemma's pipeline before it resampled the PET straight onto the crop) or under
    another preprocessing key are not read back; the same pipeline and key reuse them."""
    folder = tmp_path / "mine"

    def files() -> set[str]:
        return {f.name for f in folder.iterdir()}

    first = cached_dataset(_items(2), _pre(), cache_dir=str(folder), cache_key="a")
    assert [float(first[i]["image"][0, 0, 0, 0]) for i in range(2)] == [0.0, 1.0]  # a file per case read
    written = files()
    assert len(written) == 2
    cached_dataset(_items(2), _pre(), cache_dir=str(folder), cache_key="a")[1]
    assert files() == written  # same pipeline, same key: read back
    cached_dataset(_items(2), _pre(), cache_dir=str(folder), cache_key="b")[1]
    assert len(files() - written) == 1  # another key: the case preprocessed again
    reordered = Compose([*_pre().transforms, DeleteItemsd("idx")])
    assert "idx" not in cached_dataset(_items(2), reordered, cache_dir=str(folder), cache_key="a")[0]
    assert len(files()) == 4  # another pipeline: not the files of the first one


def test_a_file_replaced_under_its_name_is_preprocessed_again(tmp_path):
    """The disk cache keys a case by its files' size and modification time too, not by its paths alone (a CT
    overwritten with another case's was read back as the old one's preprocessed arrays)."""
    import os

    source = tmp_path / "c0__CT.txt"
    source.write_text("1.0")
    pre = Compose([Lambda(lambda d: {**d, "image": np.full((1, 4, 4, 4), float(open(d["ct"]).read()), np.float32)})])
    items = [{"case_id": "c0", "ct": str(source)}]
    folder = tmp_path / "cache"
    assert float(cached_dataset(items, pre, cache_dir=str(folder))[0]["image"].max()) == 1.0
    assert float(cached_dataset(items, pre, cache_dir=str(folder))[0]["image"].max()) == 1.0  # read back
    assert len(list(folder.iterdir())) == 1
    source.write_text("7.0")
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock could keep the mtime
    assert float(cached_dataset(items, pre, cache_dir=str(folder))[0]["image"].max()) == 7.0
