"""Tier 1: decoding bytes to uint8 RGB, and bad input counted rather than raised."""


import numpy as np
import pytest
from PIL import Image

from pipelines.badrecords import BadRecords
from pipelines.decode import decode_image, decode_many
from tests.helpers import encode


def test_gray_png_becomes_rgb_with_same_pixels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)


def test_jpeg_draft_decodes_smaller_but_never_below_requested_side():
    img = Image.new("RGB", (800, 600), (200, 30, 40))
    data = encode(img, "JPEG", quality=90)
    full = decode_image(data)
    small = decode_image(data, min_side=224)
    assert full.shape == (600, 800, 3)
    assert min(small.shape[:2]) >= 224 and small.shape[0] < 600  # 1/2 scale: 300 x 400
    assert abs(int(small[..., 0].mean()) - 200) < 5  # same picture, fewer pixels


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.shape[:2] == (40, 20)


def test_bad_records_are_skipped_and_counted_by_kind():
    good = encode(Image.new("RGB", (10, 10)), "PNG")
    truncated = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200]
    stats = BadRecords()
    arrays, kept = decode_many([good, b"", b"not an image", truncated, good],
                               ["a", "b", "c", "d", "e"], stats)
    assert kept == [0, 4] and len(arrays) == 2
    assert stats.ok == 2
    assert stats.bad["zero_bytes"] == 1 and stats.bad["not_an_image"] == 1
    assert stats.bad["truncated"] == 1
    assert stats.sample_keys == ["b", "c", "d"]


def test_zero_bytes_raise_a_clear_error_when_decoded_directly():
    with pytest.raises(ValueError, match="zero-byte"):
        decode_image(b"")
