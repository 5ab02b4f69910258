"""Tier 1: local processes as the soak script and the fault tests see them, and services stopped
with everything they started; tier 3: the object store stopped leaves nothing in /tmp."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from cluster.local.procfs import local_processes
from cluster.local.services import start_service, stop_process_group
from tests.helpers import wait_for

SLEEPER = "import time; time.sleep(60)  # feedline-process-probe"


def find(marker: str):
    return [p for p in local_processes() if marker in p.cmdline]


def test_a_process_is_found_by_its_command_line_with_its_memory_then_seen_dead():
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER])
    try:
        wait_for(lambda: find("feedline-process-probe"), 10, "the probe process to be listed")
        [seen] = find("feedline-process-probe")
        assert seen.pid == proc.pid and seen.alive and seen.rss_mb > 1
        assert seen.cmdline == f"{sys.executable} -c {SLEEPER}"
        os.kill(proc.pid, signal.SIGKILL)
        # killed, not yet reaped by its parent: a zombie, listed but not alive
        wait_for(lambda: not any(p.alive for p in find("feedline-process-probe")), 10,
                 "the killed probe to be seen dead")
        assert [p.state for p in find("feedline-process-probe")] in ([], ["Z"])
    finally:
        proc.kill()
        proc.wait()
    assert find("feedline-process-probe") == []


def test_stopping_a_service_stops_its_children_too(tmp_path):
    # a shell that starts a child and ignores nothing: both are in the service's process group
    script = f"{sys.executable} -c '{SLEEPER}' & wait"
    proc = start_service(["bash", "-c", script], dict(os.environ), str(tmp_path / "log"))
    wait_for(lambda: [p for p in find("feedline-process-probe") if p.pid != proc.pid], 10,
             "the service's child to start")
    stop_process_group(proc, grace_s=5)
    assert proc.poll() is not None
    wait_for(lambda: not [p for p in find("feedline-process-probe") if p.alive], 10,
             lambda: f"the service's child to end: {find('feedline-process-probe')}")


def test_the_leader_shuts_its_children_down_itself_before_the_group_is_signalled(tmp_path):
    # Like `ray start --block`, which drains its node through the GCS it started: the leader's
    # own shutdown needs its child alive when the SIGTERM arrives.
    marker = tmp_path / "marker"
    script = (f"{sys.executable} -c '{SLEEPER}' & child=$!; "
              f"trap 'kill -0 $child && echo child-alive > {marker}; kill $child; wait $child; "
              f"exit 0' TERM; wait")
    proc = start_service(["bash", "-c", script], dict(os.environ), str(tmp_path / "log"))
    wait_for(lambda: [p for p in find("feedline-process-probe") if p.pid != proc.pid], 10,
             "the service's child to start")
    started = time.monotonic()
    stop_process_group(proc, grace_s=20)
    assert time.monotonic() - started < 5  # no waiting out the grace period
    assert marker.read_text() == "child-alive\n" and proc.returncode == 0
    assert not [p for p in find("feedline-process-probe") if p.alive]


@pytest.mark.services
def test_a_stopped_object_store_leaves_nothing_behind_in_tmp(tmp_path):
    """weed puts a unix socket per server in /tmp and its log files in TMPDIR; a stopped store
    removes its sockets and keeps its logs in its data directory (hundreds of stale sockets
    piled up in /tmp over a day of test runs before)."""
    from cluster.local.object_store import EmbeddedObjectStore

    def in_tmp():
        return set(glob.glob("/tmp/seaweedfs-*.sock")) | set(glob.glob("/tmp/weed.*"))

    before = in_tmp()
    store = EmbeddedObjectStore(data_dir=str(tmp_path / "store")).start()
    try:
        assert {os.path.basename(p).rsplit("-", 1)[0] for p in in_tmp() - before} >= {
            "seaweedfs-s3", "seaweedfs-filer"}  # what the check below looks for exists
    finally:
        store.stop()
    assert in_tmp() - before == set()
    assert any(name.startswith("weed.") for name in os.listdir(tmp_path / "store"))
