"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by ``selenium``): open the URL with the token, visit every page, check it shows the
cluster's real data, and keep a screenshot of each page in ``test-artifacts/dashboard/``.

Skipped, saying why, when chromium, chromedriver or selenium is missing
(``apt-get install chromium chromium-driver``; ``pip install selenium``)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import taskmesh

from ..support.procs import embedded_cluster

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install selenium): the browser tests need it")
from selenium.common.exceptions import (StaleElementReferenceException,  # noqa: E402
                                        TimeoutException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium or chromedriver on this machine (apt-get install chromium "
                "chromium-driver): the dashboard's browser tests need a real browser",
                allow_module_level=True)

#: where each page's screenshot is kept (the repository's root; in .gitignore)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
XSS_NAME = "<img src=x onerror=alert(1)>"
HTML_LINE = "<script>alert('log')</script> <b>bold?</b>"


@taskmesh.remote
def square(x):
    return x * x


@taskmesh.remote
def explode(why):
    raise ValueError(f"boom: {why}")


@taskmesh.remote
def chatty(k):
    print(f"{HTML_LINE} #{k}")
    return k


@taskmesh.remote
def noop(i):
    return i


@taskmesh.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n

    def say(self, text):
        print(text, flush=True)
        return text


def _browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=opts)


@pytest.fixture(scope="module")
def shots(request):
    """The screenshots' directory; its path is printed at the end (even with output captured)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS
    kept = len(list(ARTIFACTS.glob("*.png")))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\ndashboard screenshots ({kept}): {ARTIFACTS}")


@pytest.fixture(scope="module")
def browser(demo):
    """A headless Chromium, started after the cluster (whose leak check must not count it)
    and quit before it stops."""
    driver = _browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def demo():
    """A cluster of this module's own with a little of everything: tasks (one failed, one with
    a name that is HTML), an actor, a task that printed HTML. Yields (dashboard URL, ids)."""
    with embedded_cluster(num_cpus=2) as info:
        assert taskmesh.get([square.remote(i) for i in range(6)], timeout=60) == [
            i * i for i in range(6)]
        failed = explode.remote("on purpose")
        with pytest.raises(taskmesh.TaskError):
            taskmesh.get(failed, timeout=60)
        assert taskmesh.get(square.options(name=XSS_NAME).remote(3), timeout=60) == 9
        assert taskmesh.get(chatty.remote(7), timeout=60) == 7
        big = taskmesh.put(b"x" * (4 << 20))  # (in the node's store, not inline)
        counter = Counter.remote()
        assert taskmesh.get(counter.add.remote(5), timeout=60) == 5
        yield {"url": info["dashboard_url"], "failed": failed.hex()[:32], "counter": counter,
               "big": big}


def _wait(driver, predicate, what: str, timeout: float = 15.0):
    """Wait until ``predicate(driver)`` holds; an element replaced while it looked (the pages
    re-render their tables) counts as "not yet"."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=[StaleElementReferenceException]
                             ).until(lambda d: predicate(d))
    except TimeoutException:
        raise AssertionError(f"the page did not show {what} within {timeout:g} s; it shows:\n"
                             + driver.find_element(By.ID, "main").text[:2000]) from None


def _click(driver, css: str, what: str) -> str:
    """Click the first element matching ``css`` (again if a re-render replaced it); its text."""
    def clicked(d):
        element = d.find_element(By.CSS_SELECTOR, css)
        text = element.text
        element.click()
        return text or True
    return _wait(driver, clicked, what)


def _text(driver) -> str:
    return driver.find_element(By.ID, "main").text


def _no_script_ran(driver) -> None:
    """Nothing a task chose ran as code (no alert, no injected element) and the console has no
    error but the one of a refused request the test made on purpose."""
    assert driver.execute_script("return document.querySelectorAll('main img, main script, "
                                 "main b').length") == 0
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and "status of 4" not in e["message"]]
    assert not errors, errors


