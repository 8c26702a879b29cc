"""What tasks and actors print, shown on their driver (real embedded clusters, drivers run as
their own processes so that their stdout and stderr can be read), and kept in the node's
log files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

import taskmesh

from ..support.clients import run_python, with_support

pytestmark = pytest.mark.timeout(180)

PREFIX = re.compile(r"^\((\w+) pid=(\d+)\) (.*)$")


def _driver(body: str, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "import os, sys, time, subprocess, taskmesh\n" + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=with_support(env))
    assert r.returncode == 0, f"driver failed:\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def _prefixed(text: str) -> list[tuple[str, int, str]]:
    return [(m[1], int(m[2]), m[3]) for m in map(PREFIX.match, text.splitlines()) if m]


def test_tasks_and_actors_print_on_the_driver_prefixed_stderr_to_stderr():
    r = _driver("""
        taskmesh.init(num_cpus=2)
        @taskmesh.remote
        def hello(i):
            for k in range(30):
                print(f"hello {i} line {k}")
            print(f"warning {i}", file=sys.stderr)
            os.write(1, f"raw fd write {i}\\n".encode())   # C-level output counts too
            subprocess.run(["echo", f"from a subprocess {i}"], check=True)
            return os.getpid()
        @taskmesh.remote
        def parent():
            print("parent says hi")
            return taskmesh.get(hello.remote(99))
        @taskmesh.remote
        class Counter:
            def __init__(self):
                self.n = 0
            def incr(self):
                self.n += 1
                print("count is", self.n)
                return self.n
        pids = taskmesh.get([hello.remote(i) for i in range(3)])
        child_pid = taskmesh.get(parent.remote())
        c = Counter.remote()
        taskmesh.get([c.incr.remote() for _ in range(3)])
        print("DRIVER", pids, child_pid, flush=True)
        taskmesh.shutdown()
    """, env={"TASKMESH_DEDUP_LOGS": "0"})
    out = _prefixed(r.stdout)
    err = _prefixed(r.stderr)
    driver_line = next(line for line in r.stdout.splitlines() if line.startswith("DRIVER"))
    pids = [int(p) for p in re.findall(r"\d+", driver_line)]
    for i in range(3):
        lines = [(label, pid, text) for label, pid, text in out if text.startswith(f"hello {i} ")]
        assert [text for _, _, text in lines] == [f"hello {i} line {k}" for k in range(30)]
        assert {label for label, _, _ in lines} == {"hello"}
        assert {pid for _, pid, _ in lines} == {pids[i]}  # the worker that ran it
        assert ("hello", pids[i], f"warning {i}") in err
        assert ("hello", pids[i], f"raw fd write {i}") in out
        assert ("hello", pids[i], f"from a subprocess {i}") in out
    assert any(label == "parent" and text == "parent says hi" for label, _, text in out)
    assert ("hello", pids[3], "hello 99 line 0") in out  # a nested task's output too
    assert [text for label, _, text in out if label == "Counter"] == [
        "count is 1", "count is 2", "count is 3"]
    assert not any("warning" in text for _, _, text in out)  # stderr only on stderr


def test_log_to_driver_false_shows_nothing_and_the_files_keep_it_all():
    r = _driver("""
        info = taskmesh.init(num_cpus=1, log_to_driver=False)
        @taskmesh.remote
        def chatty():
            print("quiet please")
            print("and here", file=sys.stderr)
            return os.getpid()
        pid = taskmesh.get(chatty.remote())
        from taskmesh.config import Config
        print("LOGDIR", Config.from_env().node_log_dir(info["node_id"]), pid, flush=True)
        taskmesh.shutdown()
    """)
    assert "quiet please" not in r.stdout and "and here" not in r.stderr
    _, log_dir, pid = next(line for line in r.stdout.splitlines()
                           if line.startswith("LOGDIR")).split()
    names = os.listdir(log_dir)
    [out_file] = [n for n in names if n.endswith(f"-{pid}.out")]
    [err_file] = [n for n in names if n.endswith(f"-{pid}.err")]
    text = open(os.path.join(log_dir, out_file), encoding="utf-8").read()
    assert "quiet please\n" in text and "\x1etm\t" in text  # with its context marker
    assert "and here\n" in open(os.path.join(log_dir, err_file), encoding="utf-8").read()


def test_an_idle_driver_shows_output_while_it_sleeps():
    r = _driver("""
        taskmesh.init(num_cpus=1)
        @taskmesh.remote
        def slow():
            print("before the driver wakes", flush=True)
            time.sleep(3)
        ref = slow.remote()
        time.sleep(2)  # the driver does something else: no get(), no wait()
        print("DRIVER WOKE", flush=True)
        taskmesh.cancel(ref, force=True)
        taskmesh.shutdown()
    """)
    lines = r.stdout.splitlines()
    shown = next(i for i, line in enumerate(lines) if line.endswith("before the driver wakes"))
    assert shown < lines.index("DRIVER WOKE")


def test_the_same_line_from_many_workers_is_folded():
    r = _driver("""
        taskmesh.init(num_cpus=4)
        @taskmesh.remote
        def load(i):
            time.sleep(0.3)  # (long enough that the four workers each run some)
            print(f"loading shard {i} of 8")
            return os.getpid()
        pids = taskmesh.get([load.remote(i) for i in range(8)])
        print("PIDS", *pids, flush=True)
        taskmesh.shutdown()
    """, env={"TASKMESH_DEDUP_LOGS_AGG_WINDOW_S": "60"})  # (one window for the whole run)
    pids = [int(p) for p in next(line for line in r.stdout.splitlines()
                                 if line.startswith("PIDS")).split()[1:]]
    shown = [(pid, text) for label, pid, text in _prefixed(r.stdout) if label == "load"]
    first = shown[0][0]  # the process that showed the kind first: its lines all show
    others = sum(1 for p in pids if p != first)
    assert [pid for pid, _ in shown if pid == first] == [first] * (8 - others)
    rest = [text for pid, text in shown if pid != first]
    if others >= 2:  # folded into one line, shown when the window ends (here: at shutdown)
        assert len(rest) == 1 and rest[0].endswith(f"[repeated {others}x across cluster]")
    else:
        assert len(rest) == others and "repeated" not in "".join(rest)


def test_each_driver_sees_only_its_own_jobs_output(cluster, capsys):
    code = textwrap.dedent("""
        import sys, taskmesh
        taskmesh.init(address=sys.argv[1])
        @taskmesh.remote
        def say(word):
            print("said", word)
        taskmesh.get([say.remote(sys.argv[2]) for _ in range(3)])
        taskmesh.shutdown()
    """)
    secret = taskmesh._context.CTX.cluster.security.key.env()
    address = taskmesh._context.CTX.core.address
    env = {**os.environ, **secret, "TASKMESH_DEDUP_LOGS": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", code, address, word], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for word in ("alpha", "beta")]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for (out, err), word, other in zip(outs, ("alpha", "beta"), ("beta", "alpha")):
        assert [text for _, _, text in _prefixed(out)] == [f"said {word}"] * 3, (out, err)
        assert other not in out
    assert "said" not in capsys.readouterr().out  # nor this process, a driver too


def test_a_flood_is_bounded_and_other_drivers_lines_still_arrive(cluster):
    r = run_python(textwrap.dedent(f"""
        import taskmesh
        taskmesh.init(address={taskmesh._context.CTX.core.address!r})
        @taskmesh.remote
        def flood():
            line = "x" * 1000
            for _ in range(20_000):   # 20 MB at once
                print(line)
            print("y" * 100_000)      # and one very long line
            return "done"
        print("RESULT", taskmesh.get(flood.remote(), timeout=120), flush=True)
        taskmesh.shutdown()
    """), timeout=150, env={"TASKMESH_LOG_FORWARD_RATE": str(1 << 20)})
    assert r.returncode == 0, r.stderr
    assert "RESULT done" in r.stdout
    shown = [line for line in r.stdout.splitlines() if line.startswith("(flood")]
    # about 1 MB/s forwarded (burst 2 MB): far fewer than the 20,000 lines written
    assert 100 < len(shown) < 15_000
    assert "of output not shown here" in r.stderr
