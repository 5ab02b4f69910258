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
from cluster.cli.flags import add_config_flags, parse_config  # noqa: E402
from cluster.training.config import MODELS  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p, TrainBenchConfig, model={"choices": MODELS}, pool={"type": int})
    return p


def main(argv=None) -> int:
    cfg = parse_config(parser(), TrainBenchConfig, argv)
    bench = run_bench(cfg, os.cpu_count() or 1)
    print_results(cfg, bench)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"device": bench["device"], "model": cfg.model,
                       "results": bench["results"]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
