"""Worker output on the driver, its decisions without processes: the node agent's parser and
batcher, the rotating file, the driver's folding of repeats, the worker's marked stream, and
the head's routing (a scripted head)."""

from __future__ import annotations

import io
import os
import random
import sys
import time

from taskmesh import _protocol as P
from taskmesh._client.output import Deduplicator, DriverOutput
from taskmesh._context import CTX
from taskmesh._node.output import (
    FLUSH_S,
    MAX_LINE,
    NodeOutput,
    OutputBatcher,
    RotatingFile,
    StreamParser,
)
from taskmesh._output_marks import NO_CONTEXT, Context, format_marker, parse_marker
from taskmesh._worker.output import FLOOD_LINES, Flusher, MarkedStream

from ..support.head import Cluster

JOB = b"D" + bytes(range(8))
F = Context(JOB, b"\x01" * 16, b"", "f")
G = Context(JOB, b"\x02" * 16, b"", "g")


def _marker(ctx: Context) -> bytes:
    return format_marker(ctx).encode()


# ------------------------------------------------------------------ markers and parsing


def test_a_marker_says_whose_output_follows_and_survives_odd_labels():
    ctx = Context(JOB, b"\x07" * 16, b"\x09" * 16, "weird\tname\nhere")
    back = parse_marker(format_marker(ctx))
    assert back == ctx._replace(label="weird name here")
    assert parse_marker("\x1etm\tnot hex\t\t\tx\n") is None
    assert parse_marker("\x1etm\tonly\ttwo\n") is None
    assert parse_marker("hello\n") is None


def test_lines_follow_the_marker_before_them_and_markers_are_not_lines():
    p = StreamParser()
    runs = p.feed(b"early\n" + _marker(F) + b"one\ntwo\n" + _marker(G) + b"three\n")
    assert runs == [(NO_CONTEXT, ["early"]), (F, ["one", "two"]), (G, ["three"])]


def test_a_line_split_across_reads_is_joined_and_the_last_one_waits_for_its_end():
    p = StreamParser()
    assert p.feed(_marker(F)[:5]) == []  # even a marker may come in pieces
    assert p.feed(_marker(F)[5:] + b"hel") == []
    assert p.feed(b"lo\r\nwor") == [(F, ["hello"])]
    assert p.end() == [(F, ["wor"])]  # the stream closed: its last words still count
    assert p.end() == []


def test_undecodable_bytes_are_replaced_not_fatal():
    p = StreamParser()
    [(ctx, [line])] = p.feed(b"\xff\xfe ok\n")
    assert line.endswith(" ok") and "\ufffd" in line


def test_a_line_longer_than_the_limit_is_cut_once_with_a_note():
    p = StreamParser()
    [(_, [line])] = p.feed(b"x" * (MAX_LINE + 10) + b"\n")
    assert line.startswith("x" * MAX_LINE) and "line cut" in line
    # one that never ends: its start shows as soon as it is too long, the rest is dropped
    p = StreamParser()
    [(_, [cut])] = p.feed(b"y" * (MAX_LINE + 1))
    assert cut.startswith("y" * MAX_LINE) and "line cut" in cut
    assert p.feed(b"y" * 100_000) == []
    assert p.feed(b"yyy\nnext\n") == [(NO_CONTEXT, ["next"])]


# ------------------------------------------------------------------ batching


def test_lines_wait_at_most_the_flush_period_and_merge_per_worker_stream():
    b = OutputBatcher(rate=1 << 20, now=0.0)
    assert b.due(0.0) is None and b.take(0.0) is None
    b.add(F, 10, 1, ["a"], now=1.0)
    b.add(F, 10, 1, ["b"], now=1.01)
    b.add(F, 10, 2, ["c"], now=1.02)
    b.add(NO_CONTEXT, 10, 1, ["no job: files only"], now=1.03)
    assert b.due(1.05) == 1.0 + FLUSH_S
    assert b.take(1.05) is None  # not due yet
    assert b.take(1.0 + FLUSH_S) == [[JOB, "f", 10, 1, ["a", "b"]], [JOB, "f", 10, 2, ["c"]]]
    assert b.due(2.0) is None


