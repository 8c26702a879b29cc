"""The ``taskmesh`` command: start a head or a worker node, look at the cluster, stop.

    taskmesh start --head [--port 7300] [--num-cpus N] [--node-ip IP] [--secret-file F] [--block]
                          [--dashboard-host 127.0.0.1] [--dashboard-port 8265]
    taskmesh start --worker --address HOST:PORT [--num-cpus N] [--node-ip IP] [--secret-file F] [--block]
    taskmesh status [--json] [--watch [SECONDS]] [--address HOST:PORT] [--secret-file F]
    taskmesh list nodes|tasks|actors|objects|jobs [--filter KEY=VALUE]... [--limit N] [--format json]
    taskmesh summary tasks · taskmesh get task|actor ID     (see _cli_state.py)
    taskmesh logs [FILE] [--node ID] [--worker PID] [--task ID] [--actor ID] [-f] [--tail N]
    taskmesh dashboard [--address HOST:PORT] [--secret-file F]
    taskmesh secret [--new] [--secret-file F]
    taskmesh stop

``start --head`` creates the cluster secret (``~/.taskmesh/cluster-secret``, mode 600) if there
is none; every other process finds it there, or in ``--secret-file`` / $TASKMESH_SECRET_FILE.

Every failure prints one line, ``taskmesh: error: ...``, and exits non-zero within seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any, NoReturn

from . import _rundir
from ._cli_state import add_parsers as add_state_parsers
from ._launch import StartError, spawn, stop_process, wait_ready
from ._secret import (ClusterKey, default_secret_file, find_or_create_secret, find_secret,
                      secret_path, write_secret_file)
from ._transport import port_is_free, split_address
from .config import DEFAULT_PORT, Config
from ._dashboard.auth import dashboard_url, token_for
from ._launch import head_dashboard
from .config import DASHBOARD_PORT
from .errors import SecretError


class CliError(Exception):
    """A one-line error for the person at the terminal."""


def _fail(msg: str) -> NoReturn:
    raise CliError(msg)


def _guess_node_ip() -> str:
    """The first non-loopback IPv4 address of this machine (no packets sent), else 127.0.0.1."""
    import psutil

    for _name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


def _resolve(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror:
        _fail(f"cannot resolve host {host!r}")


def _log_path(cfg: Config, directory: str, name: str) -> str:
    """A daemon's log file, in the log directory ``taskmesh logs`` reads for its node."""
    return os.path.join(cfg.node_log_dir(directory), name)


def _node_extra(args: argparse.Namespace) -> list[str]:
    """Node agent flags passed through from `taskmesh start`."""
    extra = []
    if args.num_gpus is not None:
        if args.num_gpus < 0:
            _fail("--num-gpus must be >= 0")
        extra += ["--num-gpus", str(args.num_gpus)]
    if args.memory is not None:
        if args.memory < 0:
            _fail("--memory must be >= 0")
        extra += ["--memory", str(args.memory)]
    return extra


def _start_node(cfg: Config, head_addr: str, node_ip: str, num_cpus: int, resources: str,
                detach: bool, extra: list[str] | None = None) -> tuple[Any, str, str]:
    node_id = uuid.uuid4().hex[:12]
    log_file = _log_path(cfg, node_id, "agent.log")
    proc, ready = spawn("taskmesh._node", ["--head", head_addr, "--node-ip", node_ip,
                                           "--node-id", node_id,
                                           "--num-cpus", str(num_cpus), "--resources", resources,
                                           *(extra or [])],
                        cfg, log_file=log_file, detach=detach)
    try:
        node_id = wait_ready(proc, ready, "the node agent", cfg.connect_timeout_s + 4)
    except StartError as exc:
        stop_process(proc, 2)
        _fail(f"could not join the head at {head_addr}: {exc}")
    _rundir.record(cfg.run_dir, "node", proc.pid, head_address=head_addr, node_ip=node_ip,
                   node_id=node_id, log_file=log_file)
    return proc, node_id, log_file


def _cluster_key(secret_file: str | None, create: bool) -> tuple[ClusterKey, bool]:
    """The secret to start with (with ``create``: made if its file does not exist yet)."""
    try:
        if create:
            return find_or_create_secret(secret_file or "")
        return find_secret(secret_file or ""), False
    except SecretError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot create the cluster secret: {exc}")


