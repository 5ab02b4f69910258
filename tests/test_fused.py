"""Tier 1: the fused JPEG path (pipelines.jpeg, .kernels, .fused) against torchvision v2 on PIL,
pixel for pixel, on JPEGs generated here; and its fallbacks to the Pillow path."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as F

from pipelines import kernels
from pipelines.augment import build_transform
from pipelines.fused import Encoded, FusedRecipe, augment_batch
from pipelines.jpeg import decode_scaled, probe, scale_for

SIZE = 224


def photo(w: int, h: int, seed: int = 0, **save) -> bytes:
    """A photo-like JPEG: smooth gradients, edges and noise (q90 unless told)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / (7 + seed)), 128 + 100 * np.cos(y / 11),
                    (x + y) % 256], -1)
    img[(x // 40 + y // 40) % 2 == 0] *= 0.6
    img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.5)))  # a lens: no photo has one-pixel edges everywhere
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    save.setdefault("quality", 90)
    Image.fromarray(img).save(buf, "JPEG", **save)
    return buf.getvalue()


def torchvision_train(pil: Image.Image, box, flip: bool, ops, factors) -> np.ndarray:
    """torchvision v2 on PIL with the given crop, flip and jitter factors."""
    left, top, right, bottom = box
    img = F.resized_crop(pil, top, left, bottom - top, right - left, [SIZE, SIZE],
                         antialias=True)
    if flip:
        img = F.horizontal_flip(img)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for op, f in zip(ops, factors, strict=True):
        img = adjust[op](img, f)
    return np.asarray(img).transpose(2, 0, 1)


def fused_one(recipe: FusedRecipe, data: bytes, seed: int):
    item = recipe.probe(data)
    assert item is not None
    draw = recipe.draw(item.info, np.random.default_rng(seed))
    out = np.empty((1, 3, SIZE, SIZE), np.uint8)
    recipe.run(item, np.random.default_rng(seed), out)
    return draw, out[0]


@pytest.mark.parametrize("w,h", [(320, 256), (400, 300), (500, 375), (1280, 960), (2048, 1536),
                                 (3000, 2000)])
def test_train_crops_match_torchvision_bit_for_bit_or_within_half_a_level(w, h):
    data = photo(w, h, seed=w % 7)
    recipe = FusedRecipe(build_transform("imagenet", SIZE, train=True), SIZE)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    exact = scaled = 0
    for seed in range(24):
        draw, got = fused_one(recipe, data, seed)
        want = torchvision_train(pil, draw.box, draw.flip, draw.ops, draw.factors)
        diff = np.abs(got.astype(int) - want)
        if draw.scale == 1:
            assert diff.max() == 0, (seed, draw)
            exact += 1
        else:
            assert diff.mean() <= 0.5, (seed, draw, diff.mean())
            scaled += 1
    assert exact > 0
    if w >= 2048:
        assert scaled > 0  # large photos do take the DCT-scaled decode


@pytest.mark.parametrize("w,h", [(320, 256), (400, 300), (1280, 960), (2048, 1536), (3000, 2000)])
def test_validation_matches_torchvision(w, h):
    data = photo(w, h)
    recipe = FusedRecipe(build_transform("imagenet", SIZE, train=False), SIZE)
    _, got = fused_one(recipe, data, 0)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    want = np.asarray(F.center_crop(F.resize(pil, 256, antialias=True), [SIZE, SIZE]))
    diff = np.abs(got.astype(int) - want.transpose(2, 0, 1))
    if recipe.draw(probe(data), np.random.default_rng(0)).scale == 1:
        assert diff.max() == 0
    else:
        assert diff.mean() <= 0.5


def test_large_photos_are_as_sharp_as_torchvision():
    """Crops are drawn on the full image, then decoded at the scale they need: no blur."""
    data = photo(1280, 960, seed=3)
    recipe = FusedRecipe(build_transform("imagenet", SIZE, train=True), SIZE)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    ours, theirs = [], []
    for seed in range(12):
        draw, got = fused_one(recipe, data, seed)
        want = torchvision_train(pil, draw.box, draw.flip, draw.ops, draw.factors)
        ours.append(np.abs(np.diff(got.astype(float), 2, axis=2)).mean())
        theirs.append(np.abs(np.diff(want.astype(float), 2, axis=2)).mean())
    assert np.mean(ours) / np.mean(theirs) > 0.95


