"""Four netcluster hosts for the chaos suite (head + driver on h0, node agents on h1..h3).

Needs root and ../shared/netcluster; skipped otherwise. The prefix is unique per pytest
process (``c<pid>``), so the suite can run beside the multihost tests (prefix ``t<pid>``).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .controller import NETCLUSTER, REPORTS, Hosts

N_HOSTS = 4


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: the chaos suite (tests/chaos); minutes, needs root")


def pytest_terminal_summary(terminalreporter):
    """The figures of each chaos run, and where its report and logs are."""
    for r in REPORTS:
        terminalreporter.write_line(f"chaos run: {json.dumps(r.figures())}")
        terminalreporter.write_line(f"  report: {r.workdir / 'chaos-report.json'}; logs: "
                                    f"{r.workdir}/run<i>/logs/")


@pytest.fixture(scope="session")
def chaos_hosts():
    if os.geteuid() != 0 or not os.path.exists(NETCLUSTER):
        pytest.skip("netcluster needs root and ../shared/netcluster")
    if subprocess.run([NETCLUSTER, "check"], capture_output=True, check=False).returncode != 0:
        pytest.skip("this machine cannot run netcluster (network namespaces)")
    hosts = Hosts(prefix=f"c{os.getpid() % 100000}", n=N_HOSTS)
    hosts.nc("up", str(N_HOSTS))
    try:
        yield hosts
    finally:
        try:
            hosts.wipe()
        finally:
            subprocess.run([NETCLUSTER, "down"], env=hosts.env, capture_output=True, timeout=60,
                           check=False)