def test_over_the_rate_lines_are_counted_not_kept_and_the_driver_is_told():
    b = OutputBatcher(rate=1000, now=0.0)  # burst: 64 KiB at least
    line = "z" * 999
    b.add(F, 10, 1, [line] * 100, now=0.0)  # 100 KB at once: 65 fit in the burst
    out = b.take(0.0, force=True)
    kept = out[0][4]
    assert 60 <= len(kept) <= 66 and all(x == line for x in kept)
    [note] = [e for e in out if e[1] == "taskmesh"]
    assert note[0] == JOB and note[3] == 2 and f"{100 - len(kept)} lines" in note[4][0]
    # the budget refills with time
    b.add(F, 10, 1, ["x" * 10], now=60.0)
    assert b.take(60.0, force=True) == [[JOB, "f", 10, 1, ["x" * 10]]]


def test_memory_is_bounded_whatever_the_flood():
    b = OutputBatcher(rate=10_000, now=0.0)
    for i in range(10_000):
        b.add(F, 10, 1, ["w" * 100], now=i * 1e-4)  # 1 s of 1 MB/s against 10 KB/s
    assert b.size <= b.burst + 10_000 * 1.1 + 200


def test_a_rate_of_zero_forwards_nothing():
    b = OutputBatcher(rate=0, now=0.0)
    b.add(F, 10, 1, ["x"], now=0.0)
    out = b.take(1.0, force=True)
    assert out is not None and [e[1] for e in out] == ["taskmesh"]


def test_skipping_chunks_leaves_the_parser_where_feeding_them_would():
    rng = random.Random(7)
    lines = [("y" * rng.choice([0, 5, 80, MAX_LINE + 50])) + rng.choice(["", "\r"])
             for _ in range(400)]
    data = "\n".join(lines).encode() + b"\ntail"
    chunks, at = [], 0
    while at < len(data):
        n = rng.choice([1, 7, 100, 5000, 40_000])
        chunks.append(data[at:at + n])
        at += n
    whole = StreamParser()
    every = [line for chunk in chunks for _, ls in whole.feed(chunk) for line in ls]
    parser = StreamParser()
    seen = 0
    for chunk in chunks:
        if rng.random() < 0.5:
            assert parser.plain(chunk)
            seen += parser.skip(chunk)
        else:
            got = [line for _, ls in parser.feed(chunk) for line in ls]
            assert got == every[seen:seen + len(got)]
            seen += len(got)
    assert seen == len(every)
    assert [line for _, ls in parser.end() for line in ls] == ["tail"]


def test_a_marker_or_the_start_of_one_is_never_skipped():
    parser = StreamParser()
    assert not parser.plain(b"a\n" + _marker(F) + b"b\n")
    parser.feed(b"a\n" + _marker(F)[:3])  # a marker's start waits for its end
    assert not parser.plain(b"rest")
    parser.feed(_marker(F)[3:] + b"b\n")
    assert parser.context == F and parser.plain(b"c\n")