def test_a_broken_kernel_is_caught():
    """The identity checks above can fail: a box off by half a pixel, or a rounding off by
    one, shows up."""
    src = np.asarray(Image.open(io.BytesIO(photo(400, 300))).convert("RGB"))
    hb, hk = kernels.resize_coeffs(300, 0, 300, SIZE)
    vb, vk = kernels.resize_coeffs(250, 0, 250, SIZE)
    out = np.empty((3, SIZE, SIZE), np.uint8)
    kernels.resize_into(src, 10, 20, hb, hk, vb, vk, False, False, out)
    want = np.asarray(Image.fromarray(src).crop((20, 10, 320, 260)).resize((SIZE, SIZE),
                                                                          Image.BILINEAR))
    np.testing.assert_array_equal(out, want.transpose(2, 0, 1))
    hb2, hk2 = kernels.resize_coeffs(300, 0.5, 300, SIZE)
    kernels.resize_into(src, 10, 20, hb2, hk2, vb, vk, False, False, out)
    assert (out != want.transpose(2, 0, 1)).any()
    kernels.resize_into(src, 10, 20, hb, hk + (1 << 13), vb, vk, False, False, out)
    assert (out != want.transpose(2, 0, 1)).any()


@pytest.mark.parametrize("w,h,vertical_first", [(300, 180, False), (180, 280, True)],
                         ids=["width-shrinks", "height-shrinks"])
@pytest.mark.parametrize("flip", [False, True])
def test_resize_writes_the_planar_block_in_either_pass_order(w, h, vertical_first, flip):
    """Both pass orders (the second pass writes the block) and the fused flip, on crops that
    shrink on one side and grow on the other: Pillow then runs the shrinking side first."""
    src = np.asarray(Image.open(io.BytesIO(photo(400, 300, seed=2))).convert("RGB"))
    hb, hk = kernels.resize_coeffs(w, 0, w, SIZE)
    vb, vk = kernels.resize_coeffs(h, 0, h, SIZE)
    assert kernels.vertical_first(w, h, SIZE, SIZE) is vertical_first
    out = np.empty((3, SIZE, SIZE), np.uint8)
    kernels.resize_into(src, 7, 13, hb, hk, vb, vk, vertical_first, flip, out)
    want = Image.fromarray(src).crop((13, 7, 13 + w, 7 + h)).resize((SIZE, SIZE),
                                                                     Image.BILINEAR)
    want = np.asarray(F.horizontal_flip(want) if flip else want).transpose(2, 0, 1)
    np.testing.assert_array_equal(out, want)
    kernels.resize_into(src, 7, 13, hb, hk, vb, vk, not vertical_first, flip, out)
    assert (out != want).any()  # the order matters, so the test can tell


