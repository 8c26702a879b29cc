"""Node-to-node transfer of 100 MB, beside a raw TCP socket copy of 100 MB in the same run.

    node A (process)                                   node B (process)
    StoreService, arena ── transfer stream (TCP) ──▶   StoreService, arena
         ▲ StoreClient: put the object                      ▲ StoreClient: StoreFetch, then pin (timed)

Two node-like child processes (this module with ``--node``: an arena, a ``StoreService`` on
127.0.0.1 and a poll loop, as the node agent runs them) hold the stores; with ``--encrypt both``
(the default) there are two such pairs, one encrypting its transfers (AES-256-GCM, the default
of a cluster) and one not (``encrypt=False``: authenticated only), and they take turns in every
iteration so that both meet the same noise. The cluster secret is made for the run. The object
is written into A once; each timed iteration sends ``StoreFetch`` to B and ends when B grants the
pin, i.e. when the bytes are in B's arena, checked and sealed; B then deletes its copy, so the next
iteration pulls again into the same (warm) arena range. The first iteration also pays for
faulting in B's fresh arena pages and is reported apart (``cold_gbps``). The raw baseline is
``socket.sendall`` of a memoryview in a child process and ``recv_into`` a preallocated,
pre-touched buffer in this one, over 127.0.0.1, interleaved with the transfers. B's byte counters must
show every byte received over the socket (the two arenas share /dev/shm), and B's copy is
compared with A's.

Usage (from the repository root)::

    python -m benchmarks.transfer_bench [--size BYTES] [--repeat N] [--encrypt on|off|both]
                                        [--kinds random,zeros] [--json out.json]

It also measures AES-256-GCM alone (``encrypt_into``/``decrypt_into`` of 512 KiB buffers, one
thread): what an encrypted transfer could reach at best.

:func:`run_transfer_100MB` returns the figures as a dict, for the side-by-side runner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

REPO_ROOT = Path(__file__).resolve().parent.parent
SIZE = 100_000_000
#: transfer modes: ``Security.encrypt`` on both nodes, off on both
MODES = ("encrypted", "plain")


# --------------------------------------------------------------------------- the node processes


def _node_main(node_id: str, capacity: int, encrypt: bool) -> int:
    """A child: one arena and one StoreService driven by a poll loop; ``stats`` on stdin. The
    cluster secret comes from $TASKMESH_SECRET."""
    from taskmesh._node.store_service import StoreService
    from taskmesh._secret import Security, take_secret_from_env
    from taskmesh._store.shm import Arena, arena_name
    from taskmesh._transport import Poller, pid_alive
    from taskmesh.config import Config

    key = take_secret_from_env()
    if key is None:
        raise SystemExit("transfer_bench --node: no cluster secret in $TASKMESH_SECRET")
    arena = Arena.create(arena_name(node_id), capacity)
    try:
        service = StoreService(node_id, arena, Config(), pid_alive, security=Security(key, encrypt),
                               transfer_host="127.0.0.1")
        try:
            poller = Poller()
            service.attach(poller)
            stdin = sys.stdin.fileno()
            poller.register(stdin)
            print(json.dumps({"store": service.name, "transfer": service.transfer_address}), flush=True)
            while True:
                now = time.monotonic()
                wake = service.wake_at(now)
                ready = poller.poll(None if wake is None else max(0.0, wake - now) * 1000)
                service.handle(ready, time.monotonic())
                if stdin in ready:
                    data = os.read(stdin, 4096)
                    if not data:
                        return 0
                    for _ in range(data.count(b"\n")):
                        print(json.dumps(service.stats()), flush=True)
                service.tick(time.monotonic())
        finally:
            service.close()
    finally:
        arena.close()


class _Node:
    def __init__(self, capacity: int, key: Any, encrypt: bool) -> None:
        self.node_id = uuid.uuid4().hex[:12]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.transfer_bench", "--node", self.node_id, str(capacity),
             str(int(encrypt))],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **key.env()})
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"a store node did not start (exit code {self.proc.wait(10)})")
        info = json.loads(line)
        self.store, self.address = info["store"], info["transfer"]

    def stats(self) -> dict[str, int]:
        self.proc.stdin.write("stats\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- measurements


def _raw_sender_main(address: str, size: int, kind: str) -> int:
    """A child: connect to ``address``; for each byte received, sendall the data; stop at EOF."""
    src = memoryview(_make(kind, size))
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        while sock.recv(1):
            sock.sendall(src)
    return 0


def _make(kind: str, size: int) -> bytes:
    return np.random.default_rng(0).random(size // 8).tobytes() if kind == "random" else bytes(size)


class RawTcp:
    """The baseline: a child process ``sendall``s a memoryview of ``size`` bytes over loopback
    TCP each time it is asked; this process ``recv_into``s a preallocated, pre-touched buffer."""

    def __init__(self, size: int, kind: str) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        host, port = listener.getsockname()
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.transfer_bench", "--raw-sender",
                                      f"{host}:{port}", str(size), kind], cwd=REPO_ROOT)
        listener.settimeout(60)
        try:
            self.sock, _ = listener.accept()
        finally:
            listener.close()
        self.dest = memoryview(bytearray(size))
        self.dest[:] = b"\1" * size

    def copy(self) -> float:
        """Seconds from asking to having every byte."""
        t0 = time.perf_counter()
        self.sock.sendall(b"g")
        view = self.dest
        while view.nbytes:
            n = self.sock.recv_into(view)
            if not n:
                raise EOFError("the raw sender stopped early")
            view = view[n:]
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _wait_for(pred, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def aesgcm_gbps(chunk: int = 512 << 10, total: int = 1 << 30) -> dict[str, float]:
    """AES-256-GCM alone on ``chunk``-byte buffers in this process (``encrypt_into`` and
    ``decrypt_into``, as the transfer uses them), GB/s: the bound on an encrypted transfer."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(os.urandom(32))
    plain = memoryview(bytearray(os.urandom(chunk)))
    sealed = memoryview(bytearray(chunk + 16))
    out = memoryview(bytearray(chunk))
    rounds = max(1, total // chunk)
    nonce = bytes(12)
    t0 = time.perf_counter()
    for _ in range(rounds):
        aead.encrypt_into(nonce, plain, b"h", sealed)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rounds):
        aead.decrypt_into(nonce, sealed, b"h", out)
    t_dec = time.perf_counter() - t0
    return {"chunk": chunk, "encrypt_gbps": rounds * chunk / t_enc / 1e9,
            "decrypt_gbps": rounds * chunk / t_dec / 1e9}


