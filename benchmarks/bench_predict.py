"""Benchmark ``pemma predict`` on generated clinical-size CT + PET cases: where the wall time and memory go.

For each CT size (default 512 x 512 x {25, 50, 100} at 0.98 x 0.98 x 1 mm, with a 200^3 PET at 4 mm covering it; HECKTOR
CTs are about 512 x 512 x 200: ``--slices 200``), in one process:

1. **Stages** of :func:`pemma.inference.predict.predict_case`, each timed alone and in the same order:
   *read* (``LoadCased``: the CT and PET files), *preprocess* (every other transform of
   :func:`pemma.data.transforms.preprocessing`, listed one by one in the JSON: the CT to RAS, spacing and the
   head-and-neck crop, the PET once onto that crop, scaling, padding) next to *preprocess_former* (the pipeline
   before 2026-12-03, :func:`former_preprocessing`: the PET onto the whole native CT grid, then both to the
   spacing and the crop; not part of the total; the PET channels of both are compared), *network*
   (:func:`pemma.inference.sliding.sliding_window_probs`),
   *resample* (:func:`pemma.inference.resample_back.labels_on_reference`: probabilities back onto the CT grid and
   argmax, only in the box the crop reaches) next to *resample_full* (the former way: every class over the whole
   CT in float32, then argmax; not part of the total) and *write* (``save_nifti``, gzip). Both resample ways are
   checked to give the same labels (differing voxels are printed; should be 0).
2. **End to end**: :func:`pemma.inference.predict.predict_cases` on the case as it is (new) and with the former
   preprocessing and full-volume resampling patched in (old), alternating; the stage sum should be close to the
   new total.
3. **Peak memory** of every stage and of the end-to-end call: growth of the process's peak RSS above what was
   resident at the start (``VmHWM`` after a reset, see ``bench_backbones.py``); on CUDA also the network's
   ``torch.cuda.max_memory_allocated``. "peak / network" is the end-to-end growth over the network stage's.

The network is a randomly initialised early-fusion UNETR (2 channels) of the chosen preset; with the default
``tiny`` preset on the CPU the network's share is small on purpose (it shows the overhead around it); at the
``paper`` preset (1 mm spacing, 96^3 windows, ViT-B) the network dominates, on a GPU as well as a CPU.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_predict.py --threads 1                       # ~3-5 min on a busy 2-core box
    .venv/bin/python benchmarks/bench_predict.py --slices 50 100 200 --json predict.json
    .venv/bin/python benchmarks/bench_predict.py --device cuda --amp --preset paper --slices 100 200 300
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    Orientationd,
    ResampleToMatchd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from pemma.config import PreprocessConfig, RunConfig, build_config
from pemma.data.layout import CaseRecord
from pemma.data.transforms import CheckLabelOverlapd, CheckOverlapd, HeadNeckCropd, LoadCased, preprocessing
from pemma.inference import predict as predict_mod
from pemma.inference.predict import WindowSettings, predict_cases
from pemma.inference.resample_back import labels_on_reference, reference_box
from pemma.inference.sliding import sliding_window_probs
from pemma.io_utils import load_nifti, save_nifti
from pemma.models.loaded import LoadedModel
from pemma.models.registry import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbones import MemProbe, MemSample, _load  # noqa: E402  (benchmarks/ is not a package)

STAGES = ("read", "preprocess", "network", "resample", "write")
MODALITIES = ["ct", "pet"]


def make_case(folder: Path, slices: int, inplane: int, ct_mm: tuple[float, float], pet_shape: list[int],
              pet_mm: float, seed: int) -> CaseRecord:
    """Write a synthetic head-and-neck-like case: int16 CT (body cylinder with noise, air outside, bright 'bone'),
    float32 PET (SUV ~1 in the body, a hot 'tumour'); the PET grid is centred on the CT and covers it."""
    rng = np.random.default_rng(seed)
    spacing = np.array([ct_mm[0], ct_mm[0], ct_mm[1]])
    ct_affine = np.diag([*spacing, 1.0])
    ct_affine[:3, 3] = -spacing * (np.array([inplane, inplane, slices]) - 1) / 2
    x, y = np.meshgrid(*[(np.arange(inplane) - (inplane - 1) / 2) * ct_mm[0]] * 2, indexing="ij")
    body = (x / 110.0) ** 2 + (y / 90.0) ** 2 < 1
    bone = ((x / 40.0) ** 2 + ((y + 40) / 25.0) ** 2 < 1) & body
    slab = np.where(body, 40, -1000).astype(np.int16) + np.where(bone, 700, 0).astype(np.int16)
    ct = np.repeat(slab[:, :, None], slices, axis=2)
    ct += rng.normal(0, 15, size=ct.shape).astype(np.int16)
    pet_affine = np.diag([pet_mm, pet_mm, pet_mm, 1.0])
    pet_affine[:3, 3] = -pet_mm * (np.asarray(pet_shape) - 1) / 2
    ijk = np.indices(pet_shape, dtype=np.float32)
    world = [pet_affine[a, a] * ijk[a] + pet_affine[a, 3] for a in range(3)]
    pet = 1.0 + 8.0 * np.exp(-((world[0] - 20) ** 2 + (world[1] + 10) ** 2 + world[2] ** 2) / (2 * 12.0 ** 2))
    pet = (pet * (1 + 0.1 * rng.standard_normal(pet_shape))).astype(np.float32)
    case_id = f"BENCH-{slices:03d}"
    images = {"ct": folder / f"{case_id}__CT.nii.gz", "pet": folder / f"{case_id}__PT.nii.gz"}
    save_nifti(ct, ct_affine, images["ct"], dtype=np.int16)
    save_nifti(pet, pet_affine, images["pet"], dtype=np.float32)
    return CaseRecord(case_id=case_id, centre="BENCH", images={k: str(v) for k, v in images.items()})


def former_preprocessing(modalities: list[str], cfg: PreprocessConfig, roi_size: list[int],
                         with_label: bool = False) -> Compose:
    """pemma's CT + PET preprocessing before 2026-12-03 (the baseline): the PET onto the whole native CT grid first,
    then CT and PET together to RAS, the target spacing (a second interpolation of the PET) and the crop."""
    if list(modalities) != MODALITIES or with_label:
        raise ValueError("the former pipeline is rebuilt here for CT + PET without label only")
    return Compose([
        LoadCased(MODALITIES, allow_missing_keys=False),
        CheckOverlapd("pet"), CheckLabelOverlapd(),
        ResampleToMatchd(["pet"], key_dst="ct", mode="bilinear", padding_mode="zeros", dtype=np.float32),
        Orientationd(MODALITIES, axcodes="RAS", labels=None),
        Spacingd(MODALITIES, pixdim=cfg.target_spacing, mode="bilinear", padding_mode="border", dtype=np.float32),
        HeadNeckCropd(MODALITIES, cfg.crop_mm, cfg.body_threshold_hu),
        ScaleIntensityRanged("ct", *cfg.ct_window, 0.0, 1.0, clip=True),
        ScaleIntensityRanged("pet", *cfg.pet_suv_range, 0.0, 1.0, clip=True),
        SpatialPadd(MODALITIES, spatial_size=roi_size, mode="constant"),
        ConcatItemsd(MODALITIES, name="image", dim=0),
        DeleteItemsd(MODALITIES),
    ])


def tiny_model(preset: str, device: torch.device, seed: int) -> LoadedModel:
    """A randomly initialised early-fusion UNETR (CT+PET channels) of ``preset``."""
    cfg: RunConfig = build_config(preset, overrides={"model": {"backbone": "unetr"}})
    torch.manual_seed(seed)
    net = build_backbone(cfg.model, in_channels=2).to(device).eval()
    return LoadedModel(net=net, config=cfg, meta={"modalities": MODALITIES}, input_sets=[MODALITIES])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_stages(model: LoadedModel, case: CaseRecord, device: torch.device, amp: bool, probe: MemProbe,
                 out_dir: Path) -> dict[str, Any]:
    """Run predict_case's stages one by one; times (s), peak RSS growth (MB), per-transform times."""
    cfg = model.config
    roi = cfg.model.roi_size
    times: dict[str, float] = {}
    peaks: dict[str, list[MemSample]] = {k: [] for k in (*STAGES, "resample_full", "preprocess_former")}
    # and "preprocess_former": the former pipeline (former_preprocessing) on the same loaded case
    transforms = preprocessing(MODALITIES, cfg.preprocess, roi, with_label=False).transforms
    item: dict[str, Any] = {"case_id": case.case_id, **{m: case.images[m] for m in MODALITIES}}
    per_transform: dict[str, float] = {}
    with probe.measure(peaks["read"]):
        t0 = time.perf_counter()
        ref_img = load_nifti(case.images["ct"], what="CT", voxels=False)  # as predict_case: the header only
        item = transforms[0](item)
        times["read"] = time.perf_counter() - t0
    with probe.measure(peaks["preprocess"]):
        t0 = time.perf_counter()
        for transform in transforms[1:]:
            t1 = time.perf_counter()
            item = transform(item)
            name = type(transform).__name__
            per_transform[name] = per_transform.get(name, 0.0) + time.perf_counter() - t1
        image = item["image"]
        times["preprocess"] = time.perf_counter() - t0
    former = Compose(former_preprocessing(MODALITIES, cfg.preprocess, roi).transforms[1:])
    loaded = transforms[0]({"case_id": case.case_id, **{m: case.images[m] for m in MODALITIES}})
    with probe.measure(peaks["preprocess_former"]):
        t0 = time.perf_counter()
        former_image = former(loaded)["image"]
        times["preprocess_former"] = time.perf_counter() - t0
    del loaded
    same_grid = former_image.shape == image.shape and np.allclose(np.asarray(former_image.affine),
                                                                  np.asarray(image.affine))
    differences = {"same_grid": bool(same_grid)}
    if same_grid:
        for channel, name in enumerate(MODALITIES):  # scaled [0, 1] values
            diff = (former_image[channel] - image[channel]).abs()
            differences[f"{name}_max_abs"] = float(diff.max())
            differences[f"{name}_mean_abs"] = float(diff.mean())
    del former_image
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with probe.measure(peaks["network"]):
        _sync(device)
        t0 = time.perf_counter()
        probs = sliding_window_probs(model.predictor(MODALITIES), image.as_tensor(), roi, cfg.train.sw_batch_size,
                                     cfg.train.overlap, device=device, amp=amp)
        _sync(device)
        times["network"] = time.perf_counter() - t0
    if device.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    probs = type(image)(probs, affine=image.affine)
    labels = {}
    for stage, crop in (("resample", True), ("resample_full", False)):
        with probe.measure(peaks[stage]):
            t0 = time.perf_counter()
            labels[stage] = labels_on_reference(probs, ref_img.affine, ref_img.shape[:3], crop_box=crop)
            times[stage] = time.perf_counter() - t0
    with probe.measure(peaks["write"]):
        t0 = time.perf_counter()
        save_nifti(labels["resample"], ref_img.affine, out_dir / f"{case.case_id}.nii.gz", header=ref_img.header,
                   dtype=np.uint8)
        times["write"] = time.perf_counter() - t0
    start, end = reference_box(np.asarray(probs.affine), probs.shape[1:], ref_img.affine, ref_img.shape[:3])
    return {"times_s": times, "peak_growth_mb": {k: v[0].growth_mb for k, v in peaks.items()},
            "preprocess_by_transform_s": per_transform, "network_grid": list(image.shape[1:]),
            "former_preprocessing_difference": differences,
            "box_fraction": float(np.prod(np.subtract(end, start)) / np.prod(ref_img.shape[:3])),
            "labels_differ_voxels": int((labels["resample"] != labels["resample_full"]).sum()),
            "foreground_voxels": int((labels["resample"] > 0).sum()), "network_cuda_peak_mb": cuda_peak}


