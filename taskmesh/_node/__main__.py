"""``python -m taskmesh._node``: run a node agent (started by the CLI or an embedded init)."""

from __future__ import annotations

import argparse
import logging
import json
import os
import signal
import sys

from .._daemon import add_log_file, report_ready, setup_logging
import psutil

from .._resources import CPU, GPU, MEMORY, detect_gpus, to_units
from .._transport import connect_endpoint, local_ip_towards, split_address
from .._secret import load_security
from ..config import DEFAULT_PORT, Config
from ..errors import SecretError
from .agent import NodeAgent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m taskmesh._node")
    ap.add_argument("--head", required=True, help="HOST:PORT of the head")
    ap.add_argument("--node-ip")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--resources", default="{}")
    ap.add_argument("--num-gpus", type=int, help="GPUs (default: CUDA_VISIBLE_DEVICES or nvidia-smi)")
    ap.add_argument("--memory", type=int, help="bytes tasks may reserve (default: 70%% of RAM)")
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
    gpus = detect_gpus(os.environ)
    if args.num_gpus is not None:  # given: the first N of the detected ids, or 0..N-1
        gpus = (gpus + [str(i) for i in range(len(gpus), args.num_gpus)])[: args.num_gpus] \
            if gpus else [str(i) for i in range(args.num_gpus)]
    if gpus:
        resources[GPU] = to_units(len(gpus))
    memory = args.memory if args.memory is not None else int(psutil.virtual_memory().total * 0.7)
    resources[MEMORY] = to_units(memory)
    endpoint = connect_endpoint(host, port)
    config = Config.from_env()
    try:
        security = load_security(config)
    except SecretError as exc:
        report_ready(args.ready_fd, f"ERROR {exc}")
        logging.getLogger("taskmesh.node").error("%s", exc)
        return 1
    if not security.encrypt:
        logging.getLogger("taskmesh.node").warning(
            "encryption is off (encrypt=False): connections are still authenticated, but "
            "anyone on the network can read what this node sends and receives")
    try:
        agent = NodeAgent(config, endpoint, node_ip, args.num_cpus, resources,
                          args.node_id, gpus, security=security)
    except ConnectionError:
        msg = f"no taskmesh head answered at {host}:{port}"
        report_ready(args.ready_fd, f"ERROR {msg}")
        logging.getLogger("taskmesh.node").error("%s", msg)
        return 1
    add_log_file("node", os.path.join(agent.output.log_dir, "agent.log"))
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    return agent.serve(args.lifeline_fd, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
