"""Read batches ahead on a thread, without holding back the first one.

Ray Data's own look-ahead (`iter_batches(prefetch_batches=k)`, k >= 1) fills a window of k
batches' rows before it hands out the current batch: with k = 1 the first batch of 256 rows
waits for 512 rows, with k = 2 for 768, and in steady state each batch waits for the blocks
behind it (ray/data/_internal/block_batching/iter_batches.py, `prefetch_batches_locally`). At
start-up that is one to two batches of pool work added to the time to the first batch (0.8 to
1 s in `jobs/bench_pipeline.py` here).

`ReadAhead` asks Ray Data for no look-ahead (`prefetch_batches=0`) and reads ahead itself: a thread
pulls batches into a queue of `depth`, and each is handed out as soon as it is complete. Errors
raised while reading reach the consumer at the batch where they happened; `close()` (or leaving a
`with` block, or the consumer dropping the iterator) stops the thread and closes the source, so
no thread is left touching Ray after the run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate `source` with up to `depth` items read ahead on a background thread.

    `depth` 0 reads in the caller's thread (no thread at all). The source is iterated once;
    iterating a ReadAhead a second time is an error.
    """

    def __init__(self, source: Iterable[T], depth: int, name: str = "feedline-readahead"):
        if depth < 0:
            raise ValueError(f"read-ahead depth must be >= 0, got {depth}")
        self.source, self.depth, self.name = source, depth, name
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._thread: threading.Thread | None = None
        self._started = False

    def _put(self, item) -> bool:
        """Queue `item` unless closed meanwhile; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator[T]) -> None:
        try:
            for item in it:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failed(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        if self._started:
            raise RuntimeError("a ReadAhead is iterated once; make a new one for a new pass")
        self._started = True
        if self.depth == 0:
            yield from self.source
            return
        self._thread = threading.Thread(target=self._run, args=(iter(self.source),),
                                        name=self.name, daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop reading ahead and wait (up to `timeout_s`) for the thread to close the source."""
        self._stop.set()  # a thread waiting for room sees it within 0.1 s (`_put`)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
