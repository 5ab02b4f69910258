"""The report's pictures (matplotlib, Agg), each returned as a PNG `data:` URI so the page needs
no other file and no network."""

from __future__ import annotations

import base64
import io

from cluster.observability.report.figures import Figures
from cluster.observability.report.model import POOL_COLUMNS, STEP_COLUMNS, RunFacts
from pipelines.observe import STAGES

__all__ = ["step_split", "images_per_s", "pool_split", "control", "png_uri", "COLORS"]

COLORS = {"wait": "#d62728", "h2d": "#ff7f0e", "compute": "#2ca02c", "read": "#8c564b",
          "decode": "#1f77b4", "augment": "#9467bd", "other": "#7f7f7f", "handoff": "#17becf",
          "fresh": "#1f77b4", "echoed": "#aec7e8", "trainers": "#000000"}
WIDTH_IN = 10.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_uri(fig) -> str:
    """The figure as a data: URI (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def step_split(facts: RunFacts) -> str | None:
    """Per rank, the share of step time spent waiting / copying / computing, bin by bin."""
    ranks = sorted(facts.step_bins, key=int)
    if not ranks:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(ranks), 1, sharex=True, squeeze=False,
                             figsize=(WIDTH_IN, 0.6 + 1.5 * len(ranks)))
    for ax, rank in zip(axes[:, 0], ranks, strict=True):
        rows = facts.step_bins[rank]
        t = [r[0] for r in rows]
        total = [max(1e-9, sum(r[1:4])) for r in rows]
        bottom = [0.0] * len(rows)
        for k, phase in enumerate(STEP_COLUMNS[1:4], start=1):
            share = [100 * r[k] / s for r, s in zip(rows, total, strict=True)]
            ax.bar(t, share, width=facts.bin_s, bottom=bottom, align="edge",
                   color=COLORS[phase], label=phase, linewidth=0)
            bottom = [b + v for b, v in zip(bottom, share, strict=True)]
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"rank {rank}\n% of step")
    axes[0, 0].legend(ncol=3, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                      frameon=False)
    axes[-1, 0].set_xlabel(f"seconds since the first span ({facts.bin_s:g} s bins)")
    return png_uri(fig)


def images_per_s(facts: RunFacts) -> str | None:
    """Images/s the pool made, fresh and echoed copies stacked, and what the trainers took."""
    if not facts.pool_bins and not facts.step_bins:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.8))
    w = facts.bin_s
    if facts.pool_bins:
        i_img, i_fresh = POOL_COLUMNS.index("images"), POOL_COLUMNS.index("fresh")
        t = [r[0] for r in facts.pool_bins]
        fresh = [r[i_fresh] / w for r in facts.pool_bins]
        echoed = [max(0.0, r[i_img] - r[i_fresh]) / w for r in facts.pool_bins]
        ax.bar(t, fresh, width=w, align="edge", color=COLORS["fresh"], label="pool: fresh")
        ax.bar(t, echoed, width=w, bottom=fresh, align="edge", color=COLORS["echoed"],
               label="pool: echoed copies")
    took: dict[float, float] = {}
    for rows in facts.step_bins.values():
        for r in rows:
            took[r[0]] = took.get(r[0], 0.0) + r[4] / w
    if took:
        ts = sorted(took)
        ax.step([x + w for x in ts], [took[x] for x in ts], where="pre",
                color=COLORS["trainers"], label="trainers took")
    ax.set_ylabel("images/s")
    ax.set_xlabel(f"seconds since the first span ({w:g} s bins)")
    ax.legend(fontsize=8, ncol=3, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return png_uri(fig)


def pool_split(facts: RunFacts, f: Figures) -> str | None:
    """Where the pool's time went (all actors), and each actor's time by stage over the pool's
    window: the unfilled rest of a bar is time the actor was idle."""
    if not facts.actors or f.pool_window_s <= 0:
        return None
    plt = _plt()
    n = len(facts.actors)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(WIDTH_IN, 1.6 + 0.35 * (n + 1)),
                                      gridspec_kw={"height_ratios": [1, max(1, n)]})
    left = 0.0
    for stage in STAGES:
        share = 100 * f.stage_share.get(stage, 0.0)
        top.barh([0], [share], left=left, color=COLORS[stage], label=f"{stage} {share:.0f}%")
        left += share
    top.set_xlim(0, 100)
    top.set_yticks([0], ["all actors"])
    top.set_xlabel("% of pool time (busy + hand-off)")
    top.legend(ncol=len(STAGES), fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0),
               frameon=False)
    for row, actor in enumerate(facts.actors):
        left = 0.0
        for stage in STAGES:
            share = 100 * actor.stages.get(stage, 0.0) / f.pool_window_s
            bottom.barh([row], [share], left=left, color=COLORS[stage])
            left += share
    bottom.set_yticks(range(n), [a.name for a in facts.actors], fontsize=8)
    bottom.invert_yaxis()
    bottom.set_xlim(0, max(100.0, left))
    bottom.set_xlabel("% of the pool's window, per actor (the rest: idle)")
    fig.tight_layout()
    return png_uri(fig)


def control(facts: RunFacts) -> str | None:
    """The echo factor in force and (with a pool policy) the pool nodes asked for, over time."""
    s = facts.summary
    changes = s.get("echo_changes") or []
    decisions = s.get("pool_decisions") or []
    if len(changes) < 2 and not decisions:  # a fixed factor: the page says so in words
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 2.4))
    if changes:
        end = max([c[0] for c in changes] + [d["t_s"] for d in decisions if "t_s" in d])
        xs = [c[0] for c in changes] + [end]
        ys = [c[1] for c in changes] + [changes[-1][1]]
        ax.step(xs, ys, where="post", color=COLORS["augment"], linewidth=2,
                label="echo factor")
    ax.set_ylabel("echo factor")
    ax.set_ylim(bottom=0.9)
    if decisions:
        right = ax.twinx()
        right.step([d.get("t_s", i) for i, d in enumerate(decisions)],
                   [d["target_nodes"] for d in decisions], where="post", color="#444",
                   label="pool nodes asked for")
        right.set_ylabel("pool nodes")
        right.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)
    ax.set_xlabel("seconds since the run's controllers started")
    return png_uri(fig)