def cmd_start(args: argparse.Namespace) -> int:
    if args.object_store_memory is not None and args.object_store_memory < (1 << 20):
        _fail("--object-store-memory must be at least 1048576 bytes (1 MiB)")
    key, created = _cluster_key(args.secret_file, create=args.head)
    # the daemons read the file this found (or, with $TASKMESH_SECRET, inherit the variable)
    cfg = Config.from_env(object_store_memory=args.object_store_memory, secret_file=key.path,
                          encrypt=False if args.no_encryption else None)
    if args.resources:
        try:
            res = json.loads(args.resources)
            assert isinstance(res, dict)
        except (ValueError, AssertionError):
            _fail(f"--resources must be a JSON object like '{{\"highmem\": 2}}', got {args.resources!r}")
    resources = args.resources or "{}"
    num_cpus = (os.cpu_count() or 1) if args.num_cpus is None else args.num_cpus
    if num_cpus < 0:
        _fail("--num-cpus must be >= 0")
    detach = not args.block
    procs = []
    if args.head:
        heads = _rundir.live(cfg.run_dir, "head")
        if heads:
            h = heads[-1]
            _fail(f"a taskmesh head is already running on this machine (pid {h['pid']}, "
                  f"address {h['connect_address']}); stop it first with `taskmesh stop`")
        node_ip = args.node_ip or _guess_node_ip()
        port = args.port
        if not port_is_free("0.0.0.0", port):
            _fail(f"port {port} is already in use on this machine; pick another with --port")
        head_log = _log_path(cfg, f"head-{port}", "head.log")
        head, ready = spawn("taskmesh._head", ["--host", "0.0.0.0", "--port", str(port),
                                               "--dashboard-host", args.dashboard_host,
                                               "--dashboard-port", str(args.dashboard_port)],
                            cfg, log_file=head_log, detach=detach)
        try:
            dashboard = head_dashboard(wait_ready(head, ready, "the head", 10))
        except StartError as exc:
            stop_process(head, 2)
            _fail(f"could not start the head: {exc}")
        address = f"{node_ip}:{port}"
        _rundir.record(cfg.run_dir, "head", head.pid, connect_address=address, port=port,
                       log_file=head_log, secret_file=cfg.secret_file, dashboard=dashboard)
        procs.append(head)
        node_msg = "no worker processes (--num-cpus 0)"
        if num_cpus > 0:
            try:
                node, node_id, _ = _start_node(cfg, f"127.0.0.1:{port}", node_ip, num_cpus,
                                               resources, detach, _node_extra(args))
            except CliError:
                stop_process(head, 5)
                raise
            procs.append(node)
            node_msg = f"a node of {num_cpus} CPU{'s' if num_cpus != 1 else ''} ({node_id})"
        join = f"taskmesh start --worker --address {address}"
        if cfg.secret_file and cfg.secret_file != default_secret_file():
            join += f" --secret-file {cfg.secret_file}"
        if not cfg.encrypt:
            join += " --no-encryption"
        print(f"taskmesh head started at {address} (pid {head.pid}) with {node_msg}.")
        print(f"  cluster secret:   {key.source} ({'new, ' if created else ''}fingerprint "
              f"{key.fingerprint}); machines that do not share this home directory need a "
              "copy of it (mode 600)")
        if not cfg.encrypt:
            print("  WARNING: encryption is off: anyone on the network can read the traffic")
        print(f"  add a machine:    {join}")
        print(f"  connect Python:   taskmesh.init(address=\"{address}\")  "
              "(or address=\"auto\" on this machine)")
        print("  see the cluster:  taskmesh status")
        print(f"  web dashboard:    http://{_shown(dashboard, node_ip)}/ (needs a token: "
              "`taskmesh dashboard` prints a URL with it)")
        print(f"  metrics:          http://{_shown(dashboard, node_ip)}/metrics (the same token)")
        print("  stop:             taskmesh stop")
        print(f"  logs:             {os.path.dirname(os.path.dirname(head_log))} "
              "(taskmesh logs shows every node's)")
    else:
        if not args.address:
            _fail("start --worker needs --address HOST:PORT of the head")
        try:
            host, port = split_address(args.address, DEFAULT_PORT)
        except ValueError as exc:
            _fail(f"bad --address: {exc}")
        ip = _resolve(host)
        node_ip = args.node_ip or _local_ip_for(ip)
        for n in _rundir.live(cfg.run_dir, "node"):
            if n.get("node_ip") == node_ip:
                _fail(f"a taskmesh node is already running on this machine ({node_ip}, pid "
                      f"{n['pid']}, joined {n['head_address']}); stop it first with `taskmesh stop`")
        node, node_id, log_file = _start_node(cfg, f"{ip}:{port}", node_ip, num_cpus, resources,
                                              detach, _node_extra(args))
        procs.append(node)
        print(f"taskmesh node {node_id} ({node_ip}, {num_cpus} CPUs, pid {node.pid}) joined the "
              f"head at {ip}:{port}.")
        print(f"  logs: {log_file}")
    sys.stdout.flush()
    if args.block:
        return _block(procs)
    return 0


