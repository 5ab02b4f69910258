"""The fused path of the imagenet recipes: header probe -> crop drawn on the full size -> decode
at the DCT scale the crop needs -> Pillow-exact resize and jitter kernels -> the output block.

Train (RandomResizedCrop, HorizontalFlip, ColorJitter): the parameters are drawn exactly as
the Pillow path draws them (same generator, same order, on the image's full size), then the
JPEG is decoded at the largest reduction (1/2, 1/4, 1/8) at which the crop keeps at least the
output size on each side, and the crop box, scaled, is resized with Pillow's arithmetic. With
no reduction the pixels are torchvision's on PIL; with one they differ by well under 0.5 on
average (tests/test_fused.py). Eval (Resize, CenterCrop): the same for the resized image's
centre. Images the probe turns down (pipelines.jpeg) take the Pillow path unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipelines import kernels
from pipelines.augment import (
    CenterCrop,
    ColorJitter,
    Compose,
    HorizontalFlip,
    RandomResizedCrop,
    Resize,
)
from pipelines.decode import decode_pil
from pipelines.jpeg import JpegInfo, decode_scaled, probe, scale_for

__all__ = ["Encoded", "FusedRecipe", "augment_batch"]


@dataclass(frozen=True, eq=False)
class Encoded:
    """A JPEG the fast path takes: its bytes and header (decoded only once its crop is known)."""

    data: bytes
    info: JpegInfo


class _Draw(NamedTuple):
    """One image's parameters (a NamedTuple: one is made per image, cheaply)."""

    scale: int
    box: tuple[float, float, float, float]
    """(left, top, right, bottom) in full-size pixels."""
    out_size: tuple[int, int]
    """(width, height) the box is resized to."""
    window: tuple[int, int, int]
    """(left, top, size) of the output kept from the resized box."""
    flip: bool = False
    ops: tuple[int, ...] = ()
    factors: tuple[float, ...] = ()


class FusedRecipe:
    """The fused path for a transform of `pipelines.augment.build_transform`, when it is one of
    the imagenet recipes (`enabled`); `probe` says which images it takes."""

    def __init__(self, transform: Compose, size: int):
        self.size = size
        kinds = tuple(type(s) for s in transform.steps)
        self.steps = transform.steps
        if kinds == (RandomResizedCrop, HorizontalFlip, ColorJitter):
            self.kind = "train"
        elif kinds == (Resize, CenterCrop) and isinstance(transform.steps[0].size, int):
            self.kind = "eval"
        else:
            self.kind = None
        self.enabled = self.kind is not None
        self.decode_s = 0.0
        """Seconds spent decoding JPEGs so far (the pool's stage timing reads it)."""

    def probe(self, data: bytes) -> Encoded | None:
        info = probe(data) if self.enabled else None
        return Encoded(data, info) if info is not None else None

    def draw(self, info: JpegInfo, rng: np.random.Generator) -> _Draw:
        """The random parameters, drawn as the Pillow path draws them (same order)."""
        w, h, s = info.width, info.height, self.size
        if self.kind == "eval":
            short = self.steps[0].size
            nw, nh = ((short, int(short * h / w)) if w <= h else (int(short * w / h), short))
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            return _Draw(scale_for(w, h, nw, nh), (0, 0, w, h), (nw, nh), (left, top, s))
        crop, flip, jitter = self.steps
        top, left, ch, cw = crop.params(w, h, rng)
        flipped = bool(rng.random() < flip.p)
        order, factors = jitter.params(rng)
        ops = tuple(i for i in order if i < len(factors) and factors[i] is not None)
        return _Draw(scale_for(cw, ch, s, s), (left, top, left + cw, top + ch), (s, s),
                     (0, 0, s), flipped, ops, tuple(float(factors[i]) for i in ops))

    def render(self, img: np.ndarray, scale: int, d: _Draw, out: np.ndarray) -> None:
        """Draw `d` from `img`, the image decoded at 1/`scale`, into `out` (3, S, S)."""
        left, top, _ = d.window
        kernels.render(img, tuple(v / scale for v in d.box), *d.out_size, left, top,
                       self._vertical_first(d), d.flip, np.array(d.ops, np.int64),
                       np.array(d.factors, np.float64), out)

    @staticmethod
    def _vertical_first(d: _Draw) -> bool:
        """Pillow's pass order for the full-size resize torchvision runs (on the crop, or on
        the whole image for eval), also when the fast path decodes at a reduced scale."""
        left, top, right, bottom = d.box
        return kernels.vertical_first(right - left, bottom - top, *d.out_size)

    def run(self, item: Encoded, rng: np.random.Generator, out: np.ndarray) -> None:
        """All copies of one image (out: (k, 3, S, S), k >= 1) from ONE decode, at the scale
        the largest copy's crop needs; each copy draws its own parameters from `rng` in turn."""
        draws = [self.draw(item.info, rng) for _ in range(len(out))]
        scale = min(d.scale for d in draws)
        start = time.perf_counter()
        img = decode_scaled(item.data, item.info, scale)
        self.decode_s += time.perf_counter() - start
        for d, slot in zip(draws, out, strict=True):
            self.render(img, scale, d, slot)


def _pillow(transform: Compose, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(transform(img, rng)).transpose(2, 0, 1)


def augment_batch(recipe: FusedRecipe, transform: Compose, items: Sequence,
                  rngs: Sequence[np.random.Generator], min_side: int | None
                  ) -> tuple[np.ndarray, dict[int, Exception]]:
    """`items` (PIL images, or `Encoded` JPEGs) augmented into one (N, 3, S, S) uint8 block,
    item i with generator rngs[i]. Consecutive entries that share an item and a generator are
    copies of one example (echo): one decode serves them all. A JPEG the fast decoder rejects
    is decoded by Pillow instead, with the generator as it was; the indices of those Pillow
    cannot decode either come back with their errors (their slots hold zeros)."""
    size = recipe.size
    out = np.zeros((len(items), 3, size, size), np.uint8)
    failed: dict[int, Exception] = {}
    i = 0
    while i < len(items):
        item, rng = items[i], rngs[i]
        j = i + 1
        while j < len(items) and items[j] is item and rngs[j] is rng:
            j += 1
        if isinstance(item, Encoded):
            state = rng.bit_generator.state
            try:
                recipe.run(item, rng, out[i:j])
            except Exception:  # noqa: BLE001 - Pillow decides whether it is a bad record
                rng.bit_generator.state = state
                try:
                    img = decode_pil(item.data, min_side)
                except Exception as e:  # noqa: BLE001 - a bad record, counted by the caller
                    failed.update((k, e) for k in range(i, j))
                    img = None
                for k in range(i, j) if img is not None else ():
                    out[k] = _pillow(transform, img, rng)
        else:
            for k in range(i, j):
                out[k] = _pillow(transform, item, rng)
        i = j
    return out, failed
