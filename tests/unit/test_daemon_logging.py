"""Daemon logs: CLI-started daemons log to files that rotate, so a long-lived cluster (or a
peer that makes it log at will) cannot fill the disk."""

from __future__ import annotations

import logging
import logging.handlers

from taskmesh._daemon import setup_logging


def test_a_daemon_log_file_rotates_and_keeps_three_old_files(tmp_path):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        path = tmp_path / "logs" / "head.log"
        setup_logging("head", str(path), "INFO")
        [handler] = root.handlers
        assert isinstance(handler, logging.handlers.RotatingFileHandler)
        assert handler.maxBytes == 10 * 1024 * 1024 and handler.backupCount == 3
        handler.maxBytes = 2000  # the same rule, at a size a test can reach
        for i in range(200):
            logging.getLogger("taskmesh.test").info("line %d of a chatty daemon %s", i, "x" * 40)
        handler.close()
        files = sorted(p.name for p in path.parent.iterdir())
        assert files == ["head.log", "head.log.1", "head.log.2", "head.log.3"]
        assert all(p.stat().st_size <= 2100 for p in path.parent.iterdir())
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
