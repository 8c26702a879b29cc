"""One fuzz campaign: frames for ``decode``, then head worlds, then node worlds, until each has
its share of the messages; crashes are collected (a fresh world follows each), not raised.

The share: 35% raw frames, 45% head messages, 20% node messages (store requests and head
messages to the agent). Every message is counted by op; drops by reason, as the head, store and
agent counted them; log lines by logger, and the lines that carried a traceback (an error a
guard swallowed: a crash too). The rate limit is checked as well: in each world, the drop log
may write at most one line per kind and interval.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .frames import FrameFuzzer
from .head import Crash, HeadWorld
from .node import NodeWorld

HEAD_WORLD_MESSAGES = 1500  # then a fresh world: small states, set-up paths visited often
NODE_WORLD_MESSAGES = 1000
FRAMES_PER_ROUND = 5000


@dataclass
class Report:
    seed: int
    messages: int = 0  # handed to decode, and (when it decoded) to a handler
    by_op: Counter = field(default_factory=Counter)  # handled messages by type, per side
    dropped: Counter = field(default_factory=Counter)  # "<side>: <reason>" -> count
    log_lines: Counter = field(default_factory=Counter)  # logger -> lines
    crashes: list[str] = field(default_factory=list)
    worlds: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        lines = [f"taskmesh fuzz: seed {self.seed}, {self.messages:,} messages in {self.seconds:.1f} s "
                 f"({self.worlds} worlds), {len(self.crashes)} crash(es)", "", "messages by op:"]
        lines += [f"  {n:>10,}  {op}" for op, n in sorted(self.by_op.items(), key=lambda kv: -kv[1])]
        lines += ["", "dropped by reason:"]
        lines += [f"  {n:>10,}  {why}" for why, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])]
        lines += ["", "log lines written (rate-limited drops included):"]
        lines += [f"  {n:>10,}  {name}" for name, n in sorted(self.log_lines.items(), key=lambda kv: -kv[1])]
        for text in self.crashes[:5]:
            lines += ["", "CRASH " + text]
        return "\n".join(lines)


class _Recorder(logging.Handler):
    """Counts log lines by logger; keeps the ones with a traceback (a swallowed error)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: Counter = Counter()
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[record.name] += 1
        if record.exc_info:
            self.tracebacks.append(f"{record.name}: {record.getMessage()}\n"
                                   f"{logging.Formatter().formatException(record.exc_info)}")


@contextlib.contextmanager
def _captured_logs() -> Iterator[_Recorder]:
    logger = logging.getLogger("taskmesh")
    saved = logger.level, logger.propagate
    recorder = _Recorder()
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # thousands of expected warnings: counted, not printed
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run(messages: int, seed: int, progress: Callable[[Report], None] | None = None) -> Report:
    """Fuzz with about ``messages`` messages in all (see the module docstring)."""
    report = Report(seed)
    start = time.perf_counter()
    shares = {"frames": messages * 35 // 100, "head": messages * 45 // 100}
    shares["node"] = messages - shares["frames"] - shares["head"]
    with _captured_logs() as recorder:
        done = Counter()
        round_ = 0
        while any(done[k] < shares[k] for k in shares):
            if done["frames"] < shares["frames"]:
                counts: Counter = Counter()
                fuzzer = FrameFuzzer(seed * 1_000_003 + round_, counts)
                _guard(report, lambda: fuzzer.run(min(FRAMES_PER_ROUND, shares["frames"] - done["frames"])))
                n = sum(counts.values())
                done["frames"] += max(n, 1)
                report.by_op.update({f"decode: {op}": k for op, k in counts.items()})
            if done["head"] < shares["head"]:
                done["head"] += _head_world(report, recorder, seed, round_,
                                            min(HEAD_WORLD_MESSAGES, shares["head"] - done["head"]))
            if done["node"] < shares["node"]:
                done["node"] += _node_world(report, seed, round_,
                                            min(NODE_WORLD_MESSAGES, shares["node"] - done["node"]))
            round_ += 1
            report.messages = sum(done.values())
            if progress is not None and round_ % 20 == 0:
                report.seconds = time.perf_counter() - start
                progress(report)
        report.log_lines.update(recorder.lines)
        report.crashes += [f"an error was logged with a traceback:\n{t}" for t in recorder.tracebacks]
    report.seconds = time.perf_counter() - start
    return report


def _guard(report: Report, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Crash as crash:
        report.crashes.append(str(crash))


def _run_world(report: Report, make: Any, side: str, seed: int, index: int,
               n: int) -> tuple[Any, Counter]:
    """Build a world and feed it ``n`` inputs; a crash is reported, not raised."""
    counts: Counter = Counter()
    report.worlds += 1
    world = None
    try:
        world = make(seed, index, counts)
        world.run(n)
    except Crash as crash:
        report.crashes.append(str(crash))
    report.by_op.update({f"{side}: {op}": k for op, k in counts.items()})
    return world, counts


def _head_world(report: Report, recorder: _Recorder, seed: int, index: int, n: int) -> int:
    world, counts = _run_world(report, HeadWorld, "head", seed, index, n)
    if world is not None:
        dropped = world.state.dropped
        report.dropped.update({f"head: {why}": k for why, k in dropped.counts.items()})
        # the drop log writes at most one line per kind and interval (plus the first)
        lines = recorder.lines.pop(dropped.logger.name, 0)
        report.log_lines[dropped.logger.name] += lines
        bound = len(dropped.counts) * (2 + world.now / dropped.interval_s)
        if lines > bound:
            report.crashes.append(f"the head's drop log wrote {lines} lines in {world.now:.0f} s "
                                  f"of its clock for {len(dropped.counts)} kinds: not rate-limited "
                                  f"(seed {seed}, world {index})")
    return max(sum(counts.values()), 1)


def _node_world(report: Report, seed: int, index: int, n: int) -> int:
    world, counts = _run_world(report, NodeWorld, "node", seed, index, n)
    if world is not None:
        report.dropped.update({f"store: {why}": k for why, k in world.store.dropped.counts.items()})
        report.dropped.update({f"agent: {why}": k for why, k in world.agent.dropped().items()})
    return max(sum(counts.values()), 1)
