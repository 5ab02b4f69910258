"""What a preprocessing worker tells the outside world about each block it makes.

`pipelines` knows nothing of metrics, timelines or training (it never imports `cluster`): the
`Preprocessor` hands a `BlockSpan` per output block to an optional `BlockObserver` it was given.
The implementation that feeds Prometheus and the run timeline lives in
`cluster.observability.monitor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pipelines.badrecords import BadRecord

__all__ = ["BlockSpan", "BlockObserver", "STAGES"]

STAGES = ("read", "decode", "augment", "other", "handoff")
"""Where a pool actor's time goes, in pipeline order (`BlockSpan.stages`)."""


@dataclass(frozen=True)
class BlockSpan:
    """One output block: when its work started and ended (epoch seconds, `time.time()`), how
    many images it holds, the bad records skipped while making it, by kind, and the fresh
    examples read for it (with data echoing `images` counts the copies too; a block out of the
    echo's shuffle buffer may carry work done for other blocks: the sums are exact)."""

    start: float
    end: float
    images: int
    epoch: int
    bad: dict[str, int] = field(default_factory=dict)
    fresh: int = 0
    bad_shards: dict[str, int] = field(default_factory=dict)
    """The same bad records by shard."""
    bad_keys: tuple[str, ...] = ()
    """Keys of some of them (the process's first few bad records only)."""
    bad_records: tuple[BadRecord, ...] = ()
    """Every bad record skipped while making it, once each."""
    read_s: float = 0.0
    """Seconds reading units from storage for it (a unit's read counts with its first block)."""
    decode_s: float = 0.0
    """Seconds decoding images for it."""
    augment_s: float = 0.0
    """Seconds augmenting (and echoing) them."""
    handoff_s: float = 0.0
    """Seconds the actor's generator was suspended after yielding the previous block: Ray Data
    building, serialising and putting it into the object store, and any backpressure (it
    falls between two spans, outside `start`..`end`, so it is the previous block's cost)."""
    read_bytes: int = 0
    """Bytes of encoded images read from storage for it."""

    @property
    def stages(self) -> dict[str, float]:
        """Seconds by stage: read, decode, augment, other (the rest of start..end: label
        checks, shuffle buffer, padding) and handoff."""
        other = max(0.0, (self.end - self.start) - self.read_s - self.decode_s - self.augment_s)
        return {"read": self.read_s, "decode": self.decode_s, "augment": self.augment_s,
                "other": other, "handoff": self.handoff_s}


class BlockObserver(Protocol):
    """Called in the preprocessing process once per block; must be cheap and never raise."""

    def on_block(self, span: BlockSpan) -> None: ...
