"""Augmentation recipes on uint8 tensors, built from torchvision.transforms.v2."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["build_transform", "apply_batch", "decode_side", "RECIPES"]

RECIPES = ("imagenet", "small")

# PIL hands decoded pixels out as read-only arrays; torch warns when wrapping them. The transforms
# below never write into their input, so the zero-copy wrap is safe.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def build_transform(recipe: str, size: int, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform from a (3, H, W) uint8 tensor to a (3, size, size) uint8 tensor.

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
            steps = [
                v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                     antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            ]
        else:
            steps = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    else:
        steps = [v2.Resize((size, size), antialias=True)]
        if train:
            steps.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    return v2.Compose(steps)


def decode_side(recipe: str, size: int, train: bool) -> int | None:
    """Shorter side a decoder must keep so the recipe loses no resolution (PIL draft mode)."""
    if recipe == "imagenet":
        return size if train else round(size * 256 / 224)
    return size


def apply_batch(
    transform: Callable[[torch.Tensor], torch.Tensor], arrays: Sequence[np.ndarray], size: int
) -> np.ndarray:
    """Apply `transform` to each HWC uint8 array; returns one (N, 3, size, size) uint8 array."""
    out = np.empty((len(arrays), 3, size, size), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        chw = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        out[i] = transform(chw).numpy()
    return out
