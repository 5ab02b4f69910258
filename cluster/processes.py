"""Local services (SeaweedFS, a Ray head) in their own process sessions: start, wait until ready,
stop exactly what was started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

__all__ = ["start_service", "wait_ready", "stop_process_group"]


def stop_process_group(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session=True), wait up to
    `grace_s` for a clean shutdown, then SIGKILL what is left. Safe on already-ended processes."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


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
