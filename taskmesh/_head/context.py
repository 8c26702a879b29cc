"""What every part of the head shares: the configuration, the clock, the outbox, the event
stream, the log and the chores.

    HeadState ──builds──▶ Context ◀──reads── Membership, ObjectDirectory, TaskTable,
                                             Scheduler, ActorTable

Each part owns its own records; the context holds only what belongs to none of them. The
facade (``state.py``) sets ``now`` before it hands a part a message or a tick, and collects
the outbox and the notes (log lines) into commands at the end of the round.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

from .. import _protocol as P
from .._ratelimit import RateLimitedLog
from ..config import Config
from ._outbox import Outbox
from .commands import Command, CommandLog
from .events import EventLog

#: an error value the head makes itself (a system error: kind and message)
ERR = P.SerializedObject.system_error

#: a chore (see Context.chores) does this many steps between looks at the clock; smaller
#: jobs are done at once
CHORE_SLICE = 2000


class Context:
    __slots__ = ("config", "now", "out", "events", "notes", "log", "dropped", "chores")

    def __init__(self, config: Config, now: float, logger: str) -> None:
        self.config = config
        self.now = now
        self.out = Outbox()
        #: every state change a user could ask about (events.py): what metrics, the dashboard
        #: and the journal read
        self.events = EventLog(config.event_ring)
        #: log lines and internal errors of this round, returned with its messages
        self.notes: list[Command] = []
        self.log = CommandLog(logger, self.notes)
        #: messages (or parts of them) dropped because they make no sense here: from a peer
        #: that never said Hello, of the wrong kind, about unknown tasks or workers, ...
        #: Counted by reason; logged rate-limited (a peer can send them at will)
        self.dropped = RateLimitedLog(self.log.getChild("dropped"),  # type: ignore[arg-type]
                                      clock=lambda: self.now)
        #: long scans (the objects of a driver that left, ...) done a slice at a time between
        #: messages: generators that yield every CHORE_SLICE steps (HeadState.run_chores)
        self.chores: deque[Iterator[None]] = deque()

    def reject(self, peer: bytes, message: str, reason: str, request_id: int = 0,
               object_ids: Iterable[bytes] = ()) -> None:
        """Tell a peer that one of its messages was refused, and why (never silence: a caller
        waiting for an answer, or for the results of a refused task, must not hang)."""
        self.out.send(peer, P.Rejected(message, request_id, list(object_ids), reason))

    def chore(self, job: Iterator[None], size: int) -> None:
        """Run a scan of ``size`` steps now if it is small, else as a chore in slices."""
        if size <= CHORE_SLICE:
            for _ in job:
                pass
        else:
            self.chores.append(job)
