"""The state commands' text (tables, ``status`` in 80 columns) and a failed task's error text
as its worker sends it: pure functions, no processes."""

from __future__ import annotations

from taskmesh import _serialize as S
from taskmesh._cli_state import _short, status_lines, table
from taskmesh._resources import UNIT


def test_a_table_is_aligned_and_cuts_its_flexible_columns_to_fit():
    rows = [["a" * 12, "mod." + "x" * 60, "RUNNING"], ["b" * 12, "short", "FINISHED"]]
    lines = table(("ID", "NAME", "STATE"), rows, flexible=(1,), width=40)
    assert all(len(line) <= 40 for line in lines), lines
    assert lines[0].index("STATE") == lines[1].index("RUNNING") == lines[2].index("FINISHED")
    assert "…" in lines[1] and lines[1].startswith("a" * 12 + "  mod.")
    kept_end = table(("ID", "NAME", "STATE"), rows, flexible=(1,), width=40, keep_end=(1,))
    assert "…" + "x" * 5 in kept_end[1]  # a qualified name keeps its last part


def test_long_ids_are_shown_by_their_first_and_last_characters():
    assert _short("53a1cc69368a56340000000000000006") == "53a1cc…000006"
    assert _short("70debfd8dc46") == "70debfd8dc46"


def _node(i: int, address: str) -> dict:
    return {"NodeID": f"{i:012x}", "Alive": i != 3, "NodeManagerAddress": address,
            "Resources": {"CPU": 64 * UNIT}, "CPUsInUse": 12 * UNIT, "Workers": 70,
            "Actors": 3, "TasksRunning": 12, "TasksQueued": 1000, "TasksFinished": 12_345_678,
            "ObjectStore": {"store_capacity": 64 << 30, "store_used_bytes": 3 << 30,
                            "store_num_objects": 123_456, "store_disk_bytes": 7 << 30,
                            "store_transfer_bytes_sent": 5 << 40,
                            "store_transfer_bytes_received": 1 << 30}}


def test_status_fits_80_columns_even_for_large_nodes_and_long_addresses():
    st = {"nodes": [_node(1, "10.200.200.200"), _node(2, "fd00:1234:5678::99"),
                    _node(3, "10.0.0.3")],
          "tasks": {"queued": 1_000_000, "waiting_for_deps": 5, "running": 128,
                    "finished": 99_999_999, "failed": 12},
          "objects": 1_000_000, "drivers": 3, "actors": {"alive": 3, "dead": 1},
          "dropped": {"not expected from its kind of peer": 4, "malformed": 2},
          "transport": {"encrypted": True, "secret": "abcd1234", "refused_connections": 7,
                        "malformed_messages": 2},
          "loop_lag": {"p50_ms": 0.1, "p99_ms": 3.5, "max_ms": 250.0, "messages": 1_234_567}}
    lines = status_lines(st, "head.example.org:7300")
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    text = " ".join(" ".join(lines).split())  # (a wrapped line's words, joined again)
    assert "fd00:1234:5678::99" in text and "12/64" in text and "12345678" in text
    assert "store 3.0 GiB/64.0 GiB in 123456 objects, 7.0 GiB spilled" in text
    assert "(and 1 dead node: --all lists them)" in text
    assert "000000000003" in "\n".join(status_lines(st, "h:1", show_dead=True))


def test_a_failed_tasks_text_starts_at_the_users_code_and_is_at_most_8_kib():
    def user_code():
        raise ValueError("no such thing")

    try:
        user_code()
    except ValueError as exc:
        text = S.error_text(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "in user_code" in text and text.endswith("ValueError: no such thing\n")
    assert S.error_text(ValueError("x"), user_traceback=False) == "ValueError: x"
    long = S.error_text(RuntimeError("y" * 100_000))
    assert len(long) <= S.ERROR_TEXT_CHARS
    assert long.startswith("[... ") and long.endswith("yyy\n")
