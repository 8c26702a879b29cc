"""Who may read the head's HTTP endpoints: the dashboard token, and each request's verdict.

    cluster secret ──HKDF("dashboard-token")──▶ token (64 hex digits)
    request (method, target, headers) ──check(...)──▶ Verdict(status, cookie to set, why)

Every endpoint (``/metrics`` included) needs the token, given one of three ways: an
``Authorization: Bearer <token>`` header (Prometheus's ``authorization: credentials_file:``),
a ``?token=<token>`` query parameter, which also sets an HttpOnly, SameSite=Strict cookie
so that a browser session keeps working (Jupyter's way; ``taskmesh dashboard`` prints such a
URL), or that cookie. Tokens are compared in constant time. Nothing served changes state:
GET (and HEAD) only, anything else is 405, whoever asks. Pure decisions, no sockets: the
server (server.py) asks and obeys; unit tests drive them directly.
"""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from typing import Mapping, NamedTuple
from urllib.parse import parse_qs, urlsplit

from .._secret import ClusterKey

__all__ = ["token_for", "cookie_name", "Verdict", "check", "dashboard_url", "HOW_TO_GET_IN",
           "ALLOWED_METHODS"]

ALLOWED_METHODS = ("GET", "HEAD")

#: the body of a 401: how to get a URL that works
HOW_TO_GET_IN = ("401 Unauthorized: this taskmesh endpoint needs the cluster's dashboard "
                 "token. Run `taskmesh dashboard` on a machine with the cluster secret for a "
                 "URL with it (?token=...), or send the header `Authorization: Bearer <token>`.\n")


def token_for(key: ClusterKey) -> str:
    """The dashboard token of a cluster: derived from its secret (reveals nothing of it, and
    is of no use for anything else), so every holder of the secret can compute it."""
    return key.derive("dashboard-token").hex()


def cookie_name(port: int) -> str:
    """The cookie that carries the token: one per dashboard port, since browsers share
    cookies across the ports of a host (two clusters on one machine keep theirs)."""
    return f"taskmesh-token-{port}"


class Verdict(NamedTuple):
    """What to do with a request: ``status`` 200 (serve it), 401 or 405; ``set_cookie``: the
    token to put in the cookie (a valid ``?token=``), else ""; ``why``: for the log
    (``missing token``, ``wrong token``, ``method``)."""

    status: int
    set_cookie: str
    why: str


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def check(method: str, target: str, headers: Mapping[str, str], token: str,
          cookie: str) -> Verdict:
    """The verdict on one request: ``target`` is the request line's path and query,
    ``headers`` its headers (looked up as ``Authorization`` and ``Cookie``), ``token`` the
    cluster's, ``cookie`` the cookie's name (``cookie_name``)."""
    if method not in ALLOWED_METHODS:
        return Verdict(405, "", "method")
    given: list[str] = []
    auth = headers.get("Authorization") or ""
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        given.append(credentials.strip())
    query = parse_qs(urlsplit(target).query).get("token") or []
    from_query = query[-1] if query else ""
    if from_query:
        given.append(from_query)
    raw_cookie = headers.get("Cookie") or ""
    if raw_cookie:
        try:
            jar = SimpleCookie(raw_cookie)
        except CookieError:
            jar = SimpleCookie()
        if cookie in jar:
            given.append(jar[cookie].value)
    if not given:
        return Verdict(401, "", "missing token")
    # any one right admits (a browser may still hold the cookie of a cluster that ran on
    # this port before, while its URL has the new token); each is compared in full
    matches = [_same(g, token) for g in given]
    if not any(matches):
        return Verdict(401, "", "wrong token")
    return Verdict(200, token if from_query and _same(from_query, token) else "", "")


def dashboard_url(host: str, port: int, token: str, path: str = "/", head_host: str = "") -> str:
    """``http://host:port/path?token=...`` as a client reaches it: a wildcard ``host``
    (0.0.0.0, ::, "") becomes ``head_host``, the host the head was reached at; IPv6 hosts
    are bracketed."""
    if host in ("0.0.0.0", "::", "") and head_host:
        host = head_host
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}?token={token}"
