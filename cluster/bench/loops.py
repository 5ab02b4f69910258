"""The one-process, one-thread systems of the benchmark, each a tight loop on the encoded images
in memory: `limit` (feedline's own decode + augment: the fused JPEG path, Pillow for the rest),
`torchvision` (torchvision v2 on PIL, as a DataLoader worker runs it) and `decode_limit`
(decode at the DCT scale each crop needs + resize to the output size, no jitter: what no
faithful pipeline beats). Each is measured on the same blobs with the same recipe and output
block (uint8 N x 3 x SIZE x SIZE)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from cluster.bench.measure import BATCH, SIZE

__all__ = ["recipe", "decode_augment", "torchvision_batch", "decode_limit_batch", "LOOPS"]


def recipe():
    """The benchmark's recipe as feedline's pool runs it: (transform, fused path, decode side)."""
    from pipelines.augment import build_transform, decode_side
    from pipelines.fused import FusedRecipe

    transform = build_transform("imagenet", SIZE, train=True)
    return transform, FusedRecipe(transform, SIZE), decode_side("imagenet", SIZE, train=True)


def decode_augment(blobs, parts, rng: np.random.Generator) -> np.ndarray:
    """The pool's own path on encoded images (`parts` from `recipe()`): one (N, 3, SIZE, SIZE)
    uint8 array."""
    from pipelines.decode import decode_pil
    from pipelines.fused import augment_batch

    transform, fused, side = parts
    items = [fused.probe(b) or decode_pil(b, side) for b in blobs]
    out, _ = augment_batch(fused, transform, items, [rng] * len(items), side)
    return out


def _torchvision():
    """torchvision v2's ImageNet recipe on PIL images (one thread: a DataLoader worker's)."""
    import torch
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    return v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ColorJitter(0.4, 0.4, 0.4)])


def torchvision_batch() -> Callable[[list], np.ndarray]:
    from PIL import Image

    transform = _torchvision()

    def run(blobs) -> np.ndarray:
        out = np.empty((len(blobs), 3, SIZE, SIZE), np.uint8)
        for i, b in enumerate(blobs):
            img = transform(Image.open(io.BytesIO(b)).convert("RGB"))
            out[i] = np.asarray(img).transpose(2, 0, 1)
        return out

    return run


def decode_limit_batch() -> Callable[[list], np.ndarray]:
    """Decode at the scale each crop needs + resize into the block: the fused path's own
    decode and resize (`FusedRecipe.render`) with the flip and the jitter left out."""
    from pipelines.jpeg import decode_scaled

    _, fused, _ = recipe()
    rng = np.random.default_rng(0)

    def run(blobs) -> np.ndarray:
        out = np.empty((len(blobs), 3, SIZE, SIZE), np.uint8)
        for i, b in enumerate(blobs):
            item = fused.probe(b)
            if item is None:
                raise ValueError(f"decode_limit measures baseline YCbCr JPEGs; blob {i} is not "
                                 "one (use --shape's generated JPEGs)")
            d = fused.draw(item.info, rng)._replace(flip=False, ops=(), factors=())
            fused.render(decode_scaled(b, item.info, d.scale), d.scale, d, out[i])
        return out

    return run


def _limit_batch() -> Callable[[list], np.ndarray]:
    parts, rng = recipe(), np.random.default_rng(0)
    return lambda blobs: decode_augment(blobs, parts, rng)


LOOPS: dict[str, Callable[[], Callable[[list], np.ndarray]]] = {
    "limit": _limit_batch, "torchvision": torchvision_batch, "decode_limit": decode_limit_batch}
"""The one-process systems: name -> maker of a function from encoded blobs to a block."""


def batches(blobs: list, name: str):
    """Batches of BATCH images of `name`'s loop over `blobs`, forever."""
    run = LOOPS[name]()
    while True:
        for s in range(0, len(blobs) - BATCH + 1, BATCH):
            yield {"image": run(blobs[s:s + BATCH]), "label": np.zeros(BATCH, np.int64)}
