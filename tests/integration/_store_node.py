"""A node-agent-like process for the transfer tests: one arena, one StoreService listening for
transfers on 127.0.0.1, driven by a poll loop as the agent drives it (no head, no workers).

    TASKMESH_SECRET=<hex> python -m tests.integration._store_node NODE_ID CAPACITY SPILL_DIR \
        CREATE_TIMEOUT_S TRANSFER_TIMEOUT_S [ENCRYPT (1 or 0, default 1)]

The cluster secret comes from $TASKMESH_SECRET (as a node's workers get theirs). It prints one
JSON line, ``{"store": socket name, "transfer": "host:port", "arena": name}``, then answers
JSON-line commands on stdin: ``{"op": "stats"}`` -> ``StoreService.stats()`` plus the ids (hex)
passed to ``on_fetched``/``on_freed``; ``{"op": "delete", "ids": [hex, ...]}`` -> ``{"ok": true}``.
End of stdin (the test ended, however) -> it closes the service and removes its arena.
"""

from __future__ import annotations

import json
import os
import sys
import time

from taskmesh._node.store_service import StoreService
from taskmesh._secret import Security, take_secret_from_env
from taskmesh._store.shm import Arena, arena_name
from taskmesh._transport import Poller, pid_alive
from taskmesh.config import Config


def main() -> int:
    node_id, capacity, spill_dir, create_timeout_s, transfer_timeout_s = sys.argv[1:6]
    encrypt = sys.argv[6:7] != ["0"]
    key = take_secret_from_env()
    if key is None:
        sys.exit("_store_node: no cluster secret in $TASKMESH_SECRET")
    config = Config(spill_dir=spill_dir, store_create_timeout_s=float(create_timeout_s))
    fetched: list[str] = []
    freed: list[str] = []
    arena = Arena.create(arena_name(node_id), int(capacity))
    try:
        service = StoreService.open(node_id, arena, config, pid_alive,
                                    security=Security(key, encrypt), transfer_host="127.0.0.1",
                                    on_fetched=lambda oid, size: fetched.append(oid.hex()),
                                    on_freed=lambda oid: freed.append(oid.hex()),
                                    transfer_timeout_s=float(transfer_timeout_s),
                                    transfer_connect_timeout_s=float(transfer_timeout_s))
        try:
            poller = Poller()
            service.attach(poller)
            stdin = sys.stdin.fileno()
            poller.register(stdin)
            out = sys.stdout
            out.write(json.dumps({"store": service.name, "transfer": service.transfer_address,
                                  "arena": arena.name}) + "\n")
            out.flush()
            pending = b""
            while True:
                now = time.monotonic()
                wake = service.wake_at(now)
                ready = poller.poll(None if wake is None else max(0.0, wake - now) * 1000)
                service.handle(ready, time.monotonic())
                if stdin in ready:
                    data = os.read(stdin, 65536)
                    if not data:
                        return 0
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        cmd = json.loads(line)
                        if cmd["op"] == "stats":
                            answer = {**service.stats(), "fetched": fetched, "freed": freed}
                        else:
                            service.delete([bytes.fromhex(h) for h in cmd["ids"]])
                            answer = {"ok": True}
                        out.write(json.dumps(answer) + "\n")
                        out.flush()
                service.tick(time.monotonic())
        finally:
            service.close()
    finally:
        arena.close()


if __name__ == "__main__":
    sys.exit(main())
