"""Context markers: the lines a worker writes into its stdout and stderr to say whose output
follows (its job's driver, the task, the actor, the label shown on the driver).

    \x1etm\t<job hex>\t<task id hex>\t<actor id hex>\t<label>\n

The worker writes them (``_worker/output.py``), the node agent reads them
(``_node/output.py``) and so does ``taskmesh logs`` (the log files keep them). A line is a
marker only if it starts with ``MARK`` (the ASCII record separator, then "tm") and has the
four fields.
"""

from __future__ import annotations

from typing import NamedTuple

#: the first characters of a context marker line (ASCII record separator, then "tm")
MARK = "\x1etm\t"
#: the first characters of a progress bar's state line (``taskmesh.util.tqdm`` in a task):
#: JSON after it; passed on to the driver like any line, drawn there as a bar
BAR = "\x1etmbar\t"
#: what every line taskmesh writes into a worker's streams starts with (not shown as text)
OWN = "\x1etm"


class Context(NamedTuple):
    """Whose text follows a marker: the job's driver (peer id, b"" for none), the task's id,
    the actor's id (b"" for a task), and the label shown on the driver (function or class)."""

    job: bytes
    task_id: bytes
    actor_id: bytes
    label: str


NO_CONTEXT = Context(b"", b"", b"", "")


def format_marker(ctx: Context) -> str:
    """The marker line that puts what follows in ``ctx`` (the worker writes it)."""
    label = ctx.label.replace("\t", " ").replace("\n", " ")
    return f"{MARK}{ctx.job.hex()}\t{ctx.task_id.hex()}\t{ctx.actor_id.hex()}\t{label}\n"


def parse_marker(line: str) -> Context | None:
    """The context a marker line names, or None if it is not a well-formed marker."""
    if not line.startswith(MARK):
        return None
    parts = line[len(MARK):].rstrip("\n").split("\t", 3)
    if len(parts) != 4:
        return None
    try:
        return Context(bytes.fromhex(parts[0]), bytes.fromhex(parts[1]),
                       bytes.fromhex(parts[2]), parts[3])
    except ValueError:
        return None
