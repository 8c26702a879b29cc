"""The state view (``_head/views.py``): rows of tasks, actors and jobs built from the event
stream, Ray's state names, the bound on ended tasks, counts since start, and the queries
``HeadState.info("state:...")`` answers."""

from __future__ import annotations

import pytest

from taskmesh import _protocol as P
from taskmesh._head import views as V
from taskmesh._head.events import ABSORB_AT

from ..support.head import Actors, Cluster, ret, started, task_error


def tasks(c: Cluster, query: str = "") -> list[dict]:
    """The task rows the head answers with (through a real InfoRequest)."""
    reply = c.info("state:tasks" + query)
    assert "error" not in reply, reply
    return reply["rows"]


def one(c: Cluster, task_id: bytes) -> dict:
    [row] = [r for r in tasks(c, "?detail=1&limit=10000") if r["task_id"] == task_id.hex()]
    return row


def test_a_task_goes_from_queued_to_running_to_finished_with_its_node_worker_and_job():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    c.now = 5.0
    [first, second] = c.submit(fid, 2)
    c.drain()
    assert one(c, first)["state"] == "RUNNING" and one(c, second)["state"] == "PENDING_NODE_ASSIGNMENT"
    row = one(c, first)
    assert row["node_id"] == "n1" and row["worker_id"] == c.worker_info[w][1]
    assert row["job_id"] == c.driver[1:].hex() and row["type"] == "NORMAL_TASK"
    assert row["name"] == "mod.f" and row["attempt_number"] == 0 and row["start_time"] == 5.0
    c.now = 6.0
    c.finish(w, first, duration=0.75)
    row = one(c, first)
    assert row["state"] == "FINISHED" and row["end_time"] == 6.0 and row["duration_s"] == 0.75
    assert row["error_type"] == "" and row["error_message"] == ""
    assert one(c, second)["state"] == "RUNNING"
    c.state.check_invariants()


def test_a_task_waiting_for_an_input_is_pending_args_then_queued_then_runs():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [parent] = c.submit(fid)
    [child] = c.submit(fid, deps=[ret(parent)])
    c.drain()
    assert one(c, child)["state"] == "PENDING_ARGS_AVAIL"
    c.finish(w, parent)
    c.drain()
    assert one(c, child)["state"] == "RUNNING"


def test_a_raising_task_retried_counts_its_attempts_and_fails_with_the_workers_text():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [t] = c.submit(fid, max_retries=1, retry_exceptions=True)
    c.drain()
    text = "Traceback (most recent call last):\n  ...\nValueError: no"
    c.send(w, P.TaskResults([P.TaskResult(t, [task_error()], 0.1, False, text)]))
    c.drain()
    row = one(c, t)
    assert row["state"] == "RUNNING" and row["attempt_number"] == 1
    c.send(w, P.TaskResults([P.TaskResult(t, [task_error()], 0.1, False, text)]))
    row = one(c, t)
    assert row["state"] == "FAILED" and row["error_type"] == "TaskError"
    assert row["error_message"] == text and row["attempt_number"] == 1
    # the head's own errors come with its message
    [lost] = c.submit(fid, max_retries=0)
    c.drain()
    c.exited(w, -9)
    row = one(c, lost)
    assert row["state"] == "FAILED" and row["error_type"] == "WorkerCrashedError"
    assert "SIGKILL" in row["error_message"]


def test_a_task_whose_input_raised_fails_without_running_and_says_so():
    c = Cluster()
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    [parent] = c.submit(fid)
    [child] = c.submit(fid, deps=[ret(parent)])
    c.drain()
    c.send(w, P.TaskResults([P.TaskResult(parent, [task_error()], 0.1, False, "ValueError: x")]))
    row = one(c, child)
    assert row["state"] == "FAILED" and row["error_type"] == "TaskError"
    assert "did not run" in row["error_message"] and row["node_id"] == ""


