/* rstar console pages: plain JavaScript over the /api endpoints.
 *
 * Every value from the store is written with textContent (the h() helper never parses
 * markup), so a model's step that contains <script> shows as text.
 */
"use strict";

const REFRESH_MS = 5000;

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

const app = () => document.getElementById("app");
// replaceChildren would print a skipped (null) child as the text "null".
const put = (...children) => app().replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
const pathTail = (prefix) => decodeURIComponent(location.pathname.slice(prefix.length));
const num = (value, digits = 0) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const pct = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function showError(error) {
  put(h("p", { class: "bad", id: "error" }, String(error.message || error)));
}

function table(columns, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => {
      const value = c.cell(row);
      return h("td", { class: c.num ? "num" : null }, value);
    })))));
}

function accuracyCell(row) {
  return row.known ? `${pct(row.accuracy)} (${row.solved}/${row.known})` : "–";
}

function stateColumns() {
  return ["queued", "running", "done", "failed", "cancelled"].map((s) => ({ label: s, num: true, cell: (r) => r.states[s] }));
}

// --- Runs -----------------------------------------------------------------------------------

async function pageRuns() {
  const draw = async () => {
    const runs = await getJSON("/api/runs");
    put(
      h("h1", {}, "Runs"),
      h("p", { class: "muted" }, `${runs.length} run${runs.length === 1 ? "" : "s"}; refreshes every ${REFRESH_MS / 1000} s`),
      table([
        { label: "run", cell: (r) => h("a", { href: `/runs/${encodeURIComponent(r.name)}` }, r.name) },
        { label: "status", cell: (r) => r.status },
        { label: "recipe", cell: (r) => r.config_name || "–" },
        ...stateColumns(),
        { label: "accuracy", cell: accuracyCell },
        { label: "problems/min", num: true, cell: (r) => num(r.problems_per_min, 2) },
        { label: "tokens", num: true, cell: (r) => r.tokens },
        { label: "created", cell: (r) => when(r.created_at) },
      ], runs, { id: "runs" }));
  };
  await draw().catch(showError);
  setInterval(() => draw().catch(showError), REFRESH_MS);
}

// --- One run --------------------------------------------------------------------------------

