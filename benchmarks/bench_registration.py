"""Benchmark ``--register rigid`` against ``--register none`` on a phantom whose PETs are misaligned (issue 14, part 1).

1. A phantom (:mod:`pemma.data.phantom`) is generated and every PET is given a known rigid misalignment
   (:mod:`pemma.data.phantom_misalign`): a ``--shift-mm`` shift in a random direction and a ``--degrees`` rotation
   about a random axis through the CT centre, drawn per case from ``--seed`` (the same for both arms).
2. Two CT+PET early-fusion runs of the ``tiny`` preset are trained on the training centres, identical except for the
   registration: ``register: none`` (the PET resampled onto the CT by its header) and ``register: rigid``; same
   seed, same steps, same cases.
3. Both are evaluated (CT+PET input) on the held-out centres, each predicting as it was trained (the rigid run
   registers the test PETs too), and the DSCagg means are compared with a paired case bootstrap
   (:func:`pemma.protocol.bootstrap.paired_bootstrap` / :func:`~pemma.protocol.bootstrap.bootstrap_relative`).

The registration accuracy of every case (max / mean error over the CT box, mm, against the known misalignment) and
the time per case are printed too. ``--aligned`` adds a third arm trained and evaluated on the PETs as generated
(co-registered): the ceiling registration can reach. ``--modality mr`` does the same with the phantom's MR-like
channel instead of the PET (CT+MR runs); ``--accuracy-only`` stops after the registration accuracy.

Run (from the repository root)::

    nice .venv/bin/python benchmarks/bench_registration.py --steps 150 --json reg.json     # ~15-20 min, 2 busy cores
    nice .venv/bin/python benchmarks/bench_registration.py --modality mr --accuracy-only    # ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import pemma
from pemma.config import PreprocessConfig
from pemma.data.phantom import PhantomConfig, synthesize_phantom
from pemma.data.phantom_misalign import misalign_image, random_misalignment
from pemma.data.register import register_files
from pemma.data.registration import RegistrationSettings
from pemma.protocol.bootstrap import bootstrap_relative, dscagg_mean, paired_bootstrap

#: the phantom's file suffix of each modality the benchmark can misalign
SUFFIXES = {"pet": "PT", "mr": "MR"}


def misaligned_phantom(root: Path, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Generate the phantom in ``root/aligned``, copy it to ``root/misaligned`` with every PET (``--modality``)
    moved; the truths."""
    aligned, moved = root / "aligned", root / "misaligned"
    synthesize_phantom(aligned, PhantomConfig(cases_per_centre=args.cases_per_centre, centres=tuple(args.centres),
                                              seed=args.seed, modalities=("ct", "pet", args.modality)),
                       progress=False)
    shutil.copytree(aligned, moved)
    rng = np.random.default_rng(args.seed)
    truths = {}
    for image in sorted((moved / "imagesTr").glob(f"*__{SUFFIXES[args.modality]}.nii.gz")):
        case = image.name.split("__")[0]
        ct = nib.load(moved / "imagesTr" / f"{case}__CT.nii.gz")
        centre = ct.affine[:3, :3] @ ((np.asarray(ct.shape[:3]) - 1) / 2) + ct.affine[:3, 3]
        truths[case] = random_misalignment(rng, centre, args.shift_mm, args.degrees)
        misalign_image(image, image, truths[case], what=args.modality.upper())
    return truths


def registration_errors(data: Path, truths: dict[str, np.ndarray], modality: str = "pet") -> list[dict[str, Any]]:
    """Register every case (filling the cache the rigid run then reads) and measure it against the truth."""
    settings = RegistrationSettings.from_preprocess(PreprocessConfig(register="rigid"), modality=modality)
    rows = []
    for case, truth in truths.items():
        ct_path = data / "imagesTr" / f"{case}__CT.nii.gz"
        ct = nib.load(ct_path)
        start = time.perf_counter()
        result = register_files(case, str(ct_path), str(data / "imagesTr" / f"{case}__{SUFFIXES[modality]}.nii.gz"),
                                settings)
        seconds = time.perf_counter() - start
        idx = np.random.default_rng(0).uniform(0, np.asarray(ct.shape[:3]) - 1, (500, 3))
        points = idx @ ct.affine[:3, :3].T + ct.affine[:3, 3]
        found = points @ result.matrix[:3, :3].T + result.matrix[:3, 3]
        wanted = points @ truth[:3, :3].T + truth[:3, 3]
        before = np.linalg.norm(points - wanted, axis=1)
        error = np.linalg.norm(found - wanted, axis=1)
        rows.append({"case": case, "seconds": round(seconds, 2), "before_max_mm": round(float(before.max()), 2),
                     "max_mm": round(float(error.max()), 2), "mean_mm": round(float(error.mean()), 2),
                     "rotation_deg": round(result.rotation_deg, 2), "body_dice": [result.before.body_dice,
                                                                                 result.after.body_dice]})
    return rows


