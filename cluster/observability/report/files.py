"""A run's report files: `run.json` (the RunFacts), the timeline picture and `report.html`, all
in one folder; the page can be rebuilt from the first two at any time."""

from __future__ import annotations

import base64
import os

from cluster.observability.report.collect import collect, run_config
from cluster.observability.report.model import RunFacts
from cluster.observability.report.page import render

__all__ = ["write_report", "write_run_report", "load_facts", "build_report", "RUN_JSON",
           "REPORT_HTML"]

RUN_JSON, REPORT_HTML = "run.json", "report.html"


def _png_uri(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def load_facts(directory: str) -> RunFacts:
    """The RunFacts of the run whose files are in `directory`."""
    path = os.path.join(directory, RUN_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: give the folder a run wrote with "
                                "--report DIR")
    with open(path) as f:
        return RunFacts.from_json(f.read())


def build_report(directory: str) -> str:
    """(Re)write `directory`/report.html from its run.json and timeline picture; its path."""
    facts = load_facts(directory)
    timeline = (_png_uri(os.path.join(directory, facts.timeline_png))
                if facts.timeline_png else None)
    out = os.path.join(directory, REPORT_HTML)
    with open(out, "w") as f:
        f.write(render(facts, timeline))
    return out


def write_report(directory: str, facts: RunFacts) -> str:
    """Write run.json and report.html into `directory`; returns the report's path."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, RUN_JSON), "w") as f:
        f.write(facts.to_json())
    return build_report(directory)


def write_run_report(directory: str, summary, tc, pipeline, train_spans: list,
                     stage_spans: list, pool_work: dict, timeline_dir: str | None) -> str:
    """The report of a finished run (its RunSummary, TrainConfig, training PipelineConfig and
    the monitor's spans and sums) written into `directory`; returns report.html's path."""
    png = None
    if timeline_dir is not None:
        png = os.path.relpath(os.path.join(timeline_dir, "timeline.png"),
                              os.path.abspath(directory))
    facts = collect(summary.as_dict(), run_config(tc, pipeline), train_spans, stage_spans,
                    pool_work, timeline_png=png)
    return write_report(directory, facts)
