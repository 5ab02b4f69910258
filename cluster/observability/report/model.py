"""What a run report is made from: `RunFacts`, plain data, saved as the run's `run.json`.

Everything the page shows comes from here, so a report can be rebuilt from a finished run's
files without Ray. Time series are binned (a few dozen bins), so the file stays small however
long the run was.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

__all__ = ["ActorWork", "RunFacts", "Steady", "STEP_COLUMNS", "POOL_COLUMNS", "VERSION"]

VERSION = 1
STEP_COLUMNS = ("t", "wait", "h2d", "compute", "images")
"""A step bin: its start (seconds since the run's first span) and the seconds and images of
the steps that ended in it."""
POOL_COLUMNS = ("t", "images", "fresh", "read", "decode", "augment", "other", "handoff")
"""A pool bin: images (echoed copies included) and fresh examples made by the blocks that ended
in it, and their seconds by stage, all actors together."""


@dataclass(frozen=True, kw_only=True)
class ActorWork:
    """One pool actor's training work over the run."""

    name: str
    images: int
    """Images it made (echoed copies included)."""
    fresh: int
    busy_s: float
    """Seconds making blocks (read + decode + augment + other; hand-off excluded)."""
    read_bytes: int
    first: float
    """Epoch seconds its first block started, and its last ended."""
    last: float
    stages: dict = field(default_factory=dict)
    """Seconds by stage (pipelines.observe.STAGES)."""


@dataclass(frozen=True, kw_only=True)
class Steady:
    """The trainers' steps after each rank's first (whose wait is the pool's cold start)."""

    steps: int = 0
    images: int = 0
    wait_s: float = 0.0
    h2d_s: float = 0.0
    compute_s: float = 0.0
    ranks: int = 0


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """Everything one run's report needs."""

    run: str
    summary: dict
    """The RunSummary (`--summary-json`'s object)."""
    config: dict
    """The settings advice refers to: pool_min, pool_max, pool_resource, echo_factor (given;
    "auto"), echo_max, num_workers, batch_size, model, image_size, use_gpu, prefetch_batches."""
    actors: list[ActorWork] = field(default_factory=list)
    steady: Steady = field(default_factory=Steady)
    window: list = field(default_factory=list)
    """[start, end] in epoch seconds of the training: the first span (a pool block or a step)
    to the last step's end. The pool's rates and utilisation are over it: a pool that ran
    ahead and then sat idle is idle for the trainers' time, not busy for its own short burst.
    Empty: no spans were kept (the actors' own first start to last end is used)."""
    bin_s: float = 1.0
    step_bins: dict = field(default_factory=dict)
    """Rank (as text) -> rows of STEP_COLUMNS."""
    pool_bins: list = field(default_factory=list)
    """Rows of POOL_COLUMNS."""
    timeline_png: str | None = None
    """The timeline picture's file name, next to run.json."""
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunFacts:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"run.json version {data.get('version')!r}: this feedline reads "
                             f"version {VERSION}")
        data["actors"] = [ActorWork(**a) for a in data.get("actors", [])]
        data["steady"] = Steady(**data.get("steady", {}))
        return cls(**data)