def test_a_flood_past_the_budget_is_counted_not_parsed_and_the_file_has_all(tmp_path):
    """NodeOutput on a real pipe: 2 MB of lines against a 64 KiB burst: the first lines go
    to the driver in order, every other one is counted, the worker's file has every byte."""
    out = NodeOutput(str(tmp_path), 1 << 30, 1, rate=1000, now=0.0)
    r, w = os.pipe()
    out.attach("w1", 4242, r, os.open(os.devnull, os.O_RDONLY))
    written = [_marker(F)] + [f"line {i:06d} {'q' * 88}\n".encode() for i in range(20_000)]
    try:
        for at in range(0, len(written), 500):  # 50 KB a write (the pipe holds 64 KiB)
            os.write(w, b"".join(written[at:at + 500]))
            assert out.read(r, now=0.0)
        os.close(w)
        w = -1
        assert not out.read(r, now=0.0)  # closed
    finally:
        out.close_all(0.0)
        if w >= 0:
            os.close(w)
    sent = out.batcher.take(0.0, force=True)
    shown = [line for e in sent if e[1] == "f" for line in e[4]]
    [note] = [e for e in sent if e[1] == "taskmesh"]
    assert shown == [f"line {i:06d} {'q' * 88}" for i in range(len(shown))]
    assert 600 <= len(shown) <= 700  # the 64 KiB burst
    assert f"{20_000 - len(shown)} lines of output not shown" in note[4][0]
    with open(tmp_path / "worker-w1-4242.out", "rb") as f:
        assert f.read() == b"".join(written)


# ------------------------------------------------------------------ files


def test_a_rotating_file_keeps_its_backups_and_no_more(tmp_path):
    path = str(tmp_path / "w.out")
    f = RotatingFile(path, max_bytes=100, backups=2)
    for i in range(7):
        f.write(f"{i}".encode() * 60)
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["w.out", "w.out.1", "w.out.2"]
    assert (tmp_path / "w.out").read_bytes() == b"6" * 60
    assert (tmp_path / "w.out.1").read_bytes() == b"5" * 60
    assert (tmp_path / "w.out.2").read_bytes() == b"4" * 60


# ------------------------------------------------------------------ the driver


def test_the_first_line_of_a_kind_shows_at_once_and_repeats_from_others_are_folded():
    d = Deduplicator(window_s=5.0)
    show = d.feed(("ip", 1), 1, "(f pid=1)", ["loading shard 3 of 32"], now=0.0)
    assert show == [(1, "(f pid=1) loading shard 3 of 32")]
    for pid in range(2, 33):
        assert d.feed(("ip", pid), 1, f"(f pid={pid})", [f"loading shard {pid} of 32"],
                      now=0.1) == []
    # the first process's own lines are never held
    assert d.feed(("ip", 1), 1, "(f pid=1)", ["loading shard 4 of 32"], now=0.2) == [
        (1, "(f pid=1) loading shard 4 of 32")]
    assert d.next_due() == 5.0
    assert d.flush(4.9) == []
    assert d.flush(5.0) == [(1, "(f pid=32) loading shard 32 of 32 [repeated 31x across cluster]")]
    assert d.flush(6.0) == [] and d.next_due() is None


def test_numbers_in_any_script_fold_and_runs_with_and_without_them_fold_alike():
    d = Deduplicator(window_s=5.0)
    d.feed(("ip", 1), 1, "(f)", ["plain", "epoch \u0663 done"], now=0.0)  # (Arabic-Indic 3)
    # another process's lines of the same kinds are held; a new line is shown
    assert d.feed(("ip", 2), 1, "(g)", ["plain", "epoch \u0664 done", "new"], now=0.1) == [
        (1, "(g) new")]
    assert d.feed(("ip", 3), 1, "(h)", ["epoch 7 done", "plain"], now=0.2) == []
    assert sorted(d.flush(5.0)) == [(1, "(h) epoch 7 done [repeated 2x across cluster]"),
                                    (1, "(h) plain [repeated 2x across cluster]")]


def test_different_lines_and_streams_are_not_folded_and_folding_can_be_off():
    d = Deduplicator(window_s=5.0)
    d.feed(("ip", 1), 1, "(f pid=1)", ["done"], now=0.0)
    assert d.feed(("ip", 2), 2, "(f pid=2)", ["done"], now=0.1) == [(2, "(f pid=2) done")]
    assert d.feed(("ip", 2), 1, "(f pid=2)", ["other"], now=0.1) == [(1, "(f pid=2) other")]
    # one repeat only: shown as it is once its window ends
    assert d.feed(("ip", 3), 1, "(f pid=3)", ["done"], now=0.2) == []
    assert d.flush(0, everything=True) == [(1, "(f pid=3) done")]
    off = Deduplicator(enabled=False)
    assert len(off.feed(("ip", 2), 1, "(f)", ["same", "same"], now=0.0)) == 2


