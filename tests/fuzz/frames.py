"""Fuzzing ``decode``: raw frames that are garbage, nearly right, or right in the wrong way.

``decode`` must return a typed message (one that encodes again) or raise ProtocolError, and
never anything else, whatever the frames hold: random bytes; valid encodings cut short or with
bytes flipped; msgpack of the wrong shape (not an array, an unknown or non-int op, too few or
too many fields, fields of the wrong type); declared sizes far beyond the data; references to
out-of-band frames that do not exist or are malformed; deep nesting; invalid UTF-8.
"""

from __future__ import annotations

import random
import struct
import time
import traceback
from collections import Counter
from typing import Any

import msgpack

from taskmesh import _protocol as P

from .head import Crash, _damage
from .values import AnyMessage, Values

_OPS = sorted(P.message_types())
#: a decode slower than this is a crash too (a hang, at scale)
SLOW_S = 0.5


class FrameFuzzer:
    def __init__(self, seed: int, counts: Counter) -> None:
        self.rng = rng = random.Random(f"frames-{seed}")
        self.seed = seed
        self.v = Values(rng)
        ids = [rng.randbytes(16) for _ in range(4)] + [rng.randbytes(20) for _ in range(4)]
        pools = {"objects": ids[4:], "tasks": ids[:4], "actors": ids[:2], "functions": ids[:1],
                 "node_ids": ["n1"], "worker_ids": ["n1-1"]}
        self.any = AnyMessage(self.v, lambda: pools)
        self.counts = counts  # outcome -> frames
        self.step = 0

    def run(self, n: int) -> None:
        makers = (self.random_bytes, self.cut, self.flipped, self.wrong_shape, self.wrong_fields,
                  self.huge_sizes, self.frame_refs, self.deep, self.bad_utf8, self.valid)
        for _ in range(n):
            self.step += 1
            frames = self.rng.choice(makers)()
            self.check(frames)

    def check(self, frames: list) -> None:
        start = time.perf_counter()
        try:
            msg = P.decode(frames)
        except P.ProtocolError:
            self.counts["(rejected by decode)"] += 1
            return
        except Exception:
            raise Crash(f"decode raised something else than ProtocolError (seed {self.seed}, "
                        f"step {self.step}, frames {frames!r:.600})\n{traceback.format_exc()}") from None
        finally:
            if time.perf_counter() - start > SLOW_S:
                raise Crash(f"decode took {time.perf_counter() - start:.1f} s (seed {self.seed}, "
                            f"step {self.step}, frames {frames!r:.300})")
        if type(msg) not in P.message_types().values():
            raise Crash(f"decode returned a {type(msg).__name__} (seed {self.seed}, step {self.step})")
        try:
            P.encode(msg)
        except Exception:
            raise Crash(f"a decoded {type(msg).__name__} does not encode again (seed {self.seed}, "
                        f"step {self.step}, frames {frames!r:.600})\n{traceback.format_exc()}") from None
        self.counts[type(msg).__name__] += 1

    # -- makers

    def encoded(self) -> list:
        return P.encode(self.any(), frame_threshold=self.rng.choice((16, 64 * 1024)))

    def valid(self) -> list:
        return self.encoded()

    def random_bytes(self) -> list:
        r = self.rng
        frames = [r.randbytes(r.randint(0, 64))]
        if r.random() < 0.2:
            frames += [r.randbytes(r.randint(0, 16)) for _ in range(r.randint(1, 3))]
        if r.random() < 0.05:
            return []
        return frames

    def cut(self) -> list:
        frames = self.encoded()
        frames[0] = frames[0][: self.rng.randrange(max(1, len(frames[0])))]
        return frames

    def flipped(self) -> list:
        return _damage(self.rng, self.encoded())

    def wrong_shape(self) -> list:
        r, v = self.rng, self.v
        x = r.random()
        if x < 0.3:
            obj: Any = v.any_()
        elif x < 0.5:
            obj = []
        elif x < 0.7:  # an op that is not an int, or no such op
            obj = [r.choice((v.float_(), v.str_(), None, True, [1], v.int_(), max(_OPS) + 1, -1)),
                   *[v.any_() for _ in range(r.randint(0, 3))]]
        else:  # a known op with a field too many or too few
            op = r.choice(_OPS)
            need = len(P.message_types()[op]._fields)
            obj = [op, *[v.any_() for _ in range(max(0, need + r.choice((-2, -1, 1, 2))))]]
        return [msgpack.packb(obj)]

    def wrong_fields(self) -> list:
        """A known op with the right field count, some fields swapped for random values
        (or, inside records, their parts)."""
        r, v = self.rng, self.v
        msg = self.any()
        raw = msgpack.unpackb(P.encode(msg)[0], strict_map_key=False)
        for i in range(1, len(raw)):
            if r.random() < 0.4:
                raw[i] = _mutate(r, v, raw[i])
        return [msgpack.packb(raw)]

    def huge_sizes(self) -> list:
        r = self.rng
        op = r.choice(_OPS)
        big = r.choice((2**32 - 1, 2**31, 10**9, 65536, 2**16 - 1))
        kind = r.choice((b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"))  # array32 map32 str32 bin32 ext32
        header = kind + struct.pack(">I", big) + (b"\x01" if kind == b"\xc9" else b"")
        body = header + r.randbytes(r.randint(0, 32))
        prefix = msgpack.packb(op) if r.random() < 0.8 else b""
        outer = b"\x92" if r.random() < 0.7 else b"\xdd" + struct.pack(">I", big)
        return [outer + prefix + body]

    def frame_refs(self) -> list:
        r = self.rng
        nframes = r.randint(0, 3)
        index = r.choice((0, 1, 2, 3, 4, nframes, nframes + 1, 2**32 - 1, 2**31))
        data = index.to_bytes(4, "little")
        if r.random() < 0.2:
            data = data[: r.randint(0, 3)] if r.random() < 0.5 else data + b"\0"
        code = 1 if r.random() < 0.8 else r.randint(0, 127)
        ref = msgpack.ExtType(code, data)
        op, fields = r.choice(((21, [[[r.randbytes(16), [[0, ref, []]], 0.1]]]),  # TaskResults data
                               (12, [[[r.randbytes(20), [0, b"", [ref]]]]]),  # Put buffer
                               (10, [r.randbytes(16), "f", ref]),  # RegisterFunction blob
                               (1, [1, "driver", {"x": ref}])))
        frames = [msgpack.packb([op, *fields])]
        frames += [r.choice((b"", r.randbytes(8), bytearray(4), memoryview(b"abc")))
                   for _ in range(nframes)]
        return frames

    def deep(self) -> list:
        depth = self.rng.choice((10, 100, 1000, 5000, 100_000))
        return [b"\x92\x0b" + b"\x91" * depth + b"\xc0"]  # [11 (Submit), [[[...]]]]

    def bad_utf8(self) -> list:
        r = self.rng
        bad = r.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"))
        return [b"\x93\x01\x01" + bytes([0xA0 | len(bad)]) + bad]  # Hello(1, <bad str>, ...)


def _mutate(r: random.Random, v: Values, value: Any) -> Any:
    """``value`` with one part replaced by a random value (descending into lists)."""
    if type(value) is list and value and r.random() < 0.6:
        i = r.randrange(len(value))
        value = list(value)
        value[i] = _mutate(r, v, value[i])
        return value
    return v.any_()
