"""ReadAhead: batches read ahead on a thread, the first one handed out as soon as it exists."""

import threading
import time

import pytest

from pipelines.readahead import ReadAhead
from tests.helpers import wait_for

WAIT_S = 10.0


def test_the_first_item_is_handed_out_before_the_source_makes_the_next():
    # Ray Data's look-ahead would wait for the items behind the first one: here they only come
    # once the consumer holds the first, so a source held back would fail this test.
    taken = threading.Event()

    def source():
        yield 0
        if not taken.wait(WAIT_S):
            raise AssertionError("the first item was held back until more were made")
        yield 1

    items = ReadAhead(source(), depth=2)
    it = iter(items)
    assert next(it) == 0
    taken.set()
    assert list(it) == [1]


def test_reads_up_to_depth_ahead_of_the_consumer_and_no_further():
    made = []

    def source():
        for i in range(10):
            made.append(i)
            yield i

    it = iter(ReadAhead(source(), depth=3))
    assert next(it) == 0
    # The thread fills the queue (3) and makes one more that waits for room: 0 + 3 + 1.
    wait_for(lambda: len(made) == 5, WAIT_S, "the reader to fill its queue and make one more",
             interval=0.01)
    time.sleep(0.2)
    assert len(made) == 5
    assert list(it) == list(range(1, 10))


def test_every_item_arrives_once_and_in_order():
    assert list(ReadAhead(iter(range(1000)), depth=2)) == list(range(1000))
    assert list(ReadAhead([], depth=2)) == []


def test_an_error_in_the_source_reaches_the_consumer_after_the_items_before_it():
    def source():
        yield "a"
        yield "b"
        raise ValueError("shard s3://b/x.parquet is unreadable")

    got = []
    with pytest.raises(ValueError, match="x.parquet is unreadable"):
        for item in ReadAhead(source(), depth=2):
            got.append(item)
    assert got == ["a", "b"]


def test_stopping_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    reader = ReadAhead(source(), depth=2)
    for item in reader:
        if item == 3:
            break
    assert closed.is_set()
    assert reader._thread is not None and not reader._thread.is_alive()


def test_close_from_outside_the_loop_stops_a_thread_waiting_for_room():
    reader = ReadAhead(iter(range(100)), depth=1)
    it = iter(reader)
    assert next(it) == 0
    wait_for(reader._queue.full, WAIT_S, "the reader's queue to fill", interval=0.01)
    reader.close()
    assert not reader._thread.is_alive()


def test_depth_zero_reads_in_the_callers_thread():
    threads = []

    def source():
        for i in range(3):
            threads.append(threading.current_thread())
            yield i

    assert list(ReadAhead(source(), depth=0)) == [0, 1, 2]
    assert threads == [threading.current_thread()] * 3


def test_misuse_is_refused_with_a_clear_error():
    reader = ReadAhead(iter(range(3)), depth=1)
    assert list(reader) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="iterated once"):
        list(reader)
    with pytest.raises(ValueError, match="depth must be >= 0"):
        ReadAhead([], depth=-1)
