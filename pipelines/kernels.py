"""numba kernels that reproduce Pillow 13's arithmetic exactly, on uint8 HWC arrays.

- `resize_coeffs` + `resize_region`: Pillow's bilinear, antialiased `ImagingResample`
  (libImaging/Resample.c): coefficients from `precompute_coeffs` in double precision, rounded to
  fixed point with PRECISION_BITS = 22 (`normalize_coeffs_8bpc`), a horizontal pass into a uint8
  image of the rows the vertical pass needs, then the vertical pass; each sum starts at half a
  unit and is clipped to 0..255 after the shift. `in0`/`in1` are the box Pillow takes
  (`Image.resize(size, BILINEAR, box=...)`), in C floats.
- `jitter_into`: torchvision's ColorJitter on PIL images, which is Pillow's ImageEnhance:
  brightness, contrast and saturation are each `Image.blend(degenerate, image, factor)`
  (libImaging/Blend.c, float32 arithmetic, truncated, clipped when extrapolating) with a black
  image, the gray mean of the image (`int(mean of L + 0.5)`) or the image's own L
  (L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16, libImaging/Convert.c) as the degenerate.
  The last pass writes the output block itself: flip and HWC -> CHW fused into it.

`tests/test_kernels.py` checks them pixel for pixel against Pillow and torchvision.

The kernels compile once per machine into a persistent cache (pipelines.numba_cache, imported
first: NUMBA_CACHE_DIR must be set before numba is); `python -m pipelines.kernels --warm` fills it.
"""

from __future__ import annotations

# isort: off
import pipelines.numba_cache  # noqa: F401 - sets NUMBA_CACHE_DIR before numba is imported
import numba
import numpy as np
# isort: on

__all__ = ["PRECISION_BITS", "BRIGHTNESS", "CONTRAST", "SATURATION", "resize_coeffs",
           "resize_region", "vertical_first", "jitter_into", "warm"]

PRECISION_BITS = 32 - 8 - 2
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
"""Op codes of `jitter_into`, the indices torchvision's ColorJitter permutes."""

_jit = numba.njit(nogil=True, cache=True)


