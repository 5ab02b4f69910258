"""numba kernels that reproduce Pillow 13's arithmetic exactly: uint8 HWC in, the planar
uint8 (3, H, W) slot of the output block out.

- `resize_coeffs` + `resize_into`: Pillow's bilinear, antialiased `ImagingResample`
  (libImaging/Resample.c): coefficients from `precompute_coeffs` in double precision, rounded to
  fixed point with PRECISION_BITS = 22 (`normalize_coeffs_8bpc`), a first pass into a uint8
  image of the lines the second pass needs, then the second pass; each sum starts at half a
  unit and is clipped to 0..255 after the shift. `in0`/`in1` are the box Pillow takes
  (`Image.resize(size, BILINEAR, box=...)`), in C floats. The second pass writes the output
  block itself, with the flip and HWC -> CHW fused into its stores.
- `jitter`: torchvision's ColorJitter on PIL images, which is Pillow's ImageEnhance:
  brightness, contrast and saturation are each `Image.blend(degenerate, image, factor)`
  (libImaging/Blend.c, float32 arithmetic, truncated, clipped when extrapolating) with a black
  image, the gray mean of the image (`int(mean of L + 0.5)`) or the image's own L
  (L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16, libImaging/Convert.c) as the degenerate;
  in place on the planar block, one vectorised pass per op.

Speed comes from layout, not from approximations: every inner loop runs over contiguous
samples with a constant stride, so LLVM vectorises it (the horizontal pass transposes _TILE
rows at a time to get there). `tests/test_fused.py` checks them pixel for pixel against Pillow
and torchvision.

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
           "resize_into", "vertical_first", "jitter", "render", "warm"]

PRECISION_BITS = 32 - 8 - 2
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
"""Op codes of `jitter`, the indices torchvision's ColorJitter permutes."""

_jit = numba.njit(nogil=True, cache=True)


