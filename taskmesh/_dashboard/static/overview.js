// Overview: nodes, task counts, drivers, actors; /api/status every 2 s.
"use strict";

const UNIT = 10000;  // resource units per CPU (taskmesh._resources.UNIT)

function card(label, value, id) {
  return tm.el("div", {class: "card", id: id},
    tm.el("div", {class: "n"}, tm.fmtNum(value)), tm.el("div", {class: "k"}, label));
}

function usage(used, total, text) {
  const pct = total ? Math.min(100, Math.round(100 * used / total)) : 0;
  const bar = tm.el("span", {class: "bar", title: pct + "%"}, tm.el("span"));
  bar.firstChild.style.width = pct + "%";
  return tm.el("span", {}, text, bar);
}

const NODE_COLUMNS = [
  {label: "node", cls: "id", fmt: n => n.NodeID},
  {label: "address", fmt: n => n.NodeManagerAddress + (n.NodeManagerHostname ? " (" + n.NodeManagerHostname + ")" : "")},
  {label: "state", fmt: n => tm.el("span", {class: n.Alive ? "alive" : "dead"}, n.Alive ? "alive" : "dead")},
  {label: "CPUs used / total", fmt: n => {
    const total = ((n.Resources || {}).CPU || 0) / UNIT, used = (n.CPUsInUse || 0) / UNIT;
    return usage(used, total, `${used.toFixed(used % 1 ? 1 : 0)} / ${total}`);
  }},
  {label: "machine CPU", cls: "num", fmt: n => {
    const m = n.Machine || {};
    return m.cpu_percent === undefined ? "-" : m.cpu_percent.toFixed(0) + "%";
  }},
  {label: "memory", fmt: n => {
    const m = n.Machine || {};
    return m.mem_total ? usage(m.mem_used, m.mem_total, `${tm.fmtBytes(m.mem_used)} / ${tm.fmtBytes(m.mem_total)}`) : "-";
  }},
  {label: "object store", fmt: n => {
    const s = n.ObjectStore || {};
    if (s.store_capacity === undefined) return "-";
    return usage(s.store_used_bytes || 0, s.store_capacity,
      `${tm.fmtBytes(s.store_used_bytes || 0)} / ${tm.fmtBytes(s.store_capacity)}` +
      (s.store_num_objects !== undefined ? ` (${tm.fmtNum(s.store_num_objects)} obj.)` : ""));
  }},
  {label: "running", cls: "num", fmt: n => tm.fmtNum(n.TasksRunning)},
  {label: "workers", cls: "num", fmt: n => tm.fmtNum(n.Workers)},
  {label: "actors", cls: "num", fmt: n => tm.fmtNum(n.Actors)},
  {label: "finished", cls: "num", fmt: n => tm.fmtNum(n.TasksFinished)},
];

function render(s) {
  const m = tm.main("Overview");
  const t = s.tasks || {};
  m.append(tm.el("h2", {}, "Tasks"), tm.el("div", {class: "cards", id: "task-counts"},
    card("running", t.running, "count-running"), card("queued", t.queued, "count-queued"),
    card("waiting for inputs", t.waiting_for_deps, "count-waiting"),
    card("finished (since start)", t.finished, "count-finished"),
    card("of which failed", t.failed, "count-failed")));
  const a = s.actors || {};
  m.append(tm.el("h2", {}, "Cluster"), tm.el("div", {class: "cards"},
    card("nodes alive", (s.nodes || []).filter(n => n.Alive).length, "count-nodes"),
    card("drivers connected", s.drivers, "count-drivers"),
    card("actors alive", a.alive, "count-actors"),
    card("actors pending / creating", (a.pending || 0) + (a.creating || 0)),
    card("actors restarting", a.restarting), card("actors dead", a.dead),
    card("objects", s.objects, "count-objects")));
  m.append(tm.el("h2", {}, "Nodes"));
  const nodes = s.nodes || [];
  m.append(nodes.length ? tm.table(NODE_COLUMNS, nodes) : tm.el("p", {class: "muted"}, "No node has joined yet."));
  m.querySelector("table") && m.querySelector("table").setAttribute("id", "nodes");
}

tm.every(2000, async () => {
  render(await tm.getJSON("/api/status"));
  tm.setStatus("updated " + new Date().toLocaleTimeString([], {hour12: false}) + " · every 2 s");
});
