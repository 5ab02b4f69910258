"""A local Prometheus (the real binary) that scrapes Ray's metrics ports, and a query client.

Used by the dashboard test, and by anyone who wants to look at a local run the way a cluster's
Prometheus would: `LocalPrometheus(targets=ray_metrics_targets()).start()`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from cluster.local.ports import free_port
from cluster.local.services import start_service, stop_process_group, wait_ready

__all__ = ["LocalPrometheus", "ray_metrics_targets", "prometheus_binary", "RAY_SD_FILE"]

RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
"""Where a Ray head with a dashboard writes its nodes' metrics targets (file_sd_configs format)."""


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise FileNotFoundError(
            "no `prometheus` binary on PATH: install it (Debian/Ubuntu: "
            "`apt-get update && apt-get install -y prometheus`)")
    return path


def ray_metrics_targets() -> list[str]:
    """host:port of every alive Ray node's metrics export port (needs ray[default])."""
    import ray

    targets = []
    for node in ray.nodes():
        port = node.get("MetricsExportPort") or -1
        if node.get("Alive") and port > 0:
            targets.append(f"{node['NodeManagerAddress']}:{port}")
    if not targets:
        raise RuntimeError("no Ray node exports metrics: is ray[default] installed?")
    return targets


class LocalPrometheus:
    """Prometheus on a free 127.0.0.1 port scraping `targets` every `scrape_s` seconds."""

    def __init__(self, targets: list[str], scrape_s: float = 2.0, data_dir: str | None = None):
        self.targets, self.scrape_s = targets, scrape_s
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="feedline-prometheus-")
        self.port = 0
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> LocalPrometheus:
        config = os.path.join(self.data_dir, "prometheus.yml")
        with open(config, "w") as f:
            # JSON is YAML: no YAML library needed.
            every = f"{round(self.scrape_s * 1000)}ms"  # Prometheus durations take no "1.0s"
            json.dump({"global": {"scrape_interval": every, "evaluation_interval": every},
                       "scrape_configs": [{"job_name": "ray",
                                           "static_configs": [{"targets": self.targets}]}]}, f)
        self.port = free_port()
        self.proc = start_service(
            [prometheus_binary(), f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(self.data_dir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            dict(os.environ), self.log_path)
        wait_ready(self.proc, self._ready, timeout_s, "prometheus", self.log_path)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"prometheus rejected {params}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 2.0) -> list:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def active_targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
