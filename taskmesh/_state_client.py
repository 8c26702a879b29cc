"""Asking the head about the cluster's state: the connection and the replies, shared by
``taskmesh.util.state`` and the ``taskmesh list|get|summary|status`` commands.

    list_tasks(filters=...) ──query()──▶ InfoRequest("state:tasks?state=FAILED&limit=100")
        ──▶ the head's state view (_head/views.py) ──reply──▶ rows: times in epoch ms

A process that called ``taskmesh.init()`` asks over its own connection; any other opens a
connection of kind ``status`` as ``taskmesh status`` does (the head on this machine, or
``address``; the cluster secret as ``taskmesh.init`` finds it), and closes it after.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Iterator, Sequence

from ._context import CTX
from ._resources import from_units
from ._rundir import find_head
from ._secret import Security, find_secret
from ._transport import connect_endpoint, split_address
from .config import DEFAULT_PORT, Config
from .errors import HeadConnectionError

__all__ = ["connect", "session", "query", "FILTER_OPS"]

#: the filter predicates the state API knows (Ray's)
FILTER_OPS = ("=", "!=")


def connect(address: str | None = None, secret_file: str = "", no_encryption: bool = False,
            config: Config | None = None) -> Any:
    """A connected client of kind ``status`` for the head at ``address`` (default:
    $TASKMESH_ADDRESS, else the head started on this machine). Raises HeadConnectionError
    (with what to do) when there is none or it cannot be reached."""
    cfg = config or Config.from_env()
    address = address or os.environ.get("TASKMESH_ADDRESS")
    head_secret = ""  # the secret file of a head started here, found by its run record
    if not address:
        local = find_head(cfg.run_dir)
        if local is None:
            raise HeadConnectionError("no taskmesh cluster is running on this machine: give "
                                      "the head's address (HOST:PORT)")
        address, head_secret = local
    try:
        host, port = split_address(address, DEFAULT_PORT)
    except ValueError as exc:
        raise HeadConnectionError(f"bad address {address!r}: {exc}") from None
    try:
        ip = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror:
        raise HeadConnectionError(f"cannot resolve host {host!r}") from None
    from ._launch import started_cluster_security

    embedded = CTX.cluster  # (this process's embedded cluster: its one-off secret)
    if embedded is not None and embedded.address.rsplit(":", 1)[-1] == str(port):
        security = embedded.security
    else:
        security = started_cluster_security(host, port) or Security(
            find_secret(secret_file or cfg.secret_file or head_secret),
            cfg.encrypt and not no_encryption)
    return open_status_client(cfg, connect_endpoint(ip, port), f"{host}:{port}", security)


def open_status_client(config: Config, endpoint: str, address: str, security: Security) -> Any:
    """A client of kind ``status`` connected to ``endpoint`` and introduced to the head
    (closed again if the handshake fails)."""
    from ._client.core import CoreClient

    core = CoreClient(config, endpoint, "status", address, security)
    try:
        core.handshake({"pid": os.getpid()})
    except BaseException:
        core.close()
        raise
    return core


@contextlib.contextmanager
def session(address: str | None = None, secret_file: str = "",
            no_encryption: bool = False) -> Iterator[Any]:
    """A client to ask with: this process's own (``taskmesh.init``) when no address is
    given, else a new connection, closed at the end."""
    own = CTX.core
    if address is None and own is not None:
        yield own
        return
    core = connect(address, secret_file, no_encryption)
    try:
        yield core
    finally:
        core.close()


def query_string(kind: str, filters: Sequence[tuple[str, str, Any]] | None = None,
                 limit: int | None = None, detail: bool = False) -> str:
    """The request for the head, after checking the filters' shape (the head checks keys
    and values, and says which are valid)."""
    from ._head.views import format_query

    checked = []
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is (key, predicate, value), e.g. (\"state\", \"=\", "
                             f"\"FAILED\"); got {f!r}")
        key, op, value = f
        if op not in FILTER_OPS:
            raise ValueError(f"unknown filter predicate {op!r} in {tuple(f)!r}: one of "
                             f"{', '.join(map(repr, FILTER_OPS))}")
        checked.append((str(key), op, value))
    return format_query(kind, checked, limit, detail)


def query(core: Any, what: str, timeout: float = 30.0) -> dict:
    """Ask the head; ValueError with its message if it could not answer (a bad filter...).
    Times in the rows (the head's clock, seconds) become epoch milliseconds (``*_ms``),
    resources of nodes become numbers of units."""
    reply = core.info(what, timeout=timeout)
    if not isinstance(reply, dict) or "error" in reply:
        message = reply.get("error") if isinstance(reply, dict) else f"unexpected reply {reply!r}"
        raise ValueError(message)
    offset = time.time() - float(reply.get("now", 0.0))
    for row in reply.get("rows", ()):
        _convert(row, offset)
    return reply


def _convert(row: dict, offset: float) -> None:
    for key in [k for k in row if k.endswith("_time")]:
        at = row.pop(key)
        row[key + "_ms"] = int((at + offset) * 1000) if at else None
    if "resources_total" in row:
        row["resources_total"] = {k: from_units(v) for k, v in row["resources_total"].items()}
