"""How a restarted run's stream starts where its checkpoint left it.

Ray Train v2 builds a trainer's datasets anew for every worker group it starts (a dataset given
as a callable is called each time), so each attempt gets a fresh stream. `TrainDataset` is that
callable: it opens a new attempt in the run's `StreamLedger` and builds the stream with a
`LedgerPosition`. The stream's pool actors ask that position at their first call and wait for
it; rank 0 answers once it has restored the checkpoint Ray Train handed it (or found none), so
the pool always drops exactly the rows that checkpoint had done, never those of a newer
checkpoint that did not register nor of an older one.

    controller: TrainDataset() -> ledger.begin() = attempt A -> build_dataset(position=A)
    rank 0:     restore checkpoint -> ledger.publish(A, position)
    pool actor: first call -> ledger.position(A) (waits for the publish) -> drop done rows
"""

from __future__ import annotations

import asyncio

import ray

from pipelines import PipelineConfig, ShardPlan, build_dataset
from pipelines.echo import FactorSource
from pipelines.observe import BlockObserver
from pipelines.position import StreamPosition

__all__ = ["StreamLedger", "LedgerPosition", "TrainDataset", "start_ledger"]

WAIT_S = 900.0
"""How long a pool actor waits for rank 0 to say where the stream starts (rank 0 restores the
model first: a large checkpoint from object storage can take minutes)."""


@ray.remote(num_cpus=0)
class StreamLedger:
    """Per run: the attempts Ray Train started, and where each one's stream starts."""

    def __init__(self) -> None:
        self.attempt = 0
        self._positions: dict[int, dict | None] = {}
        self._published: dict[int, asyncio.Event] = {}

    def _event(self, attempt: int) -> asyncio.Event:
        return self._published.setdefault(attempt, asyncio.Event())

    async def begin(self) -> int:
        """A new attempt (a new worker group and stream); returns its number, from 1."""
        self.attempt += 1
        self._event(self.attempt)
        return self.attempt

    async def current(self) -> int:
        return self.attempt

    async def publish(self, attempt: int, state: dict | None) -> None:
        """Where `attempt`'s stream starts: a StreamPosition's state, or None (the start)."""
        self._positions[attempt] = state
        self._event(attempt).set()

    async def position(self, attempt: int, timeout_s: float = WAIT_S) -> dict | None:
        await asyncio.wait_for(self._event(attempt).wait(), timeout_s)
        return self._positions[attempt]


def start_ledger() -> ray.actor.ActorHandle:
    return StreamLedger.remote()


class LedgerPosition:
    """The `pipelines.position.PositionSource` of one attempt's stream."""

    def __init__(self, ledger: ray.actor.ActorHandle, attempt: int):
        self.ledger, self.attempt = ledger, attempt

    def position(self) -> StreamPosition | None:
        try:
            state = ray.get(self.ledger.position.remote(self.attempt))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, TimeoutError):
                raise RuntimeError(
                    f"the trainers did not say where attempt {self.attempt}'s stream starts "
                    f"within {WAIT_S:.0f} s (rank 0 restores the checkpoint first): see the "
                    "trainers' logs") from None
            raise
        return StreamPosition.from_state(state) if state is not None else None


class TrainDataset:
    """The training stream as Ray Train builds it for each worker group (see module doc)."""

    def __init__(self, pipeline: PipelineConfig, plan: ShardPlan, ledger: ray.actor.ActorHandle,
                 observer: BlockObserver | None = None,
                 factor_source: FactorSource | None = None):
        self.pipeline, self.plan, self.ledger = pipeline, plan, ledger
        self.observer, self.factor_source = observer, factor_source

    def __call__(self) -> ray.data.Dataset:
        attempt = ray.get(self.ledger.begin.remote())
        return build_dataset(self.pipeline, plan=self.plan, observer=self.observer,
                             factor_source=self.factor_source,
                             position=LedgerPosition(self.ledger, attempt))
