"""Joining a Ray cluster, or starting a local one that declares the preprocessing pool."""

from __future__ import annotations

import logging
import os

import ray

__all__ = ["connect_or_start"]

log = logging.getLogger(__name__)


def connect_or_start(pool_resource: str, pool_cpus: float | None = None) -> str:
    """Join the cluster this process belongs to (a `ray job submit` driver, RAY_ADDRESS, or a
    `ray start` head on this machine); else start a local Ray whose node declares `pool_cpus`
    units of `pool_resource` (default: one per core). Returns "joined" or "started"."""
    if ray.is_initialized():
        return "joined"
    try:
        ray.init(address="auto", log_to_driver=True)
        mode = "joined"
    except ConnectionError:
        cpus = os.cpu_count() or 1
        pool = pool_cpus if pool_cpus is not None else float(cpus)
        ray.init(address="local", resources={pool_resource: pool})
        mode = "started"
    have = ray.cluster_resources().get(pool_resource, 0)
    if have <= 0:
        log.warning(
            "the cluster declares no %r resource: preprocessing actors cannot be placed until "
            "pool nodes join (start them with --resources='{\"%s\": N}'); the run fails after "
            "--pool-wait-s", pool_resource, pool_resource)
    return mode
