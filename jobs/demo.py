"""`make demo`: object store + data + local Ray head + `ray job submit` of a digits training run.

Starts SeaweedFS on a free 127.0.0.1 port, writes scikit-learn's digits into a bucket, starts a
local Ray head that declares the preprocessing pool, submits jobs/train_resnet.py with
`ray job submit --working-dir .`, streams its logs, prints a short summary, and stops everything it
started: also on Ctrl-C, on SIGTERM and when the job fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster.object_store import EmbeddedObjectStore, free_port  # noqa: E402
from cluster.processes import start_service, stop_process_group, wait_ready  # noqa: E402
from pipelines.datasets import write_digits  # noqa: E402


class Interrupted(Exception):
    pass


def _raise_interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "demo"),
                   help="object-store data, results, summary and timeline go here")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument("--num-workers", type=int, default=2, help="DDP workers")
    p.add_argument("--pool-cpus", type=int, default=2,
                   help="preprocess_cpu units the local head declares")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the object store and Ray up after the job (Ctrl-C stops them)")
    return p.parse_args(argv)


class RayHead:
    """`ray start --head --block` in its own process session; stopping it stops only what it
    started (no machine-wide `ray stop`)."""

    def __init__(self, env: dict[str, str], num_cpus: int, pool_cpus: int, log_path: str):
        # On SIGTERM a head first drains its node, for up to 30 s; after a job this one-node
        # head never finishes (measured: the full 30 s at every stop), and stopping the whole
        # local cluster needs no drain.
        self.env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.log_path = log_path
        taken: set[int] = set()
        self.gcs_port = free_port(taken)
        self.dashboard_port = free_port(taken)
        # Every fixed default port too (agent 52365, metrics, runtime-env agent, client 10001):
        # another Ray on this machine (a notebook's, a test session's) may hold them, and a head
        # whose dashboard agent cannot bind exits with it.
        self.other_ports = {flag: free_port(taken) for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
            "metrics-export-port", "ray-client-server-port")}
        self.temp_dir = tempfile.mkdtemp(prefix="feedline-ray-")  # short: socket path limit
        self.args = [
            os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
            f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true", f"--num-cpus={num_cpus}",
            f"--resources={json.dumps({'preprocess_cpu': pool_cpus})}",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
            *(f"--{flag}={port}" for flag, port in self.other_ports.items()),
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout_s: float = 120.0) -> None:
        self.proc = start_service(self.args, self.env, self.log_path)
        wait_ready(self.proc, self._dashboard_answers, timeout_s, "ray start", self.log_path,
                   interval_s=0.5)

    def _dashboard_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer (401 under token auth included) means it is serving
        except OSError:
            return False

    def stop(self) -> None:
        # SIGTERM to `ray start --block` alone lets it tear down the GCS, raylet, dashboard and
        # workers it started; what it leaves is signalled after it (stop_process_group).
        proc, self.proc = self.proc, None
        stop_process_group(proc, grace_s=30)


_AGENT_NOT_READY = "No available agent to submit job"


def submit(cmd: list[str], env: dict[str, str], attempts: int = 30) -> int:
    """Run `ray job submit`, streaming its output. A fresh head's dashboard answers a few seconds
    before its job agent registers; only that refusal is retried."""
    for attempt in range(attempts):
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        not_ready = False
        for line in proc.stdout:
            not_ready = not_ready or _AGENT_NOT_READY in line
            if not not_ready:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = proc.wait()
        if code == 0 or not not_ready or attempt == attempts - 1:
            return code
        time.sleep(2)
    return code


def print_summary(path: str) -> dict:
    with open(path) as f:
        s = json.load(f)
    print("\n=== feedline demo ===")
    print(f"validation accuracy : {s['val_accuracy']:.4f}")
    print(f"images/s            : {s['images_per_s']:.0f} ({s['num_workers']} DDP workers)")
    print(f"waiting for data    : {100 * s['data_wait_fraction']:.1f}% of step time")
    print(f"wall time           : {s['wall_s']:.1f} s for {s['epochs']} epochs")
    print(f"examples            : {s['fresh_examples']} fresh, {s['echoed_examples']} echoed, "
          f"{s['bad_examples']} bad records skipped")
    if s.get("timeline"):
        print(f"timeline            : {s['timeline']}/timeline.png (and timeline.json for "
              "Perfetto)")
    return s


def store_keys() -> dict[str, str]:
    """Credentials the embedded store is created with: FEEDLINE_STORE_ACCESS_KEY and
    FEEDLINE_STORE_SECRET_KEY when both are set (to reach the store from other tools while the
    demo runs), else generated for this run. Never taken from AWS_*: real keys stay out of it."""
    access, secret = (os.environ.get("FEEDLINE_STORE_ACCESS_KEY"),
                      os.environ.get("FEEDLINE_STORE_SECRET_KEY"))
    return {"access_key": access, "secret_key": secret} if access and secret else {}


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    os.makedirs(args.workdir, exist_ok=True)
    summary_path = os.path.join(args.workdir, "summary.json")
    if os.path.exists(summary_path):
        os.remove(summary_path)
    store = EmbeddedObjectStore(data_dir=os.path.join(args.workdir, "store"), **store_keys())
    head: RayHead | None = None
    try:
        print("[demo] starting SeaweedFS (weed mini) on 127.0.0.1 ...", flush=True)
        store.start()
        print(f"[demo] object store at {store.endpoint}, bucket '{store.bucket}'", flush=True)
        os.environ.update(store.env())  # this process writes the data set
        written = write_digits(f"s3://{store.bucket}/digits")
        print(f"[demo] wrote digits to {written.url}: {written.rows}", flush=True)

        bin_dir = os.path.dirname(sys.executable)
        env = {**os.environ, **store.env(), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
               "RAY_AUTH_MODE": "token"}
        head = RayHead(env, num_cpus=args.num_workers, pool_cpus=args.pool_cpus,
                       log_path=os.path.join(args.workdir, "ray-head.log"))
        print("[demo] starting a local Ray head ...", flush=True)
        head.start()
        print(f"[demo] Ray head up, dashboard {head.address}, logs under {head.temp_dir}",
              flush=True)
        cmd = [
            os.path.join(bin_dir, "ray"), "job", "submit", f"--address={head.address}",
            "--working-dir", ROOT, "--",
            "python", "jobs/train_resnet.py", f"--data=s3://{store.bucket}/digits",
            f"--endpoint={store.endpoint}", "--recipe=small", "--image-size=8",
            f"--epochs={args.epochs}", f"--num-workers={args.num_workers}", "--batch-size=32",
            "--lr=0.05", f"--storage-path={os.path.join(args.workdir, 'results')}",
            f"--summary-json={summary_path}",
            f"--timeline={os.path.join(args.workdir, 'timeline')}",
        ]
        print("[demo] " + " ".join(cmd[1:]), flush=True)
        code = submit(cmd, env)
        if code != 0 or not os.path.exists(summary_path):
            print(f"[demo] the training job failed (exit {code}); Ray logs under "
                  f"{head.temp_dir}/session_latest/logs", file=sys.stderr, flush=True)
            return 1
        print_summary(summary_path)
        if args.keep_running:
            print("[demo] still running; Ctrl-C stops everything", flush=True)
            signal.pause()
        return 0
    except Interrupted as e:
        print(f"\n[demo] interrupted ({e}); stopping", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if head is not None:
            head.stop()
        store.stop()
        print("[demo] stopped the Ray head and the object store", flush=True)


if __name__ == "__main__":
    sys.exit(main())
