"""How a process that runs tasks (a worker) hooks into its client core: one interface object.

    CoreClient ──on_message(msg)──▶ messages that are not the client's (Execute, Help, Revoke, Exit)
               ──block(waiting) / unblock()──▶ a get()/wait() starts and ends waiting
               ──wait_step()──▶ each step of such a wait (run Help tasks there)
               ──holding_values()──▶ may a Release go now? (not while held results hold refs)
               ──store_closed()──▶ the node's object store is gone

A driver has none (``CoreClient(hooks=None)``). The worker passes one (``_worker/main.py``) at
construction; the core never learns more about the worker than these five calls. The methods
here are what a hook that does nothing does; a worker overrides all of them.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("taskmesh.client")


class ClientHooks:
    """The calls a CoreClient makes into the process that runs tasks. Called from whichever
    thread is in the client: the I/O leader (``on_message``, ``holding_values``), a thread
    that waits (``block``, ``unblock``, ``wait_step``), or the store's reader
    (``store_closed``)."""

    __slots__ = ()

    def on_message(self, msg: Any) -> None:
        """A message from the head that is not for the client itself."""
        log.warning("ignored unexpected %s from the head", type(msg).__name__)

    def block(self, waiting: list) -> None:
        """A get()/wait() is about to wait for ``waiting`` (object ids): a worker lends its
        CPU to the head while it waits."""

    def unblock(self) -> None:
        """The wait that ``block`` announced is over."""

    def wait_step(self) -> bool:
        """Called on every step of a blocking wait; True if it ran something (the wait then
        looks again before it sleeps)."""
        return False

    def holding_values(self) -> bool:
        """True while values not sent yet may hold refs (a worker's held-back results): no
        Release may overtake them, or an object they keep alive could be freed first."""
        return False

    def store_closed(self) -> None:
        """The node's object store closed the connection (the node agent is gone)."""
