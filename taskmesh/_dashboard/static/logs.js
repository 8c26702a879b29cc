// Logs: the cluster's log files per node (/api/logs), one file's tail
// (/api/logs/read?node=&file=), and a live tail: every second, what was added since the last
// offset (&offset=), as `taskmesh logs -f` does. Lines are set as text, never as HTML.
"use strict";

const MAX_LINES = 5000;  // lines kept in the view (the oldest go first)
let current = null;      // {node, file, offset, timer}

function fileList(reply) {
  const box = tm.el("div", {id: "files"});
  for (const node of reply.nodes) {
    box.append(tm.el("h2", {}, node.node_id === "head" ? "head" : "node " + node.node_id));
    const rows = node.files.map(f => Object.assign({node_id: node.node_id}, f));
    const table = tm.table([
      {label: "file", fmt: f => tm.el("a", {href: "/logs?" + new URLSearchParams({node: f.node_id, file: f.file}),
                                            "data-node": f.node_id, "data-file": f.file}, f.file)},
      {label: "worker pid", cls: "num", fmt: f => f.pid},
      {label: "size", cls: "num", fmt: f => tm.fmtBytes(f.size)},
      {label: "modified", fmt: f => tm.fmtTime(f.mtime * 1000)},
    ], rows);
    table.querySelectorAll("a[data-file]").forEach(a => a.addEventListener("click", ev => {
      ev.preventDefault();
      openFile(a.dataset.node, a.dataset.file);
    }));
    box.append(table);
  }
  for (const [node, why] of Object.entries(reply.missing || {})) {
    box.append(tm.el("p", {class: "error"}, `node ${node}: ${why}`));
  }
  return box;
}

function append(lines) {
  const pre = document.getElementById("log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  if (lines.length) pre.append(document.createTextNode(lines.join("\n") + "\n"));
  // keep the view bounded: drop the oldest text nodes beyond MAX_LINES lines
  let count = Number(pre.dataset.lines || 0) + lines.length;
  while (count > MAX_LINES && pre.firstChild) {
    count -= pre.firstChild.textContent.split("\n").length - 1;
    pre.firstChild.remove();
  }
  pre.dataset.lines = String(count);
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function poll() {
  const c = current;
  if (!c || !document.getElementById("follow").checked) return;
  try {
    const r = await tm.getJSON("/api/logs/read?" + new URLSearchParams({node: c.node, file: c.file, offset: c.offset}));
    if (c !== current) return;
    if (r.rotated) append([`[taskmesh: ${c.file} was rotated; reading the new file]`]);
    append(r.lines);
    c.offset = r.offset;
    tm.setStatus(`following ${c.file} · ${tm.fmtBytes(r.size)}`);
    c.timer = setTimeout(poll, r.offset < r.size ? 0 : 1000);  // more waiting: at once
  } catch (e) {
    tm.setStatus("error: " + e.message, true);
    if (c === current) c.timer = setTimeout(poll, 2000);
  }
}

async function openFile(node, file) {
  if (current && current.timer) clearTimeout(current.timer);
  current = {node, file, offset: 0, timer: null};
  const c = current;
  history.replaceState(null, "", "/logs?" + new URLSearchParams({node, file}));
  const tail = document.getElementById("tail").value;
  document.getElementById("viewing").textContent = `${file} on ${node === "head" ? "the head" : "node " + node}`;
  const pre = document.getElementById("log");
  pre.replaceChildren();
  pre.dataset.lines = "0";
  try {
    const r = await tm.getJSON("/api/logs/read?" + new URLSearchParams({node, file, tail}));
    if (c !== current) return;
    append(r.lines);
    pre.scrollTop = pre.scrollHeight;
    c.offset = r.offset;
    tm.setStatus(`${file} · ${tm.fmtBytes(r.size)}`);
    c.timer = setTimeout(poll, 1000);
  } catch (e) {
    pre.replaceChildren(document.createTextNode("error: " + e.message));
  }
}

(async function start() {
  const m = tm.main("Logs");
  const params = new URLSearchParams(location.search);
  const follow = tm.el("input", {type: "checkbox", id: "follow", checked: true});
  follow.addEventListener("change", () => { if (follow.checked && current) { clearTimeout(current.timer); poll(); } });
  const tail = tm.el("select", {id: "tail"}, ...["100", "1000", "10000"].map(n => tm.el("option", {value: n, selected: n === "1000"}, n)));
  tail.addEventListener("change", () => current && openFile(current.node, current.file));
  const viewer = tm.el("div", {class: "detail"},
    tm.el("div", {class: "toolbar"}, tm.el("strong", {id: "viewing"}, "No file chosen: pick one on the left."),
      tm.el("label", {}, follow, " follow (every second)"), tm.el("label", {}, "last lines ", tail)),
    tm.el("pre", {class: "log", id: "log"}));
  const list = tm.el("div", {}, tm.el("p", {class: "muted"}, "Loading the list…"));
  m.append(tm.el("div", {class: "split wide-right"}, list, viewer));
  try {
    list.replaceChildren(fileList(await tm.getJSON("/api/logs")));
  } catch (e) {
    list.replaceChildren(tm.el("p", {class: "error"}, e.message));
  }
  if (params.get("node") && params.get("file")) openFile(params.get("node"), params.get("file"));
})();
