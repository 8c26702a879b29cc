"""netcluster hosts for multi-machine tests: one network namespace (own IP) per host
(tests/support/netcluster.py).

Needs root and ../shared/netcluster (next to this repository); skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ..support.netcluster import NETCLUSTER, Hosts

N_HOSTS = 4


@pytest.fixture(scope="session")
def netcluster_hosts():
    if os.geteuid() != 0 or not os.path.exists(NETCLUSTER):
        pytest.skip("netcluster needs root and ../shared/netcluster")
    if subprocess.run([NETCLUSTER, "check"], capture_output=True).returncode != 0:
        pytest.skip("this machine cannot run netcluster (network namespaces)")
    hosts = Hosts(prefix=f"t{os.getpid() % 100000}", n=N_HOSTS)
    hosts.nc("up", str(N_HOSTS))
    try:
        yield hosts
    finally:
        try:
            hosts.reset()
        finally:
            subprocess.run([NETCLUSTER, "down"], env=hosts.env, capture_output=True, timeout=60)


@pytest.fixture
def hosts(netcluster_hosts):
    yield netcluster_hosts
    netcluster_hosts.reset()
