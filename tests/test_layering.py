"""The package's layering, as docs/architecture.md ("Import direction") states it, held by a
test: every import of every module under taskmesh/ is read (with ``ast``, nothing is
imported) and checked against the rules below. A rule that has to change changes here and in
the docs together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "taskmesh"

#: decision logic: sans-IO, no sockets, threads, processes or clock; unit tests drive it
SANS_IO = {
    "taskmesh._head.state", "taskmesh._head.policy", "taskmesh._head.actors",
    "taskmesh._head.intake", "taskmesh._head._outbox", "taskmesh._head.events",
    "taskmesh._head.views", "taskmesh._head.runtime_envs",
    "taskmesh._head.membership", "taskmesh._head.tasks", "taskmesh._head.scheduler",
    "taskmesh._head.directory", "taskmesh._head.actor_table", "taskmesh._head.records",
    "taskmesh._head.context", "taskmesh._head.commands", "taskmesh._head.snapshot",
    "taskmesh._dashboard.auth", "taskmesh._dashboard.api",
    "taskmesh._store.state", "taskmesh._store.allocator", "taskmesh._node.state",
    "taskmesh._client.refs", "taskmesh._protocol", "taskmesh._signature", "taskmesh._checks",
    "taskmesh._runtime_env.setups", "taskmesh._runtime_env.apply",
}
IO_LIBRARIES = {"zmq", "socket", "select", "selectors", "threading", "asyncio", "subprocess",
                "time", "multiprocessing"}
#: taskmesh modules that do I/O: a sans-IO module imports none of them
IO_MODULES = {"taskmesh._transport", "taskmesh._uds", "taskmesh._gatekeeper",
              "taskmesh._transfer", "taskmesh._transfer_stream", "taskmesh._launch",
              "taskmesh._client"}
#: modules that import nothing from taskmesh (everything may use them)
LEAVES = {"taskmesh.errors", "taskmesh.config", "taskmesh._resources", "taskmesh._ratelimit",
          "taskmesh._protocol", "taskmesh._signature", "taskmesh._spin"}
#: the one exception to "_head, _node and _worker do not import one another", and why: the
#: node's fork server exists to load the worker's modules once, before it forks workers
CROSS_PROCESS_OK = {("taskmesh._node.zygote", "taskmesh._worker.__main__")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(module imported, names taken from it, line) for every import in the file; relative
    imports resolved to absolute names, ``from . import x`` as module ``pkg.x``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((a.name, (), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None and node.level:  # from . import x: modules
                out.extend((f"{target}.{a.name}", (), node.lineno) for a in node.names)
            else:
                out.append((target, tuple(a.name for a in node.names), node.lineno))
    return out


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
IMPORTS = {m: _imports(p) for m, p in MODULES.items()}


def _is(target: str, module: str) -> bool:
    """``target`` is ``module`` or inside it."""
    return target == module or target.startswith(module + ".")


def _top(module: str) -> str:
    """The process a module belongs to: taskmesh._head, taskmesh._node, taskmesh._worker."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _violations(rule) -> list[str]:  # type: ignore[no-untyped-def]
    found = []
    for module, imports in IMPORTS.items():
        for target, names, line in imports:
            why = rule(module, target, names)
            if why:
                found.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} "
                             f"imports {target}: {why}")
    return found


def _rule_zmq(module: str, target: str, names: tuple) -> str | None:
    if _is(target, "zmq") and module not in ("taskmesh._transport", "taskmesh._gatekeeper"):
        return "only _transport and _gatekeeper import zmq"
    if target == "taskmesh._uds" and module != "taskmesh._transport":
        return "only _transport imports _uds"
    return None


def _rule_sans_io(module: str, target: str, names: tuple) -> str | None:
    if module not in SANS_IO:
        return None
    if target.split(".")[0] in IO_LIBRARIES:
        return "a sans-IO part imports no sockets, threads, processes or clock"
    if target not in SANS_IO and any(_is(target, io) for io in IO_MODULES):
        return "a sans-IO part imports no I/O module of taskmesh"
    return None


def _rule_head_never_unpickles(module: str, target: str, names: tuple) -> str | None:
    if _is(module, "taskmesh._head") and (_is(target, "taskmesh._serialize")
                                          or _is(target, "taskmesh._client")):
        return "the head never unpickles: it imports neither _serialize nor _client"
    return None


def _rule_processes_apart(module: str, target: str, names: tuple) -> str | None:
    tops = ("taskmesh._head", "taskmesh._node", "taskmesh._worker")
    if (_top(module) in tops and _top(target) in tops and _top(module) != _top(target)
            and (module, target) not in CROSS_PROCESS_OK):
        return "_head, _node and _worker do not import one another (share a top-level module)"
    return None


