"""JPEG header probe and decode at an exact DCT scale (simplejpeg: libjpeg-turbo 3).

`probe` says whether an encoded image can take the fast path: a baseline (or extended
sequential) YCbCr JPEG, upright (no EXIF or XMP orientation other than 1). Everything else
(non-JPEG, grayscale, CMYK/YCCK, progressive, lossless or arithmetic-coded, rotated) returns
None and goes through Pillow (pipelines.decode), exactly as before. At full scale simplejpeg's
pixels are Pillow's (both are libjpeg-turbo's islow IDCT with fancy upsampling); tested.

simplejpeg scales by any n/8; only 1/2, 1/4 and 1/8 are cheaper than a full decode (the others
take a slower IDCT), so `decode_scaled` asks for exactly ceil(W/s) x ceil(H/s).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import simplejpeg

__all__ = ["JpegInfo", "probe", "scale_for", "decode_scaled", "SCALES"]

SCALES = (8, 4, 2, 1)
"""DCT reductions libjpeg-turbo decodes faster than full size, largest first."""
_SEQUENTIAL = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential (Huffman)
_OTHER_SOF = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # progressive, lossless, arith.


@dataclass(frozen=True)
class JpegInfo:
    """What the header says: full size and chroma subsampling."""

    width: int
    height: int
    subsampling: str


def _orientation(exif: bytes) -> int | None:
    """The EXIF orientation tag of an APP1 Exif payload (after b"Exif\\0\\0"); None if absent,
    -1 when it cannot be read."""
    try:
        order = {b"II": "<", b"MM": ">"}[exif[:2]]
        (ifd,) = struct.unpack(order + "I", exif[4:8])
        (count,) = struct.unpack(order + "H", exif[ifd:ifd + 2])
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, kind = struct.unpack(order + "HH", exif[at:at + 4])
            if tag == 0x0112:
                return struct.unpack(order + "H", exif[at + 8:at + 10])[0] if kind == 3 else -1
    except (KeyError, struct.error):
        return -1
    return None


def _markers_ok(data: bytes) -> bool:
    """Walk the markers up to the first scan: a sequential frame and no rotation."""
    pos, frame, n = 2, False, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xDA:
            return frame
        if marker in _SEQUENTIAL:
            frame = True
        elif marker in _OTHER_SOF:
            return False
        elif marker == 0xE1 and body.startswith(b"Exif\0\0"):
            if _orientation(body[6:]) not in (None, 1):
                return False
        elif marker == 0xE1 and b"Orientation" in body:  # XMP: Pillow reads tiff:Orientation
            return False
        pos += 2 + length
    return False


def probe(data: bytes) -> JpegInfo | None:
    """The header of a JPEG the fast path decodes exactly as Pillow would; None otherwise."""
    if not data or data[:3] != b"\xff\xd8\xff" or not _markers_ok(data):
        return None
    try:
        height, width, colorspace, subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace != "YCbCr" or width < 1 or height < 1:
        return None
    return JpegInfo(width=width, height=height, subsampling=subsampling)


def scale_for(crop_w: float, crop_h: float, out_w: int, out_h: int) -> int:
    """The largest DCT reduction s (1, 2, 4, 8) at which a crop_w x crop_h crop, decoded at
    1/s, still has at least s + 1 times out_w x out_h pixels on each side.

    Not merely >= the output size: a reduced decode filters the image with libjpeg's scaled
    IDCT, torchvision with a wider bilinear kernel on the full image, and the two agree only
    when the resize that follows still shrinks by a good factor. Measured on the noisy photos
    of tests/test_fused.py (mean |difference| of a 224 px sample, after jitter, by how many
    times the output the reduced crop has per side): at 1/2, 0.72 (max 0.98) at 1-1.25x, 0.48
    (0.68) at 1.75-2x, 0.32 (0.51) at 2.5-3x, 0.27 (0.40) at 3-4x; at 1/4, 0.75-0.87 (1.2)
    below 2x, 0.43 (0.56) at 2.5-3x, 0.33 (0.53) at 3-4x; at 1/8, 1.4 (2.0) below 2x. s + 1
    times keeps every sample within 0.5 of torchvision's (issue 21's bound); crops of 1,344 px
    and more per side (at 224) still decode at half size."""
    for s in SCALES:
        if crop_w / s >= (s + 1) * out_w and crop_h / s >= (s + 1) * out_h:
            return s
    return 1


def decode_scaled(data: bytes, info: JpegInfo, scale: int) -> np.ndarray:
    """Decode at 1/`scale`: an (ceil(H/s), ceil(W/s), 3) uint8 RGB array. Raises ValueError
    on a corrupt or truncated JPEG."""
    if scale == 1:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    w, h = -(-info.width // scale), -(-info.height // scale)
    out = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=w, min_height=h)
    if out.shape[:2] != (h, w):
        raise ValueError(f"DCT scale 1/{scale} gave {out.shape[1]}x{out.shape[0]}, "
                         f"not {w}x{h}")
    return out
