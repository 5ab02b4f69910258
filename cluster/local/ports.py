"""Free TCP ports on 127.0.0.1 for the local services (object store, Ray heads, Prometheus,
the throttle proxy): the one place that picks them."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int] | None = None, grpc_offset: bool = False) -> int:
    """A free 127.0.0.1 port (and port + 10000 too with `grpc_offset`)."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pair = {port, port + 10000} if grpc_offset else {port}
        if max(pair) < 65536 and not pair & taken and all(_bindable(p) for p in pair):
            taken |= pair
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")
