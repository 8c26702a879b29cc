"""The dashboard's endpoints on a real embedded cluster: every page and every ``/api/``
endpoint refuses a request without the token (401), answers with it, refuses bad parameters
(400 with a JSON error), and sends the headers that keep a browser safe."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

import taskmesh

from ..support.cli import fetch
from ..support.procs import embedded_cluster
from ..support.wait import until

pytestmark = pytest.mark.timeout(120)

API = ["/api/status", "/api/nodes", "/api/tasks", "/api/task?id=0000", "/api/actors",
       "/api/objects", "/api/jobs", "/api/logs", "/api/logs/read?node=head&file=head.log",
       "/api/timeline"]
PAGES = ["/", "/tasks", "/actors", "/objects", "/jobs", "/logs", "/timeline",
         "/static/common.js", "/static/dashboard.css"]


@taskmesh.remote
def shout(x):
    print(f"<b>line {x}</b> from a task")
    if x == 2:
        raise ValueError("two is not welcome")
    return x


@taskmesh.remote
class Tally:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


@pytest.fixture(scope="module")
def dash():
    """An embedded 2-CPU cluster of this module's own, with some tasks run (one failed) and an
    actor: (base URL, token, the actor)."""
    with embedded_cluster(num_cpus=2) as info:
        refs = [shout.remote(i) for i in range(4)]
        for r in refs:
            try:
                taskmesh.get(r, timeout=30)
            except taskmesh.TaskError:
                pass
        tally = Tally.remote()
        assert taskmesh.get(tally.add.remote(3), timeout=30) == 3
        u = urlsplit(info["dashboard_url"])
        yield f"{u.scheme}://{u.netloc}", u.query.split("token=", 1)[1], tally


def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    return fetch(url, headers, method)


def _api(dash, target: str) -> tuple[int, object]:
    base, token, _ = dash
    status, headers, body = _get(base + target, {"Authorization": f"Bearer {token}"})
    assert headers["Content-Type"] == "application/json", (target, headers)
    return status, json.loads(body)


@pytest.mark.parametrize("target", API + PAGES)
def test_every_page_and_endpoint_needs_the_token(dash, target):
    base, token, _ = dash
    status, headers, body = _get(base + target)
    assert status == 401 and b"taskmesh dashboard" in body
    assert _get(base + target, {"Authorization": "Bearer " + "0" * 64})[0] == 401
    assert _get(base + target, {"Authorization": f"Bearer {token}"}, "POST")[0] == 405
    status, headers, _ = _get(base + target, {"Authorization": f"Bearer {token}"})
    assert status in (200, 404), target  # (404: task id 0000 is no task)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_a_page_opened_with_the_token_sets_the_cookie_for_the_api(dash):
    base, token, _ = dash
    status, headers, body = _get(f"{base}/tasks?token={token}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert _get(base + "/api/tasks", {"Cookie": cookie})[0] == 200


def test_status_shows_the_node_with_its_machine_and_store(dash):
    def with_stats():  # (the figures come with the node's heartbeats: the first in a moment)
        status, body = _api(dash, "/api/status")
        assert status == 200
        return body if body["nodes"][0]["Machine"] else None

    body = until(with_stats, timeout=10, what="a node with its machine's figures")
    node = body["nodes"][0]
    assert node["Alive"] and node["Resources"]["CPU"] == 2 * 10_000, node
    assert node["Machine"]["mem_total"] > 0 and node["ObjectStore"]["store_capacity"] > 0
    assert body["tasks"]["failed"] >= 1 and body["drivers"] >= 1


def test_tasks_filter_and_a_failed_task_has_its_traceback(dash):
    status, body = _api(dash, "/api/tasks?state=FAILED")
    assert status == 200 and body["total"] == 1
    row = body["rows"][0]
    assert row["name"].endswith("shout") and row["error_type"] and "error_message" not in row
    status, task = _api(dash, "/api/task?id=" + row["task_id"])
    assert status == 200 and "two is not welcome" in task["error_message"]
    assert "Traceback" in task["error_message"] and task["end_time_ms"] > 0
    status, body = _api(dash, "/api/tasks?limit=2")
    assert len(body["rows"]) == 2 and body["total"] >= 6 and body["truncated"]


@pytest.mark.parametrize("target, words", [
    ("/api/tasks?limit=0", "limit"), ("/api/tasks?limit=1001", "1,000"),
    ("/api/tasks?limit=many", "whole number"), ("/api/tasks?colour=red", "unknown filter key"),
    ("/api/tasks?state=SLEEPING", "unknown state"), ("/api/actors?colour=red", "unknown filter"),
    ("/api/task", "id"), ("/api/task?id=ab", "at least 4"), ("/api/logs/read?node=head", "file"),
    ("/api/logs/read?node=head&file=head.log&offset=-3", "offset"),
    ("/api/logs/read?node=head&file=../x", "not a log file name"),
])
def test_bad_parameters_are_400_with_a_json_error(dash, target, words):
    status, body = _api(dash, target)
    assert status == 400 and words in body["error"], body


def test_unknown_things_are_404(dash):
    assert _api(dash, "/api/colours")[0] == 404
    assert _api(dash, "/api/logs/read?node=head&file=nope.log")[0] == 404
    status, body = _api(dash, "/api/logs/read?node=ffffffffffff&file=agent.log")
    assert status == 404 and "no live node" in body["error"]
    base, token, _ = dash
    assert _get(base + "/nope", {"Authorization": f"Bearer {token}"})[0] == 404


def test_actors_objects_jobs_list_what_is_there(dash):
    base, token, tally = dash
    status, body = _api(dash, "/api/actors")
    assert status == 200 and [r["state"] for r in body["rows"]] == ["ALIVE"]
    assert body["rows"][0]["class_name"].endswith("Tally")
    status, body = _api(dash, "/api/objects")
    assert status == 200 and body["total"] >= 1
    status, body = _api(dash, "/api/jobs")
    assert status == 200 and any(r["status"] == "RUNNING" for r in body["rows"])


def test_logs_list_read_and_follow_a_workers_output(dash):
    status, body = _api(dash, "/api/logs")
    assert status == 200 and body["nodes"][0]["node_id"] == "head"

    def printed():
        for node in _api(dash, "/api/logs")[1]["nodes"]:
            for f in node["files"]:
                if f["file"].endswith(".out") and f["size"]:
                    reply = _api(dash, f"/api/logs/read?node={node['node_id']}&file={f['file']}")[1]
                    if any("<b>line" in line for line in reply["lines"]):
                        return node["node_id"], f["file"], reply
        return None

    node, name, reply = until(printed, timeout=10, what="a worker's .out file with the line")
    assert reply["offset"] == reply["size"]
    status, more = _api(dash, f"/api/logs/read?node={node}&file={name}&offset={reply['offset']}")
    assert status == 200 and more["lines"] == [] and more["offset"] == reply["offset"]


def test_the_timeline_is_a_chrome_trace_with_a_lane_per_worker(dash):
    base, token, _ = dash
    status, headers, body = _get(base + "/api/timeline?download=1",
                                 {"Authorization": f"Bearer {token}"})
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    trace = json.loads(body)
    lanes = [e for e in trace if e["name"] == "thread_name"]
    slices = [e for e in trace if e["ph"] == "X"]
    assert lanes and any(s["args"]["state"] == "FAILED" for s in slices)


def test_slow_browsers_hold_up_neither_other_pages_nor_the_head(dash):
    """Clients that ask and never read, and a crowd asking at once: the others are answered
    and tasks run as usual (the head answers between its turns; the handler threads wait)."""
    import socket
    import threading
    import time

    base, token, _ = dash
    u = urlsplit(base)
    stuck = []
    try:
        for path in ("/api/timeline", "/api/logs", "/api/tasks"):  # asked, never read
            s = socket.create_connection((u.hostname, u.port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
                      .encode())
            stuck.append(s)
        answers: list = []
        crowd = [threading.Thread(target=lambda: answers.append(_api(dash, "/api/status")[0]))
                 for _ in range(12)]
        t0 = time.monotonic()
        for t in crowd:
            t.start()
        assert taskmesh.get([shout.remote(i) for i in (0, 1, 3)], timeout=30) == [0, 1, 3]
        for t in crowd:
            t.join(timeout=30)
        assert answers == [200] * 12
        assert _api(dash, "/api/tasks?limit=5")[0] == 200
        assert time.monotonic() - t0 < 10
    finally:
        for s in stuck:
            s.close()
