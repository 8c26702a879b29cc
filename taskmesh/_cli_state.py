"""The ``taskmesh`` commands that look at a running cluster: status, list, summary, get.

    taskmesh status [--json] [--watch [SECONDS]] [--all] [--address HOST:PORT]
    taskmesh list nodes|tasks|actors|objects|jobs [--filter KEY=VALUE]... [--limit N]
                  [--detail] [--format table|json] [--address HOST:PORT]
    taskmesh summary tasks [--format table|json]
    taskmesh get task|actor ID            (an id or a unique start of it)

They ask the head (``_state_client``: the head on this machine, or ``--address``); the rows
come from its state view (Ray's field and state names). Tables fit 80 columns: a task's,
actor's or object's id is shown as its first and last 6 characters (``53a1cc…000006``: the
process that made it, and its number there), which ``get`` takes as it is; the full ids are
in ``--format json``. Every failure prints one line, ``taskmesh: error: ...``, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from typing import Any, Callable, Sequence

from ._resources import from_units
from ._state_client import connect, query, query_string
from .errors import TaskmeshError

#: a table's width: a terminal's
WIDTH = 80
#: long ids are shown by their first and last this many characters in tables
SHORT_ID = 6


class _Fail(Exception):
    """A one-line error for the person at the terminal."""


# ---------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], flexible: Sequence[int] = (),
          width: int = WIDTH, keep_end: Sequence[int] = ()) -> list[str]:
    """Lines of an aligned table, no wider than ``width`` if it can be: the ``flexible``
    columns (by index) are cut, widest first, down to their header's width, with "…" (at
    their start for the columns in ``keep_end``: a qualified name keeps its last parts)."""
    cols = len(headers)
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(cols)]
    while sum(widths) + 2 * (cols - 1) > width:
        shrinkable = [i for i in flexible if widths[i] > max(len(headers[i]), 6)]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1

    def cell(text: str, w: int, i: int) -> str:
        if len(text) <= w:
            return text
        return "…" + text[len(text) - w + 1:] if i in keep_end else text[:w - 1] + "…"

    return ["  ".join(cell(c, w, i).ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [list(headers), *rows]]


def _short(value: str) -> str:
    """``53a1cc69368a56340000000000000006`` as ``53a1cc…000006`` (ids of one process share
    their start and count up at their end; ``get`` takes this form)."""
    return value if len(value) <= 2 * SHORT_ID + 1 else f"{value[:SHORT_ID]}…{value[-SHORT_ID:]}"


def _ago(ms: int | None) -> str:
    """A time as the clock shows it (today) or a date and time."""
    if not ms:
        return "-"
    t = time.localtime(ms / 1000)
    return time.strftime("%H:%M:%S" if t[:3] == time.localtime()[:3] else "%m-%d %H:%M", t)


#: per kind: headers, a row's cells, the flexible columns
_TABLES: dict[str, tuple[Sequence[str], Callable[[dict], list[str]], Sequence[int]]] = {
    "tasks": (("TASK ID", "NAME", "STATE", "NODE", "ERROR"),
              lambda r: [_short(r["task_id"]), r["name"], r["state"], r["node_id"] or "-",
                         r["error_type"] or ""], (1, 4)),
    "actors": (("ACTOR ID", "CLASS", "STATE", "NODE", "RESTARTS"),
               lambda r: [_short(r["actor_id"]), r["class_name"], r["state"],
                          r["node_id"] or "-", str(r["num_restarts"])], (1,)),
    "jobs": (("JOB ID", "STATUS", "START", "END", "MESSAGE"),
             lambda r: [r["job_id"], r["status"], _ago(r.get("start_time_ms")),
                        _ago(r.get("end_time_ms")), r["message"]], (4,)),
    "nodes": (("NODE ID", "IP", "STATE", "CPUS", "WORKERS", "ACTORS", "FINISHED", "HOST"),
              lambda r: [r["node_id"], r["node_ip"], r["state"],
                         f"{r['resources_total'].get('CPU', 0):g}", str(r["workers"]),
                         str(r["actors"]), str(r["tasks_finished"]), r["node_name"]], (7,)),
    "objects": (("OBJECT ID", "SIZE", "STATE", "LOCATION", "JOB ID"),
                lambda r: [_short(r["object_id"]), _size(r["object_size"]), r["state"],
                           r["location"], r["job_id"] or "-"], (3,)),
}


def _shown(key: str, value: Any) -> str:
    """A field's value for a person: times as local date and time, durations rounded."""
    if value is None or value == "":
        return "-"
    if key.endswith("_time_ms"):
        return (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value / 1000))
                + f".{int(value) % 1000:03d}")
    if key == "duration_s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"
    return str(value)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------------- commands


def _connect(args: argparse.Namespace) -> Any:
    try:
        return connect(args.address, args.secret_file or "", args.no_encryption)
    except TaskmeshError as exc:
        raise _Fail(str(exc)) from None


