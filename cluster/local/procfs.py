"""The processes on this machine as Linux /proc shows them: the one home of every /proc reader.

Ray titles each worker process after the actor or task it runs ("ray::Class.method"), which is how
the soak sampler, the benchmark and the fault tests find Ray's workers without the dashboard's
state API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["LocalProcess", "local_processes"]


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
