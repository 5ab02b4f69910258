"""Tier 1: the shared test helpers themselves can fail."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode, wait_for


def test_wait_for_returns_the_first_truthy_value_and_names_what_timed_out():
    calls = []
    assert wait_for(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 5, "three") == "ready"
    started = time.monotonic()
    with pytest.raises(AssertionError, match="timed out after 0.2 s waiting for the sky"):
        wait_for(lambda: False, 0.2, "the sky")
    assert time.monotonic() - started < 2
    with pytest.raises(AssertionError, match="gave up waiting for x: the process ended"):
        wait_for(lambda: False, 60, "x", alive=lambda: False)
    with pytest.raises(AssertionError, match="waiting for late news"):
        wait_for(lambda: False, 0.1, lambda: "late " + "news")


def test_encode_makes_the_format_asked_for():
    jpeg = encode(Image.new("RGB", (8, 6), (200, 30, 40)), quality=95)
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (8, 6)
    png = encode(np.full((4, 4), 7, np.uint8), "PNG")
    assert Image.open(io.BytesIO(png)).getpixel((0, 0)) == 7
