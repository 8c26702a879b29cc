"""The head's HTTP side without sockets: who is let in (_dashboard/auth.py), how a snapshot
reads as Prometheus metrics (_dashboard/metrics.py), and the loop-to-threads handoff
(SnapshotBox)."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskmesh import _protocol as P
from taskmesh._dashboard import auth
from taskmesh._dashboard.metrics import NODE_STATS, render
from taskmesh._dashboard.server import SnapshotBox
from taskmesh._head.snapshot import Snapshotter
from taskmesh._secret import ClusterKey

from ..support.head import Cluster

TOKEN = "ab" * 32
COOKIE = auth.cookie_name(8265)


def _check(method: str = "GET", target: str = "/metrics", **headers: str) -> auth.Verdict:
    return auth.check(method, target, {k.replace("_", "-"): v for k, v in headers.items()},
                      TOKEN, COOKIE)


# ------------------------------------------------------------------ auth


def test_the_token_comes_from_the_cluster_secret_and_differs_per_cluster():
    key = ClusterKey(b"s" * 32, "test")
    assert auth.token_for(key) == auth.token_for(ClusterKey(b"s" * 32, "again"))
    assert auth.token_for(key) != auth.token_for(ClusterKey(b"t" * 32, "test"))
    assert len(auth.token_for(key)) == 64 and b"s" * 32 not in bytes.fromhex(auth.token_for(key))


def test_no_token_is_refused():
    assert _check() == auth.Verdict(401, "", "missing token")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer " + "cd" * 32},
    {"Authorization": "Bearer " + TOKEN[:-1]},
    {"Cookie": f"{COOKIE}={'cd' * 32}"},
    {"Cookie": f"taskmesh-token-9999={TOKEN}"},  # another port's cookie is not this one's
])
def test_a_wrong_token_is_refused(headers):
    verdict = auth.check("GET", "/metrics", headers, TOKEN, COOKIE)
    assert verdict.status == 401


def test_a_wrong_query_token_is_refused_and_sets_no_cookie():
    assert _check(target=f"/metrics?token={'cd' * 32}") == auth.Verdict(401, "", "wrong token")


def test_bearer_token_is_accepted_without_a_cookie():
    assert _check(Authorization=f"Bearer {TOKEN}") == auth.Verdict(200, "", "")
    assert _check(Authorization=f"bearer {TOKEN}").status == 200  # (the scheme is case-blind)


def test_query_token_is_accepted_and_sets_the_cookie():
    assert _check(target=f"/?token={TOKEN}") == auth.Verdict(200, TOKEN, "")


def test_cookie_is_accepted():
    assert _check(Cookie=f"other=1; {COOKIE}={TOKEN}") == auth.Verdict(200, "", "")


def test_a_new_url_token_wins_over_a_stale_cookie_of_an_earlier_cluster():
    verdict = _check(target=f"/?token={TOKEN}", Cookie=f"{COOKIE}={'cd' * 32}")
    assert verdict == auth.Verdict(200, TOKEN, "")


def test_a_garbled_cookie_header_is_no_token():
    assert _check(Cookie='"";;==\x00').status == 401


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_reads_are_served_even_with_the_token(method):
    assert _check(method, Authorization=f"Bearer {TOKEN}") == auth.Verdict(405, "", "method")


def test_urls_are_shown_as_a_client_reaches_them():
    assert auth.dashboard_url("127.0.0.1", 8265, "t") == "http://127.0.0.1:8265/?token=t"
    assert auth.dashboard_url("0.0.0.0", 8265, "t", "/", "10.0.0.5") == "http://10.0.0.5:8265/?token=t"
    assert auth.dashboard_url("::1", 1, "t", "/metrics") == "http://[::1]:1/metrics?token=t"


# ------------------------------------------------------------------ metrics


def _snapshot(**extra) -> dict:
    c = Cluster()
    c.add_node("n1", cpus=2, address="10.0.0.7")
    c.add_node("n2", cpus=1, address="10.0.0.8")
    c.send(c.node_peer["n1"], P.Heartbeat({
        "cpu_percent": 12.5, "mem_used": 1000, "mem_total": 4000, "store_used_bytes": 300,
        "store_capacity": 1 << 20, "store_disk_bytes": 7, "store_transfer_bytes_sent": 11,
        "store_transfer_bytes_received": 13, "rss": 5, "load": 0.5}))
    fid = c.register()
    [t] = c.submit(fid)
    w = c.drain().assigned_to()[t]
    c.finish(w, t, duration=0.2)
    c.drain()
    c.submit(fid, 5)  # three run, two queue
    c.drain()
    return Snapshotter().build(c.state, c.now, **extra)


def _families(snapshot: dict, extra: dict | None = None) -> dict:
    body, content_type = render(snapshot, "", extra)
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(families: dict, name: str, **labels: str) -> float:
    family = families[name]
    found = [s.value for s in family.samples
             if s.name in (name, name + "_total") and all(s.labels.get(k) == v
                                                           for k, v in labels.items())]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


def test_the_text_parses_and_has_help_for_every_family():
    body, _ = render(_snapshot())
    text = body.decode()
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("taskmesh_") for f in families)
    assert all(f.documentation for f in families)


def test_tasks_by_state_and_totals():
    f = _families(_snapshot())
    assert _value(f, "taskmesh_tasks", state="running") == 3
    assert _value(f, "taskmesh_tasks", state="queued") == 2
    assert _value(f, "taskmesh_tasks", state="waiting_for_inputs") == 0
    assert _value(f, "taskmesh_tasks_finished") == 1
    assert _value(f, "taskmesh_queue_length", shape="CPU=1") == 2
    assert _value(f, "taskmesh_drivers") == 1
    assert _value(f, "taskmesh_nodes", state="alive") == 2


def test_histograms_have_cumulative_buckets_sum_and_count():
    f = _families(_snapshot())
    samples = {(s.name, s.labels.get("le")): s.value for s in f["taskmesh_task_run_seconds"].samples}
    assert samples[("taskmesh_task_run_seconds_bucket", "0.1")] == 0
    assert samples[("taskmesh_task_run_seconds_bucket", "0.5")] == 1
    assert samples[("taskmesh_task_run_seconds_bucket", "+Inf")] == 1
    assert samples[("taskmesh_task_run_seconds_count", None)] == 1
    assert samples[("taskmesh_task_run_seconds_sum", None)] == pytest.approx(0.2)
    assert "taskmesh_task_scheduling_latency_seconds" in f


def test_node_figures_carry_the_node_id_and_ip():
    f = _families(_snapshot())
    assert _value(f, "taskmesh_node_cpu_percent", node_id="n1", ip="10.0.0.7") == 12.5
    assert _value(f, "taskmesh_node_memory_used_bytes", node_id="n1") == 1000
    assert _value(f, "taskmesh_node_memory_total_bytes", node_id="n1") == 4000
    assert _value(f, "taskmesh_node_store_used_bytes", node_id="n1") == 300
    assert _value(f, "taskmesh_node_store_spilled_bytes", node_id="n1") == 7
    assert _value(f, "taskmesh_node_transfer_sent_bytes", node_id="n1") == 11
    assert _value(f, "taskmesh_node_cpus", node_id="n2", ip="10.0.0.8") == 1
    # a node that has not sent such a figure has no sample (not a made-up 0)
    assert not [s for s in f["taskmesh_node_cpu_percent"].samples if s.labels["node_id"] == "n2"]


def test_dead_nodes_have_no_series_but_are_counted():
    snap = _snapshot()
    snap["nodes"][1]["alive"] = False
    f = _families(snap)
    assert _value(f, "taskmesh_nodes", state="dead") == 1
    assert {s.labels["node_id"] for s in f["taskmesh_node_cpus"].samples} == {"n1"}


def test_counts_by_function_are_shown_only_when_the_snapshot_has_them():
    assert "taskmesh_tasks_by_function" not in _families(_snapshot())
    f = _families(_snapshot(by_function={"mod.f": {"RUNNING": 3, "FINISHED": 1}}))
    assert _value(f, "taskmesh_tasks_by_function", function="mod.f", state="RUNNING") == 3


def test_failures_and_retries_by_cause():
    snap = _snapshot()
    snap["failures"] = {"TaskError": 4, "WorkerCrashedError": 1}
    snap["retries"] = {"worker_died": 2}
    f = _families(snap)
    assert _value(f, "taskmesh_task_failures", error="TaskError") == 4
    assert _value(f, "taskmesh_task_retries", cause="worker_died") == 2


def test_the_servers_own_figures_are_added():
    f = _families(_snapshot(), {"age_s": 0.25, "refused_requests": {"wrong token": 3}})
    assert _value(f, "taskmesh_snapshot_age_seconds") == 0.25
    assert _value(f, "taskmesh_dashboard_refused_requests", reason="wrong token") == 3


def test_openmetrics_when_the_scraper_asks_for_it():
    body, content_type = render(_snapshot(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_every_node_stat_key_is_one_the_node_sends_or_the_store_reports():
    keys = {k for k, *_ in NODE_STATS}
    assert {"cpu_percent", "mem_used", "mem_total", "store_used_bytes", "store_disk_bytes",
            "store_transfer_bytes_sent", "store_transfer_bytes_received"} <= keys


# ------------------------------------------------------------------ the handoff


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_young_snapshot_is_served_again_without_asking_the_loop():
    clock = _Clock()
    box = SnapshotBox(0.5, clock)
    box.publish({"n": 1})
    clock.now += 0.2
    assert box.get(timeout=0) == ({"n": 1}, pytest.approx(0.2))
    assert not box.wanted


def test_an_old_snapshot_makes_the_reader_ask_and_wait_for_the_loop():
    box = SnapshotBox(0.0)
    box.publish({"n": 1})
    got: list = []
    reader = threading.Thread(target=lambda: got.append(box.get(timeout=10)))
    reader.start()
    for _ in range(1000):  # the loop's side: it sees the flag between turns
        if box.wanted:
            break
        threading.Event().wait(0.005)
    assert box.wanted
    box.publish({"n": 2})
    reader.join(10)
    assert got and got[0][0] == {"n": 2} and not box.wanted


def test_a_busy_loop_leaves_the_reader_with_the_last_snapshot_or_none():
    box = SnapshotBox(0.0)
    assert box.get(timeout=0.01) is None
    box.publish({"n": 1})
    assert box.get(timeout=0.01)[0] == {"n": 1}


# ------------------------------------------------------------------ docs/monitoring.md, grafana


def _exposed_names() -> set[str]:
    """Every sample name a full snapshot renders to (series names as Prometheus stores them)."""
    snap = _snapshot(by_function={"mod.f": {"RUNNING": 1}})
    snap["failures"], snap["retries"] = {"TaskError": 1}, {"raised": 1}
    snap["dropped"] = {"malformed": 1}
    snap["nodes"][0]["stats"] = {key: 1 for key, *_ in NODE_STATS}  # every figure a node sends
    body, _ = render(snap, "", {"age_s": 0.1, "refused_requests": {"wrong token": 1}})
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_monitoring_doc_lists_every_metric():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    documented = set(re.findall(r"^\| `(taskmesh_\w+)` \|", doc, flags=re.M))
    exposed = {re.sub(r"_(bucket|count|sum)$", "", n) for n in _exposed_names()}
    assert exposed == documented, (exposed - documented, documented - exposed)


def test_the_grafana_dashboard_reads_only_metrics_that_exist():
    import json
    import re
    from pathlib import Path

    board = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana" /
                        "taskmesh.json").read_text())
    used = {name for p in board["panels"] for t in p["targets"]
            for name in re.findall(r"\btaskmesh_\w+", t["expr"])}
    assert used and used <= _exposed_names(), used - _exposed_names()


def test_many_function_names_are_capped_with_the_rest_as_other(monkeypatch):
    from taskmesh._dashboard import metrics as M

    monkeypatch.setattr(M, "MAX_FUNCTIONS", 3)
    counts = {f"f{i}": {"RUNNING": i} for i in range(1, 6)}  # f5 has the most
    f = _families(_snapshot(by_function=counts))
    shown = {s.labels["function"]: s.value for s in f["taskmesh_tasks_by_function"].samples}
    assert shown == {"f5": 5, "f4": 4, "other": 3 + 2 + 1}
