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
