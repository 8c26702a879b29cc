"""One scrape of the head covers the cluster: head on h0 (its HTTP endpoints on every
interface), worker nodes on h1 and h2, and from h3 ``taskmesh dashboard --address`` (which
asks the head where its dashboard is) and a scrape with the token over real TCP."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(120)]

SCRAPE = r'''
import json, sys, time, urllib.request
from urllib.parse import urlsplit
from prometheus_client.parser import text_string_to_metric_families

url = sys.argv[1]
u = urlsplit(url)
token = u.query.split("token=", 1)[1]
want = set(sys.argv[2:])
deadline = time.monotonic() + 30
while True:
    req = urllib.request.Request(f"{u.scheme}://{u.netloc}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    seen = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("taskmesh_node_cpu_percent", "taskmesh_node_memory_total_bytes",
                          "taskmesh_node_store_capacity_bytes", "taskmesh_node_cpus"):
                seen.setdefault(s.labels["ip"], set()).add(s.name)
    if want <= set(seen) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
try:
    urllib.request.urlopen(f"{u.scheme}://{u.netloc}/metrics", timeout=10)
    refused = None
except urllib.error.HTTPError as exc:
    refused = exc.code
print("RESULT " + json.dumps({"seen": {ip: sorted(names) for ip, names in seen.items()},
                              "refused": refused}))
'''


def test_one_scrape_from_another_host_shows_every_node(hosts, tmp_path):
    head_ip = hosts.addr(0)
    address = f"{head_ip}:7300"
    r = hosts.taskmesh(0, "start", "--head", "--port", "7300", "--num-cpus", "0",
                       "--node-ip", head_ip, "--dashboard-host", "0.0.0.0",
                       run_dir=str(tmp_path / "run0"))
    assert r.returncode == 0, r.stderr
    for i in (1, 2):
        r = hosts.taskmesh(i, "start", "--worker", "--address", address, "--num-cpus", "1",
                           run_dir=str(tmp_path / f"run{i}"))
        assert r.returncode == 0, r.stderr
    r = hosts.taskmesh(3, "dashboard", "--address", address, run_dir=str(tmp_path / "run3"))
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    assert url.startswith(f"http://{head_ip}:8265/?token=")  # the wildcard shown as the head

    script = tmp_path / "scrape.py"
    script.write_text(SCRAPE)
    r = hosts.run(3, sys.executable, str(script), url, hosts.addr(1), hosts.addr(2), timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    every = ["taskmesh_node_cpu_percent", "taskmesh_node_cpus",
             "taskmesh_node_memory_total_bytes", "taskmesh_node_store_capacity_bytes"]
    assert out["seen"] == {hosts.addr(1): every, hosts.addr(2): every}
    assert out["refused"] == 401  # from another host too: no token, no metrics
