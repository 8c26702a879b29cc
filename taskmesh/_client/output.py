"""Worker output on the driver: prefixed the way Ray shows it, with repeats folded.

    head ──Output([ip, label, pid, stream, lines], ...)──▶ DriverOutput.feed ──▶ sys.stdout / sys.stderr
                                                          housekeeper ──flush──▶ "[repeated 31x across cluster]"

Each line is shown as ``(label pid=1234, ip=10.0.0.2) text``; stderr lines go to stderr.

Folding (``Deduplicator``, as Ray's log deduplication): the first line of a kind is shown at
once. A line of the same kind (equal once every word that holds a digit is set aside) from
another process within ``window_s`` is held; when the window ends, the last such line is shown
once with ``[repeated Nx across cluster]``. Lines from the process that showed the kind first
are never held. ``TASKMESH_DEDUP_LOGS=0`` turns folding off;
``TASKMESH_DEDUP_LOGS_AGG_WINDOW_S`` sets the window (5 s).
"""

from __future__ import annotations

import itertools
import operator
import os
import re
import sys
import threading
from typing import Any, TextIO

from .._output_marks import BAR
from .progress import BarManager

_DIGIT = re.compile(r"\d")
_stream_of = operator.itemgetter(0)
_BARS = itertools.repeat(BAR)


def _kind(text: str) -> str:
    """The line with every word that holds a digit set aside (``task 3 of 100`` and ``task 7
    of 100`` are of one kind). Linear in the line's length (a regex over words would
    backtrack on a long line without digits)."""
    if _DIGIT.search(text) is None:
        return text
    search = _DIGIT.search
    return " ".join("*" if search(w) else w for w in text.split())


def _no_digit(text: str) -> bool:
    """Whether ``text`` holds no digit (then each of its lines is a kind of its own): ten
    substring searches for ASCII text, faster than the regular expression's scan."""
    if text.isascii():
        return not any(map(text.__contains__, "0123456789"))
    return _DIGIT.search(text) is None


class _Held:
    __slots__ = ("first_source", "until", "count", "last")

    def __init__(self, source: tuple, until: float) -> None:
        self.first_source = source
        self.until = until
        self.count = 0  # lines held (not shown) in this window
        self.last: tuple | None = None  # (stream, prefix, text) of the latest held line


class Deduplicator:
    """Decides which lines to show now and which to fold (sans-IO: times are passed in)."""

    def __init__(self, window_s: float = 5.0, enabled: bool = True) -> None:
        self.window_s = window_s
        self.enabled = enabled
        self._kinds: dict[tuple[int, str], _Held] = {}

    def feed(self, source: tuple, stream: int, prefix: str, lines: list[str],
             now: float) -> list[tuple[int, str]]:
        """The lines of one process (``source``) to show now, as (stream, text)."""
        if not self.enabled:
            return [(stream, f"{prefix} {line}") for line in lines]
        out = []
        kinds = self._kinds
        sorts = lines if _no_digit("".join(lines)) else map(_kind, lines)
        for line, sort in zip(lines, sorts):
            if not line.strip():
                out.append((stream, f"{prefix} {line}"))
                continue
            key = (stream, sort)
            held = kinds.get(key)
            if held is None or now >= held.until:
                if held is not None and held.count:
                    out.append(_repeated(held))
                kinds[key] = _Held(source, now + self.window_s)
                out.append((stream, f"{prefix} {line}"))
            elif source == held.first_source:
                out.append((stream, f"{prefix} {line}"))
            else:
                held.count += 1
                held.last = (stream, prefix, line)
        return out

    def flush(self, now: float, everything: bool = False) -> list[tuple[int, str]]:
        """The folded lines whose window has ended (all of them with ``everything``)."""
        out = []
        kinds = self._kinds
        for key in [k for k, h in kinds.items() if everything or now >= h.until]:
            held = kinds.pop(key)
            if held.count:
                out.append(_repeated(held))
        return out

    def next_due(self) -> float | None:
        """When ``flush`` has something to show next (None: nothing is held)."""
        due = [h.until for h in self._kinds.values() if h.count]
        return min(due) if due else None


def _repeated(held: _Held) -> tuple[int, str]:
    assert held.last is not None
    stream, prefix, line = held.last
    if held.count == 1:  # one more: shown as it is
        return stream, f"{prefix} {line}"
    return stream, f"{prefix} {line} [repeated {held.count}x across cluster]"


def _prefix(label: str, pid: int, ip: str) -> str:
    """``(label pid=1234, ip=10.0.0.2)``; as Ray, without the address of this machine's
    own loopback node (an embedded cluster)."""
    where = [f"pid={pid}"] if pid else []
    if not ip.startswith("127."):
        where.append(f"ip={ip}")
    return f"({label} {', '.join(where)})" if where else f"({label})"


def _env_window() -> float:
    try:
        return float(os.environ.get("TASKMESH_DEDUP_LOGS_AGG_WINDOW_S", "5"))
    except ValueError:
        return 5.0


class DriverOutput:
    """The driver's sink for its tasks' output (fed by the client core, flushed by its
    housekeeper thread while the driver is busy elsewhere)."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        enabled = os.environ.get("TASKMESH_DEDUP_LOGS", "1").strip().lower() not in (
            "0", "false", "no", "off")
        self.dedup = Deduplicator(_env_window(), enabled)
        self._stdout = stdout
        self._stderr = stderr
        self._lock = threading.Lock()
        #: progress bars made in tasks (taskmesh.util.tqdm), drawn on stderr
        self.bars = BarManager(stderr)

    def _streams(self) -> tuple[Any, Any]:
        # looked up at each write: a notebook or a test may swap sys.stdout meanwhile
        return self._stdout or sys.stdout, self._stderr or sys.stderr

    def feed(self, entries: list, now: float) -> None:
        """Show the lines of one Output message."""
        with self._lock:
            shown: list[tuple[int, str]] = []
            for ip, label, pid, stream, lines in entries:
                if any(map(str.startswith, lines, _BARS)):
                    lines = [line for line in lines
                             if not (line.startswith(BAR)
                                     and self.bars.feed((ip, pid), line[len(BAR):], now))]
                prefix = _prefix(label, pid, ip)
                shown.extend(self.dedup.feed((ip, pid), stream, prefix, lines, now))
            self._write(shown)

    def flush(self, now: float, everything: bool = False) -> None:
        """Show the folded lines that are due."""
        with self._lock:
            self._write(self.dedup.flush(now, everything))
            if self.bars.active:
                self.bars.tick(now, everything)

    def _write(self, shown: list[tuple[int, str]]) -> None:
        if not shown:
            return
        out, err = self._streams()
        if self.bars.active:  # printed above the bars, not through them
            for stream, text in shown:
                try:
                    self.bars.write(text, err if stream == 2 else out)
                except (OSError, ValueError):  # closed or broken: nowhere to show it
                    pass
        else:  # one write per run of lines of one stream
            for stream, run in itertools.groupby(shown, key=_stream_of):
                try:
                    (err if stream == 2 else out).write(
                        "".join(text + "\n" for _, text in run))
                except (OSError, ValueError):
                    pass
        for s in (out, err):
            try:
                s.flush()
            except (OSError, ValueError):
                pass