def test_the_driver_prints_with_rays_prefix_and_stderr_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    d = DriverOutput(out, err)
    d.feed([["10.0.0.2", "f", 1234, 1, ["hello"]], ["10.0.0.2", "Counter", 99, 2, ["oops"]],
            ["127.0.0.1", "g", 7, 1, ["local"]]], now=0.0)
    assert out.getvalue() == "(f pid=1234, ip=10.0.0.2) hello\n(g pid=7) local\n"
    assert err.getvalue() == "(Counter pid=99, ip=10.0.0.2) oops\n"


# ------------------------------------------------------------------ the worker


def test_a_task_that_prints_is_marked_once_and_one_that_does_not_costs_nothing():
    real = io.StringIO()
    current = {"ctx": F}
    stream = MarkedStream(real, lambda: current["ctx"])
    saved = CTX.current_task_id
    try:
        CTX.current_task_id = F.task_id
        stream.write("a\n")
        stream.write("b\n")
        CTX.current_task_id = b"\x05" * 16  # a task that prints nothing: no marker
        CTX.current_task_id = G.task_id
        current["ctx"] = G
        print("c", file=stream)
    finally:
        CTX.current_task_id = saved
    assert real.getvalue() == format_marker(F) + "a\nb\n" + format_marker(G) + "c\n"
    p = StreamParser()
    assert p.feed(real.getvalue().encode()) == [(F, ["a", "b"]), (G, ["c"])]