async function pageRun() {
  const name = pathTail("/runs/");
  const view = { offset: 0, limit: 100, state: "" };
  const tasksBox = h("div", { id: "tasks" });
  const head = h("div", {});
  const controls = h("div", { class: "controls bar" });
  put(head, h("h2", {}, "Problems"), controls, tasksBox);

  const drawHead = async () => {
    const run = await getJSON(`/api/runs/${encodeURIComponent(name)}`);
    head.replaceChildren(
      h("h1", {}, `Run ${run.name}`),
      h("div", { class: "bar" },
        h("span", {}, "status ", h("span", { class: "pill" }, run.status)),
        h("span", {}, `tasks ${run.total}`),
        h("span", {}, `accuracy ${accuracyCell(run)}`),
        h("span", {}, `problems/min ${num(run.problems_per_min, 2)}`),
        h("span", {}, `tokens ${run.tokens}`),
        h("a", { href: `/rounds/${encodeURIComponent(run.name)}` }, "evolve rounds")),
      h("h2", {}, "Rounds"),
      table([{ label: "round", cell: (r) => r.round }, ...stateColumns(),
        { label: "accuracy", cell: accuracyCell },
        { label: "problems/min", num: true, cell: (r) => num(r.problems_per_min, 2) },
        { label: "tokens", num: true, cell: (r) => r.tokens }], run.rounds, { id: "rounds" }),
      h("h2", {}, "Batches"),
      table([{ label: "batch", cell: (b) => b.id }, { label: "round", cell: (b) => b.round },
        { label: "seed", cell: (b) => b.seed }, { label: "source", cell: (b) => b.source || "–" },
        { label: "problems", num: true, cell: (b) => b.n_problems }, { label: "new tasks", num: true, cell: (b) => b.n_new_tasks },
        ...stateColumns(), { label: "accuracy", cell: accuracyCell },
        { label: "created", cell: (b) => when(b.created_at) }], run.batches, { id: "batches" }));
  };

  const drawTasks = async () => {
    const query = new URLSearchParams({ run: name, offset: view.offset, limit: view.limit });
    if (view.state) query.set("state", view.state);
    const page = await getJSON(`/api/tasks?${query}`);
    const pager = h("span", {}, `${page.total ? page.offset + 1 : 0}–${page.offset + page.tasks.length} of ${page.total} `,
      h("button", { disabled: page.offset === 0, onclick: () => { view.offset = Math.max(0, view.offset - view.limit); drawTasks(); } }, "‹ previous"),
      h("button", { disabled: page.offset + page.tasks.length >= page.total, onclick: () => { view.offset += view.limit; drawTasks(); } }, "next ›"));
    tasksBox.replaceChildren(pager, table([
      { label: "task", cell: (t) => h("a", { href: `/tasks/${t.id}`, class: "task-link" }, `#${t.id}`) },
      { label: "problem", cell: (t) => t.problem },
      { label: "round", cell: (t) => t.round },
      { label: "state", cell: (t) => h("span", { class: `pill ${t.state}` }, t.state + (t.live_nodes !== null && t.state === "running" ? ` · ${t.live_nodes} nodes` : "")) },
      { label: "question", cell: (t) => t.question },
      { label: "answer", cell: (t) => t.answer ?? "–" },
      { label: "correct", cell: (t) => (t.correct === null || t.correct === undefined ? "–" : h("span", { class: t.correct ? "ok" : "bad" }, t.correct ? "yes" : "no")) },
      { label: "difficulty", cell: (t) => t.difficulty || "–" },
      { label: "tokens", num: true, cell: (t) => t.tokens ?? "–" },
      { label: "error", cell: (t) => t.last_error || "" },
    ], page.tasks, { id: "task-table" }));
  };

  const stateFilter = h("select", { id: "state-filter", onchange: (e) => { view.state = e.target.value; view.offset = 0; drawTasks().catch(showError); } },
    h("option", { value: "" }, "all states"), ...["queued", "running", "done", "failed", "cancelled"].map((s) => h("option", { value: s }, s)));
  controls.replaceChildren(h("label", {}, "show ", stateFilter), h("span", { class: "muted" }, `refreshes every ${REFRESH_MS / 1000} s`));
  const draw = () => Promise.all([drawHead(), drawTasks()]);
  await draw().catch(showError);
  setInterval(() => draw().catch(() => {}), REFRESH_MS);
}

// --- One problem's tree ---------------------------------------------------------------------

function statusText(node) {
  if (node.parent === null) return "root (the question)";
  if (!node.terminal) return node.exhausted ? "kept; exhausted (no selectable child left)" : "kept";
  const reasons = {
    answer: "kept; terminal: gave a final answer",
    no_answer: "kept; terminal: the model ended without an answer",
    too_many_errors: "terminal: every candidate below it failed in the sandbox (too many errors)",
    max_depth: "terminal: reached the maximum depth without an answer",
  };
  return reasons[node.terminal] || `terminal: ${node.terminal}`;
}

