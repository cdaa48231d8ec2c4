"""``labels_of`` (running comparison over classes) against ``torch.argmax(0)`` on class-score volumes, one thread.

Every validation, evaluation and prediction turns (K, D, H, W) probabilities into labels; torch's reduction over the
leading, strided axis is slow on the CPU. Prints seconds per call (median of ``--repeats``) and the ratio, measured
side by side in this run, and checks that the labels are equal.

Example:
    PYTHONPATH=src .venv/bin/python benchmarks/bench_argmax.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pemma.inference.sliding import labels_of

SHAPES = ((3, 67, 67, 67), (3, 80, 80, 56), (3, 128, 128, 90), (3, 200, 200, 96))


def _seconds(function, scores: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(scores)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="calls per way and shape (median). Default 5")
    parser.add_argument("--threads", type=int, default=1, help="torch threads. Default 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| scores (K, D, H, W) | argmax(0) s | labels_of s | ratio | labels equal |\n|---|---|---|---|---|")
    for shape in SHAPES:
        scores = torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(0)), 0)
        old = _seconds(lambda s: s.argmax(0).to(torch.uint8), scores, args.repeats)
        new = _seconds(labels_of, scores, args.repeats)
        same = torch.equal(scores.argmax(0).to(torch.uint8), labels_of(scores))
        print(f"| {shape} | {old:.4f} | {new:.4f} | {old / new:.1f}x | {same} |")


if __name__ == "__main__":
    main()
