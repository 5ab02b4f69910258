"""The report page: one self-contained HTML file (pictures inlined as data: URIs, no script, no
network: its Content-Security-Policy forbids any fetch) that fits the window's width."""

from __future__ import annotations

import html
import re

from cluster.observability.report import charts
from cluster.observability.report.advice import advise, read_rate
from cluster.observability.report.figures import Figures, figures
from cluster.observability.report.model import RunFacts
from cluster.observability.report.verdict import verdict
from pipelines.observe import STAGES

__all__ = ["render", "CSP"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'"
_STYLE = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0 auto;
 max-width:1040px;padding:16px 20px 40px;overflow-wrap:anywhere}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px}
.verdict{font-size:17px;padding:12px 14px;border-radius:6px;margin:14px 0;border-left:8px solid}
.input-bound{background:#fdecea;border-color:#d62728}
.compute-bound{background:#eaf6ea;border-color:#2ca02c}
.balanced{background:#fff6e0;border-color:#ff9f1c}
.todo li{margin:6px 0}
img{max-width:100%;height:auto;display:block;margin:6px 0}
table{border-collapse:collapse;width:100%;table-layout:fixed;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
code{background:#f3f3f3;padding:0 3px;border-radius:3px;font-size:13px}
code.nw{white-space:nowrap}
.note{color:#555;font-size:13px}
"""


def _text(s: str) -> str:
    """Escaped text, `backticks` as code."""
    def code(m: re.Match) -> str:  # short code (flags) never breaks across lines
        return (f'<code class="nw">{m.group(1)}</code>' if len(m.group(1)) <= 40
                else f"<code>{m.group(1)}</code>")

    return re.sub(r"`([^`]+)`", code, html.escape(s))


def _img(uri: str | None, alt: str, missing: str) -> str:
    if uri is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_text(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _numbers(facts: RunFacts, f: Figures) -> str:
    s = facts.summary
    read = (f"{read_rate(f.read_mb_s)} while reading ({100 * f.stage_share.get('read', 0):.0f}%"
            " of pool time)" if f.read_mb_s is not None else "n/a")
    acc = s.get("val_accuracy")
    rows = [
        ["trainers took / would take", f"{f.trainer_rate:,.0f} / {f.trainer_demand:,.0f} img/s"
         f" ({s.get('num_workers')} {'GPU' if s.get('use_gpu') else 'CPU'} workers)"],
        ["waiting for data", f"{100 * f.wait_fraction:.1f}% of step time after the first step"
         f" ({100 * f.run_wait_fraction:.1f}% over the run)"],
        ["pool made", f"{f.pool_rate:,.0f} img/s ({f.pool_fresh_rate:,.0f} fresh) with "
         f"{f.actors} actors at {100 * f.pool_busy:.0f}% busy; one actor "
         f"{f.actor_rate:,.0f} img/s"],
        ["storage", read],
        ["echo factor", f"x{f.echo_factor:.2f} over the run ({s.get('echo_mode') or 'off'}"
         f"{', auto' if s.get('echo_auto') else ''})"],
        ["examples", f"{s.get('fresh_examples', 0):,} fresh, {s.get('echoed_examples', 0):,} "
         f"echoed, {s.get('bad_records', 0):,} bad"],
        ["accuracy / wall", f"{'n/a' if acc is None else f'{acc:.4f}'} after "
         f"{s.get('epochs')} epochs / {s.get('wall_s', 0):.1f} s"],
    ]
    return _table(["", ""], rows)


def _actors(facts: RunFacts, f: Figures) -> str:
    rows = []
    for a in facts.actors:
        occupied = a.busy_s + a.stages.get("handoff", 0.0)
        split = ", ".join(f"{k} {100 * a.stages.get(k, 0.0) / occupied:.0f}%"
                          for k in STAGES if occupied > 0)
        rows.append([a.name, f"{a.images:,}",
                     f"{100 * a.busy_s / f.pool_window_s:.0f}%" if f.pool_window_s else "n/a",
                     split])
    return _table(["actor", "images", "busy", "time by stage"], rows)


def _control(facts: RunFacts) -> str:
    s = facts.summary
    parts = [_img(charts.control(facts), "echo factor and pool decisions over time",
                  f"The echo factor was fixed at x{facts.config.get('echo_factor', 1)} and no "
                  "pool policy ran (--pool-policy none).")]
    moves = [d for d in s.get("pool_decisions") or [] if d.get("action") not in ("hold",)]
    if moves:
        parts.append(_table(["t (s)", "action", "nodes", "echo", "reason"],
                            [[d.get("t_s"), d["action"], d["target_nodes"], d.get("echo"),
                              d.get("reason", "")] for d in moves[-8:]]))
    changes = s.get("echo_changes") or []
    if len(changes) > 1:
        parts.append(_table(["t (s)", "echo factor", "why"],
                            [[f"{c[0]:.1f}", f"x{c[1]:.2f}", c[2]] for c in changes[-8:]]))
    return "".join(parts)


def _bad(facts: RunFacts) -> str:
    s = facts.summary
    if not s.get("bad_records"):
        return '<p class="note">No bad records: every record decoded.</p>'
    kinds = _table(["kind", "distinct records"], sorted(s.get("bad_by_kind", {}).items()))
    shards = _table(["shard", "bad records"], list(s.get("bad_shards", {}).items())[:5])
    keys = ", ".join(f"`{k}`" for k in s.get("bad_sample_keys", [])[:8])
    listed = s.get("bad_records_file")
    return (f"<p>{s['bad_records']:,} distinct bad records, met {s.get('bad_skips', 0):,} "
            f"times.</p>{kinds}{shards}<p>Some keys: {_text(keys)}</p>"
            + (f"<p>All of them: {_text(f'`{listed}`')}</p>" if listed else ""))


def render(facts: RunFacts, timeline_uri: str | None = None) -> str:
    """The whole page; `timeline_uri` is the timeline picture as a data: URI."""
    f = figures(facts)
    v = verdict(f)
    todo = "".join(f"<li>{_text(line)}</li>" for line in advise(f, facts.config,
                                                                 facts.summary))
    c = facts.config
    setting = (f"{c.get('model')} · {c.get('num_workers')} workers · batch "
               f"{c.get('batch_size')} · {c.get('image_size')} px · pool "
               f"{c.get('pool_min')}..{c.get('pool_max')} actors · echo {c.get('echo_factor')}")
    body = f"""<h1>feedline run report: {html.escape(facts.run)}</h1>
<p class="sub">{html.escape(setting)}</p>
<div class="verdict {v.kind}"><b>{html.escape(v.line.split(':')[0])}</b>:{
        _text(v.line.split(':', 1)[1])}</div>
<h2>What to do</h2><ul class="todo">{todo or '<li>Nothing to change.</li>'}</ul>
<h2>The figures</h2>{_numbers(facts, f)}
<h2>Step time per rank</h2><p class="note">Share of each rank's step time waiting for data
(red), copying to the device (orange) and computing (green), over time.</p>
{_img(charts.step_split(facts), "step time split per rank", "No steps were kept.")}
<h2>Images per second</h2><p class="note">What the pool made (fresh examples and echoed
copies) and what the trainers took.</p>
{_img(charts.images_per_s(facts), "images per second", "No spans were kept.")}
<h2>The CPU pool: where its time goes</h2>
{_img(charts.pool_split(facts, f), "pool stage split", "The pool made no training blocks.")}
{_actors(facts, f)}
<h2>Timeline</h2><p class="note">Every step of every rank and every block of the pool; below,
images made and not yet taken (zero: the trainers wait).</p>
{_img(timeline_uri, "timeline", "No timeline picture.")}
<h2>Echo factor and pool decisions</h2>{_control(facts)}
<h2>Bad records</h2>{_bad(facts)}"""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>feedline report: {html.escape(facts.run)}</title><style>{_STYLE}</style></head>
<body>{body}</body></html>
"""
