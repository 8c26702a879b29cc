// taskmesh dashboard: helpers every page uses. Values from the cluster (task names, errors,
// log lines) are only ever set as text (textContent / text nodes), never parsed as HTML.
"use strict";

const tm = (() => {
  // the first URL carries ?token= (the server has set the cookie by now): take it out of the
  // address bar and the history, so it is not copied along with the URL
  if (location.search.includes("token=")) {
    const params = new URLSearchParams(location.search);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  /** An element: el("td", {class: "num"}, "12", otherNode). Strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = String(v); else node.setAttribute(k, String(v));
    }
    return node;
  }

  /** GET a JSON endpoint; throws an Error with the server's message on a non-2xx answer. */
  async function getJSON(url) {
    const resp = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    let body;
    try { body = await resp.json(); } catch (e) { body = {error: resp.statusText}; }
    if (resp.status === 401) {
      body = {error: "this browser has no valid dashboard token (a new cluster?): open the URL " +
                     "that `taskmesh dashboard` prints"};
    }
    if (!resp.ok) {
      const err = new Error((body && body.error) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function setStatus(text, bad) {
    const line = document.getElementById("status-line");
    if (line) { line.textContent = text; line.className = bad ? "aside error" : "aside"; }
  }

  function fmtBytes(n) {
    if (n === undefined || n === null || n === "") return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0; n = Number(n);
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }
  function fmtTime(ms) {
    if (!ms) return "-";
    const d = new Date(ms);
    return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function fmtDuration(s) {
    if (s === undefined || s === null || s === "" || Number(s) === 0) return "-";
    s = Number(s);
    if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(1) + " ms";
    return s.toFixed(2) + " s";
  }
  function fmtNum(n) { return (n === undefined || n === null) ? "-" : Number(n).toLocaleString("en-US"); }
  function shortId(id) { return id ? (id.length > 16 ? id.slice(0, 6) + "…" + id.slice(-6) : id) : "-"; }

  /**
   * A table of rows. columns: [{key, label, fmt(row) -> string|Node, cls}]. Rows are built
   * into a fragment off the page and put in at once, so 1,000 rows cost one layout.
   */
  function table(columns, rows, onRowClick) {
    const head = el("tr", {}, ...columns.map(c => el("th", {class: c.cls || null}, c.label)));
    const body = el("tbody");
    const frag = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (onRowClick) { tr.className = "clickable"; tr.addEventListener("click", () => onRowClick(row, tr)); }
      for (const c of columns) {
        const td = document.createElement("td");
        if (c.cls) td.className = c.cls;
        const v = c.fmt ? c.fmt(row) : row[c.key];
        if (v instanceof Node) td.append(v); else td.textContent = (v === undefined || v === null || v === "") ? "-" : String(v);
        tr.append(td);
      }
      frag.append(tr);
    }
    body.append(frag);
    return el("table", {}, el("thead", {}, head), body);
  }

  function stateCell(state) { return el("span", {class: "state-" + String(state)}, state); }

  /** The main area, emptied, with a heading. */
  function main(title) {
    const m = document.getElementById("main");
    m.replaceChildren(el("h1", {}, title));
    return m;
  }

  /** Run fn now and every ms milliseconds (not overlapping: the next waits for the last). */
  function every(ms, fn) {
    let stopped = false;
    async function loop() {
      if (stopped) return;
      try { await fn(); } catch (e) { setStatus("error: " + e.message, true); }
      if (!stopped) setTimeout(loop, ms);
    }
    loop();
    return () => { stopped = true; };
  }

  function detailList(obj, keys) {
    const dl = el("dl");
    for (const k of keys || Object.keys(obj)) {
      let v = obj[k];
      if (k.endsWith("_time_ms")) v = v ? new Date(v).toISOString() : "-";
      else if (v !== null && typeof v === "object") v = JSON.stringify(v);
      dl.append(el("dt", {}, k), el("dd", {}, (v === "" || v === null || v === undefined) ? "-" : String(v)));
    }
    return dl;
  }

  return {el, svg, getJSON, setStatus, fmtBytes, fmtTime, fmtDuration, fmtNum, shortId, table,
          stateCell, main, every, detailList};
})();