def arm(name: str, data: Path, work: Path, register: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one CT+PET (CT+MR) run and evaluate it on the held-out centres."""
    start = time.perf_counter()
    inputs = f"ct,{args.modality}"
    run = pemma.train(data, work / name, centres=args.train_centres, modalities=inputs, preset="tiny",
                      seed=args.seed, max_steps=args.steps, epochs=10_000, val_every=10_000, register=register,
                      cache_dir=str(work / f"cache-{name}"))
    trained = time.perf_counter() - start
    scores = pemma.evaluate(run, data, centres=args.test_centres, modalities=inputs, out=work / f"{name}-eval")
    print(f"{name}: {args.steps} steps in {trained:.0f} s, held-out DSCagg mean {scores['DSCagg']['mean']:.4f} "
          f"(GTVp {scores['DSCagg']['GTVp']:.4f}, GTVn {scores['DSCagg']['GTVn']:.4f}) on {scores['n_cases']} cases",
          flush=True)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps of each arm (same seed)")
    parser.add_argument("--cases-per-centre", type=int, default=6)
    parser.add_argument("--centres", nargs="+", default=["CHUM", "CHUP", "MDA", "HGJ"])
    parser.add_argument("--train-centres", default="CHUM,CHUP")
    parser.add_argument("--test-centres", default="MDA,HGJ")
    parser.add_argument("--shift-mm", type=float, default=10.0, help="length of each PET's shift")
    parser.add_argument("--degrees", type=float, default=5.0, help="each PET's rotation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", choices=sorted(SUFFIXES), default="pet", help="the misaligned modality")
    parser.add_argument("--accuracy-only", action="store_true", help="registration accuracy only (no training)")
    parser.add_argument("--aligned", action="store_true", help="also train on the co-registered PETs (the ceiling)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a busy machine)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="write every number here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_registration_"))
    os.environ["PEMMA_CACHE_DIR"] = str(work / "pemma-cache")  # the registration cache of this benchmark only
    try:
        truths = misaligned_phantom(work, args)
        data = work / "misaligned"
        errors = registration_errors(data, truths, args.modality)
        maxima = [r["max_mm"] for r in errors]
        print(f"registration of {len(errors)} {args.modality.upper()}s ({args.shift_mm:g} mm, {args.degrees:g} "
              f"degrees each): max error "
              f"median {np.median(maxima):.2f} mm (range {min(maxima):.2f}-{max(maxima):.2f}), before "
              f"{np.median([r['before_max_mm'] for r in errors]):.2f} mm; "
              f"{np.median([r['seconds'] for r in errors]):.1f} s per case (median)", flush=True)
        if args.accuracy_only:
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), "registration": errors}, indent=1))
            return
        scores = {"none": arm("none", data, work, "none", args), "rigid": arm("rigid", data, work, "rigid", args)}
        if args.aligned:
            scores["aligned"] = arm("aligned", work / "aligned", work, "none", args)
        cases = sorted(scores["none"]["counts"])
        counts = {k: np.asarray([v["counts"][c] for c in cases], dtype=np.float64) for k, v in scores.items()}
        diff = paired_bootstrap(counts["rigid"], counts["none"])
        ratio = bootstrap_relative(counts["rigid"], counts["none"])
        print(f"rigid - none: DSCagg mean {diff.estimate:+.4f} [95% CI {diff.low:+.4f}, {diff.high:+.4f}]; ratio "
              f"rigid / none {1 + ratio.estimate:.3f} [{1 + ratio.low:.3f}, {1 + ratio.high:.3f}] "
              f"({len(cases)} held-out cases, paired bootstrap, {diff.replicates} replicates)")
        summary = {"args": vars(args), "registration": errors,
                   "dscagg": {k: float(dscagg_mean(v)) for k, v in counts.items()},
                   "rigid_minus_none": diff.to_dict(), "rigid_over_none_minus_1": ratio.to_dict(),
                   "python": sys.version.split()[0]}
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
