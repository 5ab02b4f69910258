"""Tier 1: every image mode real data sets contain decodes to the right uint8 RGB pixels, and
goes through the augmentation recipes; images too large to decode safely are counted as bad."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from pipelines.augment import apply_batch, build_transform, decode_side
from pipelines.badrecords import BadRecords
from pipelines.decode import decode_image, decode_many
from tests.helpers import encode

RED = (220, 20, 30)


def test_sixteen_bit_png_keeps_its_gray_levels():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # PIL's convert("RGB") would clip every level above 255 to white (mean ~254)
    assert np.array_equal(out[..., 1], (ramp >> 8).astype(np.uint8))
    assert 100 < out.mean() < 140


def test_float_tiff_is_scaled_not_clipped():
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = decode_image(encode(Image.fromarray(ramp, "F"), "TIFF"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 120 < out.mean() < 135


def test_palette_with_transparency_decodes_without_a_warning():
    img = Image.new("RGB", (16, 16), RED).quantize(4)
    img.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = decode_image(encode(img, "PNG", transparency=0))
    assert out.shape == (16, 16, 3) and tuple(out[8, 8]) == RED


def test_rgba_and_la_drop_alpha_like_torchvision_loaders():
    rgba = Image.new("RGBA", (12, 10), (*RED, 40))
    assert tuple(decode_image(encode(rgba, "PNG"))[5, 5]) == RED
    la = Image.new("LA", (12, 10), (90, 0))
    assert tuple(decode_image(encode(la, "PNG"))[5, 5]) == (90, 90, 90)


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = Image.new("RGB", (32, 32), RED).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (32, 32, 3)
    assert np.abs(out[16, 16].astype(int) - RED).max() < 12


def test_progressive_jpeg_decodes_and_takes_draft_mode():
    img = Image.new("RGB", (800, 600), RED)
    data = encode(img, "JPEG", quality=90, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    small = decode_image(data, min_side=224)
    assert min(small.shape[:2]) >= 224 and small.shape[0] < 600
    assert np.abs(small[100, 100].astype(int) - RED).max() < 12


@pytest.mark.parametrize("orientation,shape", [(1, (20, 40)), (3, (20, 40)), (6, (40, 20)),
                                               (8, (40, 20))])
def test_exif_orientation_turns_the_picture_upright(orientation, shape):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste(Image.new("RGB", (10, 20), RED), (0, 0))  # red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape[:2] == shape
    red = out[..., 0] > 150
    # where the left band ends up: 1 left, 3 right (180), 6 top (90 cw), 8 bottom (90 ccw)
    where = {1: red[:, :5], 3: red[:, -5:], 6: red[:5, :], 8: red[-5:, :]}[orientation]
    assert where.mean() > 0.9


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (6000, 4000)])
@pytest.mark.parametrize("recipe", ["imagenet", "small"])
def test_tiny_and_huge_images_go_through_the_recipes(size, recipe):
    data = encode(Image.new("RGB", size, RED), "JPEG", quality=90)
    side = 224 if recipe == "imagenet" else 8
    for train in (True, False):
        arr = decode_image(data, decode_side(recipe, side, train))
        if size[0] > 1000:
            assert min(arr.shape[:2]) < 4000  # draft mode decoded a fraction of the pixels
        out = apply_batch(build_transform(recipe, side, train), [arr], side)
        assert out.shape == (1, 3, side, side) and out.dtype == np.uint8


def test_decompression_bombs_are_counted_not_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2x this raises in PIL
    good = encode(Image.new("RGB", (10, 10)), "PNG")
    bomb = encode(Image.new("RGB", (100, 100)), "PNG")
    stats = BadRecords()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _, kept = decode_many([good, bomb], ["ok", "bomb"], stats)
    assert kept == [0] and stats.bad == {"too_large": 1} and stats.sample_keys == ["bomb"]
