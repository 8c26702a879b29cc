"""``taskmesh logs`` through the head: a query goes to the nodes that hold the files, their
answers come back as one reply.

    client ──LogRequest(rid, node, query)──▶ LogRelay ──ReadLogs(id, query)──▶ each node agent
                                                     └─ReadLogs──▶ HEAD_SELF (the head's shell
                                                                   answers for its own files)
    client ◀──InfoReply(rid, {"replies", "missing"})── once all answered, or after ANSWER_S

The relay never reads a file and never waits: it forwards, collects, and gives up on a node
that does not answer in time (``missing`` says which and why), so a lost or slow node never
hangs a client. At most ``MAX_PENDING`` queries are in flight; more are refused at once.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from .. import _protocol as P
from .context import Context

if TYPE_CHECKING:
    from .membership import Membership

#: the peer name under which the head's shell answers for the head's own log directory
HEAD_SELF = b"\x00head"
#: a node that has not answered a log query by then is reported missing
ANSWER_S = 5.0
MAX_PENDING = 256


class _Pending:
    __slots__ = ("peer", "request_id", "waiting", "replies", "deadline")

    def __init__(self, peer: bytes, request_id: int, waiting: set[str], deadline: float) -> None:
        self.peer = peer
        self.request_id = request_id
        self.waiting = waiting  # node ids ("head" for the head) not answered yet
        self.replies: dict[str, dict] = {}
        self.deadline = deadline


class LogRelay:
    """Log queries in flight between clients and the nodes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.members: Membership
        self.pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)

    def on_request(self, peer: bytes, msg: P.LogRequest) -> None:
        nodes = self.members.nodes
        alive = {n.node_id: n for n in nodes.values() if n.alive}
        if msg.node_id == "":
            targets = ["head", *sorted(alive)]
        elif msg.node_id == "head" or msg.node_id in alive:
            targets = [msg.node_id]
        else:
            state = "dead" if msg.node_id in nodes else "unknown"
            self._reply(peer, msg.request_id, {}, {msg.node_id: f"no live node {msg.node_id} "
                        f"({state}); live nodes: {', '.join(sorted(alive)) or 'none'}"})
            return
        if len(self.pending) >= MAX_PENDING:
            self._reply(peer, msg.request_id, {}, {t: "the head has too many log queries in "
                                                   "flight; try again" for t in targets})
            return
        rid = next(self._ids)
        self.pending[rid] = _Pending(peer, msg.request_id, set(targets), self.ctx.now + ANSWER_S)
        for t in targets:
            to = HEAD_SELF if t == "head" else alive[t].peer
            self.ctx.out.send(to, P.ReadLogs(rid, msg.query))

    def on_read(self, peer: bytes, msg: P.LogsRead) -> None:
        """A node's answer (``peer`` HEAD_SELF: the head's own)."""
        if peer == HEAD_SELF:
            node_id = "head"
        else:
            node = self.members.node_by_peer.get(peer)
            if node is None:
                return
            node_id = node.node_id
        p = self.pending.get(msg.request_id)
        if p is None or node_id not in p.waiting:
            return  # answered late (reported missing already) or never asked
        p.waiting.discard(node_id)
        p.replies[node_id] = msg.reply
        if not p.waiting:
            del self.pending[msg.request_id]
            self._reply(p.peer, p.request_id, p.replies, {})

    def tick(self, now: float) -> None:
        """Answer the queries whose nodes ran out of time, with what came."""
        for rid in [rid for rid, p in self.pending.items() if now >= p.deadline]:
            p = self.pending.pop(rid)
            self._reply(p.peer, p.request_id, p.replies,
                        {n: f"did not answer within {ANSWER_S:g} s" for n in sorted(p.waiting)})

    def _reply(self, peer: bytes, request_id: int, replies: dict, missing: dict) -> None:
        self.ctx.out.send(peer, P.InfoReply(request_id, {"replies": replies, "missing": missing}))

    def check_invariants(self) -> None:
        for rid, p in self.pending.items():
            if not p.waiting:
                raise AssertionError(f"log query {rid} has every answer but was not replied to")