def test_a_cancelled_task_is_failed_with_taskcancellederror():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    running, queued = c.submit(fid, 2)
    c.drain()
    c.send(c.driver, P.Cancel([ret(queued)], False))
    row = one(c, queued)
    assert row["state"] == "FAILED" and row["error_type"] == "TaskCancelledError"
    assert "cancel" in row["error_message"]


def test_a_nested_task_belongs_to_the_job_of_the_driver_it_descends_from():
    c = Cluster()
    c.add_node("n1", cpus=2)
    fid = c.register()
    [parent] = c.submit(fid)
    assigned = c.drain().assigned_to()
    worker = assigned[parent]
    c.register(owner=worker)
    spec = c.spec(fid)._replace(parent=parent)
    c.send(worker, P.Submit([spec]))
    row = one(c, spec.task_id)
    assert row["job_id"] == c.driver[1:].hex() and row["parent_task_id"] == parent.hex()


def test_actor_tasks_have_their_types_and_the_actor_its_states():
    c = Actors(idle_worker_timeout_s=1000.0)
    c.add_node("n1", cpus=2)
    fid = c.register("mod.C")
    aid = c.create(fid, max_restarts=1, name="counter")
    [actor] = c.state.info("state:actors")["rows"]  # (not through c.info: it drains what
    # the head sent, the constructor's Execute too)
    assert actor["state"] == "PENDING_CREATION" and actor["class_name"] == "mod.C"
    worker = started(c, aid)
    call = c.call(aid)
    c.drain()
    assert one(c, aid)["type"] == "ACTOR_CREATION_TASK"
    row = one(c, call)
    assert row["type"] == "ACTOR_TASK" and row["actor_id"] == aid.hex()
    [actor] = c.info("state:actors")["rows"]
    assert (actor["state"], actor["node_id"], actor["job_id"]) == ("ALIVE", "n1",
                                                                    c.driver[1:].hex())
    assert actor["name"] == "counter"
    c.exited(worker, -9)
    [actor] = c.state.info("state:actors?state=RESTARTING")["rows"]
    assert actor["num_restarts"] == 1 and "SIGKILL" in actor["death_cause"]
    worker = started(c, aid)
    c.exited(worker, -9)
    [actor] = c.info("state:actors")["rows"]
    assert actor["state"] == "DEAD"
    assert c.info(f"state:actor?id={aid.hex()[:8]}")["rows"] == [actor]


def test_jobs_are_drivers_running_then_succeeded_or_failed():
    c = Cluster()
    c.hello(b"Dgoodbye", "driver")
    c.hello(b"Dvanish", "driver")
    c.send(b"Dgoodbye", P.Goodbye())
    c.disconnect(b"Dvanish")
    jobs = {j["job_id"]: j for j in c.info("state:jobs")["rows"]}
    assert jobs[c.driver[1:].hex()]["status"] == "RUNNING"
    assert jobs[b"goodbye".hex()]["status"] == "SUCCEEDED"
    assert jobs[b"vanish".hex()]["status"] == "FAILED"
    assert "closed" in jobs[b"vanish".hex()]["message"]


def test_only_the_last_n_ended_tasks_are_kept_but_counts_are_forever():
    c = Cluster(state_finished_tasks=5)
    c.add_node("n1", cpus=1)
    [w] = c.node_workers["n1"]
    fid = c.register()
    for _ in range(12):
        [t] = c.submit(fid)
        c.drain()
        c.finish(w, t)
    [pending] = c.submit(fid)
    reply = c.info("state:tasks?limit=100")
    assert len(reply["rows"]) == 6 and not reply["truncated"]  # 5 ended, 1 running
    assert c.info("state:summary")["summary"] == {"mod.f": {"FINISHED": 12, "RUNNING": 1}}
    assert len(c.state.view.ended) == 5