def _ask(core: Any, what: str) -> dict:
    try:
        return query(core, what)
    except ValueError as exc:  # the head's word on the request: a bad filter...
        raise _Fail(str(exc)) from None
    except TaskmeshError as exc:
        raise _Fail(str(exc)) from None


def _filters(texts: Sequence[str]) -> list[tuple[str, str, str]]:
    out = []
    for text in texts:
        op = "!=" if "!=" in text else "=" if "=" in text else None
        if op is None:
            raise _Fail(f"bad --filter {text!r}: KEY=VALUE or KEY!=VALUE, e.g. state=FAILED")
        key, _, value = text.partition(op)
        out.append((key.strip(), op, value.strip()))
    return out


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_list(args: argparse.Namespace) -> int:
    what = query_string(args.kind, _filters(args.filter), args.limit, args.detail)
    core = _connect(args)
    try:
        reply = _ask(core, what)
    finally:
        core.close()
    rows = reply["rows"]
    if args.format == "json":
        _print_json(rows)
        return 0
    headers, cells, flexible = _TABLES[args.kind]
    if not rows:
        print(f"no {args.kind}" + (" match the filters" if args.filter else ""))
    else:
        print("\n".join(table(headers, [cells(r) for r in rows], flexible, WIDTH, (1,))))
    if reply.get("truncated"):
        print(f"(showing {len(rows):,} of {reply['total']:,}: --limit N for more, at most "
              "10,000)")
    if args.kind == "tasks" and any(r["state"] == "FAILED" for r in rows):
        print("(taskmesh get task ID shows a failed task's error and traceback)")
    return 0


_SUMMARY_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED",
                   "FAILED")
_SUMMARY_HEADERS = ("FUNCTION", "WAIT ARGS", "QUEUED", "RUNNING", "FINISHED", "FAILED")


def cmd_summary(args: argparse.Namespace) -> int:
    core = _connect(args)
    try:
        summary = _ask(core, "state:summary")["summary"]
    finally:
        core.close()
    if args.format == "json":
        _print_json(summary)
        return 0
    rows = [[name, *(f"{counts.get(s, 0):,}" for s in _SUMMARY_STATES)]
            for name, counts in sorted(summary.items())]
    if not rows:
        print("no tasks yet")
        return 0
    print("\n".join(table(_SUMMARY_HEADERS, rows, (0,), WIDTH, (0,))))
    total = sum(sum(c.values()) for c in summary.values())
    print(textwrap.fill(f"{total:,} tasks (WAIT ARGS: PENDING_ARGS_AVAIL, QUEUED: "
                        "PENDING_NODE_ASSIGNMENT; FINISHED and FAILED: since the head "
                        "started)", WIDTH))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    core = _connect(args)
    try:
        rows = _ask(core, query_string(args.kind, [("id", "=", args.id)]))["rows"]
    finally:
        core.close()
    if not rows:
        raise _Fail(f"no {args.kind} with an id that starts with {args.id!r} is known to the "
                    f"head (it keeps the last ended tasks only: see `taskmesh list "
                    f"{args.kind}s`)")
    row = rows[0]
    if args.format == "json":
        _print_json(row)
        return 0
    message = row.pop("error_message", "") or row.pop("death_cause", "")
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key.ljust(width)}  {_shown(key, value)}".rstrip())
    if message:
        print("error_message:" if args.kind == "task" else "death_cause:")
        print(textwrap.indent(message.rstrip(), "  "))
    return 0


# ---------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    core = _connect(args)
    try:
        while True:
            try:
                st = core.info("status")
            except TaskmeshError as exc:
                raise _Fail(str(exc)) from None
            if args.json:
                text = json.dumps(st, indent=2, sort_keys=True, default=str)
            else:
                text = "\n".join(status_lines(st, core.address, args.all))
            if args.watch is None:
                print(text)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n"
                             + f"(every {args.watch:g} s; Ctrl-C to stop)\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        core.close()


