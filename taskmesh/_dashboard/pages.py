"""The dashboard's pages: one HTML shell per page, and the static files (CSS, JS) it loads.

    GET /tasks ──page("/tasks")──▶ shell: nav, an empty <main>, <script src="/static/tasks.js">
    the script ──fetch("/api/tasks?...")──▶ JSON ──▶ DOM built with textContent (never innerHTML)

No data is put into the HTML: every value a user or a task chose (task names, log lines,
errors) reaches the page as JSON and is set as text by the scripts, so it cannot become
markup. The shell's few words are fixed, escaped anyway. The scripts and the stylesheet are
plain files in ``static/`` (package data), read once; no build step, no library, nothing from
another origin: the pages' Content-Security-Policy (``HEADERS``) allows this origin only.
"""

from __future__ import annotations

import html
from importlib import resources

__all__ = ["PAGES", "HEADERS", "page", "static_file"]

#: path -> (title, script) of each page
PAGES: dict[str, tuple[str, str]] = {
    "/": ("Overview", "overview.js"),
    "/tasks": ("Tasks", "tasks.js"),
    "/actors": ("Actors", "tables.js"),
    "/objects": ("Objects", "tables.js"),
    "/jobs": ("Jobs", "tables.js"),
    "/logs": ("Logs", "logs.js"),
    "/timeline": ("Timeline", "timeline.js"),
}

#: sent with every page and static file: no framing, no sniffing, nothing but this origin,
#: and no Referer (a first URL carries the token)
HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_cache: dict[str, bytes] = {}


def _nav(current: str) -> str:
    links = []
    for path, (title, _) in PAGES.items():
        mark = ' aria-current="page"' if path == current else ""
        links.append(f'<a href="{html.escape(path)}"{mark}>{html.escape(title)}</a>')
    links.append('<a href="/api/timeline?download=1" class="aside">trace JSON</a>')
    links.append('<a href="/metrics" class="aside">metrics</a>')
    return "\n    ".join(links)


def page(path: str) -> bytes | None:
    """The HTML of the page at ``path``, None if there is none."""
    if path not in PAGES:
        return None
    title, script = PAGES[path]
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(title)} · taskmesh</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/dashboard.css">
  <script src="/static/common.js" defer></script>
  <script src="/static/{html.escape(script)}" defer></script>
</head>
<body data-page="{html.escape(path)}">
  <header>
    <span class="brand">taskmesh</span>
    {_nav(path)}
    <span id="status-line" class="aside"></span>
  </header>
  <main id="main"><h1>{html.escape(title)}</h1><p class="muted">Loading…</p></main>
</body>
</html>
""".encode()


def static_file(name: str) -> tuple[bytes, str] | None:
    """(content, content type) of ``/static/<name>``, None if there is no such file."""
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith("."):
        return None
    data = _cache.get(name)
    if data is None:
        try:
            data = resources.files(__package__).joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        _cache[name] = data
    return data, _TYPES[suffix]
