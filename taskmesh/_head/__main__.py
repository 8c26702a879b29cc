"""``python -m taskmesh._head``: run a head process (started by the CLI or an embedded init)."""

from __future__ import annotations

import argparse
import sys

from .._daemon import setup_logging
from ..config import DASHBOARD_PORT, Config
from .server import run_head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskmesh._head")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dashboard-host", default="127.0.0.1",
                    help="address the HTTP endpoints (/metrics) listen on")
    ap.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT,
                    help="their port (default %(default)s, Ray's; 0: any free port)")
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--lifeline-fd", type=int)
    ap.add_argument("--log-file")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    setup_logging("head", args.log_file, args.log_level)
    return run_head(Config.from_env(), args.host, args.port, args.ready_fd, args.lifeline_fd,
                    args.dashboard_host, args.dashboard_port)


if __name__ == "__main__":
    sys.exit(main())
