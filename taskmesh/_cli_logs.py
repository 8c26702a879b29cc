"""``taskmesh logs``: the log files of every node of the cluster, fetched from the node that
holds them (through the head: ``LogRequest``, see ``_head/logrelay.py``).

    taskmesh logs                          list every file on every node (and the head's)
    taskmesh logs FILE [--node ID]         show a file (its last --tail lines; -f to follow)
    taskmesh logs --worker PID [--err]     a worker's stdout (stderr)
    taskmesh logs --task ID | --actor ID   the lines one task or actor printed, wherever it ran
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any, Callable

from ._logfiles import DEFAULT_TAIL

#: how often ``-f`` asks for more
FOLLOW_S = 0.5


def add_parser(sub: Any, secret_options: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "logs", help="list the cluster's log files, or show one (workers' output, daemons' logs)",
        description="Without arguments: list the log files of every node and the head. With a "
                    "file name, --worker, --task or --actor: show those lines.")
    p.add_argument("file", nargs="?", help="a file name from the list (e.g. agent.log)")
    p.add_argument("--node", metavar="ID", help="the node that holds the file ('head': the head)")
    p.add_argument("--worker", metavar="PID", type=int, help="the output of the worker with this pid")
    p.add_argument("--err", action="store_true", help="with --worker: its stderr (default stdout)")
    p.add_argument("--task", metavar="ID", help="what the task with this id (or id prefix) printed")
    p.add_argument("--actor", metavar="ID", help="what the actor with this id (or prefix) printed")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    p.add_argument("--tail", metavar="N", type=int, default=DEFAULT_TAIL,
                   help="the last N lines (default %(default)s)")
    p.add_argument("--address", help="HOST:PORT of the head (default: the one on this machine)")
    secret_options(p)
    p.set_defaults(fn=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    from ._cli import _fail
    from ._state_client import connect
    from .errors import TaskmeshError

    if args.tail < 0:
        _fail("--tail must be 0 or more")
    if sum(x is not None for x in (args.file, args.worker, args.task, args.actor)) > 1:
        _fail("give one of FILE, --worker, --task, --actor")
    try:
        core = connect(args.address, args.secret_file or "", args.no_encryption)
    except TaskmeshError as exc:
        _fail(str(exc))
    try:
        ask = _Asker(core, _fail)
        if args.task or args.actor:
            return _find(ask, args)
        if args.file is None and args.worker is None:
            return _list(ask, args.node or "")
        node, name = _locate(ask, args, _fail)
        return _show(ask, node, name, args)
    finally:
        core.close()


class _Asker:
    """One LogRequest and its InfoReply, with clear errors."""

    def __init__(self, core: Any, fail: Callable[[str], Any]) -> None:
        self.core = core
        self.fail = fail

    def __call__(self, node: str, query: dict) -> tuple[dict, dict]:
        from . import _protocol as P
        from .errors import HeadConnectionError

        try:
            data = self.core.request(lambda rid: P.LogRequest(rid, node, query), timeout=15.0)
        except (HeadConnectionError, TimeoutError) as exc:
            self.fail(str(exc))
        if not isinstance(data, dict) or "replies" not in data:
            self.fail(f"the head does not answer log queries ({data!r}): is it an older "
                      "taskmesh version?")
        return data["replies"], data["missing"]


def _warn_missing(missing: dict) -> None:
    for node, why in sorted(missing.items()):
        print(f"taskmesh: node {node}: {why}", file=sys.stderr)


def _list(ask: _Asker, node: str) -> int:
    from ._cli_state import _size

    replies, missing = ask(node, {"op": "list"})
    rows = [("NODE", "FILE", "SIZE", "MODIFIED")]
    for node_id in sorted(replies, key=lambda n: (n != "head", n)):
        reply = replies[node_id]
        if "error" in reply:
            missing[node_id] = reply["error"]
            continue
        for f in reply["files"]:
            when = datetime.fromtimestamp(f["mtime"]).strftime("%Y-%m-%d %H:%M:%S")
            rows.append((node_id, f["file"], _size(f["size"]), when))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    _warn_missing(missing)
    return 0 if not missing else 1


def _locate(ask: _Asker, args: argparse.Namespace, fail: Callable[[str], Any]) -> tuple[str, str]:
    """Which node holds the file (or the worker's), asking every node if --node is not given."""
    replies, missing = ask(args.node or "", {"op": "list"})
    hits = []
    for node_id, reply in replies.items():
        for f in reply.get("files", ()):
            if args.file is not None and f["file"] == args.file:
                hits.append((node_id, f["file"]))
            elif (args.worker is not None and f.get("pid") == args.worker
                  and f.get("stream") == ("err" if args.err else "out") and f["file"].count(".") == 1):
                hits.append((node_id, f["file"]))
    what = args.file if args.file is not None else f"the output of worker pid {args.worker}"
    if not hits:
        if args.node and args.node in missing:
            fail(f"node {args.node}: {missing[args.node]}")
        _warn_missing(missing)
        fail(f"no node has {what}" + ("" if args.node else "; `taskmesh logs` lists the files"))
    if len(hits) > 1:
        fail(f"{len(hits)} nodes have {what}: " + ", ".join(n for n, _ in hits) +
             "; say which with --node")
    return hits[0]


def _show(ask: _Asker, node: str, name: str, args: argparse.Namespace) -> int:
    query: dict = {"op": "read", "file": name, "tail": args.tail}
    while True:
        replies, missing = ask(node, query)
        reply = replies.get(node)
        if reply is None:
            _warn_missing(missing)
            return 1
        if "error" in reply:
            print(f"taskmesh: error: {reply['error']}", file=sys.stderr)
            return 1
        if reply.get("rotated"):
            print(f"taskmesh: ({name} was rotated; reading the new file)", file=sys.stderr)
        for line in reply["lines"]:
            print(line)
        sys.stdout.flush()
        if not args.follow:
            return 0
        if reply["offset"] >= reply["size"]:
            time.sleep(FOLLOW_S)
        query = {"op": "read", "file": name, "offset": reply["offset"]}


def _find(ask: _Asker, args: argparse.Namespace) -> int:
    key, value = ("task", args.task) if args.task else ("actor", args.actor)
    if len(value) == 40:  # an ObjectRef's hex: the task's id and the return's index
        value = value[:32]
    replies, missing = ask(args.node or "", {"op": "find", key: value.lower()})
    shown = 0
    for node_id, reply in sorted(replies.items()):
        if "error" in reply:
            print(f"taskmesh: error: {reply['error']}", file=sys.stderr)
            return 1
        found = reply.get("found", ())
        for f in found:
            if len(found) > 1 or len(replies) > 1:
                print(f"== node {node_id}, {f['file']} (worker pid {f.get('pid')})")
            for line in f["lines"][-args.tail:] if args.tail else ():
                print(line)
            shown += 1
        if reply.get("truncated"):
            print(f"taskmesh: (node {node_id}: more than fits one reply; see the files)",
                  file=sys.stderr)
    _warn_missing(missing)
    if not shown:
        print(f"taskmesh: no output of {key} {value} was found (it printed nothing, or its "
              "files were rotated away)", file=sys.stderr)
        return 1
    return 0

