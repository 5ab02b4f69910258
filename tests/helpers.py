"""What the tests share: waiting on a condition (never on the clock alone) and image bytes.

    from tests.helpers import encode, wait_for
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["wait_for", "encode"]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0,
             what: str | Callable[[], str] = "the condition", *,
             alive: Callable[[], bool] | None = None, interval: float = 0.05) -> Any:
    """Poll `condition()` until it returns something truthy, and return that. Fails the test,
    naming `what` (a callable: asked for the message when it fails), after `timeout` seconds,
    or at once when `alive()` says that what would make it true (a process, a run) has ended."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {_said(what)}: the process ended")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_said(what)}")
        time.sleep(interval)
    return result


def _said(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def encode(img: Image.Image | np.ndarray, fmt: str = "JPEG", **kw: Any) -> bytes:
    """`img` (a PIL image, or a uint8 array Pillow can take) as the bytes of a `fmt` file."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()
