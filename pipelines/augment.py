"""Augmentation recipes on PIL images: torchvision's recipes, with no torch in the pool processes.

Each step is torchvision.transforms.v2's, split in two: the random parameters, drawn from a numpy
Generator by torchvision's own sampling rules (`make_params`), and the Pillow calls that
torchvision's PIL kernels make for those parameters. `tests/test_augment.py` checks every step
pixel for pixel against `torchvision.transforms.v2.functional` on the same image and parameters.

Why not call torchvision here: a pool actor that imports torch and torchvision spends about 6 s
doing so (torchvision.ops pulls in torch._dynamo), two at once on 2 cores, before its first
block; that import was most of the time to the first batch (README, "First batch"). Pillow's
kernels are also what torchvision runs on PIL images, so the pixels are the same either way.
The Generator is passed in, never global: the same seed, epoch and unit give the same crops in
whichever process runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

__all__ = ["build_transform", "apply_batch", "decode_side", "RECIPES", "Transform",
           "RandomResizedCrop", "HorizontalFlip", "ColorJitter", "Resize", "CenterCrop",
           "RandomAffine", "Compose"]

RECIPES = ("imagenet", "small")

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]
"""(RGB image, generator) -> RGB image; deterministic steps ignore the generator."""


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """`float(rng.uniform(low, high))`, bit for bit (numpy computes low + (high - low) x the
    next double), in a third of the time: the crop and jitter draws are a per-image cost."""
    return low + (high - low) * rng.random()


@dataclass(frozen=True)
class RandomResizedCrop:
    """v2.RandomResizedCrop(size, scale, ratio), bilinear with antialiasing (PIL always
    antialiases)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def params(self, width: int, height: int, rng: np.random.Generator
               ) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop, as torchvision draws it: ten tries at a
        random area and log-uniform aspect ratio, then a central crop."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(rng, *self.scale)
            aspect = math.exp(_uniform(rng, *log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    @staticmethod
    def apply(img: Image.Image, top: int, left: int, height: int, width: int,
              size: tuple[int, int]) -> Image.Image:
        """F.resized_crop on a PIL image: crop, then resize to `size` = (height, width)."""
        return _resize(img.crop((left, top, left + width, top + height)), size[1], size[0])

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(img, *self.params(*img.size, rng), (self.size, self.size))


@dataclass(frozen=True)
class HorizontalFlip:
    """v2.RandomHorizontalFlip(p)."""

    p: float = 0.5

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if rng.random() >= self.p:
            return img
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


@dataclass(frozen=True)
class ColorJitter:
    """v2.ColorJitter(brightness, contrast, saturation): each factor uniform in
    [max(0, 1 - x), 1 + x], applied in a random order (Pillow's ImageEnhance, as torchvision
    does for PIL images). A strength of 0 leaves that property alone."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def params(self, rng: np.random.Generator) -> tuple[tuple[int, ...], list[float | None]]:
        """The order of the ops (indices into brightness, contrast, saturation, hue) and the
        factors (None: not jittered)."""
        order = tuple(rng.permutation(4).tolist())
        factors = [_uniform(rng, max(0.0, 1 - x), 1 + x) if x else None
                   for x in (self.brightness, self.contrast, self.saturation)]
        return order, factors

    @staticmethod
    def apply(img: Image.Image, order: Sequence[int], factors: Sequence[float | None]
              ) -> Image.Image:
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        for i in order:
            if i < len(factors) and factors[i] is not None:
                img = enhancers[i](img).enhance(factors[i])
        return img

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(img, *self.params(rng))


@dataclass(frozen=True)
class Resize:
    """v2.Resize(size): an int resizes the shorter side (the longer one keeps the aspect,
    truncated), a (height, width) pair resizes to exactly that; bilinear, antialiased."""

    size: int | tuple[int, int]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if isinstance(self.size, int):
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.size * long / short)
            return _resize(img, *((self.size, new_long) if w <= h else (new_long, self.size)))
        return _resize(img, self.size[1], self.size[0])


@dataclass(frozen=True)
class CenterCrop:
    """v2.CenterCrop(size) for images at least `size` on each side (the recipes resize first)."""

    size: int

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = img.size
        if self.size > w or self.size > h:
            raise ValueError(f"CenterCrop({self.size}) needs an image at least that large, "
                             f"got {w}x{h}: resize it first")
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


@dataclass(frozen=True)
class RandomAffine:
    """v2.RandomAffine(degrees, translate, scale) without shear: nearest-neighbour, black fill,
    about the image centre."""

    degrees: float
    translate: tuple[float, float]
    scale: tuple[float, float]

    def params(self, width: int, height: int, rng: np.random.Generator
               ) -> tuple[float, tuple[int, int], float]:
        angle = _uniform(rng, -self.degrees, self.degrees)
        max_dx, max_dy = self.translate[0] * width, self.translate[1] * height
        tx = int(round(_uniform(rng, -max_dx, max_dx)))
        ty = int(round(_uniform(rng, -max_dy, max_dy)))
        return angle, (tx, ty), _uniform(rng, *self.scale)

    @staticmethod
    def apply(img: Image.Image, angle: float, translate: tuple[int, int], scale: float
              ) -> Image.Image:
        """F.affine(img, angle, translate, scale, shear=0) on a PIL image: Pillow maps each
        output pixel back through the inverse of rotate-scale about the centre, then shift."""
        cx, cy = img.width * 0.5, img.height * 0.5
        tx, ty = translate
        rot = math.radians(angle)
        a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
        m = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]
        m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
        m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
        return img.transform(img.size, Image.Transform.AFFINE, m, Image.Resampling.NEAREST,
                             fillcolor=(0, 0, 0))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(img, *self.params(*img.size, rng))


@dataclass(frozen=True)
class Compose:
    steps: tuple[Transform, ...]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for step in self.steps:
            img = step(img, rng)
        return img


def _resize(img: Image.Image, width: int, height: int) -> Image.Image:
    """Bilinear resize (Pillow antialiases when it shrinks); none when the size already matches,
    as torchvision does."""
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BILINEAR)


def build_transform(recipe: str, size: int, train: bool) -> Compose:
    """A transform from an RGB PIL image to a size x size RGB PIL image.

    imagenet/train: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3), horizontal flip, ColorJitter
    0.4/0.4/0.4. small/train: resize to `size`, then a mild RandomAffine (rotation 10 degrees,
    translation 10%, scale 0.9-1.1), no flip, for tiny images such as 8x8 digits. Validation
    (train=False): resize the shorter side to size*256/224 and center-crop (imagenet), or resize
    to size (small).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if recipe == "imagenet":
        if train:
            steps = (RandomResizedCrop(size), HorizontalFlip(),
                     ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4))
        else:
            steps = (Resize(round(size * 256 / 224)), CenterCrop(size))
    else:
        steps = (Resize((size, size)),)
        if train:
            steps += (RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),)
    return Compose(steps)


def decode_side(recipe: str, size: int, train: bool) -> int | None:
    """Shorter side a decoder must keep so the recipe loses no resolution (PIL draft mode)."""
    if recipe == "imagenet":
        return size if train else round(size * 256 / 224)
    return size


def apply_batch(transform: Transform, images: Sequence[Image.Image | np.ndarray], size: int,
                rng: np.random.Generator | Sequence[np.random.Generator] | None = None
                ) -> np.ndarray:
    """Apply `transform` to each RGB image (PIL, or an HWC uint8 array); returns one
    (N, 3, size, size) uint8 array. `rng` draws the random steps' parameters: one generator
    for all, or one per image (default: a fresh unseeded generator)."""
    rng = rng if rng is not None else np.random.default_rng()
    rngs = rng if isinstance(rng, Sequence) else [rng] * len(images)
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        if isinstance(img, np.ndarray):
            img = Image.fromarray(np.ascontiguousarray(img), "RGB")
        out[i] = np.asarray(transform(img, rngs[i])).transpose(2, 0, 1)
    return out
