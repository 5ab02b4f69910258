"""Tier 3: `make demo`'s script, as a user runs it: it succeeds, and it stops everything it started
when it succeeds, when the job fails, and when it is interrupted."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest

from cluster.local.procfs import local_processes
from tests.helpers import wait_for

pytestmark = pytest.mark.services
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "jobs", "demo.py")


def leftovers(workdir: str, ray_temp: str | None) -> list[str]:
    """Command lines of processes still running from this demo (its SeaweedFS or Ray)."""
    return [p.cmdline[:200] for p in local_processes()
            if workdir in p.cmdline or (ray_temp and ray_temp in p.cmdline)]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_demo(workdir, *flags, interrupt_after: str | None = None, timeout=600, env=None):
    proc = subprocess.Popen([sys.executable, DEMO, "--workdir", str(workdir), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    lines = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if interrupt_after and interrupt_after in line:
            proc.send_signal(signal.SIGINT)
            interrupt_after = None
        assert time.monotonic() < deadline, "demo did not finish in time"
    code = proc.wait(timeout=60)
    text = "".join(lines)
    temp = re.search(r"logs under (\S+)", text)
    dash = re.search(r"dashboard http://127.0.0.1:(\d+)", text)
    return code, text, temp.group(1) if temp else None, int(dash.group(1)) if dash else None


def assert_all_stopped(workdir, temp, dashboard_port, text):
    assert "[demo] stopped the Ray head and the object store" in text
    wait_for(lambda: leftovers(str(workdir), temp) == [], 5,
             lambda: f"the demo's processes to end: {leftovers(str(workdir), temp)}")
    if dashboard_port:
        assert not port_open(dashboard_port)


# Recognisable credentials for the demo's object store, searched for in everything the run
# leaves behind. Made at run time: the job's working_dir copy of this file must not hold them.
ACCESS_KEY = "FLLEAKCHECK" + secrets.token_hex(6).upper()
SECRET_KEY = "fl-leak-check-" + secrets.token_hex(12)


def files_holding(roots, needles: list[bytes], skip: str) -> tuple[list[str], int]:
    """Files under `roots` (except below `skip`) that contain any of `needles`, and how many
    files were searched."""
    hits, searched = [], 0
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) != skip]
            for name in names:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError:  # sockets, vanished files
                    continue
                searched += 1
                if any(n in data for n in needles):
                    hits.append(path)
    return hits, searched


def test_demo_trains_prints_the_summary_and_cleans_up(tmp_path):
    # 3 epochs of the demo's 5 keep the suite's time down; the same training (digits, 2 DDP
    # workers, from s3://) reaches 0.93 in 5 epochs in faults/test_trainer_kill.py.
    code, text, temp, port = run_demo(tmp_path, "--epochs", "3",
                                      env={"FEEDLINE_STORE_ACCESS_KEY": ACCESS_KEY,
                                           "FEEDLINE_STORE_SECRET_KEY": SECRET_KEY})
    assert code == 0, text[-4000:]
    acc = float(re.search(r"validation accuracy : ([0-9.]+)", text).group(1))
    assert acc >= 0.9, text[-4000:]
    assert re.search(r"images/s\s+: \d+", text) and "waiting for data" in text
    assert "epoch 3/3" in text  # the job's logs were streamed
    # 3 epochs x 2 ranks x 718 rows (1,437 // 2), nothing echoed, nothing bad.
    assert re.search(r"examples\s+: 4308 fresh, 0 echoed, 0 bad records", text), text[-2000:]
    assert (tmp_path / "timeline" / "timeline.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "timeline" / "timeline.json").read_text())["traceEvents"]
    # the run report: its path printed, the page and the files it is rebuilt from written
    report = re.search(r"report\s+: (\S+)", text)
    assert report and report.group(1) == str(tmp_path / "report" / "report.html"), text[-2000:]
    page = (tmp_path / "report" / "report.html").read_text()
    assert re.search(r"(input|compute)-bound|balanced", page) and "What to do" in page
    assert json.loads((tmp_path / "report" / "run.json").read_text())["actors"]
    assert_all_stopped(tmp_path, temp, port, text)
    # The credentials were used (the store enforces signatures) and appear nowhere: not in the
    # output, the summary, the timeline, the checkpoints, nor any of Ray's logs. (The store's
    # own data directory holds its users, as any S3 server's does.)
    assert ACCESS_KEY not in text and SECRET_KEY not in text
    hits, searched = files_holding([tmp_path, temp], [ACCESS_KEY.encode(), SECRET_KEY.encode()],
                                   skip=str(tmp_path / "store"))
    assert hits == [] and searched > 50
    assert list((tmp_path / "results").rglob("state.pt")), "no checkpoint was searched"


def test_demo_cleans_up_when_the_job_fails(tmp_path):
    code, text, temp, port = run_demo(tmp_path, "--epochs", "0")
    assert code == 1, text[-4000:]
    assert "the training job failed" in text and "epochs must be >= 1" in text
    assert_all_stopped(tmp_path, temp, port, text)


def test_demo_cleans_up_when_interrupted(tmp_path):
    code, text, temp, port = run_demo(tmp_path, interrupt_after="Ray head up")
    assert code == 130, text[-4000:]
    assert "interrupted" in text
    assert_all_stopped(tmp_path, temp, port, text)
