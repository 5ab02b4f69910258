"""Tier 1: a pool actor's callable (in-process, local Parquet) times each block's stages: every
block's span carries read, decode, augment and hand-off seconds that add up, and the bytes it
read. (The exported metric and its dashboard panel are checked against a real Prometheus in
test_observability.py.)"""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_sources import write_shard

from pipelines import PipelineConfig, PreprocessConfig, SourceConfig, plan_source
from pipelines.build import Preprocessor
from pipelines.observe import STAGES, BlockSpan


class Spans:
    def __init__(self):
        self.spans: list[BlockSpan] = []

    def on_block(self, span: BlockSpan) -> None:
        self.spans.append(span)


@pytest.mark.parametrize("echo", [1.0, 2.0])
def test_every_block_carries_its_stage_seconds_and_the_hand_off_between_blocks(tmp_path, echo):
    from pipelines import EchoConfig

    write_shard(tmp_path / "a.parquet", 48, row_group=16)
    write_shard(tmp_path / "b.parquet", 16, start=48, row_group=16)
    cfg = PipelineConfig(source=SourceConfig(url=str(tmp_path), rows_per_unit=16),
                         preprocess=PreprocessConfig(recipe="small", image_size=8,
                                                     output_rows=8),
                         echo=EchoConfig(factor=echo, mode="batch", shuffle_rows=8))
    plan = plan_source(cfg.source)
    seen = Spans()
    pre = Preprocessor(cfg, plan.units, observer=seen)
    blocks, pause = 0, 0.05
    for _ in pre({"seq": np.arange(len(plan.units))}):
        blocks += 1
        time.sleep(pause)  # the consumer holds the generator: the actor's hand-off
    spans = seen.spans
    made = [s for s in spans if s.images]
    assert len(made) == blocks and sum(s.fresh for s in spans) == 64
    assert all(s.read_s >= 0 and s.decode_s >= 0 and s.augment_s >= 0 for s in spans)
    assert sum(s.read_s for s in spans) > 0 and sum(s.decode_s for s in spans) > 0
    assert sum(s.augment_s for s in spans) > 0
    # every block but the first was preceded by the consumer's pause; the last block's
    # hand-off arrives with the call's closing span
    assert spans[0].handoff_s == 0.0
    assert all(s.handoff_s >= pause for s in spans[1:])
    assert sum(s.handoff_s for s in spans) >= blocks * pause
    for s in spans:  # the stages of a span add up to its work and its hand-off
        assert tuple(s.stages) == STAGES
        assert sum(s.stages.values()) == pytest.approx(s.end - s.start + s.handoff_s,
                                                       abs=1e-6)
    image_bytes = sum(len(b) for b in pq_images(tmp_path))
    assert sum(s.read_bytes for s in spans) == image_bytes


def pq_images(folder) -> list[bytes]:
    import pyarrow.parquet as pq

    return [b for f in sorted(folder.glob("*.parquet"))
            for b in pq.read_table(str(f)).column("image").to_pylist()]
