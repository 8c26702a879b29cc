// Actors, objects, jobs: a table each from the state API (/api/actors, /api/objects,
// /api/jobs), filtered by state, refreshed every 5 s.
"use strict";

const KINDS = {
  "/actors": {title: "Actors", one: "actor", api: "/api/actors", key: "state",
    states: ["DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"],
    columns: [
      {label: "actor id", cls: "id", fmt: r => tm.shortId(r.actor_id)},
      {label: "class", fmt: r => r.class_name},
      {label: "name", fmt: r => r.name},
      {label: "state", fmt: r => tm.stateCell(r.state)},
      {label: "node", cls: "id", fmt: r => r.node_id},
      {label: "job", cls: "id", fmt: r => r.job_id},
      {label: "restarts", cls: "num", fmt: r => tm.fmtNum(r.num_restarts)},
      {label: "created", fmt: r => tm.fmtTime(r.creation_time_ms)},
      {label: "ended", fmt: r => tm.fmtTime(r.end_time_ms)},
      {label: "death cause", fmt: r => r.death_cause},
    ]},
  "/objects": {title: "Objects", one: "object", api: "/api/objects", key: "state",
    states: ["PENDING", "READY", "ERROR"],
    columns: [
      {label: "object id", cls: "id", fmt: r => r.object_id},
      {label: "size", cls: "num", fmt: r => tm.fmtBytes(r.object_size)},
      {label: "state", fmt: r => tm.stateCell(r.state)},
      {label: "location", fmt: r => Array.isArray(r.location) ? r.location.join(", ") : r.location},
      {label: "owner", cls: "id", fmt: r => r.owner},
      {label: "job", cls: "id", fmt: r => r.job_id},
      {label: "borrowers", cls: "num", fmt: r => tm.fmtNum(r.borrowers)},
      {label: "dependents", cls: "num", fmt: r => tm.fmtNum(r.dependents)},
    ]},
  "/jobs": {title: "Jobs", one: "job", api: "/api/jobs", key: "status",
    states: ["RUNNING", "SUCCEEDED", "FAILED"],
    columns: [
      {label: "job id", cls: "id", fmt: r => tm.el("a", {href: "/tasks?job=" + encodeURIComponent(r.job_id), title: "this job's tasks"}, r.job_id)},
      {label: "status", fmt: r => tm.stateCell(r.status)},
      {label: "started", fmt: r => tm.fmtTime(r.start_time_ms)},
      {label: "ended", fmt: r => tm.fmtTime(r.end_time_ms)},
      {label: "message", fmt: r => r.message},
    ]},
};

(function start() {
  const kind = KINDS[document.body.dataset.page];
  const m = tm.main(kind.title);
  const initial = new URLSearchParams(location.search).get(kind.key) || "";
  const select = tm.el("select", {id: "f-state", name: kind.key},
    ...["", ...kind.states].map(s => tm.el("option", {value: s, selected: s === initial}, s || "any")));
  const form = tm.el("form", {class: "filters", id: "filters"}, tm.el("label", {}, kind.key, select),
    tm.el("button", {type: "submit"}, "Filter"));
  const area = tm.el("div", {id: "rows"});
  m.append(form, area);

  async function load() {
    const params = new URLSearchParams();
    if (select.value) params.set(kind.key, select.value);
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
    const reply = await tm.getJSON(kind.api + "?" + params);
    const n = reply.total;
    const summary = tm.el("p", {id: "summary"}, `${tm.fmtNum(n)} ${n === 1 ? kind.one : kind.title.toLowerCase()}` +
      (reply.truncated ? `; showing the first ${tm.fmtNum(reply.rows.length)}` : ""));
    const table = reply.rows.length ? tm.table(kind.columns, reply.rows)
                                    : tm.el("p", {class: "muted"}, "None.");
    table.id = "table";
    area.replaceChildren(summary, reply.note ? tm.el("p", {class: "error"}, reply.note) : "",
      tm.el("div", {class: "scroll"}, table));
    tm.setStatus("updated " + new Date().toLocaleTimeString([], {hour12: false}) + " · every 5 s");
  }

  let stop = tm.every(5000, load);
  form.addEventListener("submit", ev => { ev.preventDefault(); stop(); stop = tm.every(5000, load); });
})();
