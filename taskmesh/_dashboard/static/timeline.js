// Timeline: the head's recent task events (/api/timeline, a Chrome trace) drawn as one
// swim-lane per worker in SVG, a slice per task run; the same JSON downloads for Perfetto.
"use strict";

const LANE_H = 22, LABEL_W = 230, AXIS_H = 24;

function fmtSpan(us) {
  if (us < 1000) return Math.round(us) + " µs";
  if (us < 1e6) return (us / 1000).toFixed(us < 1e4 ? 1 : 0) + " ms";
  return (us / 1e6).toFixed(2) + " s";
}

function draw(trace, width) {
  const procs = {}, threads = {};
  for (const e of trace) {
    if (e.ph !== "M") continue;
    if (e.name === "process_name") procs[e.pid] = e.args.name;
    if (e.name === "thread_name") threads[e.pid + ":" + e.tid] = e.args.name;
  }
  const slices = trace.filter(e => e.ph === "X");
  const laneKeys = Object.keys(threads).sort((a, b) => {
    const [pa, ta] = a.split(":").map(Number), [pb, tb] = b.split(":").map(Number);
    return pa - pb || ta - tb;
  });
  const lane = Object.fromEntries(laneKeys.map((k, i) => [k, i]));
  let t0 = Infinity, t1 = -Infinity;
  for (const s of slices) { t0 = Math.min(t0, s.ts); t1 = Math.max(t1, s.ts + s.dur); }
  const span = Math.max(1, t1 - t0);
  const plotW = Math.max(200, width - LABEL_W - 10);
  const x = ts => LABEL_W + (ts - t0) / span * plotW;
  const height = AXIS_H + laneKeys.length * LANE_H + 4;
  const root = tm.svg("svg", {width: LABEL_W + plotW + 10, height, id: "lanes-svg", role: "img"});

  // the time axis: about 8 ticks, relative to the first slice
  const step = Math.pow(10, Math.floor(Math.log10(span / 8)));
  const tick = [1, 2, 5, 10].map(m => m * step).find(s => span / s <= 10) || step * 10;
  for (let t = 0; t <= span; t += tick) {
    root.append(tm.svg("line", {x1: x(t0 + t), x2: x(t0 + t), y1: AXIS_H - 4, y2: height, stroke: "#e4e7ec"}));
    root.append(tm.svg("text", {x: x(t0 + t) + 2, y: AXIS_H - 8, fill: "#667085", text: t ? "+" + fmtSpan(t) : "0"}));
  }
  laneKeys.forEach((k, i) => {
    const g = tm.svg("g", {class: "lane", "data-lane": threads[k]});
    const y = AXIS_H + i * LANE_H;
    g.append(tm.svg("rect", {x: 0, y, width: LABEL_W + plotW + 10, height: LANE_H, fill: i % 2 ? "#fafbfc" : "#ffffff"}));
    const pid = k.split(":")[0];
    const label = tm.svg("text", {x: 6, y: y + 15, fill: "#1d2330", text: threads[k]});
    label.append(tm.svg("title", {text: `${threads[k]} on ${procs[pid] || "node ?"}`}));
    g.append(label);
    root.append(g);
  });
  const frag = document.createDocumentFragment();
  for (const s of slices) {
    const i = lane[s.pid + ":" + s.tid];
    if (i === undefined) continue;
    const state = (s.args && s.args.state) || "FINISHED";
    const r = tm.svg("rect", {x: x(s.ts), y: AXIS_H + i * LANE_H + 3, height: LANE_H - 6,
      width: Math.max(1.5, s.dur / span * plotW), class: "slice slice-" + state});
    const why = s.args && (s.args.error || s.args.reason);
    r.append(tm.svg("title", {text: `${s.name} · ${state} · ${fmtSpan(s.dur)}` + (why ? ` · ${why}` : "") +
      (s.args && s.args.task_id ? ` · task ${s.args.task_id}` : "")}));
    frag.append(r);
  }
  root.append(frag);
  return {svg: root, lanes: laneKeys.length, slices: slices.length, span};
}

async function load() {
  const area = document.getElementById("lanes");
  const trace = await tm.getJSON("/api/timeline");
  const out = draw(trace, area.clientWidth || 1200);
  document.getElementById("summary").textContent = out.slices
    ? `${tm.fmtNum(out.slices)} task runs on ${out.lanes} workers over ${fmtSpan(out.span)} (the head's recent events; hover a slice for its task)`
    : "No task has run yet (or the head's event ring holds none).";
  area.replaceChildren(out.svg);
  tm.setStatus("loaded " + new Date().toLocaleTimeString([], {hour12: false}));
}

(function start() {
  const m = tm.main("Timeline");
  const refresh = tm.el("button", {type: "button", id: "refresh"}, "Refresh");
  refresh.addEventListener("click", () => load().catch(e => tm.setStatus("error: " + e.message, true)));
  m.append(tm.el("div", {class: "toolbar"}, refresh,
      tm.el("a", {href: "/api/timeline?download=1", id: "download", download: "taskmesh-timeline.json"},
        "Download the Chrome trace JSON"), tm.el("span", {class: "muted"}, "(open it in ui.perfetto.dev or chrome://tracing)"),
      tm.el("span", {class: "muted"}, "legend:"), legend("FINISHED"), legend("FAILED"), legend("RETRIED")),
    tm.el("p", {id: "summary"}), tm.el("div", {class: "lanes", id: "lanes"}));
  load().catch(e => document.getElementById("lanes").replaceChildren(tm.el("p", {class: "error"}, e.message)));
})();

function legend(state) {
  const s = tm.svg("svg", {width: 14, height: 10});
  s.append(tm.svg("rect", {width: 14, height: 10, class: "slice-" + state}));
  return tm.el("span", {}, s, " " + state.toLowerCase());
}