def test_filters_limit_and_the_errors_that_list_what_is_valid():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.submit(fid, 4)
    c.drain()
    reply = c.info("state:tasks?state=pending_node_assignment&limit=2")
    assert [r["state"] for r in reply["rows"]] == ["PENDING_NODE_ASSIGNMENT"] * 2
    assert reply["total"] == 3 and reply["truncated"]
    assert len(tasks(c, "?state!=RUNNING")) == 3
    assert len(tasks(c, "?name=mod.f&state=RUNNING")) == 1
    error = c.info("state:tasks?state=DONE")["error"]
    assert "unknown state 'DONE'" in error and "PENDING_ARGS_AVAIL" in error
    error = c.info("state:tasks?colour=red")["error"]
    assert "unknown filter key 'colour'" in error and "task_id" in error
    assert "between 1 and 10,000" in c.info("state:tasks?limit=0")["error"]
    assert "unknown state kind" in c.info("state:bananas")["error"]
    assert "at least 4" in c.info("state:task?id=a")["error"]


def test_query_strings_round_trip_through_format_and_parse():
    what = V.format_query("tasks", [("name", "=", "a&b=c"), ("state", "!=", "failed")], 7, True)
    assert V.parse_query(what) == ("tasks", [("name", "=", "a&b=c"), ("state", "!=", "FAILED")],
                                   7, True)


def test_get_task_by_a_unique_start_of_its_id():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    [t] = c.submit(fid)
    [row] = c.info(f"state:task?id={t.hex()[:10]}")["rows"]
    assert row["task_id"] == t.hex() and "error_message" in row
    assert c.info("state:task?id=ffffffff")["rows"] == []


def test_nodes_and_objects_are_listed_from_the_heads_records():
    c = Cluster()
    c.add_node("n1", cpus=1, address="10.0.0.7")
    fid = c.register()
    [t] = c.submit(fid)
    [node] = c.info("state:nodes")["rows"]
    assert (node["node_id"], node["node_ip"], node["state"]) == ("n1", "10.0.0.7", "ALIVE")
    [obj] = c.info("state:objects")["rows"]
    assert obj["object_id"] == ret(t).hex() and obj["state"] == "PENDING"


def test_the_view_sees_events_added_since_the_last_absorb_and_batches_at_absorb():
    c = Cluster()
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.submit(fid, 3)
    c.drain()
    assert len(c.state.events.added) < ABSORB_AT  # (not absorbed by the head yet)
    assert len(tasks(c)) == 3  # (a query absorbs first)


def test_consume_passes_over_kinds_it_does_not_show_and_tasks_it_never_saw():
    view = V.StateView(10)
    view.consume([("TaskStarted", 1.0, b"x" * 16, "n", "w"), ("TaskFinished", 2.0, b"x" * 16, 0.1),
                  ("ObjectFreed", 1.0, b"o"), ("NodeDead", 1.0, "n", "gone"),
                  ("ActorDead", 1.0, b"a", "gone")])
    assert not view.live and not view.ended and not view.counts
    view.check_invariants()


@pytest.mark.parametrize("kind", ["tasks", "actors", "jobs", "nodes", "objects"])
def test_every_kind_answers_with_rows_a_total_and_the_heads_clock(kind):
    c = Cluster()
    c.now = 3.5
    reply = c.info(f"state:{kind}")
    assert set(reply) >= {"rows", "total", "truncated", "now"} and reply["now"] == 3.5


@pytest.mark.parametrize("config", [{"event_ring": 0}, {"state_finished_tasks": 0}])
def test_the_view_is_off_without_a_stream_or_with_no_rows_to_keep(config):
    c = Cluster(**config)
    c.add_node("n1", cpus=1)
    fid = c.register()
    c.submit(fid, 2)
    c.drain()
    reply = c.info("state:tasks")
    assert reply["rows"] == [] and reply["view"] is False
    assert "view" not in c.info("state:nodes")
    c.state.check_invariants()
