"""The dashboard's JSON endpoints (``/api/...``): each request checked and turned into the
question the state API asks the head, and the head's answer into a reply.

    GET /api/tasks?state=FAILED&limit=1000 ──answer(path, params, source, wall_now)──▶
        source.info("state:tasks?state=FAILED&limit=1000&detail=1") ──▶ (200, {"rows", "total", ...})

Decisions only: ``source`` is whatever asks the head (``source.HeadSource`` in the server, a
fake in the unit tests); nothing here touches a socket or a clock. A bad parameter is a 400
with ``{"error": "..."}`` that says what is allowed; the head's own answer to a bad filter
(an unknown key or state) is passed on the same way, so the valid filters are the state
API's (docs/observability.md), spelt once, in the head. The head out of reach is a 503.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple
from urllib.parse import quote

from .._timeline import trace_events

__all__ = ["answer", "Reply", "ENDPOINTS", "MAX_ROWS", "DEFAULT_ROWS", "MAX_LINE_CHARS"]

#: most rows one table request returns (a page); the reply says how many matched in all
MAX_ROWS = 1000
DEFAULT_ROWS = 1000
#: most lines of a log file's tail a request may ask for
MAX_TAIL = 10000
DEFAULT_TAIL = 1000
#: a log line longer than this is cut, with a marker saying how much was left out
MAX_LINE_CHARS = 4000
#: pages of events read for the timeline (at most 1,000 events each; the ring holds 10,000)
MAX_EVENT_PAGES = 50
#: parameters that are never filters: the token (a browser's first URL carries it), a cache
#: buster, the page size
_NOT_FILTERS = ("token", "_", "limit")
#: short names the tasks page uses for the state API's fields
_ALIASES = {"node": "node_id", "job": "job_id", "worker": "worker_id", "actor": "actor_id"}


class Reply(NamedTuple):
    """What to send: an HTTP status, a JSON-able body, extra headers."""

    status: int
    body: Any
    headers: dict


class BadRequest(ValueError):
    """A request this API cannot answer as asked (400, or ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _one(params: Mapping[str, list[str]], key: str) -> str:
    values = params.get(key) or []
    return values[-1].strip() if values else ""


def _int(params: Mapping[str, list[str]], key: str, default: int | None, low: int,
         high: int) -> int | None:
    text = _one(params, key)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{key} must be a whole number from {low:,} to {high:,}, got "
                         f"{text[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{key} must be from {low:,} to {high:,}, got {value:,}")
    return value


def _state_query(kind: str, params: Mapping[str, list[str]], detail: bool) -> str:
    """``state:<kind>?key=value&...&limit=N``: every parameter with a value is a filter
    (the head checks its key and value); ``!value`` means "not value"."""
    limit = _int(params, "limit", DEFAULT_ROWS, 1, MAX_ROWS)
    parts = []
    for key in sorted(params):
        if key in _NOT_FILTERS:
            continue
        value = _one(params, key)
        if not value:  # (an empty field of the filter form: no filter)
            continue
        op = "="
        if value.startswith("!"):
            op, value = "!=", value[1:]
        field = _ALIASES.get(key, key) if kind == "tasks" else key
        parts.append(f"{quote(field, safe='')}{op}{quote(value, safe='')}")
    parts.append(f"limit={limit}")
    if detail:
        parts.append("detail=1")
    return f"state:{kind}?" + "&".join(parts)


def _checked(reply: Any) -> dict:
    """The head's answer, or BadRequest with its message (a bad filter, an unknown kind)."""
    if not isinstance(reply, dict):
        raise BadRequest(f"unexpected answer from the head: {type(reply).__name__}", 502)
    if "error" in reply:
        raise BadRequest(str(reply["error"]))
    return reply


def _epoch_ms(reply: dict, wall_now: float) -> dict:
    """The reply with its rows' times (the head's clock, seconds, as ``*_time``) as epoch ms
    (``*_time_ms``). New rows: the answer itself may be shared with other requests."""
    offset = wall_now - float(reply.get("now", 0.0))

    def converted(row: dict) -> dict:
        out = {}
        for key, value in row.items():
            if key.endswith("_time"):
                out[key + "_ms"] = int((value + offset) * 1000) if value else None
            else:
                out[key] = value
        return out

    return dict(reply, rows=[converted(row) for row in reply.get("rows", ())])


