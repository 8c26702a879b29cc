// Tasks: a filterable table (/api/tasks: at most 1,000 rows a page, the total shown) and one
// task's detail with its error and traceback (/api/task?id=).
"use strict";

const STATES = ["", "PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED"];
const FIELDS = ["state", "name", "node", "job", "limit"];

const COLUMNS = [
  {label: "task id", cls: "id", fmt: t => tm.shortId(t.task_id)},
  {label: "name", cls: "name", fmt: t => t.name},
  {label: "state", cls: "nowrap", fmt: t => tm.stateCell(t.state)},
  // (a worker's id starts with its node's; the job is in the detail)
  {label: "node-worker", cls: "id", fmt: t => t.worker_id},
  {label: "ran", cls: "num", fmt: t => tm.fmtDuration(t.duration_s)},
  {label: "ended", cls: "nowrap", fmt: t => tm.fmtTime(t.end_time_ms)},
  {label: "error", fmt: t => t.error_type},
];

function filterForm(values, onSubmit) {
  const state = tm.el("select", {name: "state", id: "f-state"},
    ...STATES.map(s => tm.el("option", {value: s, selected: s === values.state}, s || "any")));
  const text = (name, hint) => tm.el("input", {name, id: "f-" + name, value: values[name] || "", placeholder: hint, size: 18});
  const limit = tm.el("select", {name: "limit", id: "f-limit"},
    ...["100", "1000"].map(n => tm.el("option", {value: n, selected: n === (values.limit || "1000")}, n)));
  const form = tm.el("form", {class: "filters", id: "filters"},
    tm.el("label", {}, "state", state), tm.el("label", {}, "name", text("name", "mod.func")),
    tm.el("label", {}, "node", text("node", "node id")), tm.el("label", {}, "job", text("job", "job id")),
    tm.el("label", {}, "rows", limit), tm.el("button", {type: "submit"}, "Filter"),
    tm.el("button", {type: "button", id: "refresh"}, "Refresh"));
  form.addEventListener("submit", ev => { ev.preventDefault(); onSubmit(); });
  form.querySelector("#refresh").addEventListener("click", () => onSubmit());
  return form;
}

function currentFilters() {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const input = document.getElementById("f-" + name);
    if (input && input.value.trim()) params.set(name, input.value.trim());
  }
  return params;
}

async function showTask(id, row) {
  const panel = document.getElementById("detail");
  document.querySelectorAll("tr.selected").forEach(r => r.classList.remove("selected"));
  if (row) row.classList.add("selected");
  panel.replaceChildren(tm.el("p", {class: "muted"}, "Loading task…"));
  try {
    const t = await tm.getJSON("/api/task?id=" + encodeURIComponent(id));
    const keys = Object.keys(t).filter(k => k !== "error_message");
    panel.replaceChildren(tm.el("h2", {}, t.name), tm.detailList(t, keys));
    if (t.error_message) {
      panel.append(tm.el("h2", {}, "Error"), tm.el("pre", {id: "traceback"}, t.error_message));
    }
  } catch (e) {
    panel.replaceChildren(tm.el("p", {class: "error"}, e.message));
  }
}

async function load() {
  const params = currentFilters();
  history.replaceState(null, "", "/tasks" + (params.toString() ? "?" + params : ""));
  const area = document.getElementById("rows");
  const started = performance.now();
  let reply;
  try {
    reply = await tm.getJSON("/api/tasks?" + params);
  } catch (e) {
    area.replaceChildren(tm.el("p", {class: "error", id: "error"}, e.message));
    tm.setStatus("error", true);
    return;
  }
  const shown = reply.rows.length;
  const summary = tm.el("p", {id: "summary"},
    (reply.total === 1 ? "1 task matches" : `${tm.fmtNum(reply.total)} tasks match`) + (reply.truncated ? `; showing the first ${tm.fmtNum(shown)}` : "") +
    " (in flight first, then the most recent that ended). Click a task for its detail.");
  const table = shown ? tm.table(COLUMNS, reply.rows, (t, tr) => showTask(t.task_id, tr))
                      : tm.el("p", {class: "muted"}, "No task matches.");
  table.id = "tasks";
  area.replaceChildren(summary, reply.note ? tm.el("p", {class: "error"}, reply.note) : "", tm.el("div", {class: "scroll"}, table));
  tm.setStatus(`${tm.fmtNum(shown)} row${shown === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms`);
}

(function start() {
  const values = Object.fromEntries(new URLSearchParams(location.search));
  const m = tm.main("Tasks");
  m.append(filterForm(values, load),
    tm.el("div", {class: "split"}, tm.el("div", {id: "rows"}),
      tm.el("div", {class: "detail", id: "detail"}, tm.el("p", {class: "muted"}, "No task selected."))));
  load();
  if (values.task) showTask(values.task, null);
})();
