"""Rebuild a run's report page from the files it left: RUN_DIR/run.json (and the timeline
picture it names) -> RUN_DIR/report.html.

    python jobs/train_resnet.py --data s3://bucket/digits --report runs/r1 ...
    python jobs/report.py runs/r1          # the page again (after an upgrade of feedline)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.observability.report import build_report, load_facts  # noqa: E402
from cluster.observability.report.figures import figures  # noqa: E402
from cluster.observability.report.verdict import verdict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="the folder given to --report")
    args = p.parse_args(argv)
    try:
        facts = load_facts(args.run_dir)
        path = build_report(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(verdict(figures(facts)).line)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