def _figures(size: int, times: list[float]) -> dict[str, Any]:
    warm = times[1:] or times
    gbps = [size / t / 1e9 for t in warm]
    return {"transfer_gbps": max(gbps), "transfer_gbps_median": statistics.median(gbps),
            "cold_gbps": size / times[0] / 1e9, "seconds": times}


def run_transfer_100MB(size: int = SIZE, repeat: int = 5,
                       kinds: tuple[str, ...] = ("random", "zeros"),
                       modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    """Pull ``size`` bytes of each kind (random float64, zeros) from node A's arena into node
    B's, ``repeat`` times in each mode (``"encrypted"``, ``"plain"``: a pair of nodes each, the
    modes taking turns in every iteration), and copy as many bytes over a raw TCP socket as
    often; return GB/s (1e9 bytes/s): best and median of the warm runs, the cold first run, wire
    bytes; per kind, encrypted / plain."""
    from taskmesh import _protocol as P
    from taskmesh import _transfer as transfer
    from taskmesh._secret import ClusterKey
    from taskmesh._store.client import StoreClient

    data = {kind: _make(kind, size) for kind in kinds}
    key = ClusterKey.generate()
    pairs = {mode: (_Node(len(kinds) * size + (1 << 20), key, mode == "encrypted"),
                    _Node(size + (1 << 20), key, mode == "encrypted")) for mode in modes}
    out: dict[str, Any] = {"size": size, "repeat": repeat, "chunk_size": transfer.DEFAULT_CHUNK_SIZE,
                           "modes": {mode: {} for mode in modes}, "raw_tcp": {}}
    try:
        with contextlib.ExitStack() as stack:
            clients = {mode: (stack.enter_context(StoreClient(a.store)),
                              stack.enter_context(StoreClient(b.store)))
                       for mode, (a, b) in pairs.items()}
            for ca, _ in clients.values():
                for kind in kinds:
                    view = ca.create(kind.encode(), size)
                    view[:] = data[kind]
                    ca.seal(kind.encode())
                    del view
            for kind in kinds:
                oid = kind.encode()
                expected = xxhash.xxh3_64_intdigest(data[kind])
                raw_tcp = RawTcp(size, kind)
                before = {mode: b.stats() for mode, (_, b) in pairs.items()}
                times: dict[str, list[float]] = {mode: [] for mode in modes}
                raw_times: list[float] = []
                for i in range(repeat):
                    for mode in modes:
                        a, b = pairs[mode]
                        cb = clients[mode][1]
                        t0 = time.perf_counter()
                        cb._send(P.StoreFetch(oid, size, [[a.node_id, a.address]]))
                        [view] = cb.pin([oid], timeout_s=60)
                        times[mode].append(time.perf_counter() - t0)
                        if i == 0 and xxhash.xxh3_64_intdigest(view) != expected:
                            raise AssertionError(f"{kind}, {mode}: B's copy differs from A's")
                        cb.unpin([oid])
                        del view
                        cb.delete([oid])
                        _wait_for(lambda b=b: b.stats()["num_objects"] == 0, "B to free its copy")
                    raw_times.append(raw_tcp.copy())
                if xxhash.xxh3_64_intdigest(raw_tcp.dest) != expected:
                    raise AssertionError(f"{kind}: the raw copy differs")
                raw_tcp.close()
                raw = [size / t / 1e9 for t in raw_times]
                out["raw_tcp"][kind] = {"gbps": max(raw), "gbps_median": statistics.median(raw),
                                        "seconds": raw_times}
                for mode, (_, b) in pairs.items():
                    after = b.stats()
                    received = after["transfer_raw_bytes_received"] - before[mode]["transfer_raw_bytes_received"]
                    if received != repeat * size:
                        raise AssertionError(f"{kind}, {mode}: B received {received} object bytes "
                                             f"over TCP, not {repeat * size}")
                    wire = (after["transfer_bytes_received"] - before[mode]["transfer_bytes_received"]) // repeat
                    figures = _figures(size, times[mode])
                    figures.update(wire_bytes_per_transfer=wire,
                                   ratio_to_raw_best=figures["transfer_gbps"] / max(raw),
                                   ratio_to_raw_median=figures["transfer_gbps_median"] / statistics.median(raw))
                    out["modes"][mode][kind] = figures
                if {"encrypted", "plain"} <= set(modes):
                    on, off = out["modes"]["encrypted"][kind], out["modes"]["plain"][kind]
                    out.setdefault("encrypted_over_plain", {})[kind] = {
                        "best": on["transfer_gbps"] / off["transfer_gbps"],
                        "median": on["transfer_gbps_median"] / off["transfer_gbps_median"]}
        out["aesgcm"] = aesgcm_gbps(transfer.DEFAULT_CHUNK_SIZE)
    finally:
        for a, b in pairs.values():
            a.stop()
            b.stop()
    return out


def _report(result: dict[str, Any]) -> str:
    title = (f"transfer of {result['size'] / 1e6:.0f} MB, node A's arena -> node B's arena over "
             f"127.0.0.1 (chunks of {result['chunk_size'] >> 10} KiB), {result['repeat']} runs per "
             f"mode, modes taking turns, beside a raw TCP copy between two processes; GB/s = 1e9 "
             f"bytes/s, best (median) of warm runs")
    lines = [title]
    for kind in ("random", "zeros"):
        raw = result["raw_tcp"].get(kind)
        if raw is None:
            continue
        lines.append(f"  {kind}: raw TCP {raw['gbps']:.2f} ({raw['gbps_median']:.2f})")
        for mode, figures in result["modes"].items():
            r = figures[kind]
            lines.append(
                f"    {mode:9}  transfer {r['transfer_gbps']:.2f} ({r['transfer_gbps_median']:.2f})  "
                f"cold first run {r['cold_gbps']:.2f}  of raw TCP {r['ratio_to_raw_best']:.0%} "
                f"({r['ratio_to_raw_median']:.0%})  wire {r['wire_bytes_per_transfer'] / 1e6:.2f} MB")
        ratio = result.get("encrypted_over_plain", {}).get(kind)
        if ratio is not None:
            lines.append(f"    encrypted / plain: {ratio['best']:.0%} ({ratio['median']:.0%})")
    aes = result.get("aesgcm")
    if aes is not None:
        lines.append(f"  AES-256-GCM alone, {aes['chunk'] >> 10} KiB buffers, one thread: encrypt_into "
                     f"{aes['encrypt_gbps']:.1f} GB/s, decrypt_into {aes['decrypt_gbps']:.1f} GB/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--node"]:
        return _node_main(argv[1], int(argv[2]), argv[3:4] != ["0"])
    if argv[:1] == ["--raw-sender"]:
        return _raw_sender_main(argv[1], int(argv[2]), argv[3])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--encrypt", choices=("on", "off", "both"), default="both",
                        help="transfer encrypted, in the clear, or both taking turns (default)")
    parser.add_argument("--kinds", default="random,zeros", help="comma-separated: random, zeros")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    modes = {"on": ("encrypted",), "off": ("plain",), "both": MODES}[args.encrypt]
    kinds = tuple(k for k in args.kinds.split(",") if k)
    result = run_transfer_100MB(args.size, args.repeat, kinds, modes)
    print(_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
