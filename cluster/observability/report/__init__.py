"""The run report: one self-contained HTML page that says what held the trainers back and what
to do about it.

Data model (`model.RunFacts`, the run's `run.json`) -> pure figures, verdict and advice
(`figures`, `verdict`, `advice`) -> rendering (`charts`, `page`). `files` writes a run's files
and rebuilds the page from them (`python jobs/report.py RUN_DIR`).
"""

from cluster.observability.report.files import build_report, load_facts, write_report

__all__ = ["build_report", "load_facts", "write_report"]
