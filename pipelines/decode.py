"""Pure decoding: encoded image bytes -> uint8 HWC RGB arrays; bad input counted, not raised."""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["decode_image", "DecodeStats", "decode_many"]

log = logging.getLogger(__name__)
_SAMPLE_KEYS = 5


def decode_image(data: bytes, min_side: int | None = None) -> np.ndarray:
    """Decode `data` to a (H, W, 3) uint8 RGB array.

    With `min_side`, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter
    side is still >= `min_side` (PIL draft mode): the bytes a crop of that size needs, at a
    fraction of the cost. EXIF orientation is applied so rotated photos come out upright.
    """
    if not data:
        raise ValueError("zero-byte image")
    img = Image.open(io.BytesIO(data))
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 1.0:
            img.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


@dataclass
class DecodeStats:
    """Counts of good and bad records seen by one decoder."""

    ok: int = 0
    bad: Counter = field(default_factory=Counter)
    """Bad records by kind (zero_bytes, not_an_image, truncated)."""
    sample_keys: list[str] = field(default_factory=list)
    """A few keys of bad records, for the log and the summary."""

    def add_bad(self, kind: str, key: str) -> None:
        self.bad[kind] += 1
        if len(self.sample_keys) < _SAMPLE_KEYS:
            self.sample_keys.append(key)


def _kind(err: Exception, data: bytes) -> str:
    if not data:
        return "zero_bytes"
    if isinstance(err, UnidentifiedImageError):
        return "not_an_image"
    if isinstance(err, OSError) and "truncated" in str(err).lower():
        return "truncated"
    return "undecodable"


def decode_many(
    images, keys, stats: DecodeStats, min_side: int | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """Decode a batch; returns the arrays and the indices of the rows that decoded."""
    out, kept = [], []
    for i, (data, key) in enumerate(zip(images, keys, strict=True)):
        try:
            arr = decode_image(data, min_side)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad record
            kind = _kind(e, data)
            stats.add_bad(kind, str(key))
            log.warning("skipping bad record %s (%s): %s", key, kind, e)
            continue
        out.append(arr)
        kept.append(i)
    stats.ok += len(kept)
    return out, kept