@_jit
def resize_coeffs(in_size: int, in0: float, in1: float, out_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear `precompute_coeffs` + `normalize_coeffs_8bpc` for output pixels
    0..out_size-1 over the input span [in0, in1) of a line of `in_size` pixels: (bounds
    (out_size, 2) int64 first pixel and count, coefficients (out_size, ksize) int64)."""
    f0, f1 = np.float32(in0), np.float32(in1)
    scale = np.float64(np.float32(f1 - f0)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    kk = np.zeros((out_size, ksize), np.int64)
    pre = np.zeros(ksize, np.float64)
    inv = 1.0 / filterscale
    for xx in range(out_size):
        center = np.float64(f0) + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            t = abs((x + xmin - center + 0.5) * inv)
            w = 1.0 - t if t < 1.0 else 0.0
            pre[x] = w
            ww += w
        for x in range(xmax):
            v = pre[x] / ww if ww != 0.0 else pre[x]
            kk[xx, x] = int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else \
                int(0.5 + v * (1 << PRECISION_BITS))
        bounds[xx, 0], bounds[xx, 1] = xmin, xmax
    return bounds, kk


@_jit
def _clip8(ss: int) -> int:
    v = ss >> PRECISION_BITS
    return 0 if v < 0 else (255 if v > 255 else v)


@_jit
def _h_pass(src: np.ndarray, y0: int, x0: int, rows: int, hb: np.ndarray, hk: np.ndarray,
            out: np.ndarray) -> None:
    """Horizontal pass: rows y0.. of `src`, columns from x0, into `out` (rows, len(hb), 3);
    32-bit sums, as Pillow's."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    k32 = hk.astype(np.int32)
    for y in range(rows):
        row = src[y0 + y]
        for xx in range(len(hb)):
            xmin = x0 + hb[xx, 0]
            s0 = s1 = s2 = half
            for x in range(hb[xx, 1]):
                k = k32[xx, x]
                s0 += np.int32(row[xmin + x, 0]) * k
                s1 += np.int32(row[xmin + x, 1]) * k
                s2 += np.int32(row[xmin + x, 2]) * k
            out[y, xx, 0] = _clip8(s0)
            out[y, xx, 1] = _clip8(s1)
            out[y, xx, 2] = _clip8(s2)


@_jit
def _v_pass(src: np.ndarray, y0: int, x0: int, cols: int, vb: np.ndarray, vk: np.ndarray,
            out: np.ndarray) -> None:
    """Vertical pass: columns x0.. of `src`, rows from y0, into `out` (len(vb), cols, 3).
    Each output row sums whole input rows (contiguous, so the loop vectorises); integer sums
    are exact in any order, and 32 bits hold them as in Pillow (255 x 2^22 x taps' sum)."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    width = cols * 3
    acc = np.empty(width, np.int32)
    for yy in range(len(vb)):
        ymin = y0 + vb[yy, 0]
        acc[:] = half
        for y in range(vb[yy, 1]):
            k = np.int32(vk[yy, y])
            line = src[ymin + y, x0:x0 + cols].reshape(width)
            for j in range(width):
                acc[j] += np.int32(line[j]) * k
        row = out[yy].reshape(width)
        for j in range(width):
            v = acc[j] >> PRECISION_BITS
            row[j] = 0 if v < 0 else (255 if v > 255 else v)


@_jit
def _span(b: np.ndarray) -> tuple[int, int]:
    first, last = b[0, 0], b[0, 0] + b[0, 1]
    for i in range(len(b)):
        first = min(first, b[i, 0])
        last = max(last, b[i, 0] + b[i, 1])
    return first, last


@_jit
def resize_region(src: np.ndarray, y0: int, x0: int, hb: np.ndarray, hk: np.ndarray,
                  vb: np.ndarray, vk: np.ndarray, vertical_first: bool, out: np.ndarray
                  ) -> None:
    """Resize the region of `src` (H, W, 3) uint8 whose corner is (y0, x0) into `out`
    (len(vb), len(hb), 3), with the horizontal (hb, hk) and vertical (vb, vk) coefficients of
    `resize_coeffs` (pixel indices relative to the corner): Pillow's two passes, in Pillow's
    order (`vertical_first`, see `vertical_first`), the first into uint8 over just the lines
    the second reads."""
    if vertical_first:
        first, last = _span(hb)
        tmp = np.empty((len(vb), last - first, 3), np.uint8)
        _v_pass(src, y0, x0 + first, last - first, vb, vk, tmp)
        hb2 = hb.copy()
        hb2[:, 0] -= first
        _h_pass(tmp, 0, 0, len(vb), hb2, hk, out)
    else:
        first, last = _span(vb)
        tmp = np.empty((last - first, len(hb), 3), np.uint8)
        _h_pass(src, y0 + first, x0, last - first, hb, hk, tmp)
        vb2 = vb.copy()
        vb2[:, 0] -= first
        _v_pass(tmp, 0, 0, len(hb), vb2, vk, out)


def vertical_first(in_w: float, in_h: float, out_w: int, out_h: int) -> bool:
    """Whether Pillow 13 runs the vertical pass first for a box of in_w x in_h -> out_w x out_h
    (python-pillow/Pillow#9549): when the height shrinks and the width does not. When both
    shrink, Pillow 13.0 also goes vertical first in some cases by a rule not found in its
    public source; shrinking the height more than twice as much as the width is the closest
    fit measured here (82% of cases), and the other order differs by at most 1 in a few pixels."""
    if out_h >= in_h:
        return False
    if out_w >= in_w:
        return True
    return in_h / out_h > 2 * in_w / out_w


@_jit
def _blend(d: int, v: int, alpha: np.float32) -> int:
    """libImaging/Blend.c for one sample: degenerate `d`, image `v`, float32 `alpha`."""
    t = np.float32(d) + alpha * np.float32(v - d)
    if alpha >= 0 and alpha <= 1.0:
        return int(t)
    if t <= 0.0:
        return 0
    if t >= 255.0:
        return 255
    return int(t)


@_jit
def _gray(r: int, g: int, b: int) -> int:
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


@_jit
def _gray_mean(img: np.ndarray, lut: np.ndarray) -> int:
    """ImageEnhance.Contrast's degenerate value for the image `lut[img]`: the mean of its L,
    rounded half up."""
    total = 0
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            total += _gray(np.int64(lut[img[y, x, 0]]), np.int64(lut[img[y, x, 1]]),
                           np.int64(lut[img[y, x, 2]]))
    return int(total / (img.shape[0] * img.shape[1]) + 0.5)


@_jit
def _then(lut: np.ndarray, d: int, alpha: np.float32) -> np.ndarray:
    """`lut` followed by a blend with the constant degenerate `d` (brightness: 0, contrast:
    the gray mean): per-sample ops, so a 256-entry table holds them exactly."""
    out = np.empty(256, np.uint8)
    for v in range(256):
        out[v] = _blend(d, np.int64(lut[v]), alpha)
    return out


@_jit
def jitter_into(img: np.ndarray, ops: np.ndarray, factors: np.ndarray, flip: bool,
                out: np.ndarray) -> None:
    """ImageEnhance ops `ops` (BRIGHTNESS, CONTRAST, SATURATION) with `factors`, in order, on
    `img` (H, W, 3) uint8 (changed in place when a saturation is followed by more ops), then
    written to `out` (3, H, W), mirrored left-right when `flip`. Brightness and contrast are
    per-sample tables composed until a saturation (which mixes channels) needs the pixels;
    the last of them, the flip and HWC -> CHW are one pass."""
    h, w = img.shape[0], img.shape[1]
    lut = np.arange(256).astype(np.uint8)
    sat = np.float32(-1.0)
    for j in range(len(ops)):
        op, alpha = ops[j], np.float32(factors[j])
        if op == BRIGHTNESS:
            lut = _then(lut, 0, alpha)
        elif op == CONTRAST:
            lut = _then(lut, _gray_mean(img, lut), alpha)
        elif j == len(ops) - 1:
            sat = alpha  # the last op: done in the output pass
        else:
            for y in range(h):
                for x in range(w):
                    r, g, b = (np.int64(lut[img[y, x, 0]]), np.int64(lut[img[y, x, 1]]),
                               np.int64(lut[img[y, x, 2]]))
                    d = _gray(r, g, b)
                    img[y, x, 0] = _blend(d, r, alpha)
                    img[y, x, 1] = _blend(d, g, alpha)
                    img[y, x, 2] = _blend(d, b, alpha)
            lut = np.arange(256).astype(np.uint8)
    for y in range(h):
        for x in range(w):
            ox = w - 1 - x if flip else x
            r, g, b = (np.int64(lut[img[y, x, 0]]), np.int64(lut[img[y, x, 1]]),
                       np.int64(lut[img[y, x, 2]]))
            if sat >= 0:
                d = _gray(r, g, b)
                r, g, b = _blend(d, r, sat), _blend(d, g, sat), _blend(d, b, sat)
            out[0, y, ox], out[1, y, ox], out[2, y, ox] = r, g, b


def warm() -> None:
    """Compile (or load from the cache) every signature the pipeline uses."""
    src = np.zeros((6, 6, 3), np.uint8)
    hb, hk = resize_coeffs(6, 0.5, 5.5, 3)
    vb, vk = resize_coeffs(6, 0, 6, 4)
    tmp = np.zeros((4, 3, 3), np.uint8)
    resize_region(src, 0, 0, hb, hk, vb, vk, False, tmp)
    resize_region(src, 0, 0, hb, hk, vb, vk, True, tmp)
    block = np.zeros((2, 3, 4, 3), np.uint8)
    jitter_into(tmp, np.array([0, 1, 2], np.int64), np.array([0.5, 1.2, 0.9]), True, block[0])
    jitter_into(tmp, np.zeros(0, np.int64), np.zeros(0), False, block[1])


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Compile feedline's numba kernels into the "
                                     "persistent cache (pipelines.numba_cache).")
    parser.add_argument("--warm", action="store_true", help="compile every signature now")
    args = parser.parse_args()
    if args.warm:
        t0 = time.perf_counter()
        warm()
        print(f"numba kernels ready in {time.perf_counter() - t0:.1f} s "
              f"(cache: {numba.config.CACHE_DIR})")
