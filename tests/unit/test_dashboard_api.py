"""The dashboard's decisions without sockets: which head question each /api/ request makes,
how bad parameters are refused (400 with a JSON error that says what is allowed), what the
pages and static files are, and that nothing a task chose becomes markup."""

from __future__ import annotations

import json

import pytest

from taskmesh._dashboard import api, pages
from taskmesh._dashboard.source import SHARE_S, HeadSource, SourceError


class FakeSource:
    """Records the questions; answers from a table (``info``) or a function (``logs``)."""

    def __init__(self, answers: dict | None = None, logs: dict | None = None) -> None:
        self.asked: list = []
        self.answers = answers or {}
        self.log_replies = logs or {}

    def info(self, what: str):
        self.asked.append(what)
        for prefix, reply in self.answers.items():
            if what.startswith(prefix):
                return json.loads(json.dumps(reply))  # (a fresh copy: the endpoint may change it)
        return {"rows": [], "total": 0, "truncated": False, "now": 100.0}

    def logs(self, node: str, query: dict):
        self.asked.append((node, query))
        return self.log_replies


def _get(target: str, source: FakeSource | None = None, wall_now: float = 1000.0) -> api.Reply:
    from urllib.parse import parse_qs

    path, _, query = target.partition("?")
    return api.answer(path, parse_qs(query, keep_blank_values=True), source or FakeSource(),
                      wall_now)


# ------------------------------------------------------------------ routing and queries


def test_each_table_asks_the_state_api_with_a_page_of_rows():
    for kind in ("nodes", "tasks", "actors", "objects", "jobs"):
        src = FakeSource()
        assert _get(f"/api/{kind}", src).status == 200
        assert src.asked[0].startswith(f"state:{kind}?") and "limit=1000" in src.asked[0]


def test_task_filters_take_the_pages_short_names_and_skip_empty_fields_and_the_token():
    src = FakeSource()
    _get("/api/tasks?state=FAILED&name=mod.f&node=ab12&job=&token=secret&_=123&limit=50", src)
    assert src.asked == ["state:tasks?name=mod.f&node_id=ab12&state=FAILED&limit=50&detail=1"]


def test_a_bang_means_not_equal_and_values_are_percent_encoded():
    src = FakeSource()
    _get("/api/tasks?state=!FINISHED&name=a%26b%3Dc", src)
    assert src.asked == ["state:tasks?name=a%26b%3Dc&state!=FINISHED&limit=1000&detail=1"]


@pytest.mark.parametrize("limit", ["0", "1001", "-5", "ten", "1e3"])
def test_a_bad_limit_is_a_400_that_says_what_is_allowed(limit):
    src = FakeSource()
    reply = _get(f"/api/tasks?limit={limit}", src)
    assert reply.status == 400 and "limit" in reply.body["error"] and "1,000" in reply.body["error"]
    assert src.asked == []  # (the head is not asked at all)


def test_the_heads_answer_to_an_unknown_filter_key_is_a_400_with_its_message():
    src = FakeSource({"state:tasks": {"error": "unknown filter key 'colour' for tasks: one of "
                                               "task_id, name, state"}})
    reply = _get("/api/tasks?colour=red", src)
    assert reply == api.Reply(400, {"error": "unknown filter key 'colour' for tasks: one of "
                                             "task_id, name, state"}, {})


def test_rows_times_become_epoch_ms_and_list_rows_carry_no_error_text():
    rows = [{"task_id": "aa", "creation_time": 90.0, "end_time": 0.0, "error_message": "x" * 900}]
    src = FakeSource({"state:tasks": {"rows": rows, "total": 5000, "truncated": True,
                                      "now": 100.0}})
    reply = _get("/api/tasks?limit=1", src, wall_now=1000.0)
    assert reply.status == 200
    assert reply.body["rows"] == [{"task_id": "aa", "creation_time_ms": 990_000,
                                   "end_time_ms": None}]
    assert (reply.body["total"], reply.body["truncated"], reply.body["limit"]) == (5000, True, 1)


def test_a_task_by_id_gives_its_whole_row_or_a_404_or_the_heads_400():
    row = {"task_id": "abcd" * 8, "error_message": "Traceback ...\nValueError: boom"}
    src = FakeSource({"state:task?id=abcd": {"rows": [row], "total": 1, "now": 1.0}})
    assert _get("/api/task?id=abcd", src).body["error_message"].endswith("boom")
    assert src.asked == ["state:task?id=abcd"]
    assert _get("/api/task?id=ffff").status == 404
    assert _get("/api/task").status == 400
    src = FakeSource({"state:task": {"error": "task needs its id (at least 4 characters)"}})
    assert _get("/api/task?id=ab", src).status == 400


