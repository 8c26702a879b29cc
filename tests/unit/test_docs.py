"""The design documents stay in step with the code.

docs/protocol.md must document every wire message (``### Name (op N)``) and payload record
with exactly its current fields; docs/architecture.md must have a diagram and name every
module file. Pure text checks: no processes, no sockets.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskmesh import _protocol as P

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PACKAGE = REPO / "taskmesh"

PAYLOAD_RECORDS: dict[str, tuple[str, ...]] = {
    "SerializedObject": tuple(P.SerializedObject.__slots__),  # flags, data, buffers
    "TaskSpec": P.TaskSpec._fields,
    "Assignment": P.Assignment._fields,
    "TaskResult": P.TaskResult._fields,
    "ObjectValue": P.ObjectValue._fields,
    "Malformed": P.Malformed._fields,  # (not on the wire: the head's sockets make it)
}

_HEADING = re.compile(r"^(#{1,6}) +(.+?) *$")
_FENCE = re.compile(r"^ *(```|~~~)")


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _sections(text: str) -> list[tuple[int, str, str]]:
    """(level, heading, body) for every heading outside fenced code blocks, in order.

    A section's body runs to the next heading of the same or a higher level.
    """
    lines = text.splitlines()
    heads: list[tuple[int, int, str]] = []  # (line index, level, title)
    in_fence = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else _HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for k, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        out.append((level, title, "\n".join(lines[i + 1:end])))
    return out


def _section(text: str, title: str, level: int = 3) -> str:
    found = [body for lv, t, body in _sections(text) if lv == level and t == title]
    assert found, f"no heading {'#' * level} {title}"
    assert len(found) == 1, f"heading {'#' * level} {title} appears {len(found)} times"
    return found[0]


def _field_table(body: str) -> list[str] | None:
    """Names in the first column of the section's ``| field | ...`` table, or None."""
    lines = body.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0] == "field":
            names = []
            for row in lines[i + 2:]:  # skip the | --- | separator row
                if not row.lstrip().startswith("|"):
                    break
                first = row.strip().strip("|").split("|")[0].strip()
                m = re.fullmatch(r"`([^`]+)`", first)
                assert m, f"field table row does not start with a `name` cell: {row!r}"
                names.append(m.group(1))
            return names
    return None


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


MESSAGES = sorted(P.message_types().items())


# --------------------------------------------------------------------------- protocol.md


@pytest.mark.parametrize("op,cls", MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
def test_every_message_has_a_section_with_all_its_fields(op, cls):
    body = _section(_read("protocol.md"), f"{cls.__name__} (op {op})")
    for name in cls._fields:
        assert f"`{name}`" in body, f"{cls.__name__}: field `{name}` is not documented"
    table = _field_table(body)
    if cls._fields:
        assert table == list(cls._fields), (
            f"{cls.__name__}: the field table lists {table}, the code has {list(cls._fields)}")
    else:
        assert table is None, f"{cls.__name__} has no fields, the docs list {table}"
        assert "No fields" in body, f"{cls.__name__}: say that it has no fields"


def test_no_section_for_a_message_that_does_not_exist():
    by_name = {cls.__name__: op for op, cls in MESSAGES}
    for level, title, _ in _sections(_read("protocol.md")):
        m = re.fullmatch(r"(\w+) \(op (\d+)\)", title)
        if m:
            assert by_name.get(m.group(1)) == int(m.group(2)), (
                f"protocol.md documents {title}, which is not a message of the code")


def test_message_table_lists_every_op():
    text = _read("protocol.md")
    rows = dict(re.findall(r"^\| (\d+) \| \[(\w+)\]\(#[\w-]+\)", text, flags=re.M))
    assert {int(k): v for k, v in rows.items()} == {op: cls.__name__ for op, cls in MESSAGES}


@pytest.mark.parametrize("name", sorted(PAYLOAD_RECORDS))
def test_every_payload_record_has_a_section_listing_its_fields(name):
    fields = PAYLOAD_RECORDS[name]
    body = _section(_read("protocol.md"), name)
    assert _field_table(body) == list(fields), f"{name}: documented fields differ from {fields}"


def test_payload_record_list_is_complete():
    # records nested in messages are the NamedTuples of _protocol that are not messages
    messages = set(P.message_types().values())
    records = {
        n for n, v in vars(P).items()
        if isinstance(v, type) and issubclass(v, tuple) and hasattr(v, "_fields")
        and v not in messages and v.__module__ == P.__name__
    }
    assert records | {"SerializedObject"} == set(PAYLOAD_RECORDS)


def test_protocol_version_is_stated():
    assert f"Protocol version: **{P.PROTOCOL_VERSION}**" in _read("protocol.md")


# --------------------------------------------------------------------------- architecture.md


def test_architecture_has_a_diagram():
    text = _read("architecture.md")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    assert any(len(b.splitlines()) >= 5 for b in blocks), "architecture.md needs a diagram"


def test_architecture_mentions_every_module_file():
    text = _read("architecture.md")
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert files
    missing = [str(p.relative_to(PACKAGE)) for p in files if p.name not in text]
    assert not missing, f"architecture.md does not mention {missing}"


# --------------------------------------------------------------------------- links


@pytest.mark.parametrize("doc", ["architecture.md", "protocol.md", "security.md"])
def test_links_point_to_existing_headings(doc):
    anchors = {
        name: {_anchor(t) for _, t, _ in _sections(_read(name))}
        for name in ("architecture.md", "protocol.md", "security.md", "performance.md",
                     "monitoring.md")
    }
    for target, frag in re.findall(r"\]\(([\w.]*)#([\w-]+)\)", _read(doc)):
        where = target or doc
        assert where in anchors, f"{doc}: link to unknown document {where}"
        assert frag in anchors[where], f"{doc}: link to missing heading {where}#{frag}"
