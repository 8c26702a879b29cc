"""The state view: tasks, actors and jobs as the state API lists them, built from the event
stream in batches.

    HeadState ──add(event)──▶ EventLog.added ──absorb(), every ABSORB_AT──▶ ring
                                                 └──▶ batches the view has not seen
         in the head's idle turns (catch_up), or at once when VIEW_BEHIND_MAX wait, or
         before any reader (sync) ──▶ StateView.consume(batch): one pass, then the
                                      batch's ended tasks at C speed
    InfoRequest("state:tasks?state=FAILED&limit=100") ──HeadState.info──▶ StateView.query

What it keeps, in bounded memory: each unfinished task (as many as the head has pending),
the last ``state_finished_tasks`` tasks that ended (``Config``, 10,000 by default), every
actor alive and the last ``MAX_ENDED`` dead ones, every driver (job) connected and the last
``MAX_ENDED`` that left, and counts of ended tasks by function since the head started, and
of failed ones (an integer per function, forever).

Why it keeps the stream's own event tuples and no row of its own: this runs inside the
head, whose hot path is about 185k CPU instructions per no-op task, on every event
(docs/performance.md: it costs the head ~3,800 a task). A task in flight is its
TaskSubmitted in ``live`` and, once it runs, its TaskStarted in ``started``: one dict store
each, in a pass with one ``if``-chain step per event. End events are only set aside; at the
end of the batch the tasks that ended leave flight all at once, at C speed (``map`` over the
dicts' ``pop``, ``deque.extend`` of the columns of the ended tasks, one count per function).
The few tasks that waited again, were queued again or were retried have their state and
attempt in ``changed``. Rows become dicts with Ray's field names only when someone asks
(``query``). State names are Ray's: PENDING_ARGS_AVAIL (waiting for inputs),
PENDING_NODE_ASSIGNMENT (queued), RUNNING, FINISHED, FAILED (cancelled tasks too, with
error_type TaskCancelledError).

A task's job is the driver it descends from, as the head's task table knows it
(``TaskRec.job``: the submitter when that is a driver, else the job of the task that
submitted it), carried by its TaskSubmitted event.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from itertools import compress, repeat
from operator import itemgetter
from typing import Any, Iterable, Iterator
from urllib.parse import quote, unquote

__all__ = ["StateView", "TASK_STATES", "parse_query", "format_query", "KINDS"]

# Ray's task states
PENDING_ARGS_AVAIL = "PENDING_ARGS_AVAIL"
PENDING_NODE_ASSIGNMENT = "PENDING_NODE_ASSIGNMENT"
RUNNING = "RUNNING"
FINISHED = "FINISHED"
FAILED = "FAILED"
TASK_STATES = (PENDING_ARGS_AVAIL, PENDING_NODE_ASSIGNMENT, RUNNING, FINISHED, FAILED)
TASK_TYPES = ("NORMAL_TASK", "ACTOR_CREATION_TASK", "ACTOR_TASK")
# Ray's actor states
ACTOR_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD")
# Ray's job states (a driver's life)
JOB_STATES = ("RUNNING", "SUCCEEDED", "FAILED")

#: dead actors and ended jobs kept (oldest dropped first)
MAX_ENDED = 1000
#: a list reply gives at most this many rows, 100 unless asked
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000
#: error messages in list replies (``detail``) are cut to this; ``get`` gives them whole
LIST_MESSAGE_CHARS = 1024

# A task in flight is its TaskSubmitted event in ``live``, its TaskStarted in ``started`` once
# it runs, and, only if it ever waited again, was queued again or was retried, ``[state or
# None, attempt]`` in ``changed``. An ended task is a tuple ``(TaskSubmitted, TaskStarted or
# None, its end event, attempt)``; the end's kind (TaskFinished, TaskFailed, TaskCancelled)
# gives its state. The events are the raw tuples of the stream, shared, not copied.
_SUB, _START, _END, _ATTEMPT = range(4)

_tid = itemgetter(2)
_sub_name = itemgetter(3)
#: an ended row's state, by the kind of its end event
_ENDED = {"TaskFinished": FINISHED, "TaskFailed": FAILED, "TaskCancelled": FAILED}
#: task fields a filter can check on the raw row before it is built as a dict
_NAME_FIELDS = ("name", "func_or_class_name")


def _submitted_job(sub: tuple) -> bytes:
    return sub[6]


def _job_of(peer: bytes) -> str:
    """A driver's job id: its peer identity without the kind byte, in hex."""
    return peer[1:].hex()


