"""``python -m taskmesh._worker``: a worker process, started by its node agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .._daemon import setup_logging
from ..config import Config
from . import output
from .main import Worker, watch_lifeline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskmesh._worker")
    ap.add_argument("--head", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--incarnation", type=int, default=0)
    ap.add_argument("--lifeline-fd", type=int)
    ap.add_argument("--control-fd", type=int)
    args = ap.parse_args(argv)
    setup_logging("worker", None, "WARNING")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver, not for its workers
    if args.lifeline_fd is not None:
        watch_lifeline(args.lifeline_fd)
    try:
        worker = Worker(Config.from_env(), args.head, args.node_id, args.worker_id,
                        args.incarnation)
    except Exception as exc:  # no head to talk to: say so in one line, exit non-zero
        logging.getLogger("taskmesh.worker").error("worker %s could not start: %s",
                                                   args.worker_id, exc)
        return 1
    worker.install_interrupts(args.control_fd)
    output.install(worker.describe_output)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
