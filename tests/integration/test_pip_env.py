"""runtime_env pip: real virtual environments made by real pip, from a wheel built here and
served from a local directory (no network): made once, the node's packages visible, a bad
requirement failing with pip's own error and leaving nothing, concurrent builders taking
turns, a stuck index cut off by the set-up time-out."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import zipfile

import pytest

from taskmesh._runtime_env import pip_env
from taskmesh._runtime_env.spec import validate

pytestmark = pytest.mark.timeout(180)


def _wheel(where, name: str = "tmdemo", version: str = "0.1", value: int = 42) -> str:
    """A pure-Python wheel of one package whose ``VALUE`` is ``value``, written by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: taskmesh-tests\n"
                         "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = os.path.join(where, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for name_, text in files.items():
            z.writestr(name_, text)
    return path


def _pip(wheels: str, *reqs: str) -> dict:
    return validate({"pip": [*reqs, "--no-index", f"--find-links {wheels}"]})["pip"]


def test_an_environment_is_made_once_and_sees_its_packages_and_the_nodes(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(str(wheels))
    cache, log = str(tmp_path / "cache"), str(tmp_path / "pip.log")
    pip = _pip(str(wheels), "tmdemo==0.1")
    env = pip_env.build(pip, cache, log)
    assert os.path.basename(env) == pip_env.env_name(pip) and pip_env.is_ready(env)
    out = subprocess.run(
        [pip_env.python_of(env), "-c",
         "import tmdemo, numpy, taskmesh, sys; print(tmdemo.VALUE, sys.prefix)"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["42", env]
    # the node's interpreter does not see it
    assert subprocess.run([sys.executable, "-c", "import tmdemo"], capture_output=True,
                          timeout=60).returncode != 0
    logged = os.path.getsize(log)
    start = time.monotonic()
    assert pip_env.build(pip, cache, log) == env  # (there: pip does not run again)
    assert os.path.getsize(log) == logged and time.monotonic() - start < 1.0
    # other requirements: another environment
    assert pip_env.env_name(_pip(str(wheels), "tmdemo")) != pip_env.env_name(pip)


def test_a_requirement_that_does_not_exist_fails_with_pips_error_and_leaves_nothing(tmp_path):
    cache, log = str(tmp_path / "cache"), str(tmp_path / "pip.log")
    pip = _pip(str(tmp_path), "tm-no-such-package-anywhere==9.9")
    with pytest.raises(pip_env.PipEnvError) as info:
        pip_env.build(pip, cache, log)
    text = str(info.value)
    assert "pip install tm-no-such-package-anywhere==9.9" in text and "exit code" in text
    assert "No matching distribution found for tm-no-such-package-anywhere==9.9" in text
    assert not os.path.exists(os.path.join(cache, pip_env.env_name(pip)))
    assert "No matching distribution" in open(log).read()


def test_builders_of_one_environment_take_turns_and_pip_runs_once(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(str(wheels), value=7)
    cache, log = str(tmp_path / "cache"), str(tmp_path / "pip.log")
    spec = json.dumps(_pip(str(wheels), "tmdemo==0.1"))
    procs = [subprocess.Popen([sys.executable, "-m", "taskmesh._runtime_env.pip_env", spec,
                               cache, log, "120"], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        outs = [p.communicate(timeout=150)[0].strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1 and pip_env.is_ready(outs[0])
    assert open(log).read().count(" install ") == 1


def test_a_stuck_index_is_cut_off_by_the_set_up_time_out(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # (accepts connections, never answers)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/simple"
        pip = validate({"pip": ["tmdemo", f"--index-url {url}"]})["pip"]
        start = time.monotonic()
        with pytest.raises(pip_env.PipEnvError, match="set-up time-out"):
            pip_env.build(pip, str(tmp_path / "cache"), str(tmp_path / "pip.log"), timeout_s=4)
        assert time.monotonic() - start < 30
        assert os.listdir(tmp_path / "cache") == [pip_env.env_name(pip) + ".lock"]
    finally:
        listener.close()


def test_a_process_started_for_an_environment_has_its_code_packages_and_variables(tmp_path):
    from taskmesh._runtime_env import apply
    from taskmesh._runtime_env import package as pkg

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(str(wheels), value=5)
    proj, lib = tmp_path / "proj", tmp_path / "lib" / "helpers"
    proj.mkdir()
    (proj / "mylib.py").write_text("NAME = 'mylib from the working_dir'\n")
    (proj / "data.txt").write_text("read relative to the working_dir\n")
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("HELP = 'helpers from py_modules'\n")
    cache = str(tmp_path / "cache")

    def ship(path: str, keep_name: bool) -> str:  # packed on the driver, unpacked on a node
        tree = pkg.scan(path, keep_name=keep_name)
        return pkg.unpack(pkg.zip_bytes(tree), cache, pkg.digest(tree))

    env = pip_env.build(_pip(str(wheels), "tmdemo==0.1"), cache, str(tmp_path / "pip.log"))
    ready = apply.Ready("env_t", working_dir=ship(str(proj), False),
                        py_paths=(ship(str(lib), True),), python=pip_env.python_of(env),
                        env_vars={"TM_TEST_VAR": "set before import"})
    code = ("import os, mylib, helpers, tmdemo; "
            "print(mylib.NAME, helpers.HELP, tmdemo.VALUE, os.environ['TM_TEST_VAR'], "
            "open('data.txt').read().strip(), os.environ['TASKMESH_RUNTIME_ENV_ID'], sep='|')")
    argv, environ, cwd = apply.launch(ready, [sys.executable, "-c", code], dict(os.environ))
    out = subprocess.run(argv, env=environ, cwd=cwd, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out.split("|") == ["mylib from the working_dir", "helpers from py_modules", "5",
                              "set before import", "read relative to the working_dir", "env_t"]
