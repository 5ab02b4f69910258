"""`make demo`: object store + data + local Ray head + `ray job submit` of a digits training run.

Starts SeaweedFS on a free 127.0.0.1 port, writes scikit-learn's digits into a bucket, starts a
local Ray head that declares the preprocessing pool, submits jobs/train_resnet.py with
`ray job submit --working-dir .`, streams its logs, prints a short summary and the path of the
run report (WORKDIR/report/report.html), and stops everything it
started: also on Ctrl-C, on SIGTERM and when the job fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster.local.object_store import EmbeddedObjectStore  # noqa: E402
from cluster.local.ray_head import RayHead, submit_job  # noqa: E402
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


def print_summary(path: str) -> dict:
    with open(path) as f:
        s = json.load(f)
    print("\n=== feedline demo ===")
    print(f"validation accuracy : {s['val_accuracy']:.4f}")
    print(f"images/s            : {s['images_per_s']:.0f} ({s['num_workers']} DDP workers)")
    print(f"waiting for data    : {100 * s['data_wait_fraction']:.1f}% of step time")
    print(f"wall time           : {s['wall_s']:.1f} s for {s['epochs']} epochs")
    print(f"examples            : {s['fresh_examples']} fresh, {s['echoed_examples']} echoed, "
          f"{s['bad_records']} bad records skipped")
    if s.get("timeline"):
        print(f"timeline            : {s['timeline']}/timeline.png (and timeline.json for "
              "Perfetto)")
    if s.get("report"):
        print(f"report              : {s['report']}")
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
        head = RayHead(env, os.path.join(args.workdir, "ray-head.log"),
                       num_cpus=args.num_workers, resources={"preprocess_cpu": args.pool_cpus})
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
            f"--report={os.path.join(args.workdir, 'report')}",
        ]
        print("[demo] " + " ".join(cmd[1:]), flush=True)
        code = submit_job(cmd, env, cwd=ROOT)
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