class StateView:
    """Tasks, actors, jobs and counts, fed a batch of raw events at a time (``consume``)."""

    def __init__(self, finished_tasks: int) -> None:
        #: task id -> the TaskSubmitted of a task in flight; -> its TaskStarted if it runs
        self.live: dict[bytes, tuple] = {}
        self.started: dict[bytes, tuple] = {}
        #: task id -> [state (None: as live and started say), attempt], for the few tasks
        #: in flight that were queued again, waited again or were retried
        self.changed: dict[bytes, list] = {}
        #: the last tasks that ended, oldest first: their TaskSubmitted, TaskStarted (or
        #: None), end event and attempt, side by side (``ended`` zips them into rows; a row
        #: of its own per task cost the head a tuple, and the collector a look, per task)
        keep = max(0, finished_tasks)
        self._subs: deque[tuple] = deque(maxlen=keep)
        self._starts: deque[tuple | None] = deque(maxlen=keep)
        self._ends: deque[tuple] = deque(maxlen=keep)
        self._attempts: deque[int] = deque(maxlen=keep)
        #: function name -> tasks that ended since start; of them, those that failed (raised,
        #: lost, cancelled): the rest finished
        self.counts: Counter = Counter()
        self.failed: dict[str, int] = {}
        self.actors: dict[bytes, dict] = {}
        self._dead_actors: deque[bytes] = deque()
        self.jobs: dict[bytes, dict] = {}  # driver peer -> job
        self._ended_jobs: deque[bytes] = deque()
        self._done: list[tuple] = []  # end events of this batch, applied at its end
        self._failures = 0  # of them, TaskFailed and TaskCancelled

    # ------------------------------------------------------------------ feeding

    def consume(self, batch: Iterable[tuple]) -> None:
        """Apply a batch of raw events (``("TaskStarted", at, ...)``, in order). One pass
        with as few Python-level steps per event as can be (the common kinds first; kinds it
        does not show are passed over); the tasks that ended are then moved out of flight
        all at once, at C speed (``_flush``)."""
        live = self.live
        started = self.started
        changed = self.changed
        add_done = self._done.append
        for e in batch:
            k = e[0]
            if k == "TaskSubmitted":  # at, task_id, name, actor_id, waiting, job, parent, ...
                if e[2] in live:  # run again (a lost result, an actor's restart): it ended
                    self._flush()  # in this batch, maybe; that goes first
                live[e[2]] = e
                if e[4] and e[4] == e[2]:  # an actor's constructor
                    self._actor_submitted(e)
            elif k == "TaskStarted":  # at, task_id, node_id, worker_id
                started[e[2]] = e
                if changed:
                    c = changed.get(e[2])
                    if c is not None:
                        c[0] = None
            elif k == "TaskFinished":  # at, task_id, duration_s
                add_done(e)
            elif k == "TaskFailed" or k == "TaskCancelled":  # at, task_id, kind (, message)
                add_done(e)
                self._failures += 1
            elif k == "TaskQueued" or k == "TaskWaiting" or k == "TaskRetried":
                self._task_changed(e)
            elif k[0] == "A":
                self._actor_event(e)
            elif k == "DriverJoined" or k == "DriverLeft":
                self._job_event(e)
        if self._done:
            self._flush()

    def _task_changed(self, e: tuple) -> None:
        """It waits for inputs again, is queued again, or runs again after a failure."""
        tid = e[2]
        if tid not in self.live:
            return
        c = self.changed.get(tid)
        if c is None:
            c = self.changed[tid] = [None, 0]
        if e[0] == "TaskWaiting":
            c[0] = PENDING_ARGS_AVAIL
        else:
            c[0] = PENDING_NODE_ASSIGNMENT
            if e[0] == "TaskRetried":
                c[1] += 1
                self.started.pop(tid, None)

    def _flush(self) -> None:
        """Move the tasks whose end events wait in ``_done`` from flight to the ended rows
        and the counts: map and zip over the batch, no Python-level step per task unless
        one failed or was retried."""
        done = self._done
        ids = list(map(_tid, done))
        subs = list(map(self.live.pop, ids, repeat(None)))
        starts = list(map(self.started.pop, ids, repeat(None)))
        attempts: list[int] | None = None
        if self.changed:
            attempts = [c[1] if c is not None else 0
                        for c in map(self.changed.pop, ids, repeat(None))]
        if self._failures:  # (rare)
            failed = self.failed
            for sub, end in zip(subs, done):
                if end[0] != "TaskFinished" and sub is not None:
                    failed[sub[3]] = failed.get(sub[3], 0) + 1
        if None in subs:  # (the view never saw them submitted: passed over)
            seen = [sub is not None for sub in subs]
            done, starts = list(compress(done, seen)), list(compress(starts, seen))
            if attempts is not None:
                attempts = list(compress(attempts, seen))
            subs = list(compress(subs, seen))
        self._subs.extend(subs)
        self._starts.extend(starts)
        self._ends.extend(done)
        self._attempts.extend(repeat(0, len(subs)) if attempts is None else attempts)
        if subs:
            # counted at C speed, by name only, and at once when the batch's tasks are all
            # of one function, as in a flood
            names = list(map(_sub_name, subs))
            if names.count(names[0]) == len(names):
                self.counts[names[0]] += len(names)
            else:
                self.counts.update(names)
        self._done.clear()
        self._failures = 0

    def _actor_submitted(self, e: tuple) -> None:
        """An actor's constructor is submitted (again, on a restart)."""
        a = self.actors.get(e[2])
        if a is None:
            job = e[6]
            name = e[3]
            self.actors[e[2]] = {
                "actor_id": e[2].hex(), "class_name": name.rsplit(".", 1)[0]
                if name.endswith(".__init__") else name,
                "state": "DEPENDENCIES_UNREADY" if e[5] else "PENDING_CREATION",
                "job_id": _job_of(job) if job else "", "name": "", "node_id": "",
                "num_restarts": 0, "death_cause": "", "creation_time": e[1], "end_time": 0.0}
        elif a["state"] != "DEAD":
            a["state"] = "RESTARTING"

    def _actor_event(self, e: tuple) -> None:
        k = e[0]
        a = self.actors.get(e[2])
        if a is None:  # (its constructor's events came before the view was there)
            return
        if k == "ActorCreated":  # at, actor_id, class_name, node_id, name
            a.update(state="ALIVE", class_name=e[3], node_id=e[4], name=e[5])
        elif k == "ActorRestarted":  # at, actor_id, restarts, cause
            a.update(state="RESTARTING", num_restarts=e[3], death_cause=e[4], node_id="")
        elif k == "ActorDead":  # at, actor_id, cause
            if a["state"] == "DEAD":
                return
            a.update(state="DEAD", death_cause=e[3], end_time=e[1])
            dead = self._dead_actors
            dead.append(e[2])
            if len(dead) > MAX_ENDED:
                self.actors.pop(dead.popleft(), None)

    def _job_event(self, e: tuple) -> None:
        peer = e[2]
        if e[0] == "DriverJoined":
            self.jobs[peer] = {"job_id": _job_of(peer), "status": "RUNNING",
                               "start_time": e[1], "end_time": 0.0, "message": ""}
            return
        job = self.jobs.get(peer)
        if job is None or job["status"] != "RUNNING":
            return
        ok = e[3] == "it said goodbye"
        job.update(status="SUCCEEDED" if ok else "FAILED", end_time=e[1],
                   message="the driver exited" if ok else f"the driver is gone: {e[3]}")
        ended = self._ended_jobs
        ended.append(peer)
        if len(ended) > MAX_ENDED:
            self.jobs.pop(ended.popleft(), None)

    # ------------------------------------------------------------------ reading

    def query(self, kind: str, filters: list[tuple[str, str, str]], limit: int,
              detail: bool) -> dict:
        """Rows of ``tasks``, ``actors`` or ``jobs`` (Ray's field names) that pass the
        filters, at most ``limit``; ``summary``: tasks by function and state; ``task`` or
        ``actor`` (filter ``id``: the id or a unique start of it): that one, in detail."""
        if kind == "tasks":
            return select(self._task_dicts(filters, detail), filters, limit)
        if kind == "actors":
            return select(self.actors.values(), filters, limit)
        if kind == "jobs":
            return select(self.jobs.values(), filters, limit)
        if kind == "summary":
            return {"summary": self.summary()}
        given = next((v for key, op, v in filters if key == "id" and op == "="), "").lower()
        prefix, _, suffix = given.replace("...", "…").partition("…")
        if len(prefix) + len(suffix) < 4:
            raise QueryError(f"{kind} needs its id (or its first characters, at least 4, or "
                             f"its first and last ones as tables show them: 53a1cc…000006): "
                             f"state:{kind}?id=ID")

        def wanted(hex_id: str) -> bool:
            return hex_id.startswith(prefix) and hex_id.endswith(suffix)

        if kind == "task":
            jobs = self._job_finder()
            found = [(state, r) for state, r in self.task_rows() if wanted(r[_SUB][2].hex())]
            rows = [self.task_dict(r, state, jobs, True, None) for state, r in found]
        else:
            rows = [a for a in self.actors.values() if wanted(a["actor_id"])]
        if len({r.get("task_id", r.get("actor_id")) for r in rows}) > 1:
            raise QueryError(f"{len(rows)} {kind}s have an id like {given!r}: give more of it")
        return {"rows": rows[-1:], "total": len(rows[-1:]), "truncated": False}

    def _task_dicts(self, filters: list[tuple[str, str, str]], detail: bool) -> Iterable[dict]:
        """Task rows as dicts, in flight first, then the ended ones newest first; rows whose
        state or name a filter rules out are passed over before they are built."""
        names = [(op == "=", value) for key, op, value in filters if key in _NAME_FIELDS]
        states = [(op == "=", value) for key, op, value in filters if key == "state"]
        as_dict = self.task_dict
        jobs = self._job_finder()
        chars = LIST_MESSAGE_CHARS
        ended = ((_ENDED[r[_END][0]], r) for r in self.ended_rows(newest_first=True))
        for state, r in itertools.chain(self.in_flight(), ended):
            if names and any((r[_SUB][3] == v) != eq for eq, v in names):
                continue
            if states and any((state == v) != eq for eq, v in states):
                continue
            yield as_dict(r, state, jobs, detail, chars)

    def in_flight(self) -> Iterator[tuple[str, tuple]]:
        """The tasks in flight: (state, row), rows as ended ones are but with no end."""
        started = self.started
        changed = self.changed
        for tid, sub in self.live.items():
            start = started.get(tid)
            c = changed.get(tid) if changed else None
            if c is not None and c[0] is not None:
                state = c[0]
            elif start is not None:
                state = RUNNING
            else:
                state = PENDING_ARGS_AVAIL if sub[5] else PENDING_NODE_ASSIGNMENT
            yield state, (sub, start, None, c[1] if c is not None else 0)

    def task_rows(self) -> Iterator[tuple[str, tuple]]:
        """Every task kept, as (state, row): those in flight, then those that ended,
        oldest first."""
        yield from self.in_flight()
        for r in self.ended_rows():
            yield _ENDED[r[_END][0]], r

    def ended_rows(self, newest_first: bool = False) -> Iterator[tuple]:
        """The tasks that ended, as rows: (TaskSubmitted, TaskStarted or None, end, attempt)."""
        columns = (self._subs, self._starts, self._ends, self._attempts)
        return zip(*map(reversed, columns)) if newest_first else zip(*columns)

    @property
    def ended(self) -> list[tuple]:
        """The rows of the tasks that ended, oldest first."""
        return list(self.ended_rows())

    def _job_finder(self) -> Any:
        """A function: a task's TaskSubmitted -> its job (the driver it descends from, as the
        head's task table knew it when the task came), b"" if not known."""
        return _submitted_job

    def task_dict(self, r: tuple, state: str, job_of: Any, detail: bool,
                  message_chars: int | None) -> dict:
        """One task row with Ray's field names (times: the head's clock, seconds)."""
        sub, started, end = r[_SUB], r[_START], r[_END]
        tid, name, actor, parent = sub[2], sub[3], sub[4], sub[7]
        job = job_of(sub)
        error_type = message = ""
        if end is not None and state == FAILED:
            if end[0] == "TaskFailed":
                error_type, message = end[3], end[4]
            else:
                error_type, message = "TaskCancelledError", end[3]
        d = {
            "task_id": tid.hex(),
            "attempt_number": r[_ATTEMPT],
            "name": name,
            "state": state,
            "job_id": _job_of(job) if job else "",
            "actor_id": actor.hex() if actor else "",
            "type": ("NORMAL_TASK" if not actor else
                     "ACTOR_CREATION_TASK" if actor == tid else "ACTOR_TASK"),
            "func_or_class_name": name,
            "parent_task_id": parent.hex() if parent else "",
            "node_id": started[3] if started is not None else "",
            "worker_id": started[4] if started is not None else "",
            "error_type": error_type,
        }
        if detail:
            if message_chars is not None and len(message) > message_chars:
                message = (message[:message_chars] + f"... [{len(message) - message_chars} "
                           "more characters: get the task to see them all]")
            start = started[1] if started is not None else 0.0
            end_at = end[1] if end is not None else 0.0
            ran = end[3] if end is not None and end[0] == "TaskFinished" else 0.0
            d.update(creation_time=sub[1], start_time=start, end_time=end_at,
                     duration_s=ran or (end_at - start if start and end_at else 0.0),
                     error_message=message)
        return d

    def summary(self) -> dict[str, dict[str, int]]:
        """Per function name: tasks by state; FINISHED and FAILED since the head started,
        the others as they are now."""
        out: dict[str, dict[str, int]] = {}
        failed = self.failed
        for name, n in self.counts.items():
            states = out[name] = {}
            if n > failed.get(name, 0):
                states[FINISHED] = n - failed.get(name, 0)
            if failed.get(name):
                states[FAILED] = failed[name]
        for state, r in self.in_flight():
            states = out.setdefault(r[_SUB][3], {})
            states[state] = states.get(state, 0) + 1
        return out

    def check_invariants(self) -> None:
        """Raise AssertionError unless every task kept is where its state says."""
        for tid, sub in self.live.items():
            if sub[0] != "TaskSubmitted" or sub[2] != tid:
                raise AssertionError(f"task {tid.hex()} is in flight as {sub!r}")
        for what, table in (("running", self.started), ("changed", self.changed)):
            stray = table.keys() - self.live.keys()
            if stray:
                raise AssertionError(f"{len(stray)} tasks {what} but not in flight, e.g. "
                                     f"{next(iter(stray)).hex()}")
        if self._done:
            raise AssertionError(f"{len(self._done)} end events not applied")
        if not len(self._subs) == len(self._starts) == len(self._ends) == len(self._attempts):
            raise AssertionError("the ended tasks' columns differ in length")
        for r in self.ended_rows():
            if r[_END][0] not in _ENDED or r[_END][2] != r[_SUB][2]:
                raise AssertionError(f"task {r[_SUB][2].hex()} ended as {r[_END]!r}")


