"""Per-core rates of the one-process systems (cluster.bench.loops) as images per CPU-second,
interleaved batch by batch on the same blobs: on a shared machine a process's CPU time is what
one core did for it, whatever else runs, and interleaving spreads the drift evenly."""

from __future__ import annotations

import time

import numpy as np

from cluster.bench.loops import LOOPS

__all__ = ["SHAPES", "shape_blobs", "cpu_rates"]

SHAPES = {"synthetic": (320, 256, 90), "photo": (400, 300, 90), "imagenet": (500, 375, 95)}
"""--shape: (width, height, JPEG quality) of the generated JPEGs."""


def shape_blobs(shape: str, count: int = 64, seed: int = 0) -> list[bytes]:
    from pipelines.datasets import synthetic_jpeg

    w, h, q = SHAPES[shape]
    rng = np.random.default_rng(seed)
    return [synthetic_jpeg(rng, w, h, q) for _ in range(count)]


def cpu_rates(blobs: list[bytes], rounds: int = 4) -> dict[str, float]:
    """Images per CPU-second of each loop, after a warm-up batch each."""
    runs = {name: make() for name, make in LOOPS.items()}
    for run in runs.values():
        run(blobs[:8])
    cpu = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.process_time()
            run(blobs)
            cpu[name] += time.process_time() - start
    return {name: rounds * len(blobs) / c for name, c in cpu.items()}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES))
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    for shape in args.shape or sorted(SHAPES):
        blobs = shape_blobs(shape)
        r = cpu_rates(blobs, args.rounds)
        kb = sum(map(len, blobs)) / len(blobs) / 1000
        print(f"{shape:<10} {kb:4.0f} KB  " + "  ".join(f"{k} {v:5.0f}" for k, v in r.items())
              + f"  limit/torchvision {r['limit'] / r['torchvision']:.2f}"
              f"  limit/decode_limit {r['limit'] / r['decode_limit']:.2f}")
