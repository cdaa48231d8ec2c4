"""Peak memory while building the training dataset, with 50 vs 500 synthetic cases (issue 13, part 4).

Writes ``max(--cases)`` small synthetic CT/PET/label cases (NIfTI, CT ``--size``³ voxels at 1 mm, PET half as
many voxels at 2 mm, a lesion of each class) into a temporary folder, then, for each number of cases and each
cache, runs a **fresh process** that builds the training dataset exactly as ``pemma train`` does
(:func:`pemma.data.transforms.preprocessing` with the paper preset's 1 mm spacing, label indices for balanced
crops, :func:`pemma.data.dataset.cached_dataset`), reads every item once (a first epoch: the disk cache fills
lazily) and reports its peak RSS (``ru_maxrss``). Caches: ``memory`` (MONAI ``CacheDataset``, the default) and
``disk`` (MONAI ``PersistentDataset`` in a ``cache_dir``). The ratio peak(500) / peak(50) per cache is the figure
of the issue's target (<= 1.2).

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_dataset_memory.py                      # 50 and 500 cases, ~5 min on 1 core
    .venv/bin/python benchmarks/bench_dataset_memory.py --cases 20 100 --size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_cases(folder: Path, n: int, size: int) -> list[dict[str, str]]:
    """``n`` synthetic cases (CT, PET, label NIfTI) under ``folder``; their MONAI item dicts."""
    rng = np.random.default_rng(0)
    grid = np.indices((size,) * 3).astype(np.float32)
    centre = (size - 1) / 2
    body = ((grid[0] - centre) ** 2 + (grid[1] - centre) ** 2) <= (0.45 * size) ** 2
    ct_affine, pet_affine = np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0])
    items = []
    for i in range(n):
        ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, body.shape)
        label = np.zeros(body.shape, np.uint8)
        for value, offset in ((1, -0.15), (2, 0.15)):
            c = centre + offset * size + rng.uniform(-2, 2, 3)
            label[((grid - c[:, None, None, None]) ** 2).sum(0) <= (0.08 * size) ** 2] = value
        pet = (label[::2, ::2, ::2] > 0) * 8.0 + rng.uniform(0, 1, (size // 2,) * 3)
        case = f"CHUM-{i:03d}"
        paths = {}
        for key, array, affine in (("ct", ct.astype(np.float32), ct_affine),
                                   ("pet", pet.astype(np.float32), pet_affine), ("label", label, ct_affine)):
            path = folder / f"{case}__{key}.nii.gz"
            nib.save(nib.Nifti1Image(array, affine), str(path))
            paths[key] = str(path)
        items.append({"case_id": case, "centre": "CHUM", **paths})
    return items


def child(items_json: str, n: int, cache: str, cache_dir: str, size: int) -> None:
    """One measurement (runs in its own process): build the dataset of the first ``n`` cases, read it once."""
    import torch

    from pemma.config import build_config
    from pemma.data.dataset import cached_dataset
    from pemma.data.transforms import preprocessing

    torch.set_num_threads(1)
    items = json.loads(Path(items_json).read_text())[:n]
    cfg = build_config("paper", overrides={"model": {"roi_size": [size] * 3}})
    pre = preprocessing(["ct", "pet"], cfg.preprocess, cfg.model.roi_size, with_label=True, label_indices=True)
    t0 = time.perf_counter()
    ds = cached_dataset(items, pre, cache_dir if cache == "disk" else None, progress=False)
    nbytes = 0
    for i in range(len(ds)):
        item = ds[i]
        nbytes += sum(v.nbytes for v in item.values() if hasattr(v, "nbytes"))
        nbytes += sum(a.nbytes for v in item.values() if isinstance(v, list) for a in v if hasattr(a, "nbytes"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cases": n, "cache": cache, "peak_rss_mb": peak_mb, "seconds": time.perf_counter() - t0,
                      "item_mb": nbytes / n / 2**20, "dataset": type(ds).__name__}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, nargs="+", default=[50, 500])
    p.add_argument("--caches", nargs="+", default=["memory", "disk"], choices=["memory", "disk"])
    p.add_argument("--size", type=int, default=48, help="CT side in voxels (1 mm); also the roi (no padding)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        items_json, n, cache, cache_dir, size = args.child
        child(items_json, int(n), cache, cache_dir, int(size))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="pemma-dsmem-") as tmp:
        t0 = time.perf_counter()
        items = write_cases(Path(tmp), max(args.cases), args.size)
        items_json = Path(tmp) / "items.json"
        items_json.write_text(json.dumps(items))
        print(f"wrote {len(items)} cases ({args.size}^3 CT at 1 mm) in {time.perf_counter() - t0:.0f} s", flush=True)
        for cache in args.caches:
            for n in args.cases:
                cache_dir = Path(tmp) / f"cache-{n}"  # a fresh disk cache per measurement (first epoch fills it)
                out = subprocess.run([sys.executable, __file__, "--child", str(items_json), str(n), cache,
                                      str(cache_dir), str(args.size)], capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print()
    head = " | ".join(f"peak RSS {n} cases MB" for n in args.cases)
    print(f"| cache | {head} | ratio | s (largest) | MB/case |")
    print("|---|" + "---|" * (len(args.cases) + 3))
    for cache in args.caches:
        peaks = {r["cases"]: r for r in rows if r["cache"] == cache}
        lo, hi = peaks[min(args.cases)], peaks[max(args.cases)]
        print(f"| {cache} ({hi['dataset']}) | " + " | ".join(f"{peaks[n]['peak_rss_mb']:.0f}" for n in args.cases)
              + f" | {hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f} | {hi['seconds']:.0f} | {hi['item_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