# ---------------------------------------------------------------------- requests

#: what the state API lists, and the fields a filter may name (Ray's)
KINDS: dict[str, tuple[str, ...]] = {
    "tasks": ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
              "func_or_class_name", "parent_task_id", "node_id", "worker_id", "error_type"),
    "actors": ("actor_id", "class_name", "state", "job_id", "name", "node_id", "num_restarts",
               "death_cause"),
    "jobs": ("job_id", "status", "message"),
    "nodes": ("node_id", "node_ip", "node_name", "state", "is_head_node"),
    "objects": ("object_id", "object_size", "state", "location", "owner", "job_id"),
}
#: fields whose values are one of a few names: a filter on them must use one
ENUMS: dict[str, tuple[str, ...]] = {
    "tasks.state": TASK_STATES, "tasks.type": TASK_TYPES, "actors.state": ACTOR_STATES,
    "jobs.status": JOB_STATES, "nodes.state": ("ALIVE", "DEAD"),
    "objects.state": ("PENDING", "READY", "ERROR"),
}
_OPS = ("!=", "=")  # ("!=" first: "a!=b" also holds "=")


def format_query(kind: str, filters: Iterable[tuple[str, str, Any]] = (), limit: int | None = None,
                 detail: bool = False) -> str:
    """The InfoRequest ``what`` for a state query: ``state:tasks?state=FAILED&limit=100``
    (keys and values percent-encoded; ``!=`` for "not equal")."""
    parts = [f"{quote(str(key), safe='')}{op}{quote(str(value), safe='')}"
             for key, op, value in filters]
    if limit is not None:
        parts.append(f"limit={int(limit)}")
    if detail:
        parts.append("detail=1")
    return f"state:{kind}" + ("?" + "&".join(parts) if parts else "")


