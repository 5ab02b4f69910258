"""Helpers for the report tests: fabricated-but-realistic run data, and a real headless
Chromium (Debian's `chromium`, installed where it is missing, as the Prometheus test does)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = "chromium"
_CONSOLE = re.compile(r":CONSOLE[:(]")


def ensure_chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                       "apt-get install -y -qq --no-install-recommends chromium",
                       shell=True, check=True, timeout=900, stdout=subprocess.DEVNULL)
    return shutil.which(CHROMIUM)


def chromium(binary: str, page: Path, *args: str, width: int = 1024) -> subprocess.CompletedProcess:
    """Chromium headless on `page`, console messages logged to stderr."""
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--window-size={width},2400",
         "--no-first-run", "--disable-extensions", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    """The page's console messages (errors, CSP violations, failed loads) Chromium logged."""
    return [line for line in stderr.splitlines() if _CONSOLE.search(line)]


def page_width(binary: str, page: Path, width: int) -> tuple[int, int]:
    """(scrollWidth, clientWidth) of the page at a window `width` px wide: a copy of the page
    with a probe script (and a policy that lets it run) writes them into the DOM."""
    probe = page.with_name("probe-" + page.name)
    text = page.read_text().replace("script-src 'none'", "script-src 'unsafe-inline'")
    probe.write_text(text.replace("</body>", (
        "<script>document.body.setAttribute('data-widths', document.documentElement"
        ".scrollWidth + ' ' + document.documentElement.clientWidth)</script></body>")))
    dom = chromium(binary, probe, "--dump-dom", width=width).stdout
    found = re.search(r'data-widths="(\d+) (\d+)"', dom)
    assert found, dom[:500]
    return int(found.group(1)), int(found.group(2))


def pixel_spread(png: bytes) -> float:
    """Standard deviation of the screenshot's gray levels (0: one flat colour)."""
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).std())


def fabricated_spans(wait: float, steps: int = 120, ranks: int = 2, actors: int = 2,
                     read_share: float = 0.2, t0: float = 1.79e9):
    """Spans of a realistic run: `ranks` ranks taking 64-image steps of 0.2 s compute after
    `wait` s waiting (the first step waits 8 s: the pool's cold start), and `actors` pool
    actors making 256-image blocks whose time is `read_share` reads."""
    train = []
    for rank in range(ranks):
        t = t0
        for i in range(steps):
            w = 8.0 if i == 0 else wait
            train.append((rank, t, t + w, t + w + 0.01, t + w + 0.21, 64))
            t += w + 0.21
    end = max(s[4] for s in train)
    block_s = 256 / 64 * (0.21 + wait) * actors / ranks * (0.95 if wait > 0.05 else 0.3)
    pool, work = [], {}
    for a in range(actors):
        name, t = f"10.0.0.{a + 1}:4{a}11", t0 + 1.0
        while t + block_s < end:
            stages = {"read": read_share * block_s, "decode": 0.3 * block_s,
                      "augment": (0.65 - read_share) * block_s, "other": 0.05 * block_s,
                      "handoff": 0.02}
            pool.append((name, t, t + block_s, 256, 256, *stages.values()))
            w = work.setdefault(name, {"first": t, "last": t})
            w["last"] = t + block_s
            for k, v in (("images", 256), ("fresh", 256), ("busy", block_s),
                         ("bytes", 256 * 9000), *stages.items()):
                w[k] = w.get(k, 0) + v
            t += block_s + (0.02 if wait > 0.05 else 2.5 * block_s)
    return train, pool, work


def fabricated_summary(wait_fraction: float) -> dict:
    return {
        "run": "resnet50-imagenet-0412", "val_accuracy": 0.7123, "images_per_s": 412.0,
        "data_wait_fraction": wait_fraction, "epochs": 3, "wall_s": 812.4,
        "num_workers": 2, "use_gpu": True, "fresh_examples": 96_000, "echoed_examples": 0,
        "bad_records": 7, "bad_skips": 21,
        "bad_by_kind": {"truncated": 4, "zero_bytes": 2, "not_an_image": 1},
        "bad_shards": {"s3://photos/train/part-00017.parquet": 5,
                       "s3://photos/train/part-00230.parquet": 2},
        "bad_sample_keys": ["train/n01440764/n01440764_10026.JPEG",
                            "train/n01443537/n01443537_2772.JPEG"],
        "bad_records_file": "s3://results/resnet50-imagenet-0412/bad_records.jsonl",
        "echo_mode": None, "echo_auto": False, "echo_factor": 1.0,
        "echo_changes": [[0.0, 1.0, "fixed"]],
        "pool_decisions": [{"t_s": 30.0 * i, "action": "up" if i == 2 else "hold",
                            "target_nodes": 1 if i < 2 else 2, "ready": 1, "pending": 0,
                            "stall": 0.4, "echo": 1.0, "reason": "stall 40% above 10%"}
                           for i in range(8)],
    }


CONFIG = {"model": "resnet50", "num_workers": 2, "batch_size": 64, "use_gpu": True,
          "amp": False, "prefetch_batches": 2, "image_size": 224, "pool_min": 1,
          "pool_max": 2, "pool_resource": "preprocess_cpu", "echo_factor": "1",
          "echo_max": 4.0}