function nodeDetail(node, tree) {
  if (!node) return h("p", { class: "muted" }, "Click a node to see its step, code and output. Double-click collapses it.");
  const { nodeQ } = window.RstarTree;
  const ppm = node.init_value === null || node.init_value === undefined ? "–" : node.init_value.toFixed(4);
  const correct = node.correct === null || node.correct === undefined ? "–" : node.correct ? "correct" : "wrong";
  return h("div", { id: "node-detail" },
    h("h2", {}, `Node #${node.id}`),
    h("dl", {},
      h("dt", {}, "status"), h("dd", { id: "node-status" }, statusText(node)),
      h("dt", {}, "kind"), h("dd", {}, node.kind),
      h("dt", {}, "depth"), h("dd", {}, node.depth),
      h("dt", {}, "Q"), h("dd", { id: "node-q" }, nodeQ(node).toFixed(4)),
      h("dt", {}, "N (visits)"), h("dd", { id: "node-n" }, node.visits),
      h("dt", {}, "PPM score"), h("dd", {}, ppm),
      h("dt", {}, "terminal value"), h("dd", {}, node.terminal_value ?? "–"),
      h("dt", {}, "answer"), h("dd", { id: "node-answer" }, node.answer ?? "–"),
      h("dt", {}, "correct"), h("dd", { class: node.correct ? "ok" : node.correct === false ? "bad" : null }, correct),
      h("dt", {}, "tokens"), h("dd", {}, node.num_tokens),
      h("dt", {}, "children"), h("dd", {}, (node.children || []).length)),
    node.parent === null ? h("div", {}, h("h2", {}, "Question"), h("pre", {}, tree.problem.question)) : null,
    node.text ? h("div", {}, h("h2", {}, "Step (thought and code, as the model wrote it)"), h("pre", { id: "node-text" }, node.text)) : null,
    node.code ? h("div", {}, h("h2", {}, "Code"), h("pre", { id: "node-code" }, node.code)) : null,
    node.parent !== null ? h("div", {}, h("h2", {}, "Sandbox output"), h("pre", { id: "node-output" }, node.output || "(nothing printed)")) : null);
}

