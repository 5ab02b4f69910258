"""Pure: a finished run's summary, settings and spans as `RunFacts`."""

from __future__ import annotations

from cluster.observability.report.model import RunFacts
from cluster.observability.report.series import (
    actor_work,
    bin_width,
    pool_bins,
    steady_steps,
    step_bins,
)

__all__ = ["collect", "run_config"]


def run_config(tc, pipeline) -> dict:
    """The settings advice refers to, from the TrainConfig and the training PipelineConfig."""
    p, e = pipeline.preprocess, pipeline.echo
    return {"model": tc.model, "num_workers": tc.num_workers, "batch_size": tc.batch_size,
            "use_gpu": tc.use_gpu, "amp": tc.amp, "prefetch_batches": tc.prefetch_batches,
            "image_size": p.image_size, "pool_min": p.min_actors, "pool_max": p.max_actors,
            "pool_resource": p.pool_resource,
            "echo_factor": "auto" if e.auto else f"{e.factor:g}", "echo_max": e.max_factor}


def collect(summary: dict, config: dict, train_spans: list, stage_spans: list,
            pool_work: dict, timeline_png: str | None = None) -> RunFacts:
    """`train_spans`: (rank, start, got_batch, on_device, end, images); `stage_spans`: (actor,
    start, end, images, fresh, *seconds by stage); `pool_work`: the monitor's per-actor sums
    (RunMonitor.pool_stages)."""
    starts = [s[1] for s in train_spans] + [s[1] for s in stage_spans]
    ends = [s[4] for s in train_spans] + [s[2] for s in stage_spans]
    t0 = min(starts) if starts else 0.0
    width = bin_width(max(ends) - t0 if ends else 1.0)
    step_ends = [s[4] for s in train_spans]
    window = [t0, max(step_ends)] if step_ends else []
    return RunFacts(run=str(summary.get("run", "")), summary=summary, config=config,
                    actors=actor_work(pool_work), steady=steady_steps(train_spans),
                    window=window, bin_s=width, step_bins=step_bins(train_spans, t0, width),
                    pool_bins=pool_bins(stage_spans, t0, width), timeline_png=timeline_png)
