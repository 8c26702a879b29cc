"""netcluster hosts for multi-machine tests: one network namespace (own IP) per host
(tests/support/netcluster.py).

Needs root and ../shared/netcluster (next to this repository); skipped otherwise.
"""

from __future__ import annotations

import os

import pytest

from ..support.netcluster import hosts_up

N_HOSTS = 4


@pytest.fixture(scope="session")
def netcluster_hosts():
    with hosts_up(f"t{os.getpid() % 100000}", N_HOSTS) as hosts:
        yield hosts


@pytest.fixture
def hosts(netcluster_hosts):
    yield netcluster_hosts
    netcluster_hosts.reset()