async function pageTask() {
  const taskId = Number(pathTail("/tasks/"));
  const info = await getJSON(`/api/tasks/${taskId}`).catch((e) => { showError(e); return null; });
  if (!info) return;
  const status = h("span", { id: "live-status", class: "muted" });
  const detail = h("div", { class: "detail", id: "detail" });
  const box = h("div", { class: "tree-box", id: "tree-box" });
  const dropped = h("div", { id: "dropped" });
  const stats = h("div", { id: "stats" });
  let tree = null;
  const view = new window.RstarTree.TreeView(box, (node) => detail.replaceChildren(nodeDetail(node, tree)));
  const result = info.result;
  put(
    h("h1", {}, `Problem ${info.problem.id} · task #${info.id}`),
    h("p", {}, h("a", { href: `/runs/${encodeURIComponent(info.run)}` }, `run ${info.run}`), ` · round ${info.round} · seed ${info.seed} · `,
      h("span", { class: `pill ${info.state}`, id: "task-state" }, info.state)),
    h("pre", { id: "question" }, info.problem.question),
    h("div", { class: "bar" },
      h("span", {}, "ground truth ", h("b", {}, info.problem.answer === null ? "unknown" : JSON.stringify(info.problem.answer))),
      h("span", { id: "chosen-answer" }, "chosen answer ", h("b", {}, result ? (result.answer ?? "none") : "–"),
        result && result.correct !== null ? h("span", { class: result.correct ? "ok" : "bad" }, result.correct ? " (correct)" : " (wrong)") : null),
      result ? h("span", {}, `tokens ${result.tokens} · ${num(result.wall_s, 1)} s · ${result.rollouts} rollouts`) : null,
      status),
    info.last_error ? h("pre", { class: "bad" }, info.last_error) : null,
    h("div", { class: "controls bar" },
      h("button", { onclick: () => view.expandAll() }, "expand all"),
      h("span", { class: "legend muted" },
        h("span", {}, h("span", { class: "swatch neg" }), " Q −1"),
        h("span", {}, h("span", { class: "swatch zero" }), " Q 0"),
        h("span", {}, h("span", { class: "swatch pos" }), " Q +1"),
        h("span", {}, "size: visits · green/red ring: correct/wrong answer · dashed: failure terminal · gold: chosen path"))),
    h("div", { class: "tree-layout" }, box, detail),
    stats, dropped);
  detail.replaceChildren(nodeDetail(null));

  const show = (payload) => {
    tree = payload.tree;
    const nodes = tree.nodes;
    view.setTree(nodes, payload.chosen_path);
    document.body.dataset.nodes = String(nodes.length);
    document.body.dataset.renderMs = view.lastRenderMs.toFixed(1);
    if (view.selected !== null && nodes[view.selected]) detail.replaceChildren(nodeDetail(nodes[view.selected], tree));
    const s = tree.stats;
    const dropReasons = [...Object.entries(s.dropped_exec || {}), ...Object.entries(s.dropped_invalid || {})]
      .map(([k, v]) => `${k} ${v}`).join(", ");
    stats.replaceChildren(h("h2", {}, "Search"), h("p", {},
      `${nodes.length} nodes · ${s.rollouts} rollouts · ${s.candidates} candidates · ${s.generated_tokens} tokens · dropped: `
      + `${s.dropped_duplicate} duplicates${dropReasons ? ", " + dropReasons : ""}`));
    dropped.replaceChildren(h("h2", {}, "Dropped candidates (examples kept by the search)"),
      (tree.dropped_examples || []).length
        ? h("ol", { id: "dropped-list" }, tree.dropped_examples.map((d) => h("li", {}, h("div", { class: "bad" }, d.reason), h("pre", {}, d.text))))
        : h("p", { class: "muted" }, "none"));
    status.textContent = payload.final ? `final tree, ${nodes.length} nodes`
      : `live: ${nodes.length} nodes (snapshot ${payload.seq}), rendered in ${view.lastRenderMs.toFixed(0)} ms`;
  };

  let payload = null;
  try { payload = await getJSON(`/api/tasks/${taskId}/tree`); } catch (_) { status.textContent = "waiting for the search to start…"; }
  if (payload) show(payload);
  if (!payload || !payload.final) {
    const source = new EventSource(`/api/tasks/${taskId}/events`);
    source.addEventListener("tree", (e) => show(JSON.parse(e.data)));
    source.addEventListener("state", (e) => {
      const state = JSON.parse(e.data).state;
      const pill = document.getElementById("task-state");
      pill.textContent = state; pill.className = `pill ${state}`;
    });
    source.addEventListener("final", (e) => {
      source.close();
      const final = JSON.parse(e.data);
      show(final);
      const pill = document.getElementById("task-state");
      pill.textContent = "done"; pill.className = "pill done";
      document.getElementById("chosen-answer").replaceChildren("chosen answer ", h("b", {}, final.answer ?? "none"));
    });
    source.addEventListener("end", (e) => { source.close(); status.textContent = JSON.parse(e.data).reason; });
  }
}

// --- Rounds ---------------------------------------------------------------------------------

function accuracyPlot(rows) {
  const SVG = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const width = 560, height = 280, left = 50, right = 20, top = 20, bottom = 40;
  const svg = s("svg", { class: "plot", id: "accuracy-plot", width, height });
  const xs = (i) => left + (rows.length > 1 ? (i * (width - left - right)) / (rows.length - 1) : (width - left - right) / 2);
  const ys = (v) => top + (1 - v) * (height - top - bottom);
  svg.appendChild(s("line", { class: "axis", x1: left, y1: ys(0), x2: width - right, y2: ys(0) }));
  svg.appendChild(s("line", { class: "axis", x1: left, y1: ys(0), x2: left, y2: ys(1) }));
  for (const v of [0, 0.25, 0.5, 0.75, 1]) svg.appendChild(s("text", { x: 8, y: ys(v) + 4 }, `${v * 100}%`));
  const series = (key, cls) => {
    let d = "";
    rows.forEach((row, i) => {
      const acc = row[key];
      if (!acc) return;
      d += `${d ? "L" : "M"}${xs(i)},${ys(acc.rate)}`;
      svg.appendChild(s("line", { class: "err", x1: xs(i), y1: ys(acc.low), x2: xs(i), y2: ys(acc.high) }));
    });
    if (d) svg.appendChild(s("path", { class: cls, d }));
  };
  series("heldout_accuracy", "series");
  series("heldout_search_accuracy", "series2");
  rows.forEach((row, i) => svg.appendChild(s("text", { x: xs(i) - 10, y: height - 18 }, String(row.round))));
  svg.appendChild(s("text", { x: left, y: height - 2 }, "round · solid: greedy · dashed: search · bars: 95 % interval"));
  return svg;
}

