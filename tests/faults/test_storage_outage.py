"""Tier 2+3: the object store (a second, real SeaweedFS) goes down under a running stream. Reads
retry with backoff and the stream completes, every example once, when it comes back on the same
data; when it stays down past the deadline the stream stops with an error naming the endpoint,
it never hangs."""

import gc
import threading
import time

import pytest

from cluster.local.object_store import EmbeddedObjectStore
from cluster.local.throttle import ThrottledProxy
from pipelines import (
    PipelineConfig,
    PreprocessConfig,
    SourceConfig,
    StorageConfig,
    StorageError,
    build_dataset,
    plan_source,
)
from pipelines.datasets import write_digits
from tests.helpers import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.services]


@pytest.fixture(scope="module")
def flaky_store(object_store, tmp_path_factory):
    """A store of its own (so stopping it disturbs no other test), with the session store's
    credentials: the Ray workers have those in their environment."""
    store = EmbeddedObjectStore(data_dir=str(tmp_path_factory.mktemp("flaky")),
                                access_key=object_store.access_key,
                                secret_key=object_store.secret_key)
    store.start()
    url = write_digits(f"s3://{store.bucket}/digits",
                       StorageConfig(endpoint=store.endpoint)).url
    yield store, f"{url}/val"
    store.stop()


def config(store, url, deadline_s, endpoint=None):
    storage = StorageConfig(endpoint=endpoint or store.endpoint, outage_deadline_s=deadline_s)
    return PipelineConfig(source=SourceConfig(url=url, storage=storage, rows_per_unit=60),
                          preprocess=PreprocessConfig(recipe="small", image_size=8,
                                                      max_actors=1, output_rows=60),
                          shuffle=False)


def test_reads_wait_out_an_outage_and_the_stream_completes(ray_cluster, flaky_store):
    store, url = flaky_store
    # The pool reads through a proxy (no cap): it counts the connections it cannot pass on
    # while the store is down, so the store comes back only once a read has met the outage.
    with ThrottledProxy("127.0.0.1", store.s3_port, bytes_per_s=1e9) as proxy:
        cfg = config(store, url, deadline_s=120, endpoint=proxy.endpoint)
        plan = plan_source(cfg.source)  # planned while the store is up
        store.stop()
        refused, restarting_at = [], []

        def restart_once_a_read_met_the_outage():
            try:
                refused.append(wait_for(lambda: proxy.refused, 90, "a read refused by the outage"))
            finally:  # back up in any case: the module's other test needs it
                restarting_at.append(time.time())
                store.start()  # returns once the bucket answers; reads may resume a moment before

        restart = threading.Thread(target=restart_once_a_read_met_the_outage, daemon=True)
        restart.start()
        first_batch_at, keys = None, []
        for batch in build_dataset(cfg, plan=plan).iter_batches(batch_size=None):
            first_batch_at = first_batch_at or time.time()
            keys.extend(batch["key"])
        restart.join(timeout=120)
    assert refused and refused[0] >= 1  # a read met the outage, and was retried
    assert restarting_at and first_batch_at > restarting_at[0]  # the reads waited it out
    assert len(keys) == len(set(keys)) == plan.num_rows == 360


def test_an_outage_past_the_deadline_stops_the_stream_with_a_clear_error(ray_cluster,
                                                                         flaky_store):
    store, url = flaky_store
    cfg = config(store, url, deadline_s=3)
    plan = plan_source(cfg.source)
    store.stop()
    started = time.time()
    try:
        with pytest.raises(Exception) as err:
            for _ in build_dataset(cfg, plan=plan).iter_batches(batch_size=None):
                pass
    finally:
        store.start()
    assert time.time() - started < 90  # it gave up: nothing hangs
    from cluster.training.errors import user_error

    text, user = str(err.value), user_error(err.value)
    del err  # its traceback holds the failed stream and its pool actor: free them for others
    gc.collect()
    assert f"the object store at {store.endpoint} has been unreachable or failing" in text
    assert "deadline 3 s" in text and "--storage-deadline-s" in text
    # the driver turns Ray's wrapping back into the StorageError the CLI prints as one line
    assert isinstance(user, StorageError) and "\n" not in str(user)
    assert str(user).startswith(f"the object store at {store.endpoint}")
