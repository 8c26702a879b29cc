"""Four netcluster hosts for the chaos suite (head + driver on h0, node agents on h1..h3),
tests/support/netcluster.py's ``Hosts`` as the multihost tests have them.

Needs root and ../shared/netcluster; skipped otherwise. The prefix is unique per pytest
process (``c<pid>``), so the suite can run beside the multihost tests (prefix ``t<pid>``).
"""

from __future__ import annotations

import json
import os

import pytest

from ..support.netcluster import hosts_up
from .controller import REPORTS

N_HOSTS = 4


def pytest_terminal_summary(terminalreporter):
    """The figures of each chaos run, and where its report and logs are."""
    for r in REPORTS:
        terminalreporter.write_line(f"chaos run: {json.dumps(r.figures())}")
        terminalreporter.write_line(f"  report: {r.workdir / 'chaos-report.json'}; logs: "
                                    f"{r.workdir}/run<i>/logs/")


@pytest.fixture(scope="session")
def chaos_hosts():
    with hosts_up(f"c{os.getpid() % 100000}", N_HOSTS) as hosts:
        yield hosts
