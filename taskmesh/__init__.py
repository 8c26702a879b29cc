"""taskmesh: Ray-style remote functions on a laptop or a lab cluster.

    import taskmesh
    taskmesh.init()                    # a local cluster, or the one `taskmesh start` runs here

    @taskmesh.remote
    def square(x):
        return x * x

    print(taskmesh.get([square.remote(i) for i in range(10)]))
"""

from .actor import ActorClass, ActorHandle, get_actor, kill, method
from .api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from .errors import (
    ActorDiedError,
    AuthenticationError,
    TaskCancelledError,
    TaskTimeoutError,
    TaskUnschedulableError,
    GetTimeoutError,
    HeadConnectionError,
    NodeLostError,
    ObjectLostError,
    ObjectStoreFullError,
    ProtocolVersionError,
    RuntimeEnvSetupError,
    SecretError,
    SerializationError,
    TaskError,
    TaskmeshError,
    WorkerCrashedError,
)
from .handles import ObjectRef, RemoteFunction
from .options import NodeAffinitySchedulingStrategy

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait",
    "nodes", "cluster_resources", "available_resources", "get_runtime_context", "timeline",
    "ObjectRef", "RemoteFunction", "ActorClass", "ActorHandle", "get_actor", "kill", "method",
    "ActorDiedError", "TaskCancelledError", "TaskTimeoutError", "TaskUnschedulableError", "cancel",
    "NodeAffinitySchedulingStrategy",
    "TaskmeshError", "TaskError", "GetTimeoutError", "WorkerCrashedError", "NodeLostError",
    "ObjectLostError", "ObjectStoreFullError", "SerializationError", "HeadConnectionError", "ProtocolVersionError",
    "AuthenticationError", "SecretError", "RuntimeEnvSetupError",
]
