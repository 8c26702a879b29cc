"""The one per-process taskmesh context: the client core that ``init()`` (or a worker) created.

This is the only module-level state in taskmesh. It is empty until ``init()`` runs in a driver,
or until a worker process starts; nothing is created at import time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client.core import CoreClient
    from ._secret import Security


class _ProcessContext:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.core: CoreClient | None = None
        self.cluster: Any = None  # the embedded cluster this driver started, if any
        #: the one-off secrets of the test clusters this process started
        #: (``cluster_utils.Cluster``), by head port; ``init(address=...)`` looks them up
        self.test_clusters: dict[int, Security] = {}
        self.node_id: str = ""
        self.worker_id: str = ""
        self.current_task_id: bytes | None = None
        self.current_task_name: str = ""
        self.current_job: bytes = b""  # the driver whose job the running task is part of


CTX = _ProcessContext()


def current_core() -> "CoreClient":
    core = CTX.core
    if core is None:
        raise RuntimeError(
            "taskmesh is not initialized in this process: call taskmesh.init() first "
            "(with no arguments it starts a local cluster)")
    return core
