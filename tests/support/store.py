"""What the tests see of the node's object store from outside: this process's mappings of
arenas, the spill directories on disk, and bytes that do not compress."""

from __future__ import annotations

import os
import socket
import tempfile

import numpy as np


def arena_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of taskmesh arenas."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if "taskmesh-arena-" in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def in_arena(a: np.ndarray) -> bool:
    """The array's bytes lie in an arena this process maps (read in place, not copied)."""
    start = a.__array_interface__["data"][0]
    return any(lo <= start and start + a.nbytes <= hi for lo, hi in arena_ranges())


def spill_dirs(base: str | None = None) -> set[str]:
    """Names of the node agents' spill directories under ``base`` (default: the temp dir)."""
    base = base or tempfile.gettempdir()
    return {d for d in os.listdir(base) if d.startswith("taskmesh-spill-")}


def random_bytes(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of random floats (they do not compress), the same for the same seed."""
    return np.random.default_rng(seed).random(n // 8).tobytes()


def dead_address() -> str:
    """"127.0.0.1:port" for a port nobody listens on any more."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
