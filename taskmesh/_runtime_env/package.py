"""A working_dir or py_module as a package: files chosen, named by a hash of what they hold,
zipped for the object store, and unpacked once per node.

    driver:  scan(path, excludes) ──▶ Tree ──digest()──▶ "pkg_<sha256>"  (the cluster has it?
                                        └──zip_bytes()──▶ bytes             no: upload these)
    worker:  unpack(bytes, cache_dir, name) ──▶ <cache_dir>/<name>/         (once per machine;
                                                                             atomic)

What is left out: ``.git`` and ``__pycache__`` directories, what a ``.gitignore`` in the tree
ignores (below the directory that holds it), and the ``excludes`` patterns (gitignore syntax,
relative to the package's root; the ``pathspec`` library matches them as git does). Symbolic
links to files are followed; links to directories are not.

The name covers each file's path, content and executable bit, nothing else (not times, not
owners): the same files anywhere give the same name, so a second run with nothing changed
uploads nothing. The zip is built the same way each time (sorted, fixed times).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass

import pathspec

from .spec import RuntimeEnvError

#: a package may hold this many bytes of files at most (``TASKMESH_RUNTIME_ENV_MAX_MB``)
DEFAULT_MAX_BYTES = 500 * 1024 * 1024
#: directories never packed
ALWAYS_LEFT_OUT = (".git", "__pycache__")
#: files already compressed: stored in the zip as they are
_COMPRESSED = (".zip", ".gz", ".bz2", ".xz", ".zst", ".lz4", ".whl", ".npz", ".png", ".jpg",
               ".jpeg", ".gif", ".webp", ".mp4", ".parquet", ".7z", ".jar")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20
#: files up to this size are read whole when zipped; bigger ones stream
_WHOLE = 16 << 20


def max_bytes_from_env() -> int:
    """The size limit: ``TASKMESH_RUNTIME_ENV_MAX_MB`` (MiB), else ``DEFAULT_MAX_BYTES``."""
    text = os.environ.get("TASKMESH_RUNTIME_ENV_MAX_MB", "").strip()
    try:
        return int(float(text) * 1024 * 1024) if text else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Entry:
    """One file of a package: its name inside the package, where it is, its size, and
    whether it is executable."""

    name: str
    path: str
    size: int
    executable: bool


@dataclass(frozen=True)
class Tree:
    """The files of one package, sorted by name (``archive``: the package is this one .zip
    or .whl file, shipped as it is)."""

    root: str
    entries: tuple[Entry, ...]
    size: int
    archive: bool = False


def scan(path: str, excludes: list[str] | tuple[str, ...] = (), *, what: str = "working_dir",
         max_bytes: int | None = None, keep_name: bool = False) -> Tree:
    """The files of the package at ``path`` (a directory, a .py file, or a .zip/.whl kept
    whole). ``keep_name``: a directory's files are named under the directory's own name
    (py_modules: the package's parent goes on sys.path), else from its inside (working_dir).
    Raises RuntimeEnvError naming the biggest files if they hold more than ``max_bytes``."""
    limit = max_bytes_from_env() if max_bytes is None else max_bytes
    if os.path.isfile(path):
        size = os.path.getsize(path)
        archive = path.endswith((".zip", ".whl"))
        entry = Entry(os.path.basename(path), path, size, _executable(path))
        tree = Tree(path, (entry,), size, archive)
    else:
        prefix = os.path.basename(path.rstrip(os.sep)) + "/" if keep_name else ""
        entries = sorted(_walk(path, list(excludes), prefix, what), key=lambda e: e.name)
        tree = Tree(path, tuple(entries), sum(e.size for e in entries))
    if tree.size > limit:
        raise RuntimeEnvError(_too_big(tree, limit, what))
    return tree


def _walk(root: str, excludes: list[str], prefix: str, what: str):
    user = pathspec.GitIgnoreSpec.from_lines(excludes) if excludes else None
    ignores: list[tuple[str, pathspec.GitIgnoreSpec]] = []  # (directory, its .gitignore)

    def left_out(rel: str, is_dir: bool) -> bool:
        probe = rel + "/" if is_dir else rel
        if user is not None and user.match_file(probe):
            return True
        for base, spec in ignores:
            if not base:
                if spec.match_file(probe):
                    return True
            elif probe.startswith(base + "/") and spec.match_file(probe[len(base) + 1:]):
                return True
        return False

    def on_error(exc: OSError) -> None:
        raise RuntimeEnvError(f"{what}: cannot read {exc.filename}: {exc.strerror}; leave it "
                              "out with runtime_env['excludes']")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in filenames:
            try:
                with open(os.path.join(dirpath, ".gitignore"), encoding="utf-8",
                          errors="replace") as f:
                    ignores.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(f)))
            except OSError:
                pass
        join = (lambda n: f"{rel_dir}/{n}") if rel_dir else (lambda n: n)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ALWAYS_LEFT_OUT and not left_out(join(d), True)
                             and not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            rel = join(name)
            if left_out(rel, False):
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError as exc:
                if os.path.islink(full):
                    continue  # (a dangling link: nothing to ship)
                raise RuntimeEnvError(f"{what}: cannot read {full}: {exc.strerror}; leave it "
                                      "out with runtime_env['excludes']") from None
            if not stat.S_ISREG(st.st_mode):
                continue  # (a socket, fifo or device)
            if not os.access(full, os.R_OK):
                raise RuntimeEnvError(f"{what}: cannot read {full}: permission denied; leave "
                                      "it out with runtime_env['excludes']")
            yield Entry(prefix + rel, full, st.st_size, bool(st.st_mode & 0o111))


def _executable(path: str) -> bool:
    return bool(os.stat(path).st_mode & 0o111)


def _too_big(tree: Tree, limit: int, what: str) -> str:
    biggest = sorted(tree.entries, key=lambda e: -e.size)[:5]
    listed = ", ".join(f"{e.name} ({_mib(e.size)})" for e in biggest)
    return (f"{what} {tree.root} holds {_mib(tree.size)} in {len(tree.entries):,} files, over "
            f"the limit of {_mib(limit)}. The biggest: {listed}. Leave files out with "
            "runtime_env['excludes'] (gitignore patterns, e.g. ['data/', '*.ckpt']), or raise "
            "the limit with TASKMESH_RUNTIME_ENV_MAX_MB")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def digest(tree: Tree) -> str:
    """The package's name, ``pkg_<sha256 hex>``: a hash of each file's name, executable bit
    and content (an archive: of its bytes)."""
    h = hashlib.sha256()
    if tree.archive:
        h.update(b"archive\0")
        _hash_file(h, tree.entries[0].path, tree.entries[0].name)
        return "pkg_" + h.hexdigest()
    for e in tree.entries:
        h.update(e.name.encode("utf-8", "surrogateescape"))
        h.update(b"\0x\0" if e.executable else b"\0-\0")
        inner = hashlib.sha256()
        _hash_file(inner, e.path, e.name)
        h.update(inner.digest())
    return "pkg_" + h.hexdigest()


def _hash_file(h, path: str, name: str) -> None:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise RuntimeEnvError(f"cannot read {path} ({name}): {exc.strerror}") from None


def zip_bytes(tree: Tree) -> bytes:
    """The package as a zip (an archive: its own bytes)."""
    if tree.archive:
        with open(tree.entries[0].path, "rb") as f:
            return f.read()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for e in tree.entries:
            info = zipfile.ZipInfo(e.name, _ZIP_TIME)
            info.external_attr = (0o100755 if e.executable else 0o100644) << 16
            stored = e.name.lower().endswith(_COMPRESSED)
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            try:
                with open(e.path, "rb") as src:
                    if e.size <= _WHOLE:  # (level 1: faster than the default, a little bigger)
                        z.writestr(info, src.read(), compresslevel=None if stored else 1)
                    else:  # (a big file streams, at the default level)
                        with z.open(info, "w", force_zip64=True) as dst:
                            shutil.copyfileobj(src, dst, _CHUNK)
            except OSError as exc:
                raise RuntimeEnvError(f"cannot read {e.path}: {exc.strerror}") from None
    return buf.getvalue()


def unpack(data: bytes | memoryview, cache_dir: str, name: str) -> str:
    """The package ``name`` unpacked under ``cache_dir`` (done once: a second call, from this
    process or another, finds it there). Member names that would land outside the package
    directory are refused."""
    dest = os.path.join(cache_dir, name)
    if os.path.isdir(dest):
        os.utime(dest)  # (used again: younger for the clean-up)
        return dest
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                target = _member_target(tmp, info.filename, name)
                if info.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                if (info.external_attr >> 16) & 0o111:
                    os.chmod(target, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # (else another process unpacked it first)
                raise
    except zipfile.BadZipFile as exc:
        raise RuntimeEnvError(f"package {name} is not a valid zip: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.utime(dest)  # (its age is its last use: clean-up removes the oldest)
    return dest


def _member_target(root: str, member: str, name: str) -> str:
    parts = member.replace("\\", "/").split("/")
    if member.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
        raise RuntimeEnvError(f"package {name} holds {member!r}, a path outside the package: "
                              "refused")
    return os.path.join(root, *[p for p in parts if p not in ("", ".")])


def working_path(unpacked: str, from_archive: bool) -> str:
    """The directory a working_dir's worker runs in: the unpacked package, or, for a .zip
    given as the working_dir whose content is one directory, that directory (as Ray)."""
    if from_archive:
        inside = [n for n in os.listdir(unpacked) if n != "__MACOSX"]
        if len(inside) == 1 and os.path.isdir(os.path.join(unpacked, inside[0])):
            return os.path.join(unpacked, inside[0])
    return unpacked
