"""The head's ``/metrics`` on real clusters: an embedded one (``init()`` gives its URL with
the token) and a CLI one (``taskmesh dashboard`` prints it), scraped over real sockets."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskmesh
from taskmesh._transport import free_port

from ..support.cli import fetch, tm
from ..support.procs import embedded_cluster
from ..support.wait import until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def metrics_cluster():
    """An embedded 2-CPU cluster of this test's own; what ``init()`` returned."""
    with embedded_cluster(num_cpus=2) as info:
        yield info


def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, str]:
    """(status, headers, body as text) of one request; errors are answers too."""
    status, got, body = fetch(url, headers, method, timeout=10)
    return status, got, body.decode()


def _parts(dashboard_url: str) -> tuple[str, str]:
    """(base URL, token) of a dashboard URL with ?token=."""
    u = urlsplit(dashboard_url)
    return f"{u.scheme}://{u.netloc}", u.query.split("token=", 1)[1]


def _metrics(base: str, token: str) -> dict:
    status, headers, body = _get(base + "/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body)}


def _value(families: dict, name: str, **labels: str) -> float | None:
    family = families.get(name)
    found = [s.value for s in (family.samples if family else ())
             if s.name in (name, name + "_total", name + "_count")
             and all(s.labels.get(k) == v for k, v in labels.items())]
    return found[0] if len(found) == 1 else None


@taskmesh.remote
def square(x):
    if x % 5 == 4:
        raise ValueError(f"{x} is not welcome")
    return x * x


def test_init_gives_a_dashboard_url_on_loopback_with_a_free_port(metrics_cluster):
    url = metrics_cluster["dashboard_url"]
    u = urlsplit(url)
    assert u.scheme == "http" and u.hostname == "127.0.0.1" and u.port != 8265
    assert u.path == "/" and u.query.startswith("token=") and len(u.query) == 6 + 64


def test_metrics_refuse_a_missing_or_wrong_token(metrics_cluster):
    base, token = _parts(metrics_cluster["dashboard_url"])
    status, headers, body = _get(base + "/metrics")
    assert status == 401 and "taskmesh dashboard" in body
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    wrong = "0" * 64
    assert _get(base + "/metrics", {"Authorization": f"Bearer {wrong}"})[0] == 401
    assert _get(f"{base}/metrics?token={wrong}")[0] == 401
    assert _get(base + "/metrics", {"Cookie": f"taskmesh-token-{urlsplit(base).port}={wrong}"})[0] == 401
    # reads only, even with the token
    status, headers, _ = _get(base + "/metrics", {"Authorization": f"Bearer {token}"}, "POST")
    assert status == 405 and "GET" in headers["Allow"]


def test_bearer_token_and_query_token_with_its_cookie_are_accepted(metrics_cluster):
    base, token = _parts(metrics_cluster["dashboard_url"])
    assert _get(base + "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
    status, headers, body = _get(f"{base}/metrics?token={token}")
    assert status == 200 and "taskmesh_tasks" in body
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name_value = cookie.split(";", 1)[0]
    assert name_value == f"taskmesh-token-{urlsplit(base).port}={token}"
    status, _, body = _get(base + "/metrics", {"Cookie": name_value})  # a browser's next visit
    assert status == 200 and "taskmesh_tasks" in body
    assert _get(base + "/", {"Cookie": name_value})[0] == 200
    assert _get(base + "/nothing", {"Cookie": name_value})[0] == 404


def test_metrics_count_tasks_failures_and_show_the_node(metrics_cluster):
    base, token = _parts(metrics_cluster["dashboard_url"])
    node_id = metrics_cluster["node_id"]
    _metrics(base, token)  # the first scrape: from now on the head folds events
    refs = [square.remote(i) for i in range(20)]
    ok = failed = 0
    for ref in refs:
        try:
            taskmesh.get(ref)
            ok += 1
        except taskmesh.TaskError:
            failed += 1
    assert (ok, failed) == (16, 4)

    def scraped():
        f = _metrics(base, token)
        done = (_value(f, "taskmesh_tasks_finished") or 0) >= 20
        return f if done and _value(f, "taskmesh_task_run_seconds") == 16 else None

    f = until(scraped, timeout=20, interval=0.2, what="20 tasks in the metrics")
    assert _value(f, "taskmesh_tasks_failed") == 4
    assert _value(f, "taskmesh_task_failures", error="TaskError") == 4
    assert _value(f, "taskmesh_task_scheduling_latency_seconds") == 20
    assert _value(f, "taskmesh_tasks", state="running") == 0
    assert _value(f, "taskmesh_drivers") == 1
    assert _value(f, "taskmesh_nodes", state="alive") == 1
    here = {"node_id": node_id, "ip": "127.0.0.1"}
    assert _value(f, "taskmesh_node_cpus", **here) == 2
    assert 0 <= _value(f, "taskmesh_node_cpu_percent", **here) <= 100
    total = _value(f, "taskmesh_node_memory_total_bytes", **here)
    assert total > 0 and 0 < _value(f, "taskmesh_node_memory_used_bytes", **here) <= total
    assert _value(f, "taskmesh_node_store_capacity_bytes", **here) > 0
    assert _value(f, "taskmesh_node_store_used_bytes", **here) is not None
    assert _value(f, "taskmesh_node_store_spilled_bytes", **here) == 0
    assert _value(f, "taskmesh_node_transfer_sent_bytes", **here) == 0


def test_a_stored_object_shows_in_its_nodes_store_gauge(metrics_cluster):
    import numpy as np

    base, token = _parts(metrics_cluster["dashboard_url"])
    ref = taskmesh.put(np.ones(1 << 20))  # 8 MiB: in the node's store
    here = {"node_id": metrics_cluster["node_id"]}
    until(lambda: (_value(_metrics(base, token), "taskmesh_node_store_used_bytes", **here) or 0)
          >= 8 << 20, timeout=20, interval=0.2, what="the 8 MiB object in the store gauge")
    del ref


def test_stuck_clients_hold_up_neither_other_scrapes_nor_the_head(metrics_cluster):
    import socket
    import time

    base, token = _parts(metrics_cluster["dashboard_url"])
    u = urlsplit(base)
    stuck = []
    try:
        for _ in range(5):  # each sends half a request and then nothing
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            stuck.append(s)
        t0 = time.monotonic()
        assert _get(base + "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
        assert taskmesh.get([square.remote(i) for i in range(8) if i % 5 != 4]) == [
            i * i for i in range(8) if i % 5 != 4]
        assert time.monotonic() - t0 < 5
    finally:
        for s in stuck:
            s.close()


# ------------------------------------------------------------------ a CLI-started head


def test_taskmesh_dashboard_prints_a_url_that_scrapes(run_env):
    port, dash_port = free_port(), free_port()
    r = tm("start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip", "127.0.0.1",
           "--dashboard-port", str(dash_port), env=run_env)
    assert r.returncode == 0, r.stderr
    assert f"http://127.0.0.1:{dash_port}/metrics" in r.stdout
    r = tm("dashboard", env=run_env)  # the head of this machine, found by its run record
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{dash_port}/?token=")
    base, token = _parts(url)
    f = until(lambda: (lambda fam: fam if _value(fam, "taskmesh_nodes", state="alive") == 1
                       else None)(_metrics(base, token)), timeout=20, interval=0.2,
              what="the node in the metrics")
    assert f
    r = tm("dashboard", "--address", f"127.0.0.1:{port}", env=run_env)  # asks the head
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == url


def test_a_dashboard_port_in_use_is_a_one_line_error(run_env):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = tm("start", "--head", "--port", str(free_port()), "--num-cpus", "0",
               "--dashboard-port", str(busy), env=run_env)
    assert r.returncode != 0
    assert f"port {busy}" in r.stderr and "--dashboard-port" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
