"""Does scraping slow the work? A no-op flood on an embedded cluster, with ``/metrics``
scraped once a second by another process, against the same flood unscraped, alternating.

    python -m benchmarks.metrics_overhead [--tasks 20000] [--rounds 5] [--interval 1.0]

Prints the tasks/s of each round and the ratio of the medians (scraped / not scraped).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout this is run from

import taskmesh  # noqa: E402

SCRAPER = r'''
import sys, time, urllib.request
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
req = urllib.request.Request(f"{u.scheme}://{u.netloc}/metrics",
                             headers={"Authorization": "Bearer " + u.query.split("token=")[1]})
interval = float(sys.argv[2])
while True:
    urllib.request.urlopen(req, timeout=10).read()
    time.sleep(interval)
'''


@taskmesh.remote
def noop():
    return 0


def flood(n: int) -> float:
    t0 = time.perf_counter()
    taskmesh.get([noop.remote() for _ in range(n)])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args(argv)
    info = taskmesh.init(num_cpus=2)
    flood(args.tasks // 4)  # warm-up
    rates: dict[str, list[float]] = {"off": [], "scraped": []}
    try:
        for _ in range(args.rounds):
            rates["off"].append(flood(args.tasks))
            scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, info["dashboard_url"],
                                        str(args.interval)])
            try:
                time.sleep(0.5)  # (its first scrape: the head folds from now on)
                rates["scraped"].append(flood(args.tasks))
            finally:
                scraper.kill()
                scraper.wait()
    finally:
        taskmesh.shutdown()
    for k, v in rates.items():
        print(f"{k:8s} " + " ".join(f"{r:8.0f}" for r in v) + f"   median {statistics.median(v):.0f} tasks/s")
    ratio = statistics.median(rates["scraped"]) / statistics.median(rates["off"])
    print(f"scraped / off: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
