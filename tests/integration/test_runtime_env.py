"""runtime_env on a real embedded cluster: env_vars and pip reach tasks and actors, merged as
Ray merges them (job, task, nested task), in workers of their own (pooled per environment,
never shared with another environment); a pip requirement that cannot be installed fails the
task with RuntimeEnvSetupError and pip's error; bad runtime_envs are refused before anything
runs. pip installs a wheel built here from a local directory (no network)."""

from __future__ import annotations

import os

import pytest

import taskmesh

from ..support.procs import embedded_cluster
from .test_pip_env import _wheel

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def env_cluster(tmp_path_factory):
    cache = tmp_path_factory.mktemp("runtime_env")
    with embedded_cluster(num_cpus=2, runtime_env_dir=str(cache),
                          runtime_env={"env_vars": {"TM_JOB": "job"}}):
        yield taskmesh


@taskmesh.remote
def env_of(*names):
    return [os.environ.get(n) for n in names]


@taskmesh.remote
def pid_and_env(name):
    return os.getpid(), os.environ.get(name)


@taskmesh.remote
def nested(name):
    """A task that submits one with no runtime_env of its own, and one with its own."""
    inherit = env_of.remote(name, "TM_JOB")
    own = env_of.options(runtime_env={"env_vars": {"TM_CHILD": "child"}}).remote(
        name, "TM_CHILD", "TM_JOB")
    return taskmesh.get(inherit), taskmesh.get(own)


@taskmesh.remote
def context_env():
    return taskmesh.get_runtime_context().runtime_env


def test_env_vars_reach_tasks_merged_over_the_jobs_as_ray_merges_them(env_cluster):
    assert taskmesh.get_runtime_context().runtime_env == {"env_vars": {"TM_JOB": "job"}}
    assert taskmesh.get(context_env.options(runtime_env={"env_vars": {"TM_A": "a"}}).remote(),
                        timeout=60) == {"env_vars": {"TM_JOB": "job", "TM_A": "a"}}
    assert taskmesh.get(env_of.remote("TM_JOB", "TM_A"), timeout=60) == ["job", None]
    with_a = env_of.options(runtime_env={"env_vars": {"TM_A": "a", "TM_JOB": "mine"}})
    assert taskmesh.get(with_a.remote("TM_JOB", "TM_A"), timeout=60) == ["mine", "a"]
    # a nested task inherits its parent's environment; its own env_vars merge over it
    inherit, own = taskmesh.get(
        nested.options(runtime_env={"env_vars": {"TM_P": "parent"}}).remote("TM_P"), timeout=90)
    assert inherit == ["parent", "job"]
    assert own == ["parent", "child", "job"]


def test_each_environment_has_workers_of_its_own_reused_while_they_live(env_cluster):
    x = pid_and_env.options(runtime_env={"env_vars": {"TM_X": "x"}})
    y = pid_and_env.options(runtime_env={"env_vars": {"TM_X": "y"}})
    default = taskmesh.get([pid_and_env.remote("TM_X") for _ in range(6)], timeout=60)
    xs = taskmesh.get([x.remote("TM_X") for _ in range(6)], timeout=60)
    ys = taskmesh.get([y.remote("TM_X") for _ in range(6)], timeout=60)
    assert {v for _, v in default} == {None}
    assert {v for _, v in xs} == {"x"} and {v for _, v in ys} == {"y"}
    pids = [{p for p, _ in r} for r in (default, xs, ys)]
    assert not (pids[0] & pids[1]) and not (pids[0] & pids[2]) and not (pids[1] & pids[2])
    # its workers are reused: two rounds more start none (2 CPUs: at most two of them)
    again = [p for _ in range(2) for p, _ in taskmesh.get([x.remote("TM_X") for _ in range(6)],
                                                          timeout=60)]
    assert len(pids[1] | set(again)) <= 2 and not set(again) & (pids[0] | pids[2])


def test_an_actor_runs_in_its_runtime_env(env_cluster):
    @taskmesh.remote
    class Reader:
        def read(self, name):
            return os.environ.get(name), os.getpid()

    a = Reader.options(runtime_env={"env_vars": {"TM_ACTOR": "on"}}).remote()
    b = Reader.remote()
    (value_a, pid_a), (value_b, pid_b) = taskmesh.get(
        [a.read.remote("TM_ACTOR"), b.read.remote("TM_ACTOR")], timeout=60)
    assert value_a == "on" and value_b is None and pid_a != pid_b
    assert taskmesh.get(b.read.remote("TM_JOB"), timeout=30)[0] == "job"


def test_a_pip_requirement_is_installed_once_and_importable_only_in_its_environment(
        env_cluster, tmp_path):
    _wheel(str(tmp_path), value=99)
    pip = ["tmdemo==0.1", "--no-index", f"--find-links {tmp_path}"]

    @taskmesh.remote
    def demo_value():
        try:
            import tmdemo
        except ImportError:
            return None
        return tmdemo.VALUE

    with_pip = demo_value.options(runtime_env={"pip": pip})
    assert taskmesh.get([with_pip.remote() for _ in range(4)], timeout=180) == [99] * 4
    assert taskmesh.get(demo_value.remote(), timeout=60) is None


