"""One log directory, as ``taskmesh logs`` sees it: list its files, read one (a tail, or from
an offset to follow it), find a task's or an actor's lines by their context markers.

    taskmesh logs ──LogRequest──▶ head ──ReadLogs(query)──▶ node agent: LogDirectory.answer(query)
                  ◀──InfoReply─── head ◀──LogsRead(reply)──┘   (the head answers for its own)

A node agent answers for ``<log_dir>/<node id>/`` (its workers' ``worker-<id>-<pid>.out|.err``
and its own ``agent.log``), the head for its own directory. Only plain file names inside the
directory are read (no paths); every reply is bounded (``MAX_REPLY_BYTES``). Context markers
(``_output_marks.py``) are taken out of what is shown; a find returns the lines between a
task's marker and the next marker of another context.
"""

from __future__ import annotations

import mmap
import os
import re
from typing import Any

from ._output_marks import MARK, OWN, parse_marker

#: the most text one reply carries (a follow asks again from where it stopped)
MAX_REPLY_BYTES = 1 << 20
#: lines of a file shown when neither a tail nor an offset is asked for (as Ray's default)
DEFAULT_TAIL = 1000
_WORKER_FILE = re.compile(r"^worker-(?P<worker>.+)-(?P<pid>\d+)\.(?P<stream>out|err)(\.\d+)?$")
_MARK_B = MARK.encode()
_OWN_B = OWN.encode()


class LogQueryError(ValueError):
    """A query this directory cannot answer (bad file name, unknown operation)."""


class LogDirectory:
    """The files of one node's (or the head's) log directory."""

    def __init__(self, path: str) -> None:
        self.path = path

    def answer(self, query: Any) -> dict:
        """The reply to one query (a dict with ``op``: list, read, find); errors as
        ``{"error": text}``, never an exception."""
        try:
            if not isinstance(query, dict):
                raise LogQueryError("a log query is a map with an 'op'")
            op = query.get("op")
            if op == "list":
                return {"files": self.list()}
            if op == "read":
                return self.read(str(query.get("file", "")), _int(query, "offset"),
                                 _int(query, "tail"), _int(query, "max_bytes"))
            if op == "find":
                return self.find(str(query.get("task", "")), str(query.get("actor", "")),
                                 _int(query, "max_bytes"))
            raise LogQueryError(f"unknown log query {op!r} (list, read or find)")
        except LogQueryError as exc:
            return {"error": str(exc)}
        except OSError as exc:
            return {"error": f"cannot read the log directory {self.path}: {exc}"}

    def list(self) -> list[dict]:
        """Every file: name, size, modification time, and for a worker's output its pid,
        worker id and stream."""
        out = []
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        for e in entries:
            if not e.is_file(follow_symlinks=False):
                continue
            st = e.stat(follow_symlinks=False)
            row: dict[str, Any] = {"file": e.name, "size": st.st_size, "mtime": st.st_mtime}
            m = _WORKER_FILE.match(e.name)
            if m:
                row.update(worker_id=m["worker"], pid=int(m["pid"]), stream=m["stream"])
            out.append(row)
        out.sort(key=lambda r: r["file"])
        return out

    def _path(self, name: str) -> str:
        if not name or name != os.path.basename(name) or name in (".", "..") or "\x00" in name:
            raise LogQueryError(f"not a log file name: {name!r} (a plain name from the list)")
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            raise LogQueryError(f"no log file {name!r} in {self.path}")
        return path

    def read(self, name: str, offset: int | None = None, tail: int | None = None,
             max_bytes: int | None = None) -> dict:
        """A file's text without context markers: from byte ``offset`` (a follow) or its last
        ``tail`` lines (default ``DEFAULT_TAIL``), at most ``max_bytes``. The reply says where
        it ended (``offset``) and the file's ``size``; ``rotated`` if the file is now shorter
        than the offset asked (it was rotated: reading starts again at 0)."""
        path = self._path(name)
        limit = min(max_bytes or MAX_REPLY_BYTES, MAX_REPLY_BYTES)
        rotated = False
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset is not None:
                if offset > size:
                    offset, rotated = 0, True
                f.seek(offset)
                data = f.read(limit)
                end = offset + len(data)
                if len(data) == limit and b"\n" in data:  # stop at a line's end
                    cut = data.rindex(b"\n") + 1
                    data, end = data[:cut], offset + cut
                lines = _split(data)
            else:
                start = max(0, size - limit)
                f.seek(start)
                data = f.read(limit)
                end = start + len(data)
                lines = _split(data)
                if start > 0 and lines:
                    lines = lines[1:]  # (the first may be the end of a line)
                lines = [line for line in lines if not line.startswith(OWN)]
                lines = lines[-(tail if tail is not None else DEFAULT_TAIL):] if tail != 0 else []
                return {"file": name, "size": size, "offset": end, "lines": lines,
                        "rotated": False}
        return {"file": name, "size": size, "offset": end, "rotated": rotated,
                "lines": [line for line in lines if not line.startswith(OWN)]}

    def find(self, task_hex: str, actor_hex: str, max_bytes: int | None = None) -> dict:
        """The lines a task (by id) or an actor (by id) wrote, per worker file, in order. An
        id may be given by a unique prefix of at least 8 hex digits."""
        want_task, want_actor = task_hex.lower(), actor_hex.lower()
        for want in (want_task, want_actor):
            if want and (len(want) < 8 or not re.fullmatch(r"[0-9a-f]+", want)):
                raise LogQueryError(f"not an id: {want!r} (at least 8 hex digits)")
        if bool(want_task) == bool(want_actor):
            raise LogQueryError("find needs a task id or an actor id")
        needle = ("\t" + (want_task or want_actor)).encode()
        limit = min(max_bytes or MAX_REPLY_BYTES, MAX_REPLY_BYTES)
        found = []
        used = 0
        for row in self.list():
            if "pid" not in row or row["size"] == 0:
                continue
            path = os.path.join(self.path, row["file"])
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) < 0:  # at C speed: most files never named it
                    continue
                lines = _lines_of(m, want_task, want_actor)
            if lines:
                text = sum(len(line) + 1 for line in lines)
                if used + text > limit:
                    lines = lines[: max(0, len(lines) - (used + text - limit) // 80)]
                used += text
                found.append({**row, "lines": lines})
            if used >= limit:
                break
        return {"found": found, "truncated": used >= limit}


def _lines_of(m: mmap.mmap, want_task: str, want_actor: str) -> list[str]:
    """The lines written in the contexts that name the task (or the actor)."""
    out: list[str] = []
    inside = False
    for raw in m[:].split(b"\n"):
        if raw.startswith(_MARK_B):
            ctx = parse_marker(raw.decode("utf-8", "replace"))
            if ctx is not None:
                inside = (ctx.task_id.hex().startswith(want_task) if want_task
                          else ctx.actor_id.hex().startswith(want_actor))
                continue
        if inside and raw and not raw.startswith(_OWN_B):
            out.append(raw.decode("utf-8", "replace"))
    return out


def _split(data: bytes) -> list[str]:
    """Lines of ``data`` (split at newlines only: ``str.splitlines`` would also split at the
    record separator that starts a context marker)."""
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _int(query: dict, key: str) -> int | None:
    v = query.get(key)
    if v is None:
        return None
    if type(v) is not int or v < 0:
        raise LogQueryError(f"{key} must be a non-negative integer, got {v!r}")
    return v