class QueryError(ValueError):
    """A state query that cannot be answered, with a message that says what is allowed."""


def parse_query(what: str) -> tuple[str, list[tuple[str, str, str]], int, bool]:
    """(kind, filters, limit, detail) of ``state:<kind>?<key>=<value>&...``; QueryError with
    the valid choices if something is not known."""
    kind, _, query = what[6:].partition("?")
    if kind not in KINDS and kind not in ("summary", "task", "actor"):
        raise QueryError(f"unknown state kind {kind!r}: one of "
                         f"{', '.join([*KINDS, 'summary', 'task', 'actor'])}")
    fields = KINDS.get(kind, ("id",))
    filters: list[tuple[str, str, str]] = []
    limit, detail = DEFAULT_LIMIT, False
    for part in query.split("&") if query else ():
        op = next((o for o in _OPS if o in part), None)
        if op is None:
            raise QueryError(f"bad filter {part!r}: KEY=VALUE or KEY!=VALUE")
        key, _, value = part.partition(op)
        key, value = unquote(key), unquote(value)
        if key == "limit" and op == "=":
            try:
                limit = int(value)
            except ValueError:
                raise QueryError(f"limit must be a number, got {value!r}") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise QueryError(f"limit must be between 1 and {MAX_LIMIT:,}, got {limit}")
            continue
        if key == "detail" and op == "=":
            detail = value not in ("", "0", "false", "False")
            continue
        if key not in fields:
            raise QueryError(f"unknown filter key {key!r} for {kind}: one of {', '.join(fields)}")
        choices = ENUMS.get(f"{kind}.{key}")
        if choices is not None:
            value = value.upper()
            if value not in choices:
                raise QueryError(f"unknown {key} {value!r} for {kind}: one of {', '.join(choices)}")
        filters.append((key, op, value))
    return kind, filters, limit, detail


def matches(row: dict, filters: list[tuple[str, str, str]]) -> bool:
    """Does a row (Ray's field names) pass every filter? Values compare as text (True: "True")."""
    for key, op, value in filters:
        have = row.get(key)
        equal = (str(have) == value or
                 (type(have) is bool and value.lower() == str(have).lower()))
        if equal != (op == "="):
            return False
    return True


def select(rows: Iterable[dict], filters: list[tuple[str, str, str]], limit: int) -> dict:
    """The first ``limit`` rows passing the filters, how many passed, and whether some were
    left out."""
    out: list[dict] = []
    total = 0
    for row in rows:
        if matches(row, filters):
            total += 1
            if len(out) < limit:
                out.append(row)
    return {"rows": out, "total": total, "truncated": total > len(out)}
