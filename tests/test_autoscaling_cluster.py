"""Tier 3 (real services): the pool scaler and the cluster-wide pool arbiter on a real
autoscaling Ray cluster, faked on one machine with Ray's `fake_multinode` provider
(`ray.cluster_utils.AutoscalingCluster` is broken in the 2.60 wheel: its template is not shipped,
and it runs `ray stop --force`). The head declares no pool resource; a `cpu_pool` node type
carries it. Two training jobs with `--pool-policy feedline` run at once and start with no pool
node: their GPUs (CPU workers here) stall completely, their scalers bid to the one arbiter,
which sends the one merged request; Ray's autoscaler starts a node for each, the stall falls.
The second job's driver is killed: the arbiter forgets it when its lease runs out. After the
first job the pool goes back to its minimum (0) once the autoscaler's idle timeout passes."""

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


NAMESPACE = "feedline-fake-test"

# Polls the arbiter from a fresh driver until `cond(state, pool_nodes)` holds, then prints the
# state; exit status 1 if it never did.
WATCH = """
import json, sys, time, ray
ray.init(log_to_driver=False)
cond = eval(sys.argv[1])
deadline, state = time.monotonic() + float(sys.argv[2]), None
while time.monotonic() < deadline:
    try:
        arb = ray.get_actor("feedline-pool-arbiter-preprocess_cpu", namespace=sys.argv[3])
        state = ray.get(arb.state.remote())
        pool = sum(1 for n in ray.nodes() if n["Alive"] and
                   n["Resources"].get("preprocess_cpu", 0) > 0)
        if cond(state, pool):
            print("STATE " + json.dumps({**state, "pool": pool}))
            sys.exit(0)
    except ValueError:
        pass  # no arbiter yet
    time.sleep(1)
print("NEVER " + json.dumps(state))
sys.exit(1)
"""


def _watch(env, cond: str, timeout_s: float) -> dict:
    out = subprocess.run([sys.executable, "-c", WATCH, cond, str(timeout_s), NAMESPACE], env=env,
                         capture_output=True, text=True, timeout=timeout_s + 120)
    found = re.search(r"^(STATE|NEVER) (.*)$", out.stdout, re.M)
    assert out.returncode == 0 and found, (cond, out.stdout[-2000:], out.stderr[-3000:])
    return json.loads(found.group(2))


def _job(url, endpoint, tmp_path, name: str, epochs: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "jobs", "train_resnet.py"), "--data", url,
            "--endpoint", endpoint, "--recipe", "small", "--image-size", "8",
            "--epochs", str(epochs), "--batch-size", "32", "--lr", "0.05", "--num-workers", "1",
            "--pool-policy", "feedline", "--pool-min-nodes", "0", "--pool-max-nodes", "1",
            "--pool-quota-nodes", "2", "--pool-cpus-per-node", "1", "--pool-interval-s", "2",
            "--pool-lease-s", "8", "--pool-arbiter-namespace", NAMESPACE, "--echo-max", "1",
            "--run-name", name, "--storage-path", str(tmp_path / f"results-{name}"),
            "--summary-json", str(tmp_path / f"{name}.json")]


@pytest.mark.services
def test_two_jobs_share_the_pool_through_the_arbiter_and_it_returns_to_its_minimum(
        fake_cluster, object_store, tmp_path):
    from pipelines.datasets import write_digits

    env = fake_cluster
    assert _pool_nodes(env) == 0
    url = write_digits(f"s3://{object_store.bucket}/autoscale").url
    # B runs long (it is killed); A runs 3 epochs.
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("job-a", "job-b")}
    b = subprocess.Popen(_job(url, object_store.endpoint, tmp_path, "job-b", 40), env=env,
                         stdout=logs["job-b"], stderr=subprocess.STDOUT)
    a = subprocess.Popen(_job(url, object_store.endpoint, tmp_path, "job-a", 3), env=env,
                         stdout=logs["job-a"], stderr=subprocess.STDOUT)
    try:
        # Both runs registered, one node each in the arbiter's one request, both nodes up.
        both = _watch(env, "lambda s, pool: len(s['shares']) == 2 and pool == 2 and "
                           "all(x['nodes'] == 1 for x in s['shares'].values())", 300)
        keys = sorted(both["shares"])
        assert [k.split("/")[0] for k in keys] == ["job-a", "job-b"]
        assert both["total_nodes"] == 2 and both["requests"][-1][1] == 2
        assert not both["binding"]
        # B's driver dies (SIGKILL: no clean leave); its scaler goes with it, its lease runs
        # out and the arbiter forgets it.
        b.kill()
        b.wait(timeout=60)
        key_b = next(k for k in keys if k.startswith("job-b/"))
        gone = _watch(env, f"lambda s, pool: {key_b!r} not in s['runs']", 120)
        assert any(r == key_b and "lease expired" in why for _, r, why in gone["forgotten"])
        assert all(k.startswith("job-a/") for k in gone["shares"])
        assert gone["requests"][-1][1] <= 1  # A's share only (or 0 once A has left)
        assert a.wait(timeout=480) == 0, (tmp_path / "job-a.log").read_text()[-5000:]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        for f in logs.values():
            f.close()
    s = json.loads((tmp_path / "job-a.json").read_text())
    decisions = s["pool_decisions"]
    ups = [d for d in decisions if d["action"] == "up"]
    assert ups and ups[0]["ready"] == 0 and ups[0]["stall"] == 1.0, decisions[:5]
    assert all(d["share_nodes"] <= 1 for d in decisions)  # its own max, 1
    assert any(d["share_nodes"] == 1 and d["pool_nodes"] == 2 for d in decisions)  # shared
    # The nodes came, and with them the stall fell: the trainers measured it (not the scaler's
    # stand-in before any step finished) under half of their step time.
    first = next(i for i, d in enumerate(decisions) if d["ready"] >= 1)
    measured = [d["stall"] for d in decisions[first:] if d["stall_measured"]]
    assert measured and min(measured) < 0.5, decisions
    assert s["val_accuracy"] > 0.5
    # After the job the scaler asks for min_nodes (0); idle pool nodes go after ~15 s.
    deadline = time.monotonic() + 120
    while _pool_nodes(env) > 0:
        assert time.monotonic() < deadline, "the pool did not shrink back to 0 nodes"
        time.sleep(3)
