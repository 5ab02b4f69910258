"""Tier 3 (real services): the pool scaler on a real autoscaling Ray cluster, faked on one
machine with Ray's `fake_multinode` provider (`ray.cluster_utils.AutoscalingCluster` is broken in
the 2.60 wheel: its template is not shipped, and it runs `ray stop --force`). The head declares
no pool resource; a `cpu_pool` node type carries it. A training job with `--pool-policy
feedline` starts with no pool node: its GPUs (CPU workers here) stall completely, the scaler
asks for pool nodes, Ray's autoscaler starts them, the stall falls; after the job the pool goes
back to its minimum (0) once the autoscaler's idle timeout passes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from cluster.local.ray_head import RayHead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """\
cluster_name: feedline-fake
max_workers: 2
upscaling_speed: 10
idle_timeout_minutes: 0.25
provider:
  type: fake_multinode
  use_node_id_as_ip: true
  disable_node_updaters: true
  disable_launch_config_check: true
  gcs_address: 127.0.0.1:{port}
available_node_types:
  ray.head.default:
    resources: {{CPU: 2}}
    node_config: {{}}
    max_workers: 0
  cpu_pool:
    resources: {{CPU: 0, preprocess_cpu: 1}}
    node_config: {{}}
    min_workers: 0
    max_workers: 2
head_node_type: ray.head.default
auth: {{ssh_user: ray}}
docker: {{}}
file_mounts: {{}}
cluster_synced_files: []
file_mounts_sync_continuously: false
initialization_commands: []
setup_commands: []
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands: []
worker_start_ray_commands: []
"""


def _pool_nodes(env) -> int:
    """Alive nodes with the pool resource, asked from a fresh driver (-1: cannot connect)."""
    code = ("import ray; ray.init(log_to_driver=False); print('POOL_NODES', sum(1 for n in "
            "ray.nodes() if n['Alive'] and n['Resources'].get('preprocess_cpu', 0) > 0))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    found = re.search(r"^POOL_NODES (\d+)$", out.stdout, re.M)
    return int(found.group(1)) if out.returncode == 0 and found else -1


@pytest.fixture
def fake_cluster(tmp_path, object_store):
    """The fake cluster's address in an environment for its clients. Its nodes inherit the
    head's environment, store credentials included (pool actors read S3). What this test
    started, and only that, stops on leaving (`ray stop` would end every Ray on the machine,
    the suite's own session cluster included)."""
    cfg = tmp_path / "autoscaling.yaml"
    venv_bin = os.path.dirname(sys.executable)
    # Ray 2.60 turns token auth on for clusters it starts; clients on this machine read the
    # token file, but only when told the mode.
    env = {**os.environ, **object_store.env(), "RAY_FAKE_CLUSTER": "1",
           "RAY_AUTH_MODE": "token", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
    head = RayHead(env, str(tmp_path / "head.log"), num_cpus=2, dashboard=False,
                   extra_args=(f"--autoscaling-config={cfg}",),
                   ready=lambda h: _pool_nodes(_client(h)) >= 0)
    cfg.write_text(CONFIG.format(port=head.gcs_port))
    with head:
        yield _client(head)


def _client(head: RayHead) -> dict[str, str]:
    env = head.client_env()
    env.pop("RAY_FAKE_CLUSTER")
    return env


@pytest.mark.services
def test_scaler_brings_pool_nodes_and_the_pool_returns_to_its_minimum(
        fake_cluster, object_store, tmp_path):
    from pipelines.datasets import write_digits

    env = fake_cluster
    assert _pool_nodes(env) == 0
    url = write_digits(f"s3://{object_store.bucket}/autoscale").url
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "train_resnet.py"), "--data", url,
           "--endpoint", object_store.endpoint, "--recipe", "small", "--image-size", "8",
           "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--num-workers", "2",
           "--pool-policy", "feedline", "--pool-min-nodes", "0", "--pool-max-nodes", "2",
           "--pool-cpus-per-node", "1", "--pool-interval-s", "2", "--echo-max", "1",
           "--storage-path", str(tmp_path / "results"), "--summary-json", str(summary)]
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-5000:]
    s = json.loads(summary.read_text())
    decisions = s["pool_decisions"]
    ups = [d for d in decisions if d["action"] == "up"]
    assert ups and ups[0]["ready"] == 0 and ups[0]["stall"] == 1.0, decisions[:5]
    assert max(d["ready"] for d in decisions) >= 1  # the nodes came
    with_nodes = [d for d in decisions if d["ready"] >= 1 and d["stall"] is not None]
    assert with_nodes and min(d["stall"] for d in with_nodes) < 0.5  # and the stall fell
    assert s["val_accuracy"] > 0.5
    # After the job the scaler asks for min_nodes (0); idle pool nodes go after ~15 s.
    deadline = time.monotonic() + 120
    while _pool_nodes(env) > 0:
        assert time.monotonic() < deadline, "the pool did not shrink back to 0 nodes"
        time.sleep(3)