def test_a_requirement_that_cannot_be_installed_fails_the_task_with_pips_error(env_cluster,
                                                                               tmp_path):
    bad = env_of.options(runtime_env={"pip": ["tm-no-such-package==9.9", "--no-index",
                                              f"--find-links {tmp_path}"]})
    with pytest.raises(taskmesh.RuntimeEnvSetupError) as info:
        taskmesh.get(bad.remote("TM_JOB"), timeout=180)
    text = str(info.value)
    assert "could not be set up on node" in text
    assert "No matching distribution found for tm-no-such-package==9.9" in text
    assert taskmesh.get(env_of.remote("TM_JOB"), timeout=60) == ["job"]  # (the cluster is fine)


def test_bad_runtime_envs_are_refused_before_anything_runs(env_cluster, tmp_path):
    with pytest.raises(ValueError, match="unknown field 'envvars'"):
        env_of.options(runtime_env={"envvars": {}})
    with pytest.raises(ValueError, match=r"\['TM'\] must be a str"):
        env_of.options(runtime_env={"env_vars": {"TM": 1}})
    with pytest.raises(ValueError, match="does not exist"):
        env_of.options(runtime_env={"working_dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="'conda'.*not supported"):

        @taskmesh.remote(runtime_env={"conda": "env.yml"})
        class Never:
            pass


def _project(root):
    proj = root / "proj"
    proj.mkdir()
    (proj / "mylib.py").write_text("def hello():\n    return 'hello from mylib'\n")
    (proj / "data.txt").write_text("data in the working_dir\n")
    (proj / ".gitignore").write_text("*.log\n")
    (proj / "run.log").write_text("left out by .gitignore")
    lib = root / "libs" / "helpers"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("HELP = 'helpers from py_modules'\n")
    return proj, lib


def test_a_project_imports_its_own_modules_and_a_second_run_uploads_nothing(env_cluster,
                                                                            tmp_path):
    proj, lib = _project(tmp_path)

    @taskmesh.remote
    def use():
        import helpers
        import mylib
        with open("data.txt") as f:
            data = f.read().strip()
        return mylib.hello(), helpers.HELP, data, os.path.exists("run.log")

    @taskmesh.remote
    def plain():
        try:
            __import__("mylib")
        except ImportError:
            return "no mylib here"
        return "mylib leaked"

    env = {"working_dir": str(proj), "py_modules": [str(lib)]}
    expected = ("hello from mylib", "helpers from py_modules", "data in the working_dir", False)
    assert tuple(taskmesh.get(use.options(runtime_env=env).remote(), timeout=120)) == expected
    assert taskmesh.get(plain.remote(), timeout=60) == "no mylib here"
    # another run (as a new driver would: nothing remembered here) finds the packages at the
    # head and uploads nothing; a changed file is uploaded again
    core = taskmesh._context.CTX.core
    uploads: list[int] = []
    upload = core.put_value
    core.put_value = lambda data: uploads.append(len(data)) or upload(data)
    try:
        core._packages.clear()
        again = use.options(runtime_env={**env, "env_vars": {"RUN": "2"}})
        assert tuple(taskmesh.get(again.remote(), timeout=120)) == expected
        assert uploads == []
        (proj / "mylib.py").write_text("def hello():\n    return 'changed'\n")
        changed = use.options(runtime_env={**env, "env_vars": {"RUN": "3"}})
        assert taskmesh.get(changed.remote(), timeout=120)[0] == "changed"
        assert len(uploads) == 1  # (the working_dir; py_modules unchanged)
    finally:
        core.put_value = upload


def test_a_zip_working_dir_and_a_project_over_the_size_limit(env_cluster, tmp_path, monkeypatch):
    import zipfile

    with zipfile.ZipFile(tmp_path / "proj.zip", "w") as z:
        z.writestr("proj/zipped.py", "WHERE = 'from the zip'\n")

    @taskmesh.remote
    def zipped():
        import zipped as m
        return m.WHERE, os.path.basename(os.getcwd())

    got = taskmesh.get(zipped.options(runtime_env={"working_dir": str(tmp_path / "proj.zip")})
                       .remote(), timeout=120)
    assert tuple(got) == ("from the zip", "proj")  # (its one top directory: the working_dir)
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.ckpt").write_bytes(b"\0" * 300_000)
    (big / "main.py").write_text("")
    monkeypatch.setenv("TASKMESH_RUNTIME_ENV_MAX_MB", "0.1")
    with pytest.raises(ValueError, match=r"over the limit.*model\.ckpt \(0\.3 MiB\)"):
        env_of.options(runtime_env={"working_dir": str(big)}).remote("X")
    monkeypatch.delenv("TASKMESH_RUNTIME_ENV_MAX_MB")
    assert taskmesh.get(env_of.options(runtime_env={"working_dir": str(big),
                                                    "excludes": ["*.ckpt"]}).remote("TM_JOB"),
                        timeout=120) == ["job"]


def test_a_package_that_cannot_be_read_fails_the_tasks_with_the_cause(env_cluster, tmp_path):
    from taskmesh._runtime_env import package

    proj = tmp_path / "lost"
    proj.mkdir()
    (proj / "m.py").write_text("X = 1\n")
    name = package.digest(package.scan(str(proj)))
    core = taskmesh._context.CTX.core
    core._packages[name] = b"\x01" * 20  # (as if its object were gone: no such object)
    try:
        with pytest.raises(taskmesh.RuntimeEnvSetupError) as info:
            taskmesh.get(env_of.options(runtime_env={"working_dir": str(proj)}).remote("X"),
                         timeout=120)
    finally:
        core._packages.pop(name, None)
    assert "its packages could not be set up" in str(info.value)
    assert taskmesh.get(env_of.remote("TM_JOB"), timeout=60) == ["job"]
