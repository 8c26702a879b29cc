"""The cluster secret: where it is kept, how it is found, and the keys derived from it.

    taskmesh start --head ──creates (0600)──▶ ~/.taskmesh/cluster-secret ◀──reads── nodes, drivers, status
                                                  │ HKDF-SHA256, one label per use
                      ┌───────────────────────────┼───────────────────────────┐
              CurveZMQ head key pair     CurveZMQ peer key pair      object-transfer key
              (peers pin its public key) (the head admits only it)   (handshake, then AES-GCM)

Everyone who holds the secret can derive every key, so holding the secret is what admits a
process to the cluster, and nothing else does: a peer without it cannot complete a handshake
with the head (CurveZMQ) or with a node's object-transfer port, so no byte it sends is ever
decoded, let alone unpickled. docs/security.md has the threat model.

The secret is found, in order: an explicit ``secret_file`` (``--secret-file``, ``init(secret_file=)``),
the ``TASKMESH_SECRET`` environment variable (the secret itself, hex; this is how an embedded
cluster hands its one-off secret to its own processes), ``TASKMESH_SECRET_FILE``, and the
default file, which lab machines sharing a home directory all see.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import SecretError

if TYPE_CHECKING:
    from .config import Config

#: the environment variable holding the secret itself (hex)
ENV_SECRET = "TASKMESH_SECRET"
#: the environment variable naming the secret file
ENV_SECRET_FILE = "TASKMESH_SECRET_FILE"
#: bytes of randomness in a new secret
SECRET_BYTES = 32
_MIN_BYTES = 16


def default_secret_file() -> str:
    """``~/.taskmesh/cluster-secret``: one place every machine of a shared home sees."""
    return os.path.join(os.path.expanduser("~"), ".taskmesh", "cluster-secret")


class ClusterKey:
    """A cluster secret and the keys derived from it (each by HKDF-SHA256 with its own label)."""

    __slots__ = ("_secret", "source", "path", "_cache")

    def __init__(self, secret: bytes, source: str, path: str | None = None) -> None:
        if len(secret) < _MIN_BYTES:
            raise SecretError(f"the cluster secret from {source} is too short "
                              f"({len(secret)} bytes; at least {_MIN_BYTES})")
        self._secret = secret
        #: where it came from, for messages ("/home/ada/.taskmesh/cluster-secret", "$TASKMESH_SECRET")
        self.source = source
        #: the file it was read from or written to (None: from the environment, or made here)
        self.path = path
        self._cache: dict[bytes, bytes] = {}

    @classmethod
    def generate(cls) -> "ClusterKey":
        """A new random secret (an embedded cluster's, which lives as long as it does)."""
        return cls(secrets.token_bytes(SECRET_BYTES), "a secret made for this embedded cluster")

    def derive(self, label: str) -> bytes:
        """32 bytes for one use, independent of every other label's."""
        key = label.encode()
        out = self._cache.get(key)
        if out is None:
            out = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"taskmesh/1 " + key).derive(self._secret)
            self._cache[key] = out
        return out

    @property
    def fingerprint(self) -> str:
        """8 hex digits that tell secrets apart in messages (they reveal nothing of it)."""
        return hashlib.sha256(self.derive("fingerprint")).hexdigest()[:8]

    def hex(self) -> str:
        return self._secret.hex()

    def env(self) -> dict[str, str]:
        """Environment for a child process of this cluster (an embedded cluster's daemons, a
        node's workers): the secret itself, which the child takes out of its environment."""
        return {ENV_SECRET: self._secret.hex()}

    def __repr__(self) -> str:  # never the secret itself
        return f"ClusterKey(fingerprint={self.fingerprint}, source={self.source!r})"


@dataclass(frozen=True)
class Security:
    """How this process talks to the others: the cluster key, and whether traffic between
    machines is encrypted (``encrypt=False`` still authenticates every connection)."""

    key: ClusterKey
    encrypt: bool = True


def _parse(text: bytes, source: str, path: str | None = None) -> ClusterKey:
    raw = text.strip()
    try:
        secret = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SecretError(f"the cluster secret in {source} is not hex digits; make a new one "
                          "with `taskmesh secret --new`") from None
    return ClusterKey(secret, source, path)


def read_secret_file(path: str) -> ClusterKey:
    """Read a secret file; refuse one that others can read (as ssh refuses such keys)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SecretError(
            f"no cluster secret at {path}. `taskmesh start --head` creates it; on a machine "
            "that does not share the head's home directory, copy the file there (mode 600), "
            "or pass --secret-file PATH or set TASKMESH_SECRET_FILE") from None
    except OSError as exc:
        raise SecretError(f"cannot read the cluster secret {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise SecretError(f"the cluster secret {path} can be read by other users (mode "
                              f"{st.st_mode & 0o777:o}); run `chmod 600 {path}`")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return _parse(data, path, path)


def write_secret_file(path: str, key: ClusterKey | None = None, replace: bool = False) -> ClusterKey:
    """Write a new secret (or ``key``) to ``path``, readable by its owner only; its directory
    is made 0700 if it is created. Without ``replace``, an existing file is an error."""
    key = key or ClusterKey(secrets.token_bytes(SECRET_BYTES), path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)  # atomic: a reader sees the old or the new secret
        else:
            os.link(tmp, path)  # fails if it exists: never overwrite a cluster's secret
    except FileExistsError:
        raise SecretError(f"a cluster secret already exists at {path}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ClusterKey(key._secret, path, path)


def secret_path(secret_file: str = "", env: dict | None = None) -> str:
    """The file the secret is in when it is not in $TASKMESH_SECRET (see find_secret)."""
    env = os.environ if env is None else env
    return os.path.abspath(os.path.expanduser(
        secret_file or env.get(ENV_SECRET_FILE) or default_secret_file()))


def find_secret(secret_file: str = "", environ: dict | None = None) -> ClusterKey:
    """The cluster key, from (in order) ``secret_file``, $TASKMESH_SECRET,
    $TASKMESH_SECRET_FILE or the default file; SecretError says where it looked."""
    env = os.environ if environ is None else environ
    if not secret_file and env.get(ENV_SECRET):
        return _parse(env[ENV_SECRET].encode(), f"${ENV_SECRET}")
    return read_secret_file(secret_path(secret_file, env))


def find_or_create_secret(secret_file: str = "") -> tuple[ClusterKey, bool]:
    """As find_secret, but a secret file that does not exist yet is created (``taskmesh start
    --head``); (key, whether it was just made)."""
    if not secret_file and os.environ.get(ENV_SECRET):
        return find_secret(), False
    path = secret_path(secret_file, os.environ)
    try:
        return write_secret_file(path), True
    except SecretError:
        if not os.path.exists(path):
            raise
    return read_secret_file(path), False


def load_security(config: "Config") -> Security:
    """This process's Security, from its config (secret_file, encrypt) and environment."""
    return Security(find_secret(config.secret_file), config.encrypt)


def take_secret_from_env() -> ClusterKey | None:
    """In a child process of the cluster: the secret its parent put in $TASKMESH_SECRET, removed
    from the environment so programs the user's tasks start do not inherit it."""
    value = os.environ.pop(ENV_SECRET, None)
    return _parse(value.encode(), f"${ENV_SECRET}") if value else None
