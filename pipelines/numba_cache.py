"""Where numba keeps the compiled kernels: a persistent cache per node, so a pool actor loads
them in a fraction of a second instead of compiling them (about 10 s per process, cold).

`NUMBA_CACHE_DIR` wins when set; otherwise `$FEEDLINE_CACHE_DIR/numba`, or
`$XDG_CACHE_HOME/feedline/numba` (default `~/.cache/feedline/numba`). numba reads the variable
when it is first imported, so this module is imported before numba anywhere in `pipelines`.
"""

from __future__ import annotations

import os

__all__ = ["cache_dir"]


def cache_dir(env: dict[str, str] | os._Environ = os.environ) -> str:
    """The numba cache directory `env` asks for (see the module docstring)."""
    if env.get("NUMBA_CACHE_DIR"):
        return env["NUMBA_CACHE_DIR"]
    if env.get("FEEDLINE_CACHE_DIR"):
        return os.path.join(env["FEEDLINE_CACHE_DIR"], "numba")
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "feedline", "numba")


os.environ["NUMBA_CACHE_DIR"] = cache_dir()
