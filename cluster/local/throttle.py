"""A bandwidth-capped TCP proxy on 127.0.0.1: slow object storage, on purpose, for experiments.

`weed mini -filer.downloadMaxMBps` does not slow S3 GETs (they are served by the volume server,
not the filer: measured, a 3 MB object read in 11 ms with the limit at 1 MB/s), and its unit is
whole MB/s. This proxy sits in front of any S3 endpoint and caps the bytes flowing back to the
clients (the reads) with one token bucket shared by all connections, so the cap holds however
many readers there are. Requests go through unchanged (SigV4 signs the Host header the client
sent, which is the proxy's, so signatures still verify).

    with ThrottledProxy("127.0.0.1", 8333, bytes_per_s=20_000) as proxy:
        ... use proxy.endpoint as the S3 endpoint ...
"""

from __future__ import annotations

import asyncio
import threading
import time

from cluster.local.ports import free_port

__all__ = ["ThrottledProxy", "TokenBucket"]

CHUNK = 4096


class TokenBucket:
    """`rate` tokens per second, at most `burst` banked; `take(n)` waits until n are there."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be > 0, got {rate}, {burst}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def wait_s(self, n: float) -> float:
        """Seconds until `n` tokens are available (0 if now); takes them when it returns 0."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class ThrottledProxy:
    """Forwards 127.0.0.1:`port` to `host`:`target_port`, reads capped at `bytes_per_s`."""

    def __init__(self, host: str, target_port: int, bytes_per_s: float, port: int = 0):
        self.host, self.target_port, self.bytes_per_s = host, target_port, bytes_per_s
        self.port = port or free_port()
        self.bytes_down = 0
        self.connections = 0
        """Client connections accepted."""
        self.refused = 0
        """Client connections closed at once because the target did not answer (it is down)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _take(self, bucket: TokenBucket, lock: asyncio.Lock, n: int) -> None:
        async with lock:  # one waiter at a time: the cap is shared fairly, in arrival order
            while (delay := bucket.wait_s(n)) > 0:
                await asyncio.sleep(delay)

    async def _pipe(self, reader, writer, bucket: TokenBucket | None, lock) -> None:
        try:
            while data := await reader.read(CHUNK):
                if bucket is not None:
                    await self._take(bucket, lock, len(data))
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _main(self) -> None:
        bucket = TokenBucket(self.bytes_per_s, max(CHUNK, self.bytes_per_s / 20))
        lock = asyncio.Lock()

        async def handle(client_reader, client_writer):
            self.connections += 1
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                self.refused += 1
                client_writer.close()
                return
            try:
                await asyncio.gather(self._pipe(client_reader, up_writer, None, lock),
                                     self._pipe(up_reader, client_writer, bucket, lock))
            except asyncio.CancelledError:  # stop(): end quietly, the sockets are closed
                pass

        server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        self._stop = asyncio.Event()
        self._started.set()
        async with server:
            await self._stop.wait()
        # Close the connections still open, and wait for them to finish closing.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._started.set()
        finally:
            self._loop.close()

    def start(self) -> ThrottledProxy:
        self._thread = threading.Thread(target=self._run, name="throttled-proxy", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"throttled proxy could not start on port {self.port}: "
                               f"{self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._loop = self._thread = self._stop = None

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