def _api(demo, target: str):
    """GET a JSON endpoint with the token (to find what the page should show)."""
    u = urlsplit(demo["url"])
    token = u.query.split("token=", 1)[1]
    req = urllib.request.Request(f"{u.scheme}://{u.netloc}{target}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _go(driver, base: str, path: str) -> None:
    driver.get(base + path)


@pytest.fixture(scope="module")
def opened(demo, browser):
    """The browser after opening the dashboard's URL with the token (the cookie is set, the
    token is taken out of the address bar): the base URL."""
    browser.get(demo["url"])
    u = urlsplit(demo["url"])
    base = f"{u.scheme}://{u.netloc}"
    _wait(browser, lambda d: "token=" not in d.current_url, "an address bar without the token")
    cookies = {c["name"]: c for c in browser.get_cookies()}
    cookie = cookies[f"taskmesh-token-{u.port}"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # (HttpOnly: no script sees it)
    return base


def test_overview_shows_the_nodes_and_counts(browser, opened, shots):
    _go(browser, opened, "/")
    node = taskmesh.nodes()[0]["NodeID"]
    _wait(browser, lambda d: node in _text(d), "the node's id")
    # memory and the store, from the node's heartbeats (the first comes within a second)
    def figures(d):  # "0 / 2" CPUs, "1.2 GiB / 23.5 GiB" memory, "4.0 MiB / 7.1 GiB (1 obj.)"
        text = d.find_element(By.ID, "nodes").text
        return text.count(" / ") >= 3 and "obj.)" in text and "%" in text

    _wait(browser, figures, "the node's memory and store use")
    table = browser.find_element(By.ID, "nodes").text
    assert "alive" in table and " / 2" in table  # (CPUs leased / total)
    failed = browser.find_element(By.ID, "count-failed").text
    assert failed.startswith("1")
    assert browser.find_element(By.ID, "count-actors").text.startswith("1")
    before = browser.find_element(By.ID, "status-line").text
    _wait(browser, lambda d: d.find_element(By.ID, "status-line").text != before,
          "a refresh within 2 s", timeout=5)
    browser.save_screenshot(str(shots / "overview.png"))
    _no_script_ran(browser)


def test_tasks_page_filters_and_shows_a_failed_tasks_traceback(browser, opened, demo, shots):
    _go(browser, opened, "/tasks")
    _wait(browser, lambda d: "tasks match" in _text(d), "the tasks' total")
    table = browser.find_element(By.ID, "tasks").text
    assert "square" in table and "explode" in table and "FAILED" in table
    assert XSS_NAME in table  # the name as text, not as an image
    # filter: FAILED only
    browser.find_element(By.CSS_SELECTOR, "#f-state option[value=FAILED]").click()
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    _wait(browser, lambda d: d.find_element(By.ID, "summary").text.startswith("1 task matches"),
          "one failed task")
    assert "state=FAILED" in browser.current_url
    _click(browser, "#tasks tbody tr", "the failed task's row")
    traceback = _wait(browser, lambda d: d.find_elements(By.ID, "traceback"), "the traceback")[0]
    assert "Traceback" in traceback.text and "ValueError: boom: on purpose" in traceback.text
    assert demo["failed"] in browser.find_element(By.ID, "detail").text
    browser.save_screenshot(str(shots / "tasks.png"))
    # a bad filter says why, from the API's 400
    _go(browser, opened, "/tasks?name=x&limit=1000&state=")
    _wait(browser, lambda d: "0 tasks match" in _text(d), "no task named x")
    _no_script_ran(browser)


def test_actors_page_shows_the_actor(browser, opened, demo, shots):
    _go(browser, opened, "/actors")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#table tbody tr"), "the actor")
    table = browser.find_element(By.ID, "table").text
    assert "Counter" in table and "ALIVE" in table
    assert browser.find_element(By.ID, "summary").text.startswith("1 actor")
    browser.save_screenshot(str(shots / "actors.png"))
    browser.find_element(By.CSS_SELECTOR, "#f-state option[value=DEAD]").click()
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    _wait(browser, lambda d: d.find_element(By.ID, "summary").text.startswith("0 actors"),
          "no dead actor")
    _no_script_ran(browser)


def test_objects_page_lists_objects(browser, opened, shots):
    _go(browser, opened, "/objects")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#table tbody tr"), "objects")
    table = browser.find_element(By.ID, "table").text
    assert "READY" in table and "4.0 MiB" in table
    browser.save_screenshot(str(shots / "objects.png"))
    _no_script_ran(browser)


def test_jobs_page_shows_this_driver_and_links_to_its_tasks(browser, opened, shots):
    _go(browser, opened, "/jobs")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#table tbody tr"), "the job")
    assert "RUNNING" in browser.find_element(By.ID, "table").text
    browser.save_screenshot(str(shots / "jobs.png"))
    job = _click(browser, "#table tbody a", "the job's link")
    _wait(browser, lambda d: "tasks match" in _text(d), "the job's tasks")
    assert browser.find_element(By.ID, "f-job").get_attribute("value") == job
    _no_script_ran(browser)


def test_logs_page_lists_files_shows_a_tasks_line_as_text_and_follows_new_ones(
        browser, opened, demo, shots):
    _go(browser, opened, "/logs")
    node = taskmesh.nodes()[0]["NodeID"]
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#files a[data-file]"),
          "the list of files")
    listed = browser.find_element(By.ID, "files").text
    assert "head.log" in listed and "agent.log" in listed and f"node {node}" in listed
    # the actor's worker: its stdout file (the actor's task names its worker)
    actor = demo["counter"]._actor_id.hex()
    rows = _api(demo, "/api/tasks?type=ACTOR_CREATION_TASK")["rows"]
    worker = next(r["worker_id"] for r in rows if r["actor_id"] == actor)
    files = [f["file"] for n in _api(demo, "/api/logs")["nodes"] for f in n["files"]
             if f["file"].startswith(f"worker-{worker}-") and f["file"].endswith(".out")]
    assert len(files) == 1, files
    assert taskmesh.get(demo["counter"].say.remote(HTML_LINE + " first"), timeout=30)
    browser.find_element(By.CSS_SELECTOR, f"#files a[data-file='{files[0]}']").click()
    _wait(browser, lambda d: HTML_LINE + " first" in d.find_element(By.ID, "log").text,
          "the line the actor printed, as text")
    assert f"file={files[0]}" in browser.current_url
    # live tail: a line printed now shows within a few seconds, without reloading
    assert taskmesh.get(demo["counter"].say.remote("<i>live</i> second"), timeout=30)
    _wait(browser, lambda d: "<i>live</i> second" in d.find_element(By.ID, "log").text,
          "the new line (live tail)", timeout=8)
    browser.save_screenshot(str(shots / "logs.png"))
    # a task's own line, printed by a worker of the pool, is in some worker's .out file
    found = []
    for n in _api(demo, "/api/logs")["nodes"]:
        for f in n["files"]:
            if f["file"].endswith(".out") and f["size"]:
                lines = _api(demo, f"/api/logs/read?node={n['node_id']}&file={f['file']}")["lines"]
                found += [x for x in lines if x.startswith(HTML_LINE + " #7")]
    assert found
    _no_script_ran(browser)


def test_timeline_page_draws_a_lane_per_worker_and_links_the_trace(browser, opened, shots):
    _go(browser, opened, "/timeline")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#lanes g.lane"), "the lanes")
    lanes = browser.find_elements(By.CSS_SELECTOR, "#lanes g.lane")
    workers = {lane.get_attribute("data-lane") for lane in lanes}
    assert workers and all(w.startswith("worker ") for w in workers)
    assert browser.find_elements(By.CSS_SELECTOR, "#lanes rect.slice-FINISHED")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lanes rect.slice-FAILED")) == 1
    titles = browser.execute_script(
        "return [...document.querySelectorAll('#lanes rect.slice title')].map(t => t.textContent)")
    assert any(t.startswith(XSS_NAME) for t in titles)  # (text in an SVG title: no markup)
    assert "task runs on" in browser.find_element(By.ID, "summary").text
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").endswith("/api/timeline?download=1")
    browser.save_screenshot(str(shots / "timeline.png"))
    _no_script_ran(browser)


# ---------------------------------------------------------------- last: it fills the view


def test_tasks_page_with_10000_finished_tasks_loads_in_seconds(browser, opened, shots):
    """Ten thousand tasks ended (the most the head keeps): the page shows the total and its
    first 1,000 rows within a few seconds, and stays responsive. (Last in this module: the
    demo's earlier tasks are no longer listed after it.)"""
    assert sum(taskmesh.get([noop.remote(i) for i in range(10_000)], timeout=180)) == 49_995_000
    started = time.monotonic()
    _go(browser, opened, "/tasks")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#tasks tbody tr"),
          "the first rows", timeout=10)
    loaded = time.monotonic() - started
    summary = browser.find_element(By.ID, "summary").text
    assert summary.startswith("10,0") and "showing the first 1,000" in summary, summary
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")) == 1000
    assert loaded < 5.0, f"the tasks page took {loaded:.1f} s to show 1,000 of 10,000 tasks"
    browser.save_screenshot(str(shots / "tasks-10000.png"))
    # responsive: a script runs at once, and scrolling to the last row works
    t0 = time.monotonic()
    assert browser.execute_script("return 1 + 1") == 2
    browser.execute_script("document.querySelector('#tasks tbody tr:last-child').scrollIntoView()")
    assert time.monotonic() - t0 < 1.0
    print(f"\ntasks page with 10,000 tasks: first rows after {loaded:.2f} s ({summary})")