async function pageRounds() {
  const run = pathTail("/rounds/");
  try {
    const data = await getJSON(`/api/rounds/${encodeURIComponent(run)}`);
    // The run's `rstar eval` report folders (<evolve work dir>/<run>/...), if it has any.
    const reports = await getJSON(`/api/evaluations?${new URLSearchParams({ run })}`).catch(() => []);
    const acc = (a) => (a ? `${pct(a.rate)} [${pct(a.low)}, ${pct(a.high)}] n=${a.n}` + (a.p_vs_base !== null && a.p_vs_base !== undefined ? ` p=${a.p_vs_base}` : "") : "–");
    put(
      h("h1", {}, `Evolve rounds of ${run}`),
      data.rows.length ? accuracyPlot(data.rows) : h("p", { class: "muted" }, "No round has been evaluated yet."),
      table([{ label: "round", cell: (r) => r.round }, { label: "policy", cell: (r) => r.policy || "–" },
        { label: "ppm", cell: (r) => r.ppm || "–" }, { label: "greedy accuracy", cell: (r) => acc(r.heldout_accuracy) },
        { label: "search accuracy", cell: (r) => acc(r.heldout_search_accuracy) },
        { label: "SFT examples", num: true, cell: (r) => r.sft_examples ?? "–" }, { label: "PPM pairs", num: true, cell: (r) => r.ppm_pairs ?? "–" },
        { label: "promoted", cell: (r) => (r.promoted === null || r.promoted === undefined ? "–" : String(r.promoted)) },
        { label: "tokens", num: true, cell: (r) => r.tokens }], data.rows, { id: "round-table" }),
      h("h2", {}, "Steps"),
      table([{ label: "round", cell: (s) => s.round }, { label: "step", cell: (s) => s.step }, { label: "state", cell: (s) => s.state },
        { label: "attempts", num: true, cell: (s) => s.attempts }, { label: "started", cell: (s) => when(s.started_at) },
        { label: "finished", cell: (s) => when(s.finished_at) }, { label: "error", cell: (s) => s.error || "" }], data.steps),
      reports.length ? h("h2", {}, "Evaluations") : null,
      reports.length ? reportTable(reports, { id: "run-evaluations" }) : null);
  } catch (e) { showError(e); }
}

// --- Evaluations (`rstar eval` report folders) ----------------------------------------------

// A report id is a path (eval/gsm8k-maj): each segment is encoded, the slashes kept.
const reportPath = (id) => id.split("/").map(encodeURIComponent).join("/");
const pValue = (p) => (p === null || p === undefined ? "–" : p >= 0.001 ? Number(p).toPrecision(3) : "< 0.001");

function reportTable(reports, attrs) {
  return table([
    { label: "report", cell: (r) => h("a", { href: `/evaluations/${reportPath(r.id)}` }, r.id) },
    { label: "evolve run", cell: (r) => (r.run ? h("a", { href: `/rounds/${encodeURIComponent(r.run)}` }, r.run) : "–") },
    { label: "produced by", cell: (r) => r.command || "–" },
    { label: "runs", num: true, cell: (r) => r.n_runs },
    { label: "updated", cell: (r) => when(r.updated_at) }], reports, attrs);
}

async function pageEvaluations() {
  try {
    const reports = await getJSON("/api/evaluations");
    put(h("h1", {}, "Evaluations"),
      h("p", { class: "muted" }, "`rstar eval` report folders under RSTAR_EVAL_DIR and, per evolve run, under RSTAR_EVOLVE_DIR."),
      reports.length ? reportTable(reports, { id: "evaluations" }) : h("p", { class: "muted", id: "evaluations" }, "No report folder found."));
  } catch (e) { showError(e); }
}

