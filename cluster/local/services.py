"""Local services (SeaweedFS, a Ray head, Prometheus) in their own process sessions: start, wait
until ready, stop exactly what was started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

from cluster.local.procfs import local_processes

__all__ = ["start_service", "wait_ready", "stop_process_group"]


def stop_process_group(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """Stop `proc` (started with start_new_session=True, so it leads its own process group) and
    everything it started: SIGTERM the leader alone and wait up to `grace_s` for it to shut its
    children down, then SIGTERM and at last SIGKILL what is left of the group. Safe on processes
    that already ended.

    The leader goes first because some leaders shut down through their children: `ray start
    --block` drains its node through the GCS it started, and a SIGTERM to the whole group kills
    that GCS under it (it then waits 30 s for the dead GCS before giving up)."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(proc.pid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 5.0
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reap the leader
            time.sleep(0.1)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    return any(p.pgid == pgid and p.alive for p in local_processes())


def start_service(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    """Start `args` in a new process session (so stop_process_group reaches all it spawns), with
    stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_ready(proc: subprocess.Popen, probe: Callable[[], bool], timeout_s: float, name: str,
               log_path: str, interval_s: float = 0.25) -> None:
    """Poll `probe` until it returns True; fail fast if `proc` exits, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        if probe():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f}s; see {log_path}")
