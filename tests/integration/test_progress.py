"""Progress on a real embedded cluster: as_completed yields refs as their tasks finish; tqdm
bars made in tasks are drawn on the driver as one bar per call site."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

import taskmesh
from taskmesh.util import as_completed

from ..support.clients import with_support

pytestmark = pytest.mark.timeout(120)


@taskmesh.remote
def nap(s):
    time.sleep(s)
    return s


def test_as_completed_yields_the_first_done_first(cluster):
    refs = [nap.remote(s) for s in (0.6, 0.05, 0.3)]
    order = [taskmesh.get(r) for r in as_completed(refs)]
    assert order == [0.05, 0.3, 0.6]
    pairs = list(as_completed([nap.remote(0.01)], with_results=True))
    assert len(pairs) == 1 and pairs[0][1] == 0.01


def test_as_completed_raises_at_its_timeout(cluster):
    slow = nap.remote(3)
    start = time.monotonic()
    with pytest.raises(taskmesh.GetTimeoutError, match="1 of 1 tasks were not done"):
        list(as_completed([slow], timeout=0.3))
    assert time.monotonic() - start < 2.5
    taskmesh.cancel(slow, force=True)


def test_bars_in_tasks_show_on_the_driver_as_one_bar_per_call_site():
    code = textwrap.dedent("""
        import time, taskmesh
        from taskmesh.util import tqdm
        taskmesh.init(num_cpus=2)
        @taskmesh.remote
        def work(i):
            for _ in tqdm(range(20), desc="inner work"):
                time.sleep(0.01)
            return i
        print(sorted(taskmesh.get([work.remote(i) for i in range(6)])), flush=True)
        taskmesh.shutdown()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=90, env=with_support())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("[0, 1, 2, 3, 4, 5]")
    frames = r.stderr.replace("\r", "\n")
    assert "inner work: 100%" in frames and "120/120" in frames, frames[-2000:]
    assert "\x1etmbar" not in r.stderr + r.stdout  # state lines are drawn, not printed
