"""Training-side benchmark: the same model and data trained with feedline's loader (one continuous
stream, epoch cutting, device prefetcher) and with a plain per-epoch `iter_torch_batches` loop over
stock Ray Data; prints images/s and the share of step time spent waiting for data for each
(the harness lives in cluster/bench/train.py).

    python jobs/bench_train.py                               # CPU, embedded store, synthetic JPEGs
    python jobs/bench_train.py --use-gpu --model resnet50 --image-size 224 --amp --channels-last
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.bench.train import TrainBenchConfig, print_results, run_bench  # noqa: E402
from cluster.cli.flags import add_flag, config_from  # noqa: E402
from cluster.training.config import MODELS  # noqa: E402

C = TrainBenchConfig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_flag(p, "--data", C, "data")
    add_flag(p, "--endpoint", C, "endpoint")
    add_flag(p, "--count", C, "count")
    add_flag(p, "--loaders", C, "loaders")
    add_flag(p, "--model", C, "model", choices=MODELS)
    add_flag(p, "--image-size", C, "image_size")
    add_flag(p, "--epochs", C, "epochs")
    add_flag(p, "--batch-size", C, "batch_size")
    add_flag(p, "--num-workers", C, "num_workers")
    add_flag(p, "--use-gpu", C, "use_gpu")
    add_flag(p, "--amp", C, "amp")
    add_flag(p, "--channels-last", C, "channels_last")
    add_flag(p, "--pool", C, "pool", type=int)
    add_flag(p, "--json", C, "json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from(C, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bench = run_bench(cfg, os.cpu_count() or 1)
    print_results(cfg, bench)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"device": bench["device"], "model": cfg.model,
                       "results": bench["results"]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