async function pageEvaluation() {
  const id = pathTail("/evaluations/");
  try {
    const r = await getJSON(`/api/evaluations/${reportPath(id)}`);
    const reward = (v) => v.ppm || v.orm || v.pqm || "–";
    const accuracy = (g) => (g.graded ? `${pct(g.accuracy)} [${pct(g.ci_low)}, ${pct(g.ci_high)}] (${g.correct}/${g.graded})` : "no gold answers");
    const severalBenchmarks = new Set(r.groups.map((g) => g.benchmark)).size > 1;
    const severalConfigs = new Set(r.groups.map((g) => g.config_id)).size > 1;
    const produced = r.command
      ? `Produced by ${r.command} on ${r.date}, ${r.machine}` + (r.n_runs > 1 ? ` (the rows of ${r.n_runs} runs into this folder)` : "") + "."
      : "No run is recorded in this folder (runs.jsonl).";
    put(
      h("h1", {}, `Evaluation ${r.id}`),
      h("p", { class: "muted", id: "produced" }, produced),
      r.run ? h("p", {}, "Evaluation of the evolve run ", h("a", { href: `/rounds/${encodeURIComponent(r.run)}` }, r.run)) : null,
      r.summary_written ? null : h("p", { class: "warn" }, "No summary.json yet: the table is computed from items.jsonl."),
      table([
        ...(severalBenchmarks ? [{ label: "benchmark", cell: (g) => g.benchmark }] : []),
        { label: "method", cell: (g) => g.method }, { label: "N", num: true, cell: (g) => g.N },
        { label: "policy", cell: (g) => g.versions.policy || "–" }, { label: "reward model", cell: (g) => reward(g.versions) },
        ...(severalConfigs ? [{ label: "config", cell: (g) => g.config_id }] : []),
        { label: "accuracy [95 % CI]", cell: accuracy }, { label: "items", num: true, cell: (g) => g.items },
        { label: "tokens/item", num: true, cell: (g) => num(g.tokens_per_item) },
        { label: "s/item", num: true, cell: (g) => num(g.seconds_per_item, 1) }], r.groups, { id: "eval-table" }),
      r.comparisons.length ? h("h2", {}, "Paired comparisons") : null,
      r.comparisons.length ? h("p", { class: "muted" }, "Exact McNemar test on the items both graded; p is two-sided.") : null,
      r.comparisons.length ? table([
        { label: "A", cell: (c) => c.a }, { label: "B", cell: (c) => c.b }, { label: "items", num: true, cell: (c) => c.items },
        { label: "A only right", num: true, cell: (c) => c.a_only }, { label: "B only right", num: true, cell: (c) => c.b_only },
        { label: "A − B", num: true, cell: (c) => `${c.diff >= 0 ? "+" : ""}${(100 * c.diff).toFixed(1)} pts` },
        { label: "p", num: true, cell: (c) => pValue(c.p_value) }], r.comparisons, { id: "eval-comparisons" }) : null,
      h("h2", {}, "Test-time scaling"),
      r.plot ? h("img", { id: "scaling-plot", class: "report-plot", src: r.plot, alt: "accuracy against generated tokens per item" })
        : h("p", { class: "muted" }, "No scaling plot (accuracy.png) in this folder."),
      r.rounds_plot ? h("h2", {}, "Accuracy per round") : null,
      r.rounds_plot ? h("img", { id: "rounds-plot", class: "report-plot", src: r.rounds_plot, alt: "accuracy per evolve round" }) : null,
      r.markdown ? h("p", {}, h("a", { href: r.markdown }, "report.md")) : null);
  } catch (e) { showError(e); }
}

// --- Models ---------------------------------------------------------------------------------

