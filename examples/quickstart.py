"""A small data-science job on an embedded taskmesh cluster.

1. Estimate pi by Monte Carlo: 64 tasks each throw 200,000 darts.
2. Map-reduce over numpy arrays: 32 tasks make chunks of a dataset, a tree of tasks
   combines per-chunk statistics (count, mean, M2) into the global mean and standard
   deviation, passing ObjectRefs from task to task; the driver only sees the final answer.

Run:  python examples/quickstart.py            (starts and stops a local cluster)
      python examples/quickstart.py HOST:PORT  (uses a running cluster)
"""

from __future__ import annotations

import sys
import time

import numpy as np

import taskmesh


@taskmesh.remote
def throw_darts(seed: int, n: int) -> int:
    rng = np.random.default_rng(seed)
    x, y = rng.random(n), rng.random(n)
    return int(np.count_nonzero(x * x + y * y <= 1.0))


@taskmesh.remote
def make_chunk(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=3.0, scale=2.0, size=n)


@taskmesh.remote
def chunk_stats(chunk: np.ndarray) -> tuple[int, float, float]:
    mean = float(chunk.mean())
    return len(chunk), mean, float(((chunk - mean) ** 2).sum())


@taskmesh.remote
def combine(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else None
    t0 = time.perf_counter()
    taskmesh.init(address)
    cpus = taskmesh.cluster_resources().get("CPU", 0)
    print(f"cluster: {len(taskmesh.nodes())} node(s), {cpus:g} CPUs")

    darts = 200_000
    hits = taskmesh.get([throw_darts.remote(seed, darts) for seed in range(64)])
    pi = 4.0 * sum(hits) / (64 * darts)
    print(f"pi ~= {pi:.5f} (error {abs(pi - np.pi):.5f}) from {64 * darts:,} darts")

    stats = [chunk_stats.remote(make_chunk.remote(seed, 100_000)) for seed in range(32)]
    while len(stats) > 1:  # tree reduction: refs go straight from task to task
        stats = [combine.remote(stats[i], stats[i + 1]) if i + 1 < len(stats) else stats[i]
                 for i in range(0, len(stats), 2)]
    n, mean, m2 = taskmesh.get(stats[0])
    std = (m2 / (n - 1)) ** 0.5
    print(f"dataset: n={n:,} mean={mean:.4f} (true 3) std={std:.4f} (true 2)")
    assert abs(pi - np.pi) < 0.01 and abs(mean - 3) < 0.02 and abs(std - 2) < 0.02

    taskmesh.shutdown()
    print(f"done in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
