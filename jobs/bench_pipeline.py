"""Input-pipeline benchmark: feedline side by side with what users would pick instead, in one run,
on the same Parquet shards from the same object store (see cluster/bench/pipeline.py).

    python jobs/bench_pipeline.py          # embedded SeaweedFS + 2,000 synthetic JPEGs
    python jobs/bench_pipeline.py --data s3://b/prefix --endpoint http://127.0.0.1:8333
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.bench.cores import set_store  # noqa: E402
from cluster.bench.pipeline import EXTRA, SYSTEMS, add_ratios, print_tables, run_systems  # noqa: E402
from pipelines import SchemaError, StorageConfig, StorageError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None,
                   help="prefix holding canonical Parquet shards (directly or under train/); "
                        "default: start the embedded object store and write synthetic JPEGs")
    p.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS + EXTRA)}")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="steady-state window per system, after the first batches")
    p.add_argument("--count", type=int, default=2000, help="synthetic images when generating")
    p.add_argument("--shape", choices=sorted(SHAPES), default="synthetic",
                   help="generated JPEGs: synthetic (--size, q90), photo (~400x300 q90, ~50 KB) "
                        "or imagenet (~500x375 q95, ~110 KB)")
    p.add_argument("--size", default="320x256", help="synthetic image WIDTHxHEIGHT")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


SHAPES = {"synthetic": (None, 90), "photo": ("400x300", 90), "imagenet": ("500x375", 95)}
"""--shape: (WIDTHxHEIGHT, or None for --size; JPEG quality)."""


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # so that the object store and the children are stopped


def _synthetic(args: argparse.Namespace):
    """Start the embedded object store and write the synthetic JPEGs; (store, data URL)."""
    from cluster.local.object_store import EmbeddedObjectStore

    store = EmbeddedObjectStore(data_dir=tempfile.mkdtemp(prefix="feedline-bench-")).start()
    os.environ.update(store.env())
    set_store(frozenset({store.pid()}))
    data = f"s3://{store.bucket}/bench"
    # In a child process: the JPEGs it holds while writing must not stay in this process's
    # heap, where they would count as the measured systems' memory.
    subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "make_dataset.py"),
                    "--dataset", "synthetic", "--out", data, "--count", str(args.count),
                    "--size", SHAPES[args.shape][0] or args.size,
                    "--quality", str(SHAPES[args.shape][1]), "--val-fraction", "0"], check=True)
    return store, data


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS + EXTRA)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)}; choose from {SYSTEMS + EXTRA}",
              file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    store, data = _synthetic(args) if args.data is None else (None, args.data)
    try:
        results = run_systems(systems, data, StorageConfig(endpoint=args.endpoint),
                              args.seconds, cores)
    except (StorageError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.stop()
    add_ratios(results, cores)
    print_tables(results, cores)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "shape": args.shape, "systems": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
