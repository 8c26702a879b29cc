"""The adaptive spinner: spins only while messages come quickly, never when turned off."""

from __future__ import annotations

import time

from taskmesh._spin import Spinner


def test_off_never_spins():
    s = Spinner(0.0)
    calls = []
    assert s.spin(lambda: calls.append(1) or True) is False
    assert calls == []


def test_returns_as_soon_as_ready():
    s = Spinner(0.5)
    n = iter(range(1000))
    t = time.perf_counter()
    assert s.spin(lambda: next(n) >= 3) is True
    assert time.perf_counter() - t < 0.4


def test_gives_up_after_the_window():
    s = Spinner(0.002)
    assert s.spin(lambda: False) is False


def test_long_gaps_stop_spinning_and_short_ones_bring_it_back():
    s = Spinner(0.001)
    s.spin(lambda: False)
    s._idle_since -= 1.0  # the wait that followed lasted a second
    s.woke()
    assert s.gap_s > 0.001
    calls = []
    assert s.spin(lambda: calls.append(1) or False) is False and calls == []
    for _ in range(40):  # messages now come at once
        s.spin(lambda: True)
        s.woke()
    assert s.gap_s < 0.001
    assert s.spin(lambda: True) is True