def bench_end_to_end(model: LoadedModel, case: CaseRecord, device: torch.device, amp: bool, probe: MemProbe,
                     out_dir: Path, repeats: int) -> dict[str, Any]:
    """predict_cases as it is (new) and as it was before issue 13 (old: the former preprocessing and the
    full-volume resampling back), alternating (ABBA)."""
    times: dict[str, list[float]] = {"new": [], "old": []}
    peaks: dict[str, list[MemSample]] = {"new": [], "old": []}
    full = partial(labels_on_reference, crop_box=False)
    for rep in range(repeats):
        for way in (("old", "new") if rep % 2 == 0 else ("new", "old")):
            predict_mod.labels_on_reference = full if way == "old" else labels_on_reference
            predict_mod.preprocessing = former_preprocessing if way == "old" else preprocessing
            try:
                with probe.measure(peaks[way]):
                    t0 = time.perf_counter()
                    predict_cases(model, [case], MODALITIES, out_dir, device, WindowSettings(amp=amp), progress=False)
                    times[way].append(time.perf_counter() - t0)
            finally:
                predict_mod.labels_on_reference, predict_mod.preprocessing = labels_on_reference, preprocessing
    return {"times_s": times, "peak_growth_mb": {k: max(s.growth_mb for s in v) for k, v in peaks.items()}}


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = ("| CT voxels | network grid | read | preprocess | network | resample | write | not network | box / CT "
            "| resample full / box | preprocess former / now | PET diff max (mean) "
            "| e2e new s | e2e old / new | peak MB new (old) | peak / network | label diff |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        t, e = r["stages"]["times_s"], r["end_to_end"]
        total = sum(t[s] for s in STAGES)
        new, old = statistics.median(e["times_s"]["new"]), statistics.median(e["times_s"]["old"])
        net_peak = max(r["stages"]["peak_growth_mb"]["network"], 1.0)
        cells = [f"{r['ct_shape'][0]}x{r['ct_shape'][1]}x{r['ct_shape'][2]} ({r['ct_mvox']:.1f} M)",
                 "x".join(map(str, r["stages"]["network_grid"]))]
        cells += [f"{t[s]:.2f} s ({100 * t[s] / total:.0f} %)" for s in STAGES]
        cells += [f"{100 * (total - t['network']) / total:.0f} %", f"{100 * r['stages']['box_fraction']:.0f} %",
                  f"{t['resample_full'] / t['resample']:.1f}x", f"{t['preprocess_former'] / t['preprocess']:.2f}x",
                  _pet_difference(r["stages"]["former_preprocessing_difference"]),
                  f"{new:.2f}", f"{old / new:.2f}",
                  f"{e['peak_growth_mb']['new']:.0f} ({e['peak_growth_mb']['old']:.0f})",
                  f"{e['peak_growth_mb']['new'] / net_peak:.1f}", str(r["stages"]["labels_differ_voxels"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pet_difference(diff: dict[str, Any]) -> str:
    return f"{diff['pet_max_abs']:.3f} ({diff['pet_mean_abs']:.4f})" if diff["same_grid"] else "other grid"


def linearity(rows: list[dict[str, Any]]) -> str:
    """Seconds per CT Mvoxel of each stage and end to end, per size (flat = linear in voxels)."""
    parts = []
    for stage in (*STAGES, "resample_full"):
        per = [r["stages"]["times_s"][stage] / r["ct_mvox"] for r in rows]
        parts.append(f"{stage} " + " / ".join(f"{v:.3f}" for v in per))
    per = [statistics.median(r["end_to_end"]["times_s"]["new"]) / r["ct_mvox"] for r in rows]
    parts.append("end-to-end " + " / ".join(f"{v:.3f}" for v in per))
    return "s per CT Mvoxel by size: " + "; ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, nargs="+", default=[25, 50, 100],
                   help="CT slices per size (default 25 50 100)")
    p.add_argument("--inplane", type=int, default=512, help="CT in-plane size in voxels (default 512)")
    p.add_argument("--ct-mm", type=float, nargs=2, default=[0.98, 1.0], metavar=("INPLANE", "SLICE"),
                   help="CT spacing in mm (default 0.98 1.0)")
    p.add_argument("--pet-shape", type=int, nargs=3, default=[200, 200, 200], help="PET voxels (default 200^3)")
    p.add_argument("--pet-mm", type=float, default=4.0, help="PET spacing in mm (default 4)")
    p.add_argument("--preset", default="tiny", help="network preset (default tiny: small network on purpose)")
    p.add_argument("--repeats", type=int, default=1, help="end-to-end runs per way and size (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the network runs (default cpu)")
    p.add_argument("--amp", action="store_true", help="mixed precision for the network (fp16 CUDA, bf16 CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--workdir", type=Path, default=None, help="where cases are written (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or min(args.slices) < 1 or args.inplane < 16:
        p.error("--repeats and --slices must be >= 1, --inplane >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    probe = MemProbe(torch.device("cpu"))  # RSS on every stage (the stitching and resampling run on the CPU)
    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "amp": args.amp, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "preset": args.preset,
           "load_at_start": _load(), "memory_method": probe.method}
    log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    model = tiny_model(args.preset, device, seed=0)
    log(f"network: random early-fusion UNETR, preset {args.preset}, roi {model.config.model.roi_size}, spacing "
        f"{model.config.preprocess.target_spacing} mm, crop {model.config.preprocess.crop_mm} mm")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = args.workdir or Path(tmp)
        for slices in sorted(args.slices):
            t0 = time.perf_counter()
            case = make_case(work / "cases", slices, args.inplane, tuple(args.ct_mm), args.pet_shape, args.pet_mm,
                             seed=slices)
            shape = [args.inplane, args.inplane, slices]
            log(f"case {case.case_id}: CT {shape}, PET {args.pet_shape}, written in {time.perf_counter() - t0:.1f} s")
            stages = bench_stages(model, case, device, args.amp, probe, work / "pred")
            log("  stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages["times_s"].items())
                + f"; labels differing (box vs full) {stages['labels_differ_voxels']}")
            e2e = bench_end_to_end(model, case, device, args.amp, probe, work / "pred", args.repeats)
            log(f"  end to end: new {e2e['times_s']['new']} s, old {e2e['times_s']['old']} s; peak growth "
                f"{e2e['peak_growth_mb']}")
            rows.append({"ct_shape": shape, "ct_mvox": math.prod(shape) / 1e6, "stages": stages, "end_to_end": e2e})
            for path in case.images.values():
                Path(path).unlink()
            gc.collect()
    env["load_at_end"] = _load()
    print()
    print(f"predict on {env['device']} ({env['threads']} threads, amp {args.amp}, preset {args.preset}); "
          f"stage shares of the stage sum; peak = RSS growth ({probe.method})")
    print()
    print(summary_table(rows))
    print()
    print(linearity(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
