"""A node's runtime_env cache: unpacked packages (``pkg_*``) and pip environments (``pip_*``)
under one directory, removed by age and to stay under a size cap.

Each entry's age is the time since it was last used (``unpack`` and ``pip_env.build`` touch
it on every use). ``collect`` removes, oldest first, the entries not in use that are older
than ``max_age_s``, then more (still oldest first, still none in use) until the rest fit in
``max_bytes``. An entry in use is never removed, whatever the cap.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

#: entries unused for this long go
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
#: the cache is kept under this many bytes
DEFAULT_MAX_BYTES = 10 * 1024 ** 3
_KINDS = ("pkg_", "pip_")


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    used: float  # when it was last used (epoch s)
    size: int


def entries(cache_dir: str) -> list[Entry]:
    """The cache's complete entries (not the lock files, not half-made ones)."""
    out = []
    try:
        listing = list(os.scandir(cache_dir))
    except OSError:
        return []
    for e in listing:
        if not e.name.startswith(_KINDS) or not e.is_dir(follow_symlinks=False) or (
                ".part-" in e.name):
            continue
        try:
            used = e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        out.append(Entry(e.name, e.path, used, _size(e.path)))
    return out


def _size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def collect(cache_dir: str, *, in_use: set[str] | frozenset[str] = frozenset(),
            max_age_s: float = DEFAULT_MAX_AGE_S, max_bytes: int = DEFAULT_MAX_BYTES,
            now: float | None = None) -> list[str]:
    """Remove old and surplus entries (see the module's text); returns the names removed."""
    now = time.time() if now is None else now
    found = sorted(entries(cache_dir), key=lambda e: e.used)
    total = sum(e.size for e in found)
    removed = []
    for e in found:
        if e.name in in_use:
            continue
        if now - e.used > max_age_s or total > max_bytes:
            shutil.rmtree(e.path, ignore_errors=True)
            try:
                os.unlink(e.path + ".lock")
            except OSError:
                pass
            total -= e.size
            removed.append(e.name)
    return removed
