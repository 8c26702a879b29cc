"""What packing and unpacking a working_dir costs (issue 16: "the upload/unpack times for a
50 MB working_dir"): a project of ``--mb`` MB (four fifths source-like text in many small
files, one fifth incompressible data in a few big ones) is scanned, named (the content hash:
what every run pays, including one that uploads nothing), zipped (what a run that uploads
pays on top) and unpacked into an empty cache (what each node pays once). Medians of
``--rounds``, each in a fresh temporary directory. Run from the repository root:

    python -m benchmarks.runtime_env_package [--mb 50] [--rounds 5]

Moving the zip into the object store and across the network is the object store's own cost
(benchmarks/transfer_bench.py), not measured here.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

from taskmesh._runtime_env import package as pkg


def make_project(root: str, mb: float, seed: int = 0) -> int:
    """A project of about ``mb`` MB; returns its file count."""
    rng = random.Random(seed)
    words = [f"{w}_{i}" for i, w in enumerate(
        "def return import self value result array data model train loss step".split())]
    text_bytes = int(mb * 1e6 * 0.8)
    files = 0
    made = 0
    while made < text_bytes:  # source-like files of 2-40 KB in nested packages
        d = os.path.join(root, f"pkg{files % 7}", f"sub{files % 13}")
        os.makedirs(d, exist_ok=True)
        size = rng.randint(2_000, 40_000)
        line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
        body = (line * (size // len(line) + 1))[:size]
        with open(os.path.join(d, f"m{files}.py"), "w") as f:
            f.write(body)
        made += size
        files += 1
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    rest = int(mb * 1e6) - made
    for i in range(4):  # incompressible data
        with open(os.path.join(root, "data", f"blob{i}.npy"), "wb") as f:
            f.write(os.urandom(rest // 4))
        files += 1
    return files


def one_round(mb: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "project")
        files = make_project(root, mb)
        out: dict[str, float] = {"files": files}
        t = time.perf_counter()
        tree = pkg.scan(root)
        out["scan"] = time.perf_counter() - t
        t = time.perf_counter()
        name = pkg.digest(tree)
        out["name"] = time.perf_counter() - t
        t = time.perf_counter()
        data = pkg.zip_bytes(tree)
        out["zip"] = time.perf_counter() - t
        out["zip_mb"] = len(data) / 1e6
        t = time.perf_counter()
        where = pkg.unpack(data, os.path.join(tmp, "cache"), name)
        out["unpack"] = time.perf_counter() - t
        t = time.perf_counter()
        pkg.unpack(data, os.path.join(tmp, "cache"), name)
        out["unpack_again"] = time.perf_counter() - t
        assert pkg.digest(pkg.scan(where)) == name
        shutil.rmtree(where)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rounds = [one_round(args.mb) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"a {args.mb:g} MB working_dir ({med['files']:.0f} files), medians of "
          f"{args.rounds} rounds:")
    print(f"  scan (which files)          {med['scan'] * 1e3:8.1f} ms")
    print(f"  name (content hash)         {med['name'] * 1e3:8.1f} ms   every run pays scan + name")
    print(f"  zip                         {med['zip'] * 1e3:8.1f} ms   a run that uploads, "
          f"{med['zip_mb']:.1f} MB")
    print(f"  unpack into the cache       {med['unpack'] * 1e3:8.1f} ms   once per node")
    print(f"  unpack when already there   {med['unpack_again'] * 1e3:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
