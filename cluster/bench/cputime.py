"""Per-core rates of the one-process systems (cluster.bench.loops) on generated JPEGs in memory,
no object store: images per CPU-second, the systems taking turns batch by batch on the same
blobs (`measure.measure_turns`), so that a shared machine's drift spreads evenly over them."""

from __future__ import annotations

import numpy as np

from cluster.bench.loops import LOOPS, batches
from cluster.bench.measure import BATCH, measure_turns

__all__ = ["SHAPES", "shape_blobs", "cpu_rates"]

SHAPES = {"synthetic": (320, 256, 90), "photo": (400, 300, 90), "imagenet": (500, 375, 95)}
"""--shape: (width, height, JPEG quality) of the generated JPEGs."""


def shape_blobs(shape: str, count: int = BATCH, seed: int = 0) -> list[bytes]:
    from pipelines.datasets import synthetic_jpeg

    w, h, q = SHAPES[shape]
    rng = np.random.default_rng(seed)
    return [synthetic_jpeg(rng, w, h, q) for _ in range(count)]


def cpu_rates(blobs: list[bytes], seconds: float = 3.0) -> dict[str, float]:
    """Images per CPU-second of each loop on `blobs` (at least one batch of them), after a
    first batch each."""
    rows = measure_turns({name: (lambda n=name: batches(blobs, n)) for name in LOOPS}, seconds)
    return {name: row["images_per_s"] for name, row in rows.items()}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES))
    p.add_argument("--seconds", type=float, default=3.0, help="per loop, taking turns")
    args = p.parse_args()
    for shape in args.shape or sorted(SHAPES):
        blobs = shape_blobs(shape)
        r = cpu_rates(blobs, args.seconds)
        kb = sum(map(len, blobs)) / len(blobs) / 1000
        print(f"{shape:<10} {kb:4.0f} KB  " + "  ".join(f"{k} {v:5.0f}" for k, v in r.items())
              + f"  limit/torchvision {r['limit'] / r['torchvision']:.2f}"
              f"  limit/decode_limit {r['limit'] / r['decode_limit']:.2f}")