def test_unknown_endpoints_are_a_404_naming_the_known_ones():
    reply = _get("/api/colours")
    assert reply.status == 404 and "/api/tasks" in reply.body["error"]


def test_status_is_the_heads_status():
    src = FakeSource({"status": {"nodes": [], "tasks": {"running": 1}}})
    assert _get("/api/status", src).body == {"nodes": [], "tasks": {"running": 1}}


# ------------------------------------------------------------------ logs


def test_the_log_list_puts_the_head_first_and_a_nodes_error_in_missing():
    src = FakeSource(logs={"replies": {"n2": {"files": [{"file": "agent.log"}]},
                                       "head": {"files": [{"file": "head.log"}]},
                                       "n1": {"error": "cannot read"}},
                           "missing": {"n3": "did not answer within 5 s"}})
    reply = _get("/api/logs", src)
    assert [n["node_id"] for n in reply.body["nodes"]] == ["head", "n2"]
    assert reply.body["missing"] == {"n1": "cannot read", "n3": "did not answer within 5 s"}
    assert src.asked == [("", {"op": "list"})]


def test_reading_a_log_asks_for_a_tail_or_from_an_offset():
    reply = {"replies": {"n1": {"file": "a.out", "size": 10, "offset": 10, "lines": ["x"],
                                "rotated": False}}, "missing": {}}
    src = FakeSource(logs=reply)
    assert _get("/api/logs/read?node=n1&file=a.out", src).status == 200
    assert _get("/api/logs/read?node=n1&file=a.out&tail=5", src).status == 200
    got = _get("/api/logs/read?node=n1&file=a.out&offset=7", src)
    assert src.asked == [("n1", {"op": "read", "file": "a.out", "tail": 1000}),
                         ("n1", {"op": "read", "file": "a.out", "tail": 5}),
                         ("n1", {"op": "read", "file": "a.out", "offset": 7})]
    assert got.body["offset"] == 10 and got.body["node_id"] == "n1"


@pytest.mark.parametrize("target", ["/api/logs/read?file=a.out", "/api/logs/read?node=n1",
                                    "/api/logs/read?node=n1&file=a&offset=-1",
                                    "/api/logs/read?node=n1&file=a&offset=x",
                                    "/api/logs/read?node=n1&file=a&tail=100000"])
def test_bad_log_reads_are_400s(target):
    src = FakeSource()
    assert _get(target, src).status == 400 and src.asked == []


def test_a_missing_file_is_a_404_and_a_dead_node_too():
    src = FakeSource(logs={"replies": {"n1": {"error": "no log file 'zz' in /x"}}, "missing": {}})
    assert _get("/api/logs/read?node=n1&file=zz", src).status == 404
    src = FakeSource(logs={"replies": {}, "missing": {"n9": "no live node n9 (dead); live "
                                                           "nodes: n1"}})
    reply = _get("/api/logs/read?node=n9&file=zz", src)
    assert reply.status == 404 and "no live node" in reply.body["error"]


def test_a_very_long_log_line_is_cut_with_a_marker():
    line = "y" * (api.MAX_LINE_CHARS + 123)
    src = FakeSource(logs={"replies": {"n1": {"file": "a", "size": 1, "offset": 1,
                                              "lines": [line, "<b>short</b>"]}}, "missing": {}})
    lines = _get("/api/logs/read?node=n1&file=a", src).body["lines"]
    assert lines[0].endswith("[... 123 more characters cut]")
    assert len(lines[0]) < api.MAX_LINE_CHARS + 40
    assert lines[1] == "<b>short</b>"  # (as it was: the page sets it as text)


# ------------------------------------------------------------------ timeline