def _rule_public_layers(module: str, target: str, names: tuple) -> str | None:
    if target == "taskmesh.api" and module not in ("taskmesh", "taskmesh.cluster_utils"):
        return "only __init__ (and cluster_utils, a public module on top of it) import api"
    if target == "taskmesh.handles" and module not in ("taskmesh", "taskmesh.api"):
        return "only __init__ and api import handles"
    if _is(module, "taskmesh._client") and target in (
            "taskmesh.api", "taskmesh.handles", "taskmesh.actor", "taskmesh.options"):
        return "the client core never imports the public API; the API calls into it"
    return None


def _rule_leaves(module: str, target: str, names: tuple) -> str | None:
    if module in LEAVES and _is(target, "taskmesh"):
        return "this module imports nothing from taskmesh"
    if module == "taskmesh._uds" and _is(target, "taskmesh") and target != "taskmesh._ratelimit":
        return "_uds imports only _ratelimit"
    return None


def _rule_no_private_names_from_public_modules(module: str, target: str,
                                              names: tuple) -> str | None:
    public = _is(target, "taskmesh") and not any(p.startswith("_") for p in target.split("."))
    private = [n for n in names if n.startswith("_")]
    if public and private:
        return (f"takes {', '.join(private)} from a public module: what several modules share "
                "lives in a private module")
    return None


def _rule_dashboard_reads_snapshots(module: str, target: str, names: tuple) -> str | None:
    if _is(module, "taskmesh._dashboard") and _is(target, "taskmesh._head"):
        return ("the dashboard reads published snapshots (plain values), never the head's "
                "parts: it imports nothing from _head")
    return None


RULES = [_rule_zmq, _rule_sans_io, _rule_head_never_unpickles, _rule_processes_apart,
         _rule_public_layers, _rule_leaves, _rule_no_private_names_from_public_modules,
         _rule_dashboard_reads_snapshots]


@pytest.mark.parametrize("rule", RULES, ids=[r.__name__[6:] for r in RULES])
def test_the_layering_rules_hold(rule):
    found = _violations(rule)
    assert not found, "\n".join(found)


def test_the_rules_see_every_module_and_can_fail():
    assert "taskmesh._head.state" in IMPORTS and "taskmesh.api" in IMPORTS
    assert len(MODULES) > 40
    # a made-up import each rule must refuse (a rule that cannot fail holds nothing)
    assert _rule_zmq("taskmesh.api", "zmq", ())
    assert _rule_sans_io("taskmesh._head.state", "threading", ())
    assert _rule_sans_io("taskmesh._node.state", "taskmesh._transport", ())
    assert _rule_sans_io("taskmesh._client.refs", "taskmesh._client.core", ())
    assert SANS_IO <= set(MODULES), SANS_IO - set(MODULES)  # no name in the list is stale
    assert _rule_head_never_unpickles("taskmesh._head.server", "taskmesh._serialize", ())
    assert _rule_processes_apart("taskmesh._head.server", "taskmesh._node.agent", ())
    assert _rule_public_layers("taskmesh._client.core", "taskmesh.handles", ())
    assert _rule_leaves("taskmesh.errors", "taskmesh.config", ())
    assert _rule_no_private_names_from_public_modules("taskmesh.actor", "taskmesh.options",
                                                      ("_name",))
    assert _rule_dashboard_reads_snapshots("taskmesh._dashboard.server", "taskmesh._head.state", ())


def test_sans_io_parts_write_no_log_lines():
    """A sans-IO part returns its log lines (as commands or results): it never takes a logger
    of its own, so what it says is seen, and tested, where its shell writes it."""
    found = []
    for module in sorted(SANS_IO):
        tree = ast.parse((ROOT.parent / (module.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"):
                found.append(f"{module}:{node.lineno}")
    assert not found, f"sans-IO parts that take a logger: {found}"


#: issue 14's shape: a module or class bigger than this says at its top why it is one piece
MODULE_LINES, CLASS_LINES = 800, 520


def _oversized(path: Path) -> list[str]:
    source = path.read_text()
    name = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path.name
    tree = ast.parse(source, str(path))
    module_doc = ast.get_docstring(tree) or ""
    found = []
    if source.count("\n") > MODULE_LINES and "Why" not in module_doc:
        found.append(f"{name}: {source.count(chr(10))} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if size > CLASS_LINES and "Why" not in (ast.get_docstring(node) or "") + module_doc:
                found.append(f"{name}: class {node.name}, {size} lines")
    return found


def test_big_modules_and_classes_say_why_they_are_one_piece(tmp_path):
    found = [f for p in MODULES.values() for f in _oversized(p)]
    assert not found, "give a reason (\"Why ...\") in the docstring, or split: " + "; ".join(found)
    big = tmp_path / "big.py"  # the check itself can fail
    big.write_text('"""A module."""\n\nclass Big:\n' + "    x = 1\n" * (CLASS_LINES + 1))
    assert _oversized(big) == [f"big.py: class Big, {CLASS_LINES + 2} lines"]
