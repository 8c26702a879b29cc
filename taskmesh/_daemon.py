"""Shared start-up of taskmesh daemon processes (head, node agent, worker): logging."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys


def report_ready(fd: int | None, line: str) -> None:
    """Write the one READY/ERROR line a starter waits for (see _launch.wait_ready); close."""
    if fd is None:
        return
    try:
        os.write(fd, (line + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def setup_logging(role: str, log_file: str | None, level: str = "INFO") -> None:
    """Log to a rotating file (CLI-started daemons) or to stderr (embedded clusters)."""
    fmt = f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=10 * 1024 * 1024, backupCount=3)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def add_log_file(role: str, path: str, level: int = logging.INFO) -> str | None:
    """Also log to ``path`` (rotated: 10 MiB, 3 old files), at ``level`` even if the other
    handlers show less (an embedded cluster's daemons print only warnings to the driver's
    terminal, but their files in the node's log directory have the rest): what
    ``taskmesh logs`` shows. Returns the path, or None if it cannot be written."""
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in root.handlers):
        return path  # (a CLI-started daemon logs there already)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024,
                                                       backupCount=3)
    except OSError as exc:
        logging.getLogger("taskmesh").warning("cannot write the log file %s: %s", path, exc)
        return None
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    if root.level > level:
        for other in root.handlers:  # they keep showing only what they showed
            other.setLevel(max(other.level, root.level))
        root.setLevel(level)
    root.addHandler(handler)
    return path
