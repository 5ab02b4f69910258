"""Pure decoding: encoded image bytes -> RGB images (PIL, or uint8 HWC arrays); bad input counted,
not raised."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.badrecords import BadRecords

__all__ = ["decode_pil", "decode_image", "decode_many", "bad_kind"]


def decode_image(data: bytes, min_side: int | None = None) -> np.ndarray:
    """Decode `data` to a (H, W, 3) uint8 RGB array (see `decode_pil`)."""
    return np.asarray(decode_pil(data, min_side))


def decode_pil(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode `data` to an RGB PIL image.

    With `min_side`, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter
    side is still >= `min_side` (PIL draft mode): the bytes a crop of that size needs, at a
    fraction of the cost. EXIF orientation is applied so rotated photos come out upright.
    """
    if data is None:
        raise ValueError("image file could not be read")
    if not data:
        raise ValueError("zero-byte image")
    img = Image.open(io.BytesIO(data))
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 1.0:
            img.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
    ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright image
    if img.mode in _WIDE_GRAY:
        return Image.fromarray(_wide_gray_to_rgb(img), "RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
    if img.mode != "RGB":
        # Alpha is dropped, as PIL's and torchvision's own loaders do; CMYK and YCbCr JPEGs,
        # palettes, 1-bit and gray images are converted by PIL.
        img = img.convert("RGB")
    img.load()  # a JPEG already in RGB is decoded lazily: decode now, so errors are caught here
    return img


_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""Gray modes wider than 8 bits: 16-bit PNG and TIFF open as I;16 (or I), float TIFF as F.
PIL's own convert("RGB") clips them at 255, which turns a 16-bit image white."""


def _wide_gray_to_rgb(img: Image.Image) -> np.ndarray:
    values = np.asarray(img)
    if img.mode == "F":
        top = 1.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 255.0
        gray = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round()
    else:  # 16-bit samples (I holds them in 32 bits): keep the top 8 bits
        gray = np.clip(values.astype(np.int64), 0, 65535) >> 8
    gray = gray.astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def bad_kind(err: Exception, data: bytes | None) -> str:
    """The bad-record kind of a decoder error on `data`."""
    if data is None:  # the reader could not fetch this file (see sources.read_unit)
        return "unreadable_shard"
    if not data:
        return "zero_bytes"
    if isinstance(err, UnidentifiedImageError):
        return "not_an_image"
    if isinstance(err, Image.DecompressionBombError):
        return "too_large"
    if isinstance(err, OSError) and "truncated" in str(err).lower():
        return "truncated"
    return "undecodable"


def decode_many(
    images, keys, stats: BadRecords, min_side: int | None = None, shard: str = "",
    epoch: int = 0, rows=None, probe=None,
) -> tuple[list, list[int]]:
    """Decode a batch; returns the RGB images and the indices of the rows that decoded. The
    others are counted in `stats` (as records of `shard`, in `epoch`, with their row ids from
    `rows` when given). With `probe` (bytes -> object or None), a row it accepts is returned
    as what it returns, undecoded: its decoder runs later and reports its own failures."""
    out, kept = [], []
    for i, (data, key) in enumerate(zip(images, keys, strict=True)):
        try:
            img = (probe(data) if probe is not None and data else None) or \
                decode_pil(data, min_side)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad record
            stats.add_bad(bad_kind(e, data), str(key), shard, epoch, why=str(e),
                          row=-1 if rows is None else int(rows[i]))
            continue
        out.append(img)
        kept.append(i)
    stats.ok += len(kept)
    return out, kept