def test_the_timeline_reads_the_event_pages_and_is_a_chrome_trace():
    tid = b"\xaa" * 16  # (ids come as bytes off the wire)
    pages_ = [{"seq": 3, "events": [["TaskSubmitted", 1.0, tid, "mod.f", b"", 0, b"D1", b"", 64],
                                    ["TaskStarted", 1.1, tid, "n1", "n1-1"],
                                    ["TaskFinished", 1.3, tid, 0.2]]},
              {"seq": 3, "events": []}]

    class Paged(FakeSource):
        def info(self, what):
            self.asked.append(what)
            return pages_[len(self.asked) - 1]

    src = Paged()
    reply = _get("/api/timeline?download=1", src)
    assert src.asked == ["events:0", "events:3"]
    slices = [e for e in reply.body if e["ph"] == "X"]
    assert [s["name"] for s in slices] == ["mod.f"] and slices[0]["dur"] == 200000.0
    assert "attachment" in reply.headers["Content-Disposition"]
    assert "Content-Disposition" not in _get("/api/timeline", Paged()).headers


# ------------------------------------------------------------------ pages


def test_every_page_is_a_shell_with_its_script_and_no_inline_code():
    for path, (title, script) in pages.PAGES.items():
        body = pages.page(path).decode()
        assert f'<script src="/static/{script}" defer></script>' in body
        assert f"<title>{title} · taskmesh</title>" in body
        assert "<script>" not in body and "style=" not in body and "onclick" not in body
        assert pages.static_file(script) is not None
    assert pages.page("/nope") is None


def test_static_files_are_only_plain_names_of_known_types():
    assert pages.static_file("common.js")[1].startswith("text/javascript")
    assert pages.static_file("dashboard.css")[1].startswith("text/css")
    for bad in ("../pages.py", "..%2Fpages.py", ".hidden.js", "nope.js", "pages.py", "static"):
        assert pages.static_file(bad) is None


def test_pages_forbid_framing_sniffing_and_other_origins():
    csp = pages.HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert pages.HEADERS["X-Frame-Options"] == "DENY"
    assert pages.HEADERS["Referrer-Policy"] == "no-referrer"


def test_the_scripts_never_parse_data_as_html():
    for name in {script for _, script in pages.PAGES.values()} | {"common.js"}:
        text = pages.static_file(name)[0].decode()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{name} uses {sink}"


def test_an_answer_is_never_changed_since_it_may_be_shared():
    answer = {"rows": [{"task_id": "aa", "end_time": 99.0, "error_message": "boom"}],
              "total": 1, "now": 100.0}

    class Same(FakeSource):
        def info(self, what):
            return answer

    first = _get("/api/tasks", Same()).body
    second = _get("/api/tasks", Same()).body
    assert first == second and first["rows"][0] == {"task_id": "aa", "end_time_ms": 999_000}
    assert answer["rows"][0] == {"task_id": "aa", "end_time": 99.0, "error_message": "boom"}


# ------------------------------------------------------------------ the source


class FakeCore:
    def __init__(self, log: list) -> None:
        self.log = log
        self.closed = False
        self.sock = type("Sock", (), {"peer_closed": False})()

    def info(self, what, timeout):
        self.log.append(what)
        if what == "break":
            self.closed = True
            raise ConnectionError("the head went away")
        return {"asked": what, "n": len(self.log)}

    def close(self):
        self.closed = True


def test_the_source_connects_at_the_first_question_and_again_after_a_break():
    made: list = []
    asked: list = []

    def connect():
        made.append(FakeCore(asked))
        return made[-1]

    now = [0.0]
    src = HeadSource(connect, clock=lambda: now[0])
    assert made == []  # (nothing until asked)
    assert src.info("status")["asked"] == "status" and len(made) == 1
    with pytest.raises(SourceError, match="went away"):
        src.info("break")
    assert src.info("nodes")["asked"] == "nodes" and len(made) == 2  # connected again
    src.close()
    assert made[-1].closed
    with pytest.raises(SourceError, match="shutting down"):
        src.info("status")


def test_a_failed_connection_is_a_source_error_saying_why():
    def connect():
        raise OSError("no head on this socket")

    with pytest.raises(SourceError, match="cannot connect to the head: no head on this socket"):
        HeadSource(connect).info("status")


def test_many_viewers_asking_the_same_cost_the_head_one_question_per_share_time():
    asked: list = []
    now = [0.0]
    src = HeadSource(lambda: FakeCore(asked), clock=lambda: now[0])
    for _ in range(10):  # ten pages refreshing at once
        src.info("status")
    assert asked == ["status"]
    src.info("state:tasks?limit=5")
    assert asked == ["status", "state:tasks?limit=5"]
    now[0] += SHARE_S
    src.info("status")
    assert asked == ["status", "state:tasks?limit=5", "status"]
