"""What a node's workers print: read from their stdout/stderr pipes, kept in rotated log files,
and batched to the head, which hands each line to the driver of its job.

    worker fd 1/2 ──pipe──▶ NodeOutput.read(fd) ──raw bytes──▶ worker-<id>-<pid>.out / .err
                                 │ StreamParser: lines, and whose they are (context markers)
                                 ▼
                            OutputBatcher ──take() every FLUSH_S──▶ WorkerOutput ──▶ head

A worker writes a *context marker* line (``MARK``, then job, task, actor and label, tab
separated) into a stream before the first text a new task writes there (``_worker/output.py``
does, lazily: a task that prints nothing costs nothing). The parser takes the markers out of
what it forwards and attributes the lines after one to that job; the files keep them, so
``taskmesh logs --task ID`` can find a task's lines. Text written without a marker (from C
code, a subprocess, the worker's own log) belongs to the context marked last.

Bounds: a line longer than ``MAX_LINE`` is cut (with a note saying how much); the lines
forwarded per node are limited to ``rate`` bytes a second (a token bucket): beyond it they are
counted and dropped from forwarding (the files still have them) and the driver is told how
many. A worker that writes faster than the agent reads is slowed by its full pipe. The agent
reads a pipe, then leaves it for 50 ms (each pipe holds 1 MiB meanwhile): a worker printing
100,000 short lines a second wakes it 20 times a second, not 100,000.

``StreamParser`` and ``OutputBatcher`` decide; ``NodeOutput`` is the I/O part the agent calls.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import logging
import os
import shutil
import time

from .._output_marks import MARK, NO_CONTEXT, Context, parse_marker

log = logging.getLogger("taskmesh.node")

#: a longer line is cut, with a note (the log file keeps it whole)
MAX_LINE = 16 * 1024
#: how often the lines read are sent to the head (at most: nothing is sent when there is none)
FLUSH_S = 0.1
#: one WorkerOutput carries about this much text at most (more waits for the next)
MAX_BATCH_BYTES = 1 << 20
STDOUT, STDERR = 1, 2
#: each output pipe is enlarged to this (Linux: F_SETPIPE_SZ; 1 MiB is the usual limit)
PIPE_BYTES = 1 << 20
PIPE_SIZE_SET = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_ONE_MORE = (1).__add__  # a line's cost: its length and its line end
_MARK_BYTES = MARK.encode()
_MARK_START = _MARK_BYTES[:1]


class StreamParser:
    """One worker stream (stdout or stderr): bytes in, ``(context, lines)`` runs out."""

    __slots__ = ("context", "_partial", "_skipping")

    def __init__(self) -> None:
        self.context = NO_CONTEXT
        self._partial = b""
        self._skipping = False  # in the rest of a line too long to wait for: dropped

    def feed(self, data: bytes) -> list[tuple[Context, list[str]]]:
        """Split what was read into lines; markers change the context of the lines after
        them. An unfinished last line waits for the rest (``end`` takes it), unless it is
        already longer than ``MAX_LINE``: then its start is shown, cut, and the rest dropped.
        The chunk is decoded and split in one step each (C speed): a chunk without a marker,
        the common case, costs no Python-level step per line."""
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return []
            data = data[nl + 1:]  # (the end of the line cut before)
            self._skipping = False
        elif self._partial:
            data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial, runs = data, []
        else:
            self._partial = data[end + 1:]
            runs = self._runs(data[:end].decode("utf-8", "replace"))
        if len(self._partial) > MAX_LINE:
            cut = _cut(self._partial.decode("utf-8", "replace"))
            if runs and runs[-1][0] is self.context:
                runs[-1][1].append(cut)
            else:
                runs.append((self.context, [cut]))
            self._partial, self._skipping = b"", True
        return runs

    @property
    def unfinished(self) -> int:
        """Bytes of the line it waits for the rest of."""
        return len(self._partial)

    def plain(self, data: bytes) -> bool:
        """Whether ``data`` can change no context: it holds no marker, and the unfinished
        line before it is not the start of one."""
        if _MARK_START in data and _MARK_BYTES in data:  # (the first: a memchr)
            return False
        partial = self._partial[:len(_MARK_BYTES)]
        return not partial or not _MARK_BYTES.startswith(partial)

    def skip(self, data: bytes) -> int:
        """Pass over ``data`` (``plain``: no marker in it) as ``feed`` would, but only count
        the lines it completes, at C speed, none decoded or split: for lines nobody is to
        be shown (the files have them). Returns that count."""
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return 0
            data = data[nl + 1:]
            self._skipping = False
        lines = data.count(b"\n")
        if lines:
            self._partial = data[data.rfind(b"\n") + 1:]
        else:
            self._partial += data
        if len(self._partial) > MAX_LINE:  # (cut, as feed cuts it: a line)
            self._partial, self._skipping = b"", True
            lines += 1
        return lines

    def end(self) -> list[tuple[Context, list[str]]]:
        """The stream closed: its unfinished last line, if any."""
        rest, self._partial = self._partial, b""
        return self._runs(rest.decode("utf-8", "replace")) if rest else []

    def _runs(self, text: str) -> list[tuple[Context, list[str]]]:
        """The lines of ``text`` (complete lines, without the last line end) in runs of one
        context each."""
        lines = text.split("\n")
        if MARK not in text:
            return [(self.context, _clean(text, lines))]
        out: list[tuple[Context, list[str]]] = []
        current: list[str] = []
        for line in lines:
            if line.startswith(MARK):
                ctx = parse_marker(line)
                if ctx is not None:
                    if current:
                        out.append((self.context, current))
                        current = []
                    self.context = ctx
                    continue
            current.append(_cut(line) if len(line) > MAX_LINE else line.rstrip("\r"))
        if current:
            out.append((self.context, current))
        return out


def _clean(text: str, lines: list[str]) -> list[str]:
    """Lines without a trailing carriage return, those too long cut (steps per line only
    when the text has such a line)."""
    if "\r" in text:
        lines = [line.rstrip("\r") for line in lines]
    if len(text) > MAX_LINE and max(map(len, lines)) > MAX_LINE:
        lines = [_cut(line) if len(line) > MAX_LINE else line for line in lines]
    return lines


def _cut(line: str) -> str:
    return line[:MAX_LINE] + f" [line cut at {MAX_LINE} characters: the worker's log file has it whole]"


class OutputBatcher:
    """Lines waiting to go to the head, in arrival order, within a rate budget."""

    __slots__ = ("rate", "burst", "entries", "size", "_tokens", "_at", "_dropped", "_first")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = float(rate)  # bytes a second forwarded; 0: nothing is forwarded
        self.burst = max(self.rate * 2, 64 * 1024.0) if rate > 0 else 0.0
        self.entries: list[list] = []  # [job, label, pid, stream, lines]
        self.size = 0
        self._tokens = self.burst
        self._at = now
        #: lines not forwarded for the budget, by (job, stream) (told once the budget allows)
        self._dropped: dict[tuple[bytes, int], int] = {}
        self._first: float | None = None  # when the oldest waiting entry came

    def add(self, ctx: Context, pid: int, stream: int, lines: list[str], now: float) -> None:
        """Queue the lines of one worker stream (lines with no job go to the files only)."""
        if not ctx.job or not lines:
            return
        self._refill(now)
        size = sum(map(len, lines))
        cost = size + len(lines)  # (a line end each)
        if cost > self._tokens:  # over budget: keep the lines that fit, count the rest
            costs = itertools.accumulate(map(_ONE_MORE, map(len, lines)))  # (C speed)
            fit = bisect.bisect_right(list(costs), self._tokens)
            key = (ctx.job, stream)
            self._dropped[key] = self._dropped.get(key, 0) + len(lines) - fit
            if not fit:
                return
            lines = lines[:fit]
            size = sum(map(len, lines))
            cost = size + fit
        self._tokens -= cost
        last = self.entries[-1] if self.entries else None
        if (last is not None and last[0] == ctx.job and last[1] == ctx.label and last[2] == pid
                and last[3] == stream):
            last[4].extend(lines)
        else:
            self.entries.append([ctx.job, ctx.label, pid, stream, list(lines)])
        self.size += size
        if self._first is None:
            self._first = now

    def room(self, now: float) -> float:
        """Bytes of lines it may take now within its budget."""
        self._refill(now)
        return self._tokens

    def drop(self, ctx: Context, stream: int, lines: int) -> None:
        """Count ``lines`` of one worker stream as not forwarded (over the budget)."""
        if ctx.job and lines:
            key = (ctx.job, stream)
            self._dropped[key] = self._dropped.get(key, 0) + lines

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def due(self, now: float) -> float | None:
        """When the waiting lines should go (None: nothing waits)."""
        if self._dropped and self._first is None:
            return self._at + FLUSH_S
        return None if self._first is None else self._first + FLUSH_S

    def take(self, now: float, force: bool = False) -> list[list] | None:
        """The entries to send now (with a note per job of lines dropped), or None if nothing
        is due yet."""
        when = self.due(now)
        if when is None or (now < when and not force and self.size < MAX_BATCH_BYTES):
            return None
        out, self.entries, self.size, self._first = self.entries, [], 0, None
        if self._dropped:
            self._refill(now)
            for (job, stream), n in self._dropped.items():
                out.append([job, "taskmesh", 0, STDERR, [
                    f"{n} line{'s' if n != 1 else ''} of output not shown here: over the "
                    f"node's forwarding limit of {self.rate / 1024:.0f} KiB/s (`taskmesh logs` "
                    "shows the worker's log file, which has them)"]])
            self._dropped.clear()
        return out


class RotatingFile:
    """A file that bytes are appended to, renamed to ``.1`` (``.2``, ...) once it holds
    ``max_bytes``; ``backups`` old ones are kept. (logging's RotatingFileHandler rotates
    records, formatted and encoded one by one; this rotates raw chunks as they were read.)"""

    __slots__ = ("path", "max_bytes", "backups", "_f", "_size")

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._size = self._f.tell()

    def write(self, data: bytes) -> None:
        if self.max_bytes > 0 and self._size + len(data) > self.max_bytes and self._size:
            self._rotate()
        self._f.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._f = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._f.close()


#: log directories of past nodes kept on a machine (beyond it, the oldest that are older than
#: KEEP_AGE_S go when a node starts)
KEEP_NODE_LOGS = 50
KEEP_AGE_S = 24 * 3600.0


def prune_old_logs(parent: str, keep: int = KEEP_NODE_LOGS, min_age_s: float = KEEP_AGE_S,
                   now: float | None = None) -> list[str]:
    """Remove the log directories of old nodes under ``parent`` (``<log_dir>``): all but the
    newest ``keep``, and only those untouched for ``min_age_s``. Returns the ones removed."""
    now = time.time() if now is None else now
    try:
        entries = [e for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    dated = []
    for e in entries:
        try:
            dated.append((e.stat(follow_symlinks=False).st_mtime, e.path))
        except OSError:
            continue
    dated.sort(reverse=True)
    removed = []
    for mtime, path in dated[keep:]:
        if now - mtime >= min_age_s:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class _Pipe:
    __slots__ = ("fd", "pid", "stream", "parser", "file")

    def __init__(self, fd: int, pid: int, stream: int, file: RotatingFile | None) -> None:
        self.fd = fd
        self.pid = pid
        self.stream = stream
        self.parser = StreamParser()
        self.file = file


class NodeOutput:
    """The agent's side of its workers' output: their pipes, files and the batch to send."""

    def __init__(self, log_dir: str, rotate_bytes: int, backups: int, rate: float,
                 now: float) -> None:
        self.log_dir = log_dir
        self.rotate_bytes = rotate_bytes
        self.backups = backups
        self.batcher = OutputBatcher(rate, now)
        self.pipes: dict[int, _Pipe] = {}  # read end -> its worker stream
        self._dir_ok: bool | None = None

    def _open(self, worker_id: str, pid: int, stream: int) -> RotatingFile | None:
        if self._dir_ok is None:
            try:
                os.makedirs(self.log_dir, exist_ok=True)
                self._dir_ok = True
                prune_old_logs(os.path.dirname(self.log_dir))
            except OSError as exc:
                log.warning("cannot create the log directory %s (%s): worker output is only "
                            "forwarded to drivers", self.log_dir, exc)
                self._dir_ok = False
        if not self._dir_ok:
            return None
        ext = "out" if stream == STDOUT else "err"
        path = os.path.join(self.log_dir, f"worker-{worker_id}-{pid}.{ext}")
        try:
            return RotatingFile(path, self.rotate_bytes, self.backups)
        except OSError as exc:
            log.warning("cannot write %s (%s)", path, exc)
            return None

    def attach(self, worker_id: str, pid: int, out_fd: int, err_fd: int) -> None:
        """Start reading a new worker's stdout and stderr (the read ends, non-blocking)."""
        for fd, stream in ((out_fd, STDOUT), (err_fd, STDERR)):
            os.set_blocking(fd, False)
            try:  # room for what a busy worker writes while the agent lets the pipe rest
                fcntl.fcntl(fd, PIPE_SIZE_SET, PIPE_BYTES)
            except OSError:
                pass  # (the system's limit is lower: the worker waits on a full pipe sooner)
            self.pipes[fd] = _Pipe(fd, pid, stream, self._open(worker_id, pid, stream))

    def read(self, fd: int, now: float) -> bool:
        """Read what the pipe holds (up to 1 MiB a call: one busy worker does not starve
        the rest of the loop); return False once it is closed (the caller unregisters it,
        then calls ``close``)."""
        return self.drain(fd, now) is not None

    def drain(self, fd: int, now: float) -> int | None:
        """``read``, returning the bytes read (0: the pipe was empty), or None once it is
        closed."""
        p = self.pipes[fd]
        got = 0
        for _ in range(16):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return got
            except OSError:
                data = b""
            if not data:
                self._take(p, p.parser.end(), now)
                return None
            got += len(data)
            if p.file is not None:
                try:
                    p.file.write(data)
                except OSError as exc:
                    log.warning("cannot write %s (%s): no more output is kept there",
                                p.file.path, exc)
                    p.file.close()
                    p.file = None
            self._parse(p, data, now)
            if len(data) < 65536:
                return got
        return got

    def _parse(self, p: _Pipe, data: bytes, now: float) -> None:
        """Lines for the batcher: as many as its budget takes now, decoded and split; the
        rest of a chunk without markers only counted (a flood past the budget costs a
        count per chunk, not a string per line); output of no job's task, nothing."""
        parser = p.parser
        room = self.batcher.room(now) if parser.context.job else -1.0
        if room >= len(data) or not parser.plain(data):
            self._take(p, parser.feed(data), now)
            return
        cut = 0
        if room > 0:  # up to the first line end past the budget (add() cuts what is over)
            cut = data.find(b"\n", max(0, int(room) - parser.unfinished)) + 1
            if not cut:  # (every line it ends fits)
                self._take(p, parser.feed(data), now)
                return
            self._take(p, parser.feed(data[:cut]), now)
        self.batcher.drop(parser.context, p.stream, parser.skip(data[cut:]))

    def _take(self, p: _Pipe, runs: list, now: float) -> None:
        add = self.batcher.add
        for ctx, lines in runs:
            add(ctx, p.pid, p.stream, lines, now)

    def close(self, fd: int) -> None:
        p = self.pipes.pop(fd, None)
        if p is None:
            return
        os.close(fd)
        if p.file is not None:
            p.file.close()

    def close_all(self, now: float) -> None:
        """Read what each pipe still holds (without waiting), then close them all."""
        for fd in list(self.pipes):
            self.read(fd, now)
            self.close(fd)
