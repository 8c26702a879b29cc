"""``python -m taskmesh._node``: run a node agent (started by the CLI or an embedded init)."""

from __future__ import annotations

import argparse
import logging
import json
import os
import signal
import sys

from .._daemon import report_ready, setup_logging
from .._resources import CPU, to_units
from .._transport import connect_endpoint, local_ip_towards, split_address
from ..config import DEFAULT_PORT, Config
from .agent import NodeAgent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskmesh._node")
    ap.add_argument("--head", required=True, help="HOST:PORT of the head")
    ap.add_argument("--node-ip")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--resources", default="{}")
    ap.add_argument("--node-id")
    ap.add_argument("--ready-fd", type=int)
    ap.add_argument("--lifeline-fd", type=int)
    ap.add_argument("--log-file")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    setup_logging("node", args.log_file, args.log_level)
    host, port = split_address(args.head, DEFAULT_PORT)
    node_ip = args.node_ip or local_ip_towards(host)
    resources = {k: to_units(float(v)) for k, v in json.loads(args.resources).items()}
    resources[CPU] = to_units(args.num_cpus)
    endpoint = connect_endpoint(host, port)
    try:
        agent = NodeAgent(Config.from_env(), endpoint, node_ip, args.num_cpus, resources,
                          args.node_id)
    except ConnectionError:
        msg = f"no taskmesh head answered at {host}:{port}"
        report_ready(args.ready_fd, f"ERROR {msg}")
        logging.getLogger("taskmesh.node").error("%s", msg)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    return agent.serve(args.lifeline_fd, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