@_jit
def resize_coeffs(in_size: int, in0: float, in1: float, out_size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear `precompute_coeffs` + `normalize_coeffs_8bpc` for output pixels
    0..out_size-1 over the input span [in0, in1) of a line of `in_size` pixels: (bounds
    (out_size, 2) int64 first pixel and count, coefficients (out_size, ksize) int32, the
    type Pillow sums them in)."""
    f0, f1 = np.float32(in0), np.float32(in1)
    scale = np.float64(np.float32(f1 - f0)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    kk = np.zeros((out_size, ksize), np.int32)
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


_TILE = 32
"""Rows the horizontal pass takes at a time, transposed so that its taps add whole vectors."""


@_jit
def _span(b: np.ndarray) -> tuple[int, int]:
    """The input lines coefficients `b` (of `resize_coeffs`) read: [first, last)."""
    first, last = b[0, 0], b[0, 0] + b[0, 1]
    for i in range(len(b)):
        first = min(first, b[i, 0])
        last = max(last, b[i, 0] + b[i, 1])
    return first, last


@_jit
def _clip_shift(acc: np.ndarray) -> None:
    """Pillow's end of a sum, in place: >> PRECISION_BITS, clipped to 0..255."""
    for e in range(len(acc)):
        v = acc[e] >> PRECISION_BITS
        acc[e] = 0 if v < 0 else (255 if v > 255 else v)


@_jit
def _store_tile(cols: np.ndarray, rows: int, y: int, planar: bool, out: np.ndarray) -> None:
    """Rows y..y+rows of the output, held column by column in `cols` (one RGB-interleaved
    column of the tile per entry), into `out`: (3, H, W) when `planar`, else (H, W, 3). Row
    by row, so that the stores are contiguous and only the loads stride (several times
    faster than storing each column as it is made)."""
    for r in range(rows):
        if planar:
            p0, p1, p2 = out[0, y + r], out[1, y + r], out[2, y + r]
            for x in range(len(cols)):
                p0[x], p1[x], p2[x] = cols[x, 3 * r], cols[x, 3 * r + 1], cols[x, 3 * r + 2]
        else:
            line = out[y + r]
            for x in range(len(cols)):
                line[x, 0], line[x, 1], line[x, 2] = cols[x, 3 * r], cols[x, 3 * r + 1], \
                    cols[x, 3 * r + 2]


@_jit
def _h_pass(src: np.ndarray, y0: int, x0: int, rows: int, hb: np.ndarray, hk: np.ndarray,
            planar: bool, flip: bool, out: np.ndarray) -> None:
    """Horizontal pass: rows y0.. of `src` (H, W, 3), columns from x0, into `out` (rows,
    len(hb), 3), or (3, rows, len(hb)) when `planar`, mirrored left-right when `flip`. _TILE
    rows at a time are transposed into columns of 3 x _TILE samples, so that each tap adds a
    contiguous vector (the loop vectorises), and the tile's output columns are transposed back
    row by row (`_store_tile`); 32-bit sums as Pillow's."""
    ow = len(hb)
    first, last = _span(hb)
    half = np.int32(1 << (PRECISION_BITS - 1))
    tile = np.zeros((last - first, 3 * _TILE), np.uint8)
    cols = np.empty((ow, 3 * _TILE), np.uint8)
    acc = np.empty(3 * _TILE, np.int32)
    for yt in range(0, rows, _TILE):
        n = min(_TILE, rows - yt)
        for r in range(n):
            row = src[y0 + yt + r, x0 + first:x0 + last]
            for x in range(last - first):
                tile[x, 3 * r], tile[x, 3 * r + 1], tile[x, 3 * r + 2] = row[x, 0], row[x, 1], \
                    row[x, 2]
        for xx in range(ow):
            acc[:] = half
            for j in range(hb[xx, 1]):
                k, col = hk[xx, j], tile[hb[xx, 0] - first + j]
                for e in range(3 * _TILE):
                    acc[e] += np.int32(col[e]) * k
            column = cols[ow - 1 - xx if flip else xx]
            for e in range(3 * _TILE):
                v = acc[e] >> PRECISION_BITS
                column[e] = 0 if v < 0 else (255 if v > 255 else v)
        _store_tile(cols, n, yt, planar, out)


@_jit
def _v_pass(src: np.ndarray, y0: int, x0: int, cols: int, vb: np.ndarray, vk: np.ndarray,
            planar: bool, flip: bool, out: np.ndarray) -> None:
    """Vertical pass: columns x0.. of `src`, rows from y0, into `out` (len(vb), cols, 3), or
    (3, len(vb), cols) mirrored when `flip` if `planar`. Each output row sums whole input rows
    (contiguous, so the loop vectorises); integer sums are exact in any order, and 32 bits
    hold them as in Pillow (255 x 2^22 x taps' sum)."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    width = cols * 3
    acc = np.empty(width, np.int32)
    for yy in range(len(vb)):
        ymin = y0 + vb[yy, 0]
        acc[:] = half
        for y in range(vb[yy, 1]):
            k = vk[yy, y]
            line = src[ymin + y, x0:x0 + cols].reshape(width)
            for j in range(width):
                acc[j] += np.int32(line[j]) * k
        _clip_shift(acc)
        if not planar:
            out[yy].reshape(width)[:] = acc
            continue
        r, g, b = out[0, yy], out[1, yy], out[2, yy]
        if flip:  # two loops, so that each has a constant stride
            for x in range(cols):
                r[cols - 1 - x], g[cols - 1 - x], b[cols - 1 - x] = acc[3 * x], \
                    acc[3 * x + 1], acc[3 * x + 2]
        else:
            for x in range(cols):
                r[x], g[x], b[x] = acc[3 * x], acc[3 * x + 1], acc[3 * x + 2]


@_jit
def resize_into(src: np.ndarray, y0: int, x0: int, hb: np.ndarray, hk: np.ndarray,
                vb: np.ndarray, vk: np.ndarray, vertical_first: bool, flip: bool,
                out: np.ndarray) -> None:
    """Resize the region of `src` (H, W, 3) uint8 whose corner is (y0, x0) into `out`
    (3, len(vb), len(hb)) uint8, mirrored left-right when `flip`, with the horizontal (hb, hk)
    and vertical (vb, vk) coefficients of `resize_coeffs` (pixel indices relative to the
    corner): Pillow's two passes, in Pillow's order (`vertical_first`, see `vertical_first`),
    the first into uint8 over just the lines the second reads, the second writing the planar
    block (flip and HWC -> CHW cost no pass of their own)."""
    if vertical_first:
        first, last = _span(hb)
        tmp = np.empty((len(vb), last - first, 3), np.uint8)
        _v_pass(src, y0, x0 + first, last - first, vb, vk, False, False, tmp)
        hb2 = hb.copy()
        hb2[:, 0] -= first
        _h_pass(tmp, 0, 0, len(vb), hb2, hk, True, flip, out)
    else:
        first, last = _span(vb)
        tmp = np.empty((last - first, len(hb), 3), np.uint8)
        _h_pass(src, y0 + first, x0, last - first, hb, hk, False, False, tmp)
        vb2 = vb.copy()
        vb2[:, 0] -= first
        _v_pass(tmp, 0, 0, len(hb), vb2, vk, True, flip, out)


def vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether Pillow 13 runs the vertical pass first when it resizes an in_w x in_h image to
    out_w x out_h (python-pillow/Pillow#9549, as 13.0.0 shipped it; read from the compiled
    `ImagingResample`, since the merged source is not in any mirror here): exactly when the
    height loses pixels, and more than twice as many as the width. `in_*` is the size of the
    image `resize` is called on, not its box: for torchvision's `resized_crop` the integer
    crop, for `Resize` the whole image. Checked on 6,000 crops (tests/test_fused.py)."""
    dh = in_h - out_h
    return dh > 0 and dh > 2 * (in_w - out_w)


@_jit
def _blend_with(samples: np.ndarray, d: int, alpha: np.float32) -> None:
    """libImaging/Blend.c on every sample, in place: `Image.blend(degenerate, image, alpha)`
    with the constant degenerate `d` (brightness: 0, contrast: the gray mean), float32, then
    truncated; the clip Pillow applies only when extrapolating changes nothing otherwise (a
    convex mix of 0..255 stays in 0..255), so one branch-free loop does both. The difference
    is taken in float32 (exact for 0..255): numba widens int32 arithmetic to int64, whose
    conversion to float has no AVX2 instruction, and the loop would not vectorise (5x
    slower, measured)."""
    fd = np.float32(d)
    for i in range(len(samples)):
        v = np.int32(fd + alpha * (np.float32(samples[i]) - fd))
        samples[i] = 0 if v < 0 else (255 if v > 255 else v)


@_jit
def _gray(r: np.int32, g: np.int32, b: np.int32) -> np.int32:
    """Pillow's L of an RGB pixel (ITU-R 601-2 luma, 16-bit fixed point), in 32 bits."""
    return (r * np.int32(19595) + g * np.int32(38470) + b * np.int32(7471)
            + np.int32(0x8000)) >> np.int32(16)


@_jit
def _gray_mean(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> int:
    """ImageEnhance.Contrast's degenerate value: the mean of the image's L, rounded half up."""
    total = 0
    for i in range(len(r)):
        total += _gray(np.int32(r[i]), np.int32(g[i]), np.int32(b[i]))
    return int(total / len(r) + 0.5)


@_jit
def _saturate(r: np.ndarray, g: np.ndarray, b: np.ndarray, alpha: np.float32) -> None:
    """ImageEnhance.Color in place: each pixel blended with its own L (in float32 from the
    uint8 samples, as `_blend_with`)."""
    for i in range(len(r)):
        fd = np.float32(_gray(np.int32(r[i]), np.int32(g[i]), np.int32(b[i])))
        v = np.int32(fd + alpha * (np.float32(r[i]) - fd))
        r[i] = 0 if v < 0 else (255 if v > 255 else v)
        v = np.int32(fd + alpha * (np.float32(g[i]) - fd))
        g[i] = 0 if v < 0 else (255 if v > 255 else v)
        v = np.int32(fd + alpha * (np.float32(b[i]) - fd))
        b[i] = 0 if v < 0 else (255 if v > 255 else v)


@_jit
def jitter(img: np.ndarray, ops: np.ndarray, factors: np.ndarray) -> None:
    """ImageEnhance ops `ops` (BRIGHTNESS, CONTRAST, SATURATION) with `factors`, in order, on
    the planar image `img` (3, H, W) uint8, in place: one vectorised pass per op (plus one for
    contrast's mean) over contiguous samples."""
    n = img.shape[1] * img.shape[2]
    flat = img.reshape(3 * n)
    r, g, b = flat[:n], flat[n:2 * n], flat[2 * n:]
    for j in range(len(ops)):
        alpha = np.float32(factors[j])
        if ops[j] == BRIGHTNESS:
            _blend_with(flat, 0, alpha)
        elif ops[j] == CONTRAST:
            _blend_with(flat, _gray_mean(r, g, b), alpha)
        else:
            _saturate(r, g, b, alpha)


@_jit
def render(img: np.ndarray, box: tuple[float, float, float, float], out_w: int, out_h: int,
           left: int, top: int, vertical_first: bool, flip: bool, ops: np.ndarray,
           factors: np.ndarray, out: np.ndarray) -> None:
    """torchvision's resize (and crop) of `img` (H, W, 3), then flip and jitter, into `out`
    (3, S, S) in one call: the region `box` (left, top, right, bottom, in `img`'s pixels) is
    resized to out_w x out_h (`resize_coeffs` + `resize_into`), of which the S x S window at
    (left, top) is kept, mirrored when `flip`, then `jitter(ops, factors)`."""
    lo, t, r, b = box
    x0, y0 = int(np.floor(lo)), int(np.floor(t))
    x1, y1 = min(int(np.ceil(r)), img.shape[1]), min(int(np.ceil(b)), img.shape[0])
    hb, hk = resize_coeffs(x1 - x0, lo - x0, r - x0, out_w)
    vb, vk = resize_coeffs(y1 - y0, t - y0, b - y0, out_h)
    n = out.shape[1]
    resize_into(img, y0, x0, hb[left:left + n], hk[left:left + n], vb[top:top + n],
                vk[top:top + n], vertical_first, flip, out)
    if len(ops):
        jitter(out, ops, factors)


def warm() -> None:
    """Compile (or load from the cache) every signature the pipeline uses."""
    src = np.zeros((6, 6, 3), np.uint8)
    hb, hk = resize_coeffs(6, 0.5, 5.5, 3)
    vb, vk = resize_coeffs(6, 0, 6, 4)
    block = np.zeros((2, 3, 4, 3), np.uint8)
    for vertical in (False, True):
        for flip in (False, True):
            resize_into(src, 0, 0, hb, hk, vb, vk, vertical, flip, block[0])
    jitter(block[0], np.array([0, 1, 2], np.int64), np.array([0.5, 1.2, 0.9]))
    for ops in ([], [2, 0, 1]):
        render(src, (0.5, 0.0, 5.5, 6.0), 3, 4, 0, 0, False, True, np.array(ops, np.int64),
               np.ones(len(ops)), np.zeros((3, 3, 3), np.uint8))


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
