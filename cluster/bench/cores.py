"""Where a machine's cores and memory go while a benchmark runs, read from /proc only.

`CpuSplit` sums every process's CPU time over a window by role: the measured system's workers
(pool actors, tasks, worker processes), the driver (this process), Ray's own processes, the
object-store server, the rest of the machine, and idle. `PeakMemory` samples the process tree's
RSS and /dev/shm (Ray's object store). The samplers share the cores they measure, so they stay
cheap: one read of /proc/PID/stat per process.
"""

from __future__ import annotations

import os
import threading
import time

from cluster.local.procfs import (
    cmdline,
    machine_ticks,
    process_table,
    process_tree,
    shm_used_bytes,
    tree_rss_bytes,
)

__all__ = ["CpuSplit", "PeakMemory", "RAY_OWN", "set_store"]


RAY_OWN = ("raylet", "gcs_server", "dashboard/agent.py", "runtime_env/agent", "log_monitor.py",
           "ray::DashboardAgent", "ray::_StatsActor", "ray::_AutoscalingCoordinatorActor",
           "ray::ActorLocationTracker")
"""Processes that are Ray's own (daemons, agents, Ray Data's cluster-wide actors), not the
pipeline's work: matched in the command line, as Ray titles its workers. A worker titled
ray::IDLE counts as the pipeline's: it is between two of its tasks (what an idle worker uses
itself is next to nothing)."""


def _role(pid: int, driver: int, store: set[int], tree: set[int]) -> str:
    if pid == driver:
        return "driver"
    if pid in store:
        return "object store"
    if pid not in tree:
        return "other"
    cmd = cmdline(pid)
    if cmd is None:
        return "other"
    return "Ray's own" if any(k in cmd for k in RAY_OWN) else "workers"


class CpuSplit:
    """Where the machine's cores go between `start()` and `stop()`, in cores: the driver (this
    process), the pipeline's workers (its pool actors, tasks or worker processes), Ray's own
    processes, the object-store server, everything else, and idle."""

    STORE: frozenset[int] = frozenset()
    ROLES = ("workers", "driver", "Ray's own", "object store", "other", "idle")

    def start(self) -> CpuSplit:
        self._t0, self._p0, self._m0 = time.perf_counter(), process_table(), machine_ticks()
        return self

    def stop(self) -> dict[str, float]:
        t1, p1, m1 = time.perf_counter(), process_table(), machine_ticks()
        hz, me = os.sysconf("SC_CLK_TCK"), os.getpid()
        store = process_tree(next(iter(self.STORE)), p1) if self.STORE else set()
        tree = process_tree(me, p1, self.STORE)
        cores = {role: 0.0 for role in self.ROLES}
        seconds = t1 - self._t0
        for pid, (_, _, ticks) in p1.items():
            used = ticks - self._p0[pid][2] if pid in self._p0 else ticks
            if used > 0:
                cores[_role(pid, me, store, tree)] += used / hz / seconds
        # "other" is what the machine was busy with beyond the processes named (kernel threads,
        # processes that ended in the window): the machine's busy time less theirs.
        busy = (m1[0] - self._m0[0]) / hz / seconds
        total = (m1[1] - self._m0[1]) / hz / seconds
        named = sum(v for k, v in cores.items() if k != "other")
        cores["other"] = max(0.0, busy - named)
        cores["idle"] = max(0.0, total - busy)
        return cores


class PeakMemory:
    """Samples process-tree RSS and /dev/shm use (Ray's object store) every 0.5 s. The process
    trees in EXCLUDE (the embedded object store's server: storage, not loader) do not count."""

    EXCLUDE: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.peak_rss = 0
        self.shm_base = shm_used_bytes()
        self.peak_shm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss_bytes(os.getpid(), self.EXCLUDE))
            self.peak_shm = max(self.peak_shm, shm_used_bytes() - self.shm_base)
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def set_store(pids: frozenset[int]) -> None:
    """The object-store server's process (tree roots): storage, not loader, in every figure."""
    PeakMemory.EXCLUDE = CpuSplit.STORE = pids
