"""A local Ray head (`ray start --head --block`) on free 127.0.0.1 ports, and `ray job submit`
against it: what `make demo` and the fake-cluster tests start, and stop again, exactly.

Each head has its own temp dir (short: Ray's socket paths must fit 107 bytes), so its session and
its "current cluster" file stay out of /tmp/ray (no later `ray.init` elsewhere finds this
cluster) and every process of it, the fake nodes' raylets included, carries that dir on its
command line: `stop()` ends exactly those processes and no other Ray on the machine (no
machine-wide `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from cluster.local.ports import free_port
from cluster.local.procfs import local_processes
from cluster.local.services import start_service, stop_process_group, wait_ready

__all__ = ["RayHead", "submit_job", "AGENT_NOT_READY"]

AGENT_NOT_READY = "No available agent to submit job"
_EXTRA_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")


class RayHead:
    """`ray start --head --block` in its own process session and temp dir.

    `env` is the environment of the head (and of every worker it starts: credentials go here);
    `resources` the custom resources its node declares; `extra_args` go to `ray start` as they
    are (e.g. `--autoscaling-config=FILE`). With `dashboard`, jobs can be submitted to
    `address`; without, `ready` must say when the head is up.
    """

    def __init__(self, env: dict[str, str], log_path: str, *, num_cpus: int,
                 resources: dict[str, float] | None = None, dashboard: bool = True,
                 extra_args: tuple[str, ...] = (),
                 ready: Callable[[RayHead], bool] | None = None):
        # On SIGTERM a head first drains its node, for up to 30 s; a one-node local head never
        # finishes (measured: the full 30 s at every stop), and stopping it needs no drain.
        self.env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.log_path = log_path
        taken: set[int] = set()
        self.gcs_port = free_port(taken)
        self.dashboard_port = free_port(taken) if dashboard else None
        # Every fixed default port too (agent 52365, metrics, runtime-env agent, client 10001):
        # another Ray on this machine (a notebook's, a test session's) may hold them, and a head
        # whose dashboard agent cannot bind exits with it.
        ports = {flag: free_port(taken) for flag in _EXTRA_PORTS}
        self.temp_dir = tempfile.mkdtemp(prefix="feedline-ray-", dir="/tmp")
        self.args = [
            os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
            f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
            *(f"--{flag}={port}" for flag, port in ports.items()), *extra_args]
        if resources:
            self.args.append(f"--resources={json.dumps(resources)}")
        if dashboard:
            self.args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                          f"--dashboard-port={self.dashboard_port}"]
        else:
            self.args.append("--include-dashboard=false")
        self._ready = ready
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """The dashboard's URL, for `ray job submit --address`."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        """The GCS address, for `ray.init(address=...)` and RAY_ADDRESS."""
        return f"127.0.0.1:{self.gcs_port}"

    def client_env(self) -> dict[str, str]:
        """An environment for drivers of this cluster (RAY_ADDRESS set, token auth on)."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address, "RAY_AUTH_MODE": "token"}

    def start(self, timeout_s: float = 120.0) -> RayHead:
        self.proc = start_service(self.args, self.env, self.log_path)
        probe = (lambda: self._ready(self)) if self._ready else self._dashboard_answers
        try:
            wait_ready(self.proc, probe, timeout_s, "ray start", self.log_path, interval_s=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _dashboard_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer (401 under token auth included) means it is serving
        except OSError:
            return False

    def processes(self) -> list[int]:
        """Pids of this head's live processes (everything started under its temp dir)."""
        return [p.pid for p in local_processes() if p.alive and self.temp_dir in p.cmdline]

    def stop(self, grace_s: float = 30.0, remove_temp: bool = False) -> None:
        """Stop the head and everything under its temp dir (its logs stay there unless
        `remove_temp`); safe to call twice. Raises if any of its processes survive."""
        # SIGTERM to `ray start --block` alone lets it tear down the GCS, raylet, dashboard and
        # workers it started; what it leaves is signalled after it.
        proc, self.proc = self.proc, None
        stop_process_group(proc, grace_s=grace_s)
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        left = self.processes()
        if left:
            raise RuntimeError(f"processes of the Ray head under {self.temp_dir} survived: {left}")
        if remove_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(remove_temp=True)


def submit_job(cmd: list[str], env: dict[str, str], cwd: str, attempts: int = 30,
               out=sys.stdout) -> int:
    """Run `ray job submit ...` (`cmd`), streaming its output to `out`; returns its exit code.
    A fresh head's dashboard answers a few seconds before its job agent registers: only that
    refusal is retried."""
    code = 1
    for attempt in range(attempts):
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        not_ready = False
        for line in proc.stdout:
            not_ready = not_ready or AGENT_NOT_READY in line
            if not not_ready:
                out.write(line)
                out.flush()
        code = proc.wait()
        if code == 0 or not not_ready or attempt == attempts - 1:
            return code
        time.sleep(2)
    return code
