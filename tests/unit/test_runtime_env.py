"""runtime_env: checking, merging (Ray's inheritance), and packages (what is packed, how it
is named, unpacked once, refused when unsafe or too big)."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pytest

from taskmesh._runtime_env import RuntimeEnvError, merge, validate
from taskmesh._runtime_env import package as pkg

# ------------------------------------------------------------------ checking


def test_none_and_empty_are_no_environment_and_fields_set_to_none_are_unset():
    assert validate(None) == {}
    assert validate({}) == {}
    assert validate({"env_vars": None, "pip": None}) == {}


@pytest.mark.parametrize("env, words", [
    ({"conda": "env.yml"}, ["['conda'] is not supported", "use 'pip'"]),
    ({"container": {"image": "x"}}, ["not supported", "container"]),
    ({"workdir": "."}, ["unknown field 'workdir'", "env_vars", "working_dir"]),
    ({"env_vars": {"A": 1}}, ["['A'] must be a str", "int"]),
    ({"env_vars": {"A=B": "1"}}, ["not a valid variable name"]),
    ({"env_vars": ["A"]}, ["must be a dict"]),
    ({"working_dir": "/no/such/dir/anywhere"}, ["does not exist"]),
    ({"working_dir": "s3://bucket/pkg.zip"}, ["remote URIs", "not supported"]),
    ({"py_modules": "mylib"}, ["must be a list"]),
    ({"pip": 3}, ["list of requirements"]),
    ({"pip": {"pkgs": ["x"]}}, ["unknown keys ['pkgs']"]),
    ({"pip": ["--user", "x"]}, ["option '--user' is not allowed"]),
    ({"config": {"setup_timeout_seconds": 0}}, ["positive int, or -1"]),
    ({"excludes": "*.log"}, ["list of gitignore-style patterns"]),
    ("env", ["must be a dict, got str"]),
])
def test_bad_runtime_envs_are_refused_with_the_field_and_the_fix(env, words):
    with pytest.raises(RuntimeEnvError) as info:
        validate(env)
    assert isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_paths_become_absolute_and_pip_takes_one_form(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\nsix==1.16.0  # for tests\n\nidna\n")
    monkeypatch.chdir(tmp_path)
    env = validate({"working_dir": "proj", "pip": "requirements.txt",
                    "env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": -1}})
    assert env["working_dir"] == str(tmp_path / "proj")
    assert env["pip"] == {"packages": ["six==1.16.0", "idna"], "pip_check": False}
    assert validate({"pip": {"packages": ["six"], "pip_check": True, "pip_version": "==24.0"}})[
        "pip"] == {"packages": ["six"], "pip_check": True, "pip_version": "==24.0"}
    assert validate({"pip": ["six", " "]})["pip"]["packages"] == ["six"]


def test_a_module_object_ships_its_package_directory_or_its_file():
    import email  # a package
    import json.decoder as one  # a module file
    mods = validate({"py_modules": [email, one]})["py_modules"]
    assert mods == [os.path.dirname(email.__file__), one.__file__]
    with pytest.raises(RuntimeEnvError, match="has no file"):
        validate({"py_modules": [__import__("sys")]})


def test_a_child_replaces_its_parents_fields_but_merges_env_vars_as_ray_does():
    parent = {"env_vars": {"A": "1", "B": "2"}, "pip": {"packages": ["six"],
                                                        "pip_check": False}}
    child = {"env_vars": {"B": "3", "C": "4"}, "working_dir": "/w"}
    assert merge(parent, child) == {"env_vars": {"A": "1", "B": "3", "C": "4"},
                                    "pip": parent["pip"], "working_dir": "/w"}
    assert merge(parent, {"pip": {"packages": [], "pip_check": False}})["pip"]["packages"] == []
    assert merge({}, child) is child and merge(parent, {}) is parent


# ------------------------------------------------------------------ packages


def _tree(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_what_is_packed_leaves_out_git_caches_gitignored_and_excluded_files(tmp_path):
    _tree(tmp_path, {
        "main.py": "import mylib", "mylib/__init__.py": "X = 1", "mylib/util.py": "",
        ".git/HEAD": "ref", "mylib/__pycache__/util.cpython-311.pyc": "b",
        ".gitignore": "*.log\nbuild/\n", "run.log": "x", "build/out.bin": "x",
        "data/.gitignore": "raw/\n", "data/raw/a.csv": "1", "data/clean.csv": "2",
        "notes/todo.txt": "x", "mylib/notes/keep.txt": "x",
    })
    tree = pkg.scan(str(tmp_path), ["/notes/", "*.txt", "!keep.txt"])
    assert [e.name for e in tree.entries] == [
        ".gitignore", "data/.gitignore", "data/clean.csv", "main.py", "mylib/__init__.py",
        "mylib/notes/keep.txt", "mylib/util.py"]
    assert tree.size == sum(e.size for e in tree.entries)


def test_the_name_follows_content_names_and_exec_bits_not_times_or_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        _tree(root, {"m.py": "print(1)", "sub/n.py": "x = 2"})
    os.utime(b / "m.py", (1, 1))
    name = pkg.digest(pkg.scan(str(a)))
    assert name.startswith("pkg_") and name == pkg.digest(pkg.scan(str(b)))
    assert pkg.zip_bytes(pkg.scan(str(a))) == pkg.zip_bytes(pkg.scan(str(b)))  # (reproducible)
    (b / "sub/n.py").write_text("x = 3")
    assert pkg.digest(pkg.scan(str(b))) != name
    (b / "sub/n.py").write_text("x = 2")
    assert pkg.digest(pkg.scan(str(b))) == name
    os.chmod(b / "m.py", 0o755)
    assert pkg.digest(pkg.scan(str(b))) != name
    (b / "m.py").rename(b / "m2.py")
    assert pkg.digest(pkg.scan(str(b))) != name


def test_a_package_over_the_limit_names_its_biggest_files(tmp_path):
    _tree(tmp_path, {"small.py": "x"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"\0" * 300_000)
    (tmp_path / "model.ckpt").write_bytes(b"\0" * 200_000)
    with pytest.raises(RuntimeEnvError) as info:
        pkg.scan(str(tmp_path), max_bytes=400_000)
    text = str(info.value)
    assert "over the limit" in text and "data/big.bin (0.3 MiB)" in text
    assert text.index("data/big.bin") < text.index("model.ckpt")
    assert "excludes" in text and "TASKMESH_RUNTIME_ENV_MAX_MB" in text
    assert pkg.scan(str(tmp_path), ["data/", "*.ckpt"], max_bytes=400_000).size == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_a_file_that_cannot_be_read_is_named(tmp_path):
    _tree(tmp_path, {"secret.py": "x"})
    os.chmod(tmp_path / "secret.py", 0)
    with pytest.raises(RuntimeEnvError, match="secret.py.*excludes"):
        pkg.scan(str(tmp_path))


def test_unpacked_once_with_exec_bits_and_the_same_files(tmp_path):
    src = tmp_path / "src"
    _tree(src, {"run.sh": "#!/bin/sh\necho hi\n", "lib/m.py": "X = 1\n",
                "blob.npz": "zz"})
    os.chmod(src / "run.sh", 0o755)
    tree = pkg.scan(str(src))
    name = pkg.digest(tree)
    cache = tmp_path / "cache"
    where = pkg.unpack(pkg.zip_bytes(tree), str(cache), name)
    assert where == str(cache / name)
    assert (cache / name / "lib/m.py").read_text() == "X = 1\n"
    assert os.access(cache / name / "run.sh", os.X_OK)
    assert not os.access(cache / name / "lib/m.py", os.X_OK)
    assert pkg.digest(pkg.scan(where)) == name  # (what came out is what went in)
    assert pkg.unpack(b"not even a zip", str(cache), name) == where  # (there: not again)
    assert sorted(os.listdir(cache)) == [name]  # (no part-unpacked leftovers)


def test_a_package_keeps_its_name_for_py_modules_and_one_file_is_a_package(tmp_path):
    _tree(tmp_path, {"mylib/__init__.py": "", "mylib/a.py": "", "single.py": "Y = 2"})
    assert [e.name for e in pkg.scan(str(tmp_path / "mylib"), keep_name=True).entries] == [
        "mylib/__init__.py", "mylib/a.py"]
    one = pkg.scan(str(tmp_path / "single.py"))
    assert [e.name for e in one.entries] == ["single.py"] and not one.archive


def test_a_zip_is_shipped_as_is_and_one_top_directory_is_the_working_dir(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("project/main.py", "print('hi')")
        z.writestr("project/data.json", json.dumps([1]))
    (tmp_path / "p.zip").write_bytes(buf.getvalue())
    tree = pkg.scan(str(tmp_path / "p.zip"))
    assert tree.archive and pkg.zip_bytes(tree) == buf.getvalue()
    where = pkg.unpack(pkg.zip_bytes(tree), str(tmp_path / "cache"), pkg.digest(tree))
    assert pkg.working_path(where, True) == os.path.join(where, "project")
    assert pkg.working_path(where, False) == where


@pytest.mark.parametrize("member", ["../evil.py", "/etc/evil", "a/../../evil", "C:/evil"])
def test_a_member_outside_the_package_is_refused_and_nothing_is_left(tmp_path, member):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.py", "")
        z.writestr(member, "boom")
    with pytest.raises(RuntimeEnvError, match="outside the package"):
        pkg.unpack(buf.getvalue(), str(tmp_path / "cache"), "pkg_x")
    assert os.listdir(tmp_path / "cache") == []
    assert not (tmp_path / "evil.py").exists()


# ------------------------------------------------------------------ the node's cache


def test_the_cache_removes_old_entries_then_the_oldest_over_the_cap_never_one_in_use(tmp_path):
    from taskmesh._runtime_env import cache

    def entry(name: str, size: int, used: float) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"x" * size)
        (tmp_path / (name + ".lock")).write_text("")
        os.utime(tmp_path / name, (used, used))

    day = 24 * 3600.0
    now = 100 * day
    entry("pkg_old", 10, now - 30 * day)
    entry("pip_old_in_use", 10, now - 30 * day)
    entry("pkg_a", 500, now - 3 * day)
    entry("pip_b", 500, now - 2 * day)
    entry("pkg_c", 500, now - 1 * day)
    (tmp_path / "pkg_d.part-123").mkdir()  # (being unpacked: not an entry)
    (tmp_path / "other").mkdir()  # (not the cache's)
    removed = cache.collect(str(tmp_path), in_use={"pip_old_in_use"}, max_age_s=7 * day,
                            max_bytes=1100, now=now)
    assert removed == ["pkg_old", "pkg_a"]
    assert sorted(os.listdir(tmp_path)) == [
        "other", "pip_b", "pip_b.lock", "pip_old_in_use", "pip_old_in_use.lock", "pkg_c",
        "pkg_c.lock", "pkg_d.part-123"]
    # a cap below what is in use removes everything else, and nothing in use
    assert cache.collect(str(tmp_path), in_use={"pip_b", "pkg_c"}, max_bytes=0,
                         now=now) == ["pip_old_in_use"]
    assert cache.collect(str(tmp_path / "missing")) == []


# ------------------------------------------------------------------ wire form and launch


def test_the_wire_form_names_packages_and_equal_forms_are_one_environment(tmp_path):
    from taskmesh._runtime_env import apply

    _tree(tmp_path / "proj", {"main.py": "", "big.log": "x"})
    _tree(tmp_path / "lib", {"mylib/__init__.py": ""})
    packed = []

    def pack(path, excludes, keep_name):
        packed.append((path, tuple(excludes), keep_name))
        tree = pkg.scan(path, excludes, keep_name=keep_name)
        return {"pkg": pkg.digest(tree), "archive": tree.archive}

    env = validate({"working_dir": str(tmp_path / "proj"),
                    "py_modules": [str(tmp_path / "lib" / "mylib")], "excludes": ["*.log"],
                    "env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": 60}})
    wire = apply.wire_form(env, pack)
    assert packed == [(str(tmp_path / "proj"), ("*.log",), False),
                      (str(tmp_path / "lib" / "mylib"), ("*.log",), True)]
    assert set(wire) == {"working_dir", "py_modules", "env_vars", "config"}
    assert wire["working_dir"]["pkg"].startswith("pkg_")
    ident = apply.env_id(wire)
    assert ident.startswith("env_")
    # the same files elsewhere, another set-up time-out: the same environment
    _tree(tmp_path / "copy", {"main.py": "", "other.log": "y"})
    again = apply.wire_form(validate({**env, "working_dir": str(tmp_path / "copy"),
                                      "config": {"setup_timeout_seconds": 5}}), pack)
    assert apply.env_id(again) == ident
    assert apply.env_id(apply.wire_form(validate({**env, "env_vars": {"A": "2"}}), pack)) != ident
    assert apply.env_id({}) == "" and apply.env_id({"config": {"eager_install": True}}) == ""


def test_a_worker_for_an_environment_starts_in_it():
    from taskmesh._runtime_env.apply import ENV_ID_VAR, Ready, launch

    base_argv = ["/usr/bin/python3", "-m", "taskmesh._worker", "--head", "h"]
    argv, env, cwd = launch(Ready("env_1"), base_argv, {"PATH": "/bin"})
    assert argv == base_argv and cwd is None
    assert env == {"PATH": "/bin", ENV_ID_VAR: "env_1"}
    ready = Ready("env_2", working_dir="/c/pkg_w", py_paths=("/c/pkg_m",),
                  python="/c/pip_x/bin/python", env_vars={"OMP_NUM_THREADS": "1", "PATH": "/x"})
    argv, env, cwd = launch(ready, base_argv, {"PATH": "/bin", "PYTHONPATH": "/site"})
    assert argv == ["/c/pip_x/bin/python", *base_argv[1:]] and cwd == "/c/pkg_w"
    assert env["PYTHONPATH"] == os.pathsep.join(["/c/pkg_w", "/c/pkg_m", "/site"])
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/x" and env[ENV_ID_VAR] == "env_2"
    # ${NAME}: the node's value (as Ray); a name the node lacks is left as written
    ref = Ready("env_3", env_vars={"PATH": "/opt/bin:${PATH}", "X": "${NOPE}-${HOME}"})
    _, env, _ = launch(ref, base_argv, {"PATH": "/bin", "HOME": "/root"})
    assert env["PATH"] == "/opt/bin:/bin" and env["X"] == "${NOPE}-/root"


# ------------------------------------------------------------------ set-up on a node


def _setups():
    from taskmesh._runtime_env.setups import Setups
    return Setups(lambda pip: "pip_" + "_".join(pip["packages"]))


def test_an_environment_starts_its_workers_once_its_pip_env_is_made_which_is_shared():
    from taskmesh._runtime_env.setups import Build, Start
    s = _setups()
    pip = {"packages": ["six"], "pip_check": False}
    a = {"pip": pip, "env_vars": {"A": "1"}}
    b = {"pip": pip, "env_vars": {"B": "2"}}
    assert s.need("env_a", a, 2, now=0.0) == [Build("pip_six", pip, 600)]
    assert s.need("env_b", b, 1, now=0.1) == []  # (its pip env is being made)
    assert s.need("env_a", a, 1, now=0.2) == []  # (more workers, when it is ready)
    starts = s.part_ready("pip_six", "/c/pip_six")
    assert [(x.ready.env_id, x.count) for x in starts] == [("env_a", 3), ("env_b", 1)]
    ready_a = starts[0].ready
    assert ready_a.python == "/c/pip_six/bin/python" and ready_a.env_vars == {"A": "1"}
    assert json.loads(ready_a.wire) == a
    # ready: more workers start at once, nothing built again
    assert s.need("env_a", a, 1, now=5.0) == [Start(ready_a, 1)]
    # no pip: ready at once
    (plain,) = s.need("env_c", {"env_vars": {"C": "3"}}, 2, now=5.0)
    assert plain.count == 2 and plain.ready.python is None
    assert s.part_ready("pip_unknown", "/x") == [] and s.part_failed("pip_unknown", "x") == []


def test_a_failed_build_fails_every_environment_waiting_for_it_and_is_tried_again_later():
    from taskmesh._runtime_env.setups import Build, Failed
    s = _setups()
    pip = {"packages": ["nope==9"], "pip_check": False}
    s.need("env_1", {"pip": pip}, 1, now=0.0)
    s.need("env_2", {"pip": pip, "env_vars": {"X": "1"}}, 1, now=0.0)
    error = "pip install nope==9 failed (exit code 1):\nNo matching distribution found"
    assert s.part_failed("pip_nope==9", error) == [Failed("env_1", error), Failed("env_2", error)]
    assert s.need("env_1", {"pip": pip}, 1, now=1.0) == [
        Build("pip_nope==9", pip, 600)]  # (asked again: tried again)


def test_an_environment_not_ready_within_its_set_up_time_out_fails_and_none_is_no_limit():
    from taskmesh._runtime_env.setups import Failed
    s = _setups()
    pip = {"packages": ["slow"], "pip_check": False}
    s.need("env_t", {"pip": pip, "config": {"setup_timeout_seconds": 30}}, 1, now=0.0)
    s.need("env_n", {"pip": {"packages": ["slow2"], "pip_check": False},
                     "config": {"setup_timeout_seconds": -1}}, 1, now=0.0)
    assert s.tick(29.0) == []
    (late,) = s.tick(31.0)
    assert isinstance(late, Failed) and late.env_id == "env_t"
    assert "within its set-up time-out of 30 s" in late.message
    assert s.tick(10_000.0) == []  # (no limit)
    assert s.part_ready("pip_slow", "/c/pip_slow") == []  # (it failed: nothing to start)
    s.forget("env_n")
    assert s.part_ready("pip_slow2", "/c/p") == [] and "env_n" not in s.envs


def test_big_files_stream_into_the_zip_and_come_out_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(pkg, "_WHOLE", 100)  # (every file over 100 bytes streams)
    src = tmp_path / "src"
    _tree(src, {"small.py": "x", "big.txt": "line\n" * 1000})
    (src / "raw.bin").write_bytes(os.urandom(5000))
    tree = pkg.scan(str(src))
    where = pkg.unpack(pkg.zip_bytes(tree), str(tmp_path / "cache"), pkg.digest(tree))
    assert pkg.digest(pkg.scan(where)) == pkg.digest(tree)
    assert (tmp_path / "cache" / pkg.digest(tree) / "raw.bin").read_bytes() == (
        src / "raw.bin").read_bytes()
