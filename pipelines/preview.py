"""See what the pool makes: the first training samples of a stream, as PNG files and a contact
sheet, made by the pool's own `Preprocessor` (same recipe, seed and per-row augmentation)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from pipelines.config import PipelineConfig
from pipelines.sources import IMAGE, plan_source

__all__ = ["first_samples", "contact_sheet", "write_preview", "GRID_MAX"]

GRID_MAX = 64
"""Most samples on the contact sheet."""


def first_samples(config: PipelineConfig, count: int) -> np.ndarray:
    """The first `count` samples of epoch 0 of `config`'s stream, (N, 3, S, S) uint8, in the
    order the stream hands them out."""
    from pipelines.build import Preprocessor

    plan = plan_source(config.source)
    pre = Preprocessor(config, plan.units)
    got, have = [], 0
    for seq in range(len(plan.units)):
        for block in pre({"seq": np.array([seq])}):
            got.append(block[IMAGE])
            have += len(block[IMAGE])
        if have >= count:
            break
    if not got:
        return np.zeros((0, 3, config.preprocess.image_size, config.preprocess.image_size),
                        np.uint8)
    return np.concatenate(got)[:count]


def contact_sheet(images: np.ndarray, pad: int = 2) -> Image.Image:
    """Up to GRID_MAX CHW images on one sheet, in rows of ceil(sqrt(n))."""
    images = images[:GRID_MAX]
    n, _, s, _ = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        sheet[y:y + s, x:x + s] = img.transpose(1, 2, 0)
    return Image.fromarray(sheet, "RGB")


def write_preview(config: PipelineConfig, count: int, out_dir: str) -> list[str]:
    """Write DIR/sample-00000.png ... (one S x S RGB file per sample) and DIR/grid.png; the
    paths written, grid last."""
    os.makedirs(out_dir, exist_ok=True)
    images = first_samples(config, count)
    paths = []
    for i, img in enumerate(images):
        path = os.path.join(out_dir, f"sample-{i:05d}.png")
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB").save(path)
        paths.append(path)
    grid = os.path.join(out_dir, "grid.png")
    contact_sheet(images).save(grid)
    return paths + [grid]
