"""Fixtures for the three test tiers.

* pure tests use none of these;
* `ray_cluster`: ONE session-scoped `ray.init(num_cpus=2, resources={"preprocess_cpu": 2})`
  (Ray 2.60 removed `local_mode=True`: it raises RuntimeError);
* `object_store`: a real SeaweedFS (`weed mini`) on free 127.0.0.1 ports for the session.

The object store starts before Ray and puts its credentials into os.environ, because Ray's worker
processes inherit the environment of the process that started Ray: that is how preprocessing
actors and trainers get their S3 credentials, as they would on a real cluster node.
"""

from __future__ import annotations

import os

import pytest

from cluster.local.object_store import EmbeddedObjectStore

POOL_RESOURCE = "preprocess_cpu"


def pytest_collection_modifyitems(config, items):
    """GPU tests run where CUDA is; elsewhere they are skipped, visibly."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run through the device tool where one is lent)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    store = EmbeddedObjectStore(data_dir=str(tmp_path_factory.mktemp("seaweedfs")))
    store.start()
    saved = {k: os.environ.get(k) for k in store.env()}
    os.environ.update(store.env())
    yield store
    store.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(object_store):
    import ray

    ray.init(address="local", num_cpus=2, resources={POOL_RESOURCE: 2}, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_url(object_store):
    from pipelines.datasets import write_digits

    return write_digits(f"s3://{object_store.bucket}/digits").url


@pytest.fixture
def s3_prefix(object_store, request):
    """A fresh s3:// prefix for one test."""
    return f"s3://{object_store.bucket}/t/{request.node.name}"
