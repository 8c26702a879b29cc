"""Outgoing messages of one scheduling round, batched per peer and message type.

Adding an item to a batchable message type (Execute, ObjectValues, ...) appends it to that
peer's open batch when the batch is the peer's latest entry, so per-peer order is kept while
a busy round still sends one message per peer per type.
"""

from __future__ import annotations

from typing import Any

from .commands import Send

_new_tuple = tuple.__new__  # (a NamedTuple's own __new__ is a Python call: this is C)


class Outbox:
    __slots__ = ("by_peer",)

    def __init__(self) -> None:
        self.by_peer: dict[bytes, list] = {}

    def add(self, peer: bytes, msg_cls: type, item: Any) -> None:
        """Queue ``item`` into a ``msg_cls(items)`` batch for ``peer``."""
        entries = self.by_peer.get(peer)
        if entries is None:
            self.by_peer[peer] = [(msg_cls, [item])]
        elif entries[-1][0] is msg_cls:
            entries[-1][1].append(item)
        else:
            entries.append((msg_cls, [item]))

    def send(self, peer: bytes, msg: Any) -> None:
        """Queue a complete message for ``peer``."""
        entries = self.by_peer.get(peer)
        if entries is None:
            self.by_peer[peer] = [(None, msg)]
        else:
            entries.append((None, msg))

    def drain_into(self, commands: list) -> None:
        """Append a ``Send`` per message to ``commands``, in order, and empty the outbox."""
        by_peer, self.by_peer = self.by_peer, {}
        append = commands.append
        for peer, entries in by_peer.items():
            for cls, payload in entries:
                append(_new_tuple(Send, (peer, payload if cls is None else cls(payload))))

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_peer.values())