def _table(kind: str, detail: bool = False, leave_out: tuple[str, ...] = ()
           ) -> Callable[..., Reply]:
    def endpoint(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
        reply = _epoch_ms(_checked(source.info(_state_query(kind, params, detail))), wall_now)
        rows = reply["rows"]
        for row in rows:
            for key in leave_out:
                row.pop(key, None)
        body = {"rows": rows, "total": reply.get("total", len(rows)),
                "truncated": bool(reply.get("truncated")),
                "limit": _int(params, "limit", DEFAULT_ROWS, 1, MAX_ROWS)}
        if reply.get("view") is False:
            body["note"] = ("the head's state view is off (event_ring=0 or "
                            "state_finished_tasks=0): it lists no " + kind)
        return Reply(200, body, {})
    return endpoint


def _status(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    return Reply(200, _checked(source.info("status")), {})


def _task(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    task_id = _one(params, "id")
    if not task_id:
        raise BadRequest("give the task's id: /api/task?id=ID")
    reply = _epoch_ms(_checked(source.info("state:task?id=" + quote(task_id, safe=""))),
                      wall_now)
    if not reply.get("rows"):
        raise BadRequest(f"the head keeps no task {task_id!r} (it may have ended long ago: "
                         "only the last 10,000 are kept)", 404)
    return Reply(200, reply["rows"][0], {})


def _log_reply(source: Any, node: str, query: dict) -> tuple[dict, dict]:
    reply = source.logs(node, query)
    if not isinstance(reply, dict) or "replies" not in reply:
        raise BadRequest(f"the head does not answer log queries ({reply!r})", 502)
    return reply["replies"], reply.get("missing", {})


def _logs(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    replies, missing = _log_reply(source, _one(params, "node"), {"op": "list"})
    nodes = []
    for node_id in sorted(replies, key=lambda n: (n != "head", n)):
        reply = replies[node_id]
        if "error" in reply:
            missing[node_id] = reply["error"]
            continue
        nodes.append({"node_id": node_id, "files": reply.get("files", [])})
    return Reply(200, {"nodes": nodes, "missing": missing}, {})


def cut_line(line: str) -> str:
    """A log line no longer than ``MAX_LINE_CHARS``, with a marker where it was cut."""
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + f" [... {len(line) - MAX_LINE_CHARS:,} more characters cut]"


def _logs_read(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    node, name = _one(params, "node"), _one(params, "file")
    if not node or not name:
        raise BadRequest("give the node and the file: /api/logs/read?node=ID&file=NAME "
                         "(/api/logs lists them; node 'head' is the head)")
    offset = _int(params, "offset", None, 0, 1 << 62)
    query: dict = {"op": "read", "file": name}
    if offset is not None:
        query["offset"] = offset
    else:
        query["tail"] = _int(params, "tail", DEFAULT_TAIL, 0, MAX_TAIL)
    replies, missing = _log_reply(source, node, query)
    reply = replies.get(node)
    if reply is None:
        raise BadRequest(str(missing.get(node) or f"node {node} did not answer"),
                         404 if "no live node" in str(missing.get(node, "")) else 504)
    if "error" in reply:
        raise BadRequest(str(reply["error"]), 404 if "no log file" in reply["error"] else 400)
    reply = dict(reply, node_id=node, lines=[cut_line(str(x)) for x in reply.get("lines", ())])
    return Reply(200, reply, {})


def _timeline(params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    """The Chrome trace of the head's recent task events (as ``taskmesh.timeline()``);
    ``download=1`` names it as a file to save."""
    events: list = []
    seq = 0
    for _ in range(MAX_EVENT_PAGES):
        page = _checked(source.info(f"events:{seq}"))
        if not page.get("events"):
            break
        events.extend(page["events"])
        seq = page["seq"]
    headers = {}
    if _one(params, "download") not in ("", "0"):
        headers["Content-Disposition"] = 'attachment; filename="taskmesh-timeline.json"'
    return Reply(200, trace_events(events), headers)


#: path -> endpoint(params, source, wall_now) -> Reply
ENDPOINTS: dict[str, Callable[..., Reply]] = {
    "/api/status": _status,
    "/api/nodes": _table("nodes"),
    # (a table shows a failed task's error kind; /api/task gives its text)
    "/api/tasks": _table("tasks", detail=True, leave_out=("error_message",)),
    "/api/task": _task,
    "/api/actors": _table("actors"),
    "/api/objects": _table("objects"),
    "/api/jobs": _table("jobs"),
    "/api/logs": _logs,
    "/api/logs/read": _logs_read,
    "/api/timeline": _timeline,
}


def answer(path: str, params: Mapping[str, list[str]], source: Any, wall_now: float) -> Reply:
    """The reply to ``GET path?params`` (``params`` as ``urllib.parse.parse_qs`` makes them).
    ``source`` raises its own error when the head cannot be asked: the caller makes that a
    503."""
    endpoint = ENDPOINTS.get(path)
    if endpoint is None:
        return Reply(404, {"error": f"no endpoint {path}: one of {', '.join(ENDPOINTS)}"}, {})
    try:
        return endpoint(params, source, wall_now)
    except BadRequest as exc:
        return Reply(exc.status, {"error": str(exc)}, {})
