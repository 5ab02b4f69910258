"""The timeline of one run: loader vs. compute, as a Chrome trace and as a picture.

`timeline.json` (Chrome trace format; open it in https://ui.perfetto.dev or chrome://tracing)
has one track per trainer rank with `wait` / `h2d` / `compute` spans per step, and one track per
CPU-pool actor with a span per block it made. `timeline.png` draws the same tracks, and under
them the number of images the pool had made that no trainer had taken yet: when that line sits
at zero the trainers wait (red); when it climbs, the loader is running ahead.
"""

from __future__ import annotations

import json
import os

__all__ = ["chrome_trace", "write_timeline", "PHASES"]

PHASES = (("wait", "#d62728"), ("h2d", "#ff7f0e"), ("compute", "#2ca02c"))
POOL_COLOR = "#1f77b4"
_TRAIN_PID, _POOL_PID = 1, 2


def _origin(train_spans, pool_spans) -> float:
    starts = [s[1] for s in train_spans] + [s[1] for s in pool_spans]
    return min(starts) if starts else 0.0


def chrome_trace(train_spans: list, pool_spans: list) -> dict:
    """`train_spans`: (rank, start, got_batch, on_device, end, images); `pool_spans`: (actor,
    start, end, images, epoch); times in epoch seconds."""
    t0 = _origin(train_spans, pool_spans)

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 1)

    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": _TRAIN_PID, "args": {"name": "trainers"}},
        {"name": "process_name", "ph": "M", "pid": _POOL_PID, "args": {"name": "CPU pool"}},
    ]
    for rank in sorted({s[0] for s in train_spans}):
        events.append({"name": "thread_name", "ph": "M", "pid": _TRAIN_PID, "tid": rank,
                       "args": {"name": f"rank {rank}"}})
    actors = sorted({s[0] for s in pool_spans})
    for tid, actor in enumerate(actors):
        events.append({"name": "thread_name", "ph": "M", "pid": _POOL_PID, "tid": tid,
                       "args": {"name": f"actor {actor}"}})
    for rank, start, got, on_device, end, images in train_spans:
        for (name, _), a, b in zip(PHASES, (start, got, on_device), (got, on_device, end),
                                   strict=True):
            events.append({"name": name, "cat": "train", "ph": "X", "pid": _TRAIN_PID,
                           "tid": rank, "ts": us(a), "dur": round((b - a) * 1e6, 1),
                           "args": {"images": images}})
    tids = {a: i for i, a in enumerate(actors)}
    for actor, start, end, images, epoch in pool_spans:
        events.append({"name": "block", "cat": "pool", "ph": "X", "pid": _POOL_PID,
                       "tid": tids[actor], "ts": us(start), "dur": round((end - start) * 1e6, 1),
                       "args": {"images": images, "epoch": epoch}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"origin_unix_s": t0}}


def _ready_ahead(train_spans: list, pool_spans: list, t0: float):
    """Step curve of images made by the pool and not yet taken by any trainer."""
    changes = [(s[2] - t0, s[3]) for s in pool_spans]          # +images when a block is done
    changes += [(s[2] - t0, -s[5]) for s in train_spans]       # -images when a step takes them
    changes.sort()
    xs, ys, level = [0.0], [0], 0
    for t, delta in changes:
        level += delta
        xs.append(t)
        ys.append(max(level, 0))
    return xs, ys


def _render_png(path: str, train_spans: list, pool_spans: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = _origin(train_spans, pool_spans)
    ranks = sorted({s[0] for s in train_spans})
    actors = sorted({s[0] for s in pool_spans})
    labels = [f"rank {r}" for r in ranks] + [f"pool {a}" for a in actors]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(14, 2.2 + 0.45 * len(labels)),
        gridspec_kw={"height_ratios": [max(2, len(labels)), 2]})
    for row, rank in enumerate(ranks):
        mine = [s for s in train_spans if s[0] == rank]
        for i, (_, color) in enumerate(PHASES):
            bars = [(s[1 + i] - t0, s[2 + i] - s[1 + i]) for s in mine]
            top.broken_barh(bars, (row - 0.4, 0.8), facecolors=color, linewidth=0)
    for j, actor in enumerate(actors):
        bars = [(s[1] - t0, s[2] - s[1]) for s in pool_spans if s[0] == actor]
        top.broken_barh(bars, (len(ranks) + j - 0.4, 0.8), facecolors=POOL_COLOR,
                        edgecolors="white", linewidth=0.3)
    top.set_yticks(range(len(labels)), labels)
    top.invert_yaxis()
    top.set_title("Where the trainers waited for data (red) and what the CPU pool was doing "
                  "(gaps on rank tracks: validation)", loc="left", fontsize=10)
    top.legend(handles=[Patch(color=c, label=n) for n, c in PHASES]
               + [Patch(color=POOL_COLOR, label="pool: one block made")],
               loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=8, frameon=False)
    xs, ys = _ready_ahead(train_spans, pool_spans, t0)
    bottom.step(xs, ys, where="post", color=POOL_COLOR)
    bottom.fill_between(xs, ys, step="post", alpha=0.25, color=POOL_COLOR)
    bottom.set_ylabel("images ready\nahead of trainers")
    bottom.set_xlabel("seconds since the first span")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_timeline(directory: str, train_spans: list, pool_spans: list) -> tuple[str, str]:
    """Write `timeline.json` and `timeline.png` into `directory`; returns both paths."""
    os.makedirs(directory, exist_ok=True)
    trace_path = os.path.join(directory, "timeline.json")
    png_path = os.path.join(directory, "timeline.png")
    with open(trace_path, "w") as f:
        json.dump(chrome_trace(train_spans, pool_spans), f)
    _render_png(png_path, train_spans, pool_spans)
    return trace_path, png_path