def _pipe_stream() -> tuple[int, io.TextIOWrapper]:
    """A block-buffered text stream on a pipe, and the pipe's read end (non-blocking)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, io.TextIOWrapper(io.FileIO(w, "w"), line_buffering=False, write_through=False)


def _in_pipe(r: int) -> bytes:
    try:
        return os.read(r, 1 << 20)
    except BlockingIOError:
        return b""


def test_stdout_lines_go_out_as_they_end_and_a_flood_in_batches_soon_after():
    r, real = _pipe_stream()
    flusher = Flusher(real)
    stream = MarkedStream(real, lambda: F, flusher)
    saved = CTX.current_task_id
    try:
        CTX.current_task_id = F.task_id
        stream.write("partial ")
        assert _in_pipe(r) == _marker(F)  # the marker at once: C code may write next
        print("one", file=stream)
        assert _in_pipe(r) == b"partial one\n"  # a line, as it ends
        for i in range(FLOOD_LINES * 5):  # a flood: lines wait for the thread's flush
            print(f"line {i}", file=stream)
        got = _in_pipe(r)
        deadline = time.monotonic() + 10
        while got.count(b"\n") < FLOOD_LINES * 5 and time.monotonic() < deadline:
            time.sleep(0.01)
            got += _in_pipe(r)
        assert got == b"".join(f"line {i}\n".encode() for i in range(FLOOD_LINES * 5))
        stream = MarkedStream(real, lambda: F, flusher := Flusher(real, after=3600))
        for i in range(FLOOD_LINES * 2):  # another flood, and results to send at once:
            print(f"more {i}", file=stream)
        got = _in_pipe(r)
        assert flusher.dirty and got.count(b"more ") < FLOOD_LINES * 2  # (some wait)
        flusher.flush()  # (what the worker does first): every line is out now
        got += _in_pipe(r)
        assert got.startswith(_marker(F)) and got.count(b"more ") == FLOOD_LINES * 2
    finally:
        CTX.current_task_id = saved
        real.close()
        os.close(r)


def test_a_flood_puts_the_marked_stream_aside_until_its_task_ends(monkeypatch):
    r, real = _pipe_stream()
    flusher = Flusher(real, after=3600)
    current = {"ctx": F}
    marked = MarkedStream(real, lambda: current["ctx"], flusher)
    flusher.marked = marked
    monkeypatch.setattr(sys, "stdout", marked)
    saved = CTX.current_task_id
    try:
        CTX.current_task_id = F.task_id
        for i in range(FLOOD_LINES * 3):
            print(f"f {i}")  # (print looks sys.stdout up each time, as task code does)
        assert sys.stdout is real and flusher.direct  # C speed from the flood on
        flusher.task_ended()
        assert sys.stdout is marked and not flusher.direct
        CTX.current_task_id, current["ctx"] = G.task_id, G
        print("g")  # the next task is marked again
        got = _in_pipe(r)
        assert got == (_marker(F) + b"".join(f"f {i}\n".encode() for i in range(FLOOD_LINES * 3))
                       + _marker(G) + b"g\n")
        assert StreamParser().feed(got)[-1] == (G, ["g"])
        flusher.allow_direct = False  # tasks run concurrently: each write stays marked
        for i in range(FLOOD_LINES * 3):
            print(f"h {i}")
        assert sys.stdout is marked and not flusher.direct
    finally:
        CTX.current_task_id = saved
        real.close()
        os.close(r)


# ------------------------------------------------------------------ the head


def test_the_head_sends_each_line_to_its_jobs_driver_only():
    c = Cluster()
    quiet = c.hello(b"D-quiet", "driver", {"log_to_driver": False})
    other = c.hello(b"D-other", "driver")
    c.add_node("n1", address="10.0.0.7")
    c.drain()
    c.send(c.node_peer["n1"], P.WorkerOutput([
        [c.driver, "f", 11, 1, ["for the driver"]],
        [quiet, "f", 12, 1, ["not for a quiet driver"]],
        [b"D-gone", "f", 13, 1, ["nobody"]],
        [other, "g", 14, 2, ["for the other"]],
        [c.driver, "h", 11, 2, ["again"]],
    ]))
    sent = c.drain()
    assert sent.to(c.driver, P.Output) == [P.Output([["10.0.0.7", "f", 11, 1, ["for the driver"]],
                                                     ["10.0.0.7", "h", 11, 2, ["again"]]])]
    assert sent.to(other, P.Output) == [P.Output([["10.0.0.7", "g", 14, 2, ["for the other"]]])]
    assert sent.to(quiet) == [] and sent.to(b"D-gone") == []
    # a driver may not send it
    c.send(c.driver, P.WorkerOutput([[c.driver, "f", 1, 1, ["x"]]]))
    assert c.drain().of(P.Output) == []


def test_tasks_carry_their_jobs_driver_even_when_a_task_submitted_them():
    c = Cluster()
    c.add_node("n1", cpus=2, workers=2)
    fid = c.register("mod.parent")
    [parent] = c.submit(fid)
    sent = c.drain()
    [a] = sent.assignments()
    assert a.job == c.driver
    worker = sent.assigned_to()[parent]
    child = c.spec(fid)._replace(parent=parent)
    c.send(worker, P.Submit([child]))
    [b] = c.drain().assignments()
    assert b.task_id == child.task_id and b.job == c.driver


def test_old_nodes_log_directories_are_pruned_newest_and_recent_kept(tmp_path):
    import os

    from taskmesh._node.output import prune_old_logs

    for i in range(6):
        d = tmp_path / f"node{i}"
        d.mkdir()
        (d / "worker-1-2.out").write_text("x")
        os.utime(d, (1000.0 + i * 100, 1000.0 + i * 100))
    removed = prune_old_logs(str(tmp_path), keep=3, min_age_s=450, now=1600.0)
    # node0..2 are beyond the newest 3; node2 (400 s old) is too recent to go
    assert sorted(os.path.basename(p) for p in removed) == ["node0", "node1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node2", "node3", "node4", "node5"]
