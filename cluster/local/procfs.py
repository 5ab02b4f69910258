"""The processes on this machine as Linux /proc shows them: the one home of every /proc reader.

Ray titles each worker process after the actor or task it runs ("ray::Class.method"), which is how
the soak sampler, the benchmark and the fault tests find Ray's workers without the dashboard's
state API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["LocalProcess", "local_processes", "process_table", "process_tree", "tree_rss_bytes",
           "cmdline", "machine_ticks", "shm_used_bytes"]


@dataclass(frozen=True)
class LocalProcess:
    pid: int
    cmdline: str  # arguments joined by spaces; a Ray worker's is its title, "ray::Class.method"
    state: str  # /proc state letter: "R", "S", ...; "Z" for a zombie (dead, not yet reaped)
    rss_mb: float  # resident memory; 0 where the kernel reports none (zombies)
    pgid: int  # process group

    @property
    def alive(self) -> bool:
        return self.state != "Z"


def local_processes() -> list[LocalProcess]:
    """Every process on this machine (Linux /proc), ordered by pid; processes that end while
    being read are left out."""
    found = []
    for pid in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as f:
                state, _ppid, pgid = f.read().rsplit(")", 1)[1].split()[:3]
            with open(f"/proc/{pid}/status") as f:
                rss_kb = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")),
                              0)
        except (OSError, IndexError):
            continue
        found.append(LocalProcess(int(pid), " ".join(a for a in args if a), state,
                                  rss_kb / 1024, int(pgid)))
    return found


def process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, RSS bytes, CPU ticks used) of every process. One read of /proc/PID/stat
    each (ppid, utime, stime and rss are all there): the samplers share the cores they measure,
    so they must stay cheap."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command name: field N of the whole line is fields[N - 3] (state is 3rd).
        out[int(entry)] = (int(fields[1]), int(fields[21]) * page,
                           int(fields[11]) + int(fields[12]))
    return out


def process_tree(root: int, procs: dict[int, tuple[int, int, int]],
          exclude: frozenset[int] = frozenset()) -> set[int]:
    """`root` and all its descendants (Ray's workers are children of the raylet the driver
    started), without the trees rooted at `exclude`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in exclude and pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def tree_rss_bytes(root: int, exclude: frozenset[int] = frozenset()) -> int:
    """RSS of `root` and all its descendants. Shared pages (the object store's mmap) count once
    per process that touched them."""
    procs = process_table()
    return sum(procs[pid][1] for pid in process_tree(root, procs, exclude) if pid in procs)


def cmdline(pid: int) -> str | None:
    """The command line of `pid`, arguments joined by spaces (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8])


def shm_used_bytes() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize
