"""Data-echoing experiment: input-bound digits training with no echo, e = 2, e = 4 and auto.

    python jobs/echo_experiment.py --out runs/echo --quick     # one run per setting, minutes
    python jobs/echo_experiment.py --out runs/echo             # two runs per setting, medians

Makes the input pipeline the bottleneck by a real mechanism: the training shards are read from
SeaweedFS through a proxy that caps the object store's read bandwidth (cluster.local.throttle;
validation reads go to the store directly), with one preprocessing actor. It measures
R = trainer rate / pipeline rate (the trainers' examples/s over their non-waiting step time,
median of the echoed runs; the fresh examples/s the pipeline delivers without echo), then
trains a ResNet-18 (DDP, 2 workers) on scikit-learn's digits until the validation accuracy
reaches --target, for each setting, with fixed seeds. Wall-clock counts from the first batch in
a trainer's hands to the end of the validation that reached the target (runs.csv also has it
from the pool's first read, and each run's whole wall time). Writes

    DIR/results.csv    mode, factor, reached, wall_s_to_target, fresh_examples_to_target,
                       steps_to_target (medians over the runs of a setting), runs
    DIR/runs.csv       the same for every run, with its repeat and per-epoch history
    DIR/results.png    validation accuracy vs wall-clock and vs fresh examples
    DIR/summary.json   R, the rates, the throttle, and the targets checked

and prints the table and whether auto met the targets (<= 0.5x the no-echo wall-clock,
<= 1.25x its fresh examples). The experiment lives in cluster/bench/echo_experiment.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.bench.echo_experiment import EchoExperimentConfig, report, run_experiment  # noqa: E402
from cluster.cli.flags import add_config_flags, parse_config  # noqa: E402
from pipelines.config import ECHO_MODES  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p, EchoExperimentConfig, out={"required": True},
                     echo_mode={"choices": ECHO_MODES})
    return p


def _stop(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(parser(), EchoExperimentConfig, argv)
    # SIGTERM unwinds like Ctrl-C, so the object store, the proxy and Ray are stopped.
    signal.signal(signal.SIGTERM, _stop)
    os.makedirs(cfg.out, exist_ok=True)
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="feedline-echo-")
    try:
        rows = run_experiment(cfg, work, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(cfg, rows)


if __name__ == "__main__":
    sys.exit(main())
