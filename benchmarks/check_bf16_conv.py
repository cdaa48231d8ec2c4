"""Reproducer of torch's CPU bf16 conv3d weight-gradient defect that made bf16 Swin UNETR training skip steps.

No pemma involved: a ``Conv3d`` (kernel 3, padding 1) under CPU bf16 autocast, its weight gradient against the fp32
one, for inputs of a few shapes. On torch 2.13 with oneDNN on an AMX CPU, depth 2 gives relative errors up to 1e37
or inf in most calls (any channel count from 24 up, one thread or more); other shapes agree to bf16 rounding (~5e-3).
pemma's guard (``pemma.training.precision``) computes such convolutions in fp32; ``--guarded`` checks it too.

Run: ``.venv/bin/python benchmarks/check_bf16_conv.py [--guarded]``
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


def worst_relative_error(shape: tuple[int, ...], channels: int, trials: int, guarded: bool) -> tuple[int, float]:
    bad, worst = 0, 0.0
    for _ in range(trials):
        conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        if guarded:
            from pemma.training.precision import guard_small_convolutions
            guard_small_convolutions(conv)
        x = torch.randn(2, channels, *shape)
        g = torch.randn(2, channels, *shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.backward(g.to(y.dtype))
        w = conv.weight.detach().clone().requires_grad_(True)
        torch.nn.functional.conv3d(x, w, padding=1).backward(g)
        err = float((conv.weight.grad - w.grad).abs().max() / w.grad.abs().max())
        worst = max(worst, err)
        bad += not err < 0.1
    return bad, worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--guarded", action="store_true", help="also run with pemma's fp32 guard")
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), oneDNN bf16 "
          f"{torch.backends.mkldnn.is_available()}; Conv3d {args.channels}->{args.channels}, kernel 3, padding 1")
    for guarded in (False, True) if args.guarded else (False,):
        for shape in ((2, 2, 2), (2, 4, 4), (4, 4, 2), (3, 3, 3), (1, 1, 1), (8, 8, 8)):
            bad, worst = worst_relative_error(shape, args.channels, args.trials, guarded)
            print(f"{'guarded ' if guarded else ''}input {shape}: weight gradient wrong (rel. error > 0.1) in "
                  f"{bad}/{args.trials} calls, worst relative error {worst:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