async function pageModels() {
  try {
    const versions = await getJSON("/api/models");
    const byParent = new Map();
    const known = new Set(versions.map((v) => v.version));
    for (const v of versions) {
      const key = v.parent && known.has(v.parent) ? v.parent : null;
      if (!byParent.has(key)) byParent.set(key, []);
      byParent.get(key).push(v);
    }
    const lineage = (parent) => h("ul", { class: "lineage" }, (byParent.get(parent) || []).map((v) => h("li", {},
      h("b", {}, v.version), ` ${v.kind} · ${v.status}` + (v.round !== null ? ` · round ${v.round}` : "") + (v.run ? ` · run ${v.run}` : ""),
      byParent.has(v.version) ? lineage(v.version) : null)));
    put(h("h1", {}, "Models"),
      h("h2", {}, "Lineage"), versions.length ? lineage(null) : h("p", { class: "muted" }, "No model version is registered."),
      h("h2", {}, "Registry"),
      table([{ label: "version", cell: (v) => v.version }, { label: "kind", cell: (v) => v.kind },
        { label: "status", cell: (v) => v.status }, { label: "round", cell: (v) => v.round ?? "–" },
        { label: "parent", cell: (v) => v.parent || "–" }, { label: "base", cell: (v) => v.base || "–" },
        { label: "run", cell: (v) => v.run || "–" }, { label: "metrics", cell: (v) => JSON.stringify(v.metrics) },
        { label: "created", cell: (v) => when(v.created_at) }, { label: "promoted", cell: (v) => when(v.promoted_at) }],
      versions, { id: "models" }));
  } catch (e) { showError(e); }
}

// --- Enqueue --------------------------------------------------------------------------------

async function pageEnqueue() {
  const message = h("div", { id: "enqueue-result" });
  const recipes = await getJSON("/api/recipes").catch(() => ["round1"]);
  const form = h("form", { class: "enqueue", id: "enqueue-form" },
    h("label", { for: "file" }, "Problem file (JSONL, or a .json array of {question, answer?, id?})"),
    h("input", { type: "file", id: "file", name: "file", required: true }),
    h("label", { for: "run" }, "Run"), h("input", { type: "text", id: "run", name: "run", required: true }),
    h("label", { for: "recipe" }, "Recipe"),
    h("select", { id: "recipe", name: "recipe" }, recipes.map((r) => h("option", { value: r, selected: r === "round1" }, r))),
    h("label", { for: "round" }, "Round"), h("input", { type: "number", id: "round", name: "round", value: "1", min: "1" }),
    h("label", { for: "token" }, "Token (RSTAR_WEB_TOKEN)"), h("input", { type: "password", id: "token", autocomplete: "off" }),
    h("p", {}, h("button", { type: "submit", id: "submit" }, "Enqueue")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData();
    body.set("file", document.getElementById("file").files[0]);
    for (const key of ["run", "recipe", "round"]) body.set(key, document.getElementById(key).value);
    message.className = "message";
    message.textContent = "enqueueing…";
    const response = await fetch("/api/enqueue", { method: "POST", body,
      headers: { Authorization: `Bearer ${document.getElementById("token").value}` } });
    if (response.ok) {
      message.className = "message ok";
      message.textContent = (await response.json()).message;
    } else {
      message.className = "message bad";
      message.textContent = `rstar: error: ${await errorText(response)}`;
    }
  });
  put(h("h1", {}, "Enqueue problems"),
    h("p", { class: "muted" }, "The same checks as `rstar enqueue`: the whole file is validated first; nothing is queued unless all of it is valid."),
    form, message);
}

const PAGES = { runs: pageRuns, run: pageRun, task: pageTask, rounds: pageRounds, models: pageModels,
  evaluations: pageEvaluations, evaluation: pageEvaluation, enqueue: pageEnqueue };
document.addEventListener("DOMContentLoaded", () => PAGES[document.body.dataset.page]());