def status_lines(st: dict, address: str, show_dead: bool = False) -> list[str]:
    """``taskmesh status`` as lines of at most 80 columns: a row per node, its store and
    network below it, then the cluster's counts."""
    lines = [f"taskmesh cluster at {address}"]
    headers = ["NODE", "ADDRESS", "STATE", "CPUS", "WORKERS", "RUNNING", "QUEUED", "FINISHED"]
    rows, below, dead = [], [], 0
    for n in st["nodes"]:
        if not n["Alive"] and not show_dead:
            dead += 1
            continue
        total = from_units(n["Resources"].get("CPU", 0))
        used = from_units(n["CPUsInUse"])
        rows.append([n["NodeID"], n["NodeManagerAddress"], "alive" if n["Alive"] else "dead",
                     f"{used:g}/{total:g}", str(n["Workers"]), str(n["TasksRunning"]),
                     str(n.get("TasksQueued", 0)), str(n["TasksFinished"])])
        below.append(_node_details(n))
    table_lines = table(headers, rows, (), WIDTH - 2)
    if max(map(len, table_lines)) > WIDTH - 2:  # (long addresses: each below its node)
        below = [f"address {r.pop(1)}" + (f"; {d}" if d else "") for r, d in zip(rows, below)]
        del headers[1]
        table_lines = table(headers, rows, (), WIDTH - 2)
    lines.append("  " + table_lines[0])
    for line, details in zip(table_lines[1:], below):
        lines.append("  " + line)
        if details:
            lines += textwrap.wrap(details, WIDTH, initial_indent="    ",
                                   subsequent_indent="      ")
    if dead:
        lines.append(f"  (and {dead} dead node{'s' if dead != 1 else ''}: --all lists them)")
    t = st["tasks"]
    text = [f"tasks: {t['running']} running, {t['queued']} queued, {t['waiting_for_deps']} "
            f"waiting for inputs, {t['finished']} finished ({t['failed']} failed)",
            f"objects: {st['objects']}   drivers connected: {st['drivers']}"]
    actors = st.get("actors") or {}
    if any(actors.values()):
        text.append("actors: " + ", ".join(f"{n} {state}" for state, n in actors.items() if n))
    tr = st.get("transport") or {}
    if tr:
        dropped = st.get("dropped") or {}
        line = (f"security: encryption {'on' if tr.get('encrypted') else 'OFF'}, secret "
                f"{tr.get('secret')}; refused connections: {tr.get('refused_connections', 0)}; "
                f"malformed messages: {tr.get('malformed_messages', 0)}; "
                f"dropped messages: {sum(dropped.values())}")
        top = sorted(dropped.items(), key=lambda kv: -kv[1])[:3]
        if top:
            line += " (" + ", ".join(f"{n} {why}" for why, n in top) + ")"
        text.append(line)
    lag = st.get("loop_lag") or {}
    if lag.get("messages"):
        text.append(f"head loop lag: p50 {lag['p50_ms']:g} ms, p99 {lag['p99_ms']:g} ms, max "
                    f"{lag['max_ms']:g} ms (how long work waited to be handled, over "
                    f"{lag['messages']:,} turns)")
    for line in text:
        lines += textwrap.wrap(line, WIDTH, subsequent_indent="  ")
    return lines


def _node_details(n: dict) -> str:
    """A node's actors, object store and transfers, from its latest heartbeat."""
    parts = []
    if n.get("Actors"):
        parts.append(f"{n['Actors']} actor{'s' if n['Actors'] != 1 else ''}")
    store = (n.get("ObjectStore") or {}) if n["Alive"] else {}  # a dead one's is stale
    if "store_capacity" in store:
        parts.append(f"store {_size(store['store_used_bytes'])}/{_size(store['store_capacity'])}"
                     f" in {store.get('store_num_objects', 0)} objects, "
                     f"{_size(store.get('store_disk_bytes', 0))} spilled")
        parts.append(f"net {_size(store.get('store_transfer_bytes_sent', 0))} sent/"
                     f"{_size(store.get('store_transfer_bytes_received', 0))} received")
    return "; ".join(parts)


# ---------------------------------------------------------------------- parsers


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (_Fail, ValueError) as exc:
            print(f"taskmesh: error: {exc}", file=sys.stderr)
            return 1

    return run


def _common(p: argparse.ArgumentParser, options: Callable[[argparse.ArgumentParser], None],
            formats: bool = True) -> None:
    p.add_argument("--address", help="HOST:PORT of the head (default: the one on this machine)")
    if formats:
        p.add_argument("--format", choices=("table", "json"), default="table",
                       help="a table (default) or JSON with every field and full ids")
    options(p)


def add_parsers(sub: Any, options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``status``, ``list``, ``summary`` and ``get`` to the ``taskmesh`` command
    (``options`` adds the secret's options)."""
    s = sub.add_parser("status", help="show nodes, CPUs and task counts")
    _common(s, options, formats=False)
    s.add_argument("--all", action="store_true", help="also list nodes that died or left")
    s.add_argument("--json", action="store_true", help="the head's status as JSON")
    s.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="show it again every SECONDS (default 2) until Ctrl-C")
    s.set_defaults(fn=_guarded(cmd_status))
    ls = sub.add_parser("list", help="list nodes, tasks, actors, objects or jobs (Ray's state API)")
    ls.add_argument("kind", choices=("nodes", "tasks", "actors", "objects", "jobs"))
    ls.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="keep rows whose KEY is (KEY!=VALUE: is not) VALUE, e.g. state=FAILED; "
                         "repeat for more")
    ls.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    ls.add_argument("--detail", action="store_true", help="more fields (times, error messages)")
    _common(ls, options)
    ls.set_defaults(fn=_guarded(cmd_list))
    sm = sub.add_parser("summary", help="tasks by function and state")
    sm.add_argument("kind", choices=("tasks",))
    _common(sm, options)
    sm.set_defaults(fn=_guarded(cmd_summary))
    g = sub.add_parser("get", help="one task or actor in detail (a failed task's traceback)")
    g.add_argument("kind", choices=("task", "actor"))
    g.add_argument("id", help="its id, or a unique start of it (at least 4 characters)")
    _common(g, options)
    g.set_defaults(fn=_guarded(cmd_get))
