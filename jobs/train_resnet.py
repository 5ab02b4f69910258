"""Train a ResNet with DDP on Ray Train, fed by feedline's stream from object storage.

    ray job submit --working-dir . -- python jobs/train_resnet.py --data s3://bucket/digits ...
    python jobs/train_resnet.py --data s3://bucket/digits ...   # joins a running Ray or starts one

--data is the root of a data set with train/ and val/ beneath it (Parquet shards or image
folders). Credentials come from the standard AWS environment of every Ray node.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# `python jobs/x.py` puts jobs/ first on sys.path; make the project importable from a plain
# checkout or a `ray job submit --working-dir .` copy without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.cli.train import configs, parse_args, print_summary, scaling_config  # noqa: E402
from pipelines import plan_source  # noqa: E402
from pipelines.errors import FeedlineError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        tc, train, val = configs(args)
        # Plan before touching Ray: a wrong bucket, prefix, credential or schema fails in seconds.
        plan = plan_source(train.source)
        val_plan = plan_source(val.source) if val else None
    except (FeedlineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"data: {plan.num_rows} train rows in {plan.num_shards} {plan.format} shards"
          + (f", {val_plan.num_rows} val rows" if val_plan else ""), flush=True)

    from cluster.training.connect import connect_or_start
    from cluster.training.trainer import run_training

    mode = connect_or_start(args.pool_resource, args.pool_cpus)
    print(f"ray: {mode} a cluster", flush=True)
    try:
        summary = run_training(tc, train, val, plan, val_plan, started=started,
                               timeline_dir=args.timeline, scaling=scaling_config(args))
    except (FeedlineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.as_dict(), f, indent=2)
        print(f"  summary written to   {args.summary_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