def test_pass_order_is_pillows_on_crops_near_and_far_from_its_threshold():
    """Pillow 13 runs the vertical pass first when the height loses more than twice as many
    pixels as the width (kernels.vertical_first); on either side of that line the other order
    gives different pixels, so every crop here would catch a wrong rule."""
    src = np.asarray(Image.open(io.BytesIO(photo(640, 480, seed=4))).convert("RGB"))
    pil, rng = Image.fromarray(src), np.random.default_rng(0)
    out = np.empty((3, 0, 0), np.uint8)
    checked = 0
    for _ in range(160):
        ow, oh = (int(v) for v in rng.integers(40, 240, 2))
        cw = int(rng.integers(ow // 2, min(640, 3 * ow)))
        dh = 2 * (cw - ow) + int(rng.integers(-3, 4)) if rng.random() < 0.5 else \
            int(rng.integers(-oh // 2, 2 * oh))
        ch = oh + dh
        if not (0 < ch <= 480 and cw <= 640):
            continue
        left, top = int(rng.integers(0, 641 - cw)), int(rng.integers(0, 481 - ch))
        hb, hk = kernels.resize_coeffs(cw, 0, cw, ow)
        vb, vk = kernels.resize_coeffs(ch, 0, ch, oh)
        out = np.empty((3, oh, ow), np.uint8)
        kernels.resize_into(src, top, left, hb, hk, vb, vk,
                            kernels.vertical_first(cw, ch, ow, oh), False, out)
        want = F.resized_crop(pil, top, left, ch, cw, [oh, ow], antialias=True)
        np.testing.assert_array_equal(out, np.asarray(want).transpose(2, 0, 1),
                                      err_msg=f"crop {cw}x{ch} -> {ow}x{oh}")
        checked += 1
    assert checked > 100


def test_jitter_matches_pillow_for_every_order():
    pil = Image.open(io.BytesIO(photo(64, 48))).convert("RGB")
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1], [2, 0]):
        factors = [0.6, 1.4, 0.0, 1.9][:len(order)]
        out = np.ascontiguousarray(np.asarray(pil).transpose(2, 0, 1))
        kernels.jitter(out, np.array(order, np.int64), np.array(factors))
        img = pil
        adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
        for op, f in zip(order, factors, strict=True):
            img = adjust[op](img, f)
        want = np.asarray(img).transpose(2, 0, 1)
        np.testing.assert_array_equal(out, want)


def test_full_scale_decode_is_pillows_and_scales_are_exact():
    data = photo(1280, 960)
    info = probe(data)
    assert (info.width, info.height) == (1280, 960)
    np.testing.assert_array_equal(decode_scaled(data, info, 1),
                                  np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    for s in (2, 4, 8):
        assert decode_scaled(data, info, s).shape == (960 // s, 1280 // s, 3)
    # A reduction only where the reduced crop keeps s + 1 times the output per side
    # (pipelines.jpeg.scale_for).
    assert scale_for(1400, 1344, SIZE, SIZE) == 2 and scale_for(1343, 3000, SIZE, SIZE) == 1
    assert scale_for(4480, 4500, SIZE, SIZE) == 4 and scale_for(16128, 16128, SIZE, SIZE) == 8
    assert scale_for(300, 200, SIZE, SIZE) == 1


def _exif_rotated() -> bytes:
    img = Image.open(io.BytesIO(photo(120, 80)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _encoded(mode: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo(120, 80))).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo(120, 80))).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("make", [_png, _exif_rotated, lambda: _encoded("L"),
                                  lambda: _encoded("CMYK"),
                                  lambda: _encoded("RGB", progressive=True)],
                         ids=["png", "exif-rotated", "gray", "cmyk", "progressive"])
def test_fallbacks_take_the_pillow_path_with_todays_pixels(make):
    from pipelines.augment import apply_batch
    from pipelines.decode import decode_pil

    data = make()
    assert probe(data) is None
    transform = build_transform("imagenet", SIZE, train=True)
    recipe = FusedRecipe(transform, SIZE)
    img = decode_pil(data, SIZE)
    got, failed = augment_batch(recipe, transform, [img], [np.random.default_rng(5)], SIZE)
    want = apply_batch(transform, [decode_pil(data, SIZE)], SIZE, [np.random.default_rng(5)])
    assert not failed
    np.testing.assert_array_equal(got, want)


def test_echo_copies_share_one_decode_and_draw_their_own_crops():
    data = photo(1280, 960, seed=1)
    transform = build_transform("imagenet", SIZE, train=True)
    recipe = FusedRecipe(transform, SIZE)
    item, rng = recipe.probe(data), np.random.default_rng(9)
    got, failed = augment_batch(recipe, transform, [item] * 3, [rng] * 3, SIZE)
    assert not failed and len({g.tobytes() for g in got}) == 3
    again, _ = augment_batch(recipe, transform, [item] * 3, [np.random.default_rng(9)] * 3, SIZE)
    np.testing.assert_array_equal(got, again)


def test_a_truncated_jpeg_is_reported_not_raised():
    data = photo(400, 300)
    bad = Encoded(data[:len(data) // 2], probe(data))
    transform = build_transform("imagenet", SIZE, train=True)
    _, failed = augment_batch(FusedRecipe(transform, SIZE), transform, [bad],
                              [np.random.default_rng(0)], SIZE)
    assert list(failed) == [0]


def test_small_recipe_is_not_fused():
    assert not FusedRecipe(build_transform("small", 8, train=True), 8).enabled
