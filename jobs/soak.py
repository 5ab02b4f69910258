"""Endurance: a 10-epoch training run whose memory must stay flat.

    python jobs/soak.py --out runs/soak                # digits, 10 epochs, 2 DDP workers
    python jobs/soak.py --out runs/soak --synthetic 2000 --image-size 64

Starts the embedded object store and a local Ray, trains, and samples every second: the
resident memory (RSS) of every Ray worker process of the run (pool actors, trainers, the Train
controller, Ray Data's coordinators) and the object store's use as Ray's own metrics export
reports it (`ray_object_store_memory`). Each sample is placed in the epoch it was taken in (the
run's per-epoch timestamps). The check: at the end of epoch `--last` (10) every process alive at
the end of epoch `--first` (2) holds no more than 10% more RSS than then (a process that ended
earlier, as pool actors do once the stream is preprocessed: at the end of the last epoch it
outlived), and the mean object-store use of the last epoch is within 10% of the first one (or
16 MiB, whichever is larger: a few blocks in flight swing tiny figures by more
than 10%). Writes DIR/samples.csv and DIR/soak.json, prints a table, exits 1 when memory grew.

On the digits the pool's reads go through a local proxy capped at --read-kb-per-s (12 KB/s):
uncapped, the pool preprocesses the small data set's whole 10-epoch stream within the first
epochs (Ray Data runs ahead until its object-store budget is full), and its actors would not be
alive to be measured in the late epochs. Capped, preprocessing sets the pace and the actors work
until the stream is preprocessed, near the end. With --synthetic no cap is set unless given.
The sampler and the verdict live in cluster/bench/soak.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.bench.soak import SoakConfig, print_report, run_soak, write_results  # noqa: E402
from cluster.cli.flags import add_config_flags, parse_config  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p, SoakConfig, out={"required": True}, last={"type": int},
                     read_kb_per_s={"type": float})
    return p


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(parser(), SoakConfig, argv)
    os.makedirs(cfg.out, exist_ok=True)
    samples, summary = run_soak(cfg)
    result = write_results(cfg, samples, summary)
    print_report(cfg, result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