def _local_ip_for(head_ip: str) -> str:
    from ._transport import local_ip_towards

    return local_ip_towards(head_ip)


def _block(procs: list) -> int:
    """Stay in the foreground until a signal or until one of our processes ends."""
    stop = {"sig": False}

    def on_signal(*_: Any) -> None:
        stop["sig"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    while not stop["sig"]:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            print(f"taskmesh: process {dead[0].pid} exited with code {dead[0].returncode}; "
                  "stopping", file=sys.stderr)
            code = 1
            break
        time.sleep(0.2)
    for p in reversed(procs):
        stop_process(p, 10)
    return code


def cmd_stop(args: argparse.Namespace) -> int:
    cfg = Config.from_env()
    recs = _rundir.live(cfg.run_dir)
    if not recs:
        print("no taskmesh processes are running on this machine")
        return 0
    # nodes first, so the head does not see them vanish one by one
    recs.sort(key=lambda r: r.get("role") == "head")
    for r in recs:
        try:
            os.kill(int(r["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    from ._transport import pid_alive

    for r in recs:
        while pid_alive(int(r["pid"])) and time.monotonic() < deadline:
            time.sleep(0.05)
            try:  # reap if it is our child (it is not, normally: daemons are detached)
                os.waitpid(int(r["pid"]), os.WNOHANG)
            except ChildProcessError:
                pass
        if pid_alive(int(r["pid"])):
            os.kill(int(r["pid"]), signal.SIGKILL)
        _rundir.remove(r["_path"])
    names = ", ".join(f"{r['role']} pid {r['pid']}" for r in recs)
    print(f"stopped {len(recs)} taskmesh process{'es' if len(recs) != 1 else ''} ({names})")
    return 0


def _split_dashboard(dashboard: str) -> tuple[str, int]:
    host, _, port = dashboard.rpartition(":")
    return host.strip("[]"), int(port)


def _shown(dashboard: str, head_host: str) -> str:
    """The dashboard's ``host:port`` as shown to a person (a wildcard address becomes the host
    the head is reached at)."""
    host, port = _split_dashboard(dashboard)
    return dashboard_url(host, port, "", "", head_host).split("//", 1)[1].split("?", 1)[0]


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ._state_client import connect
    from .errors import TaskmeshError

    try:
        core = connect(args.address, args.secret_file or "", args.no_encryption)
    except TaskmeshError as exc:
        _fail(str(exc))
    try:
        host, port = split_address(core.address, DEFAULT_PORT)
        key = core.security.key
        cfg = Config.from_env()
        dashboard = ""
        if not args.address:  # the head started here: its run record has the address
            dashboard = next((str(r.get("dashboard") or "")
                              for r in _rundir.live(cfg.run_dir, "head")
                              if r.get("connect_address") == f"{host}:{port}"), "")
        if not dashboard:
            info = core.info("dashboard")
            if not isinstance(info, dict) or "port" not in info:
                _fail(f"the head at {host}:{port} does not say where its dashboard is (an "
                      "older taskmesh?)")
            dashboard = f"[{info.get('host', '')}]:{info['port']}"
    except TaskmeshError as exc:
        _fail(str(exc))
    finally:
        core.close()
    dhost, dport = _split_dashboard(dashboard)
    url = dashboard_url(dhost, dport, token_for(key), "/", host)
    print(url)
    if dhost.startswith("127.") and not _is_here(host):
        print(f"taskmesh: note: the head's dashboard listens on {dhost} of its own machine only; "
              f"tunnel to it (ssh -L {dport}:{dhost}:{dport} {host}) or restart the head with "
              "--dashboard-host 0.0.0.0", file=sys.stderr)
    return 0


def _is_here(host: str) -> bool:
    from ._transport import is_local_address

    return is_local_address(host)


def cmd_secret(args: argparse.Namespace) -> int:
    path = secret_path(args.secret_file or "")
    try:
        if args.new:
            key = write_secret_file(path, replace=True)
            print(f"wrote a new cluster secret to {path} (fingerprint {key.fingerprint}).")
            print("  Copy it to machines that do not share this home directory, then restart "
                  "the cluster: `taskmesh stop` and `taskmesh start` on every machine.")
            return 0
        key = find_secret(path)
    except SecretError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {path}: {exc}")
    print(f"cluster secret: {path} (fingerprint {key.fingerprint})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="taskmesh", description="Run and inspect a taskmesh cluster.")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("start", help="start a head or a worker node on this machine")
    role = st.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head (and a node, unless --num-cpus 0)")
    role.add_argument("--worker", action="store_true", help="start a node that joins --address")
    st.add_argument("--address", help="HOST:PORT of the head (with --worker)")
    st.add_argument("--port", type=int, default=DEFAULT_PORT, help="head port (default %(default)s)")
    st.add_argument("--num-cpus", type=int, help="worker processes on this machine (default: CPU count)")
    st.add_argument("--resources", help="custom resources as JSON, e.g. '{\"highmem\": 2}'")
    st.add_argument("--num-gpus", type=int,
                    help="GPUs tasks may use (default: CUDA_VISIBLE_DEVICES, else nvidia-smi)")
    st.add_argument("--memory", type=int, metavar="BYTES",
                    help="memory tasks may reserve with memory= (default: 70%% of RAM)")
    st.add_argument("--node-ip", help="this machine's address as other machines reach it")
    st.add_argument("--object-store-memory", type=int, metavar="BYTES",
                    help="shared memory for this node's object store (default: 30%% of RAM)")
    st.add_argument("--block", action="store_true", help="stay in the foreground until Ctrl-C")
    st.add_argument("--dashboard-host", default="127.0.0.1",
                    help="address the head's HTTP endpoints (/metrics) listen on (with --head; "
                         "default %(default)s: this machine only; 0.0.0.0: every interface)")
    st.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT,
                    help="their port (default %(default)s; 0: any free port)")
    _secret_options(st)
    st.set_defaults(fn=cmd_start)
    add_state_parsers(sub, _secret_options)  # status, list, summary, get (_cli_state.py)
    d = sub.add_parser("dashboard", help="print the URL of the head's web dashboard (and "
                                          "/metrics), with its token")
    d.add_argument("--address", help="HOST:PORT of the head (default: the one on this machine)")
    _secret_options(d)
    d.set_defaults(fn=cmd_dashboard)
    sc = sub.add_parser("secret", help="show the cluster secret's file and fingerprint, or make a new one")
    sc.add_argument("--new", action="store_true",
                    help="replace it with a new random secret (to rotate it; restart the cluster)")
    sc.add_argument("--secret-file", metavar="PATH", help="default: ~/.taskmesh/cluster-secret")
    sc.set_defaults(fn=cmd_secret)
    sp = sub.add_parser("stop", help="stop the taskmesh processes started on this machine")
    sp.set_defaults(fn=cmd_stop)
    from . import _cli_logs

    _cli_logs.add_parser(sub, _secret_options)
    return ap


def _secret_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--secret-file", metavar="PATH",
                   help="the cluster secret (default: $TASKMESH_SECRET_FILE, else "
                        "~/.taskmesh/cluster-secret; start --head creates it if missing)")
    p.add_argument("--no-encryption", action="store_true",
                   help="do not encrypt traffic between machines (still authenticated); only for "
                        "a network nobody else can reach")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except CliError as exc:
        print(f"taskmesh: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # python -m taskmesh._cli: run the module as imported, so that the
    from taskmesh._cli import main as _main  # subcommands' modules raise the same CliError

    sys.exit(_main())
