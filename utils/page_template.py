"""The HTML, CSS and JS of the results page (utils/results_page.py fills its {{...}} fields in one pass)."""
PAGE_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
:root { --ok: {{COLOR_OK}}; --ng: {{COLOR_NG}}; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 8px 16px; z-index: 1; }
h1 { font-size: 18px; margin: 0 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: center; }
.slider { position: relative; width: 420px; padding-top: 14px; }
.slider input { width: 100%; margin: 0; }
#mark { position: absolute; top: 0; pointer-events: none; transform: translateX(-50%); font-size: 11px;
  color: #555; white-space: nowrap; }
#mark::after { content: ""; display: block; width: 2px; height: 10px; background: #333; margin: 0 auto; }
.counts b { font-size: 16px; }
.count-ng { color: var(--ng); }
table { border-collapse: collapse; margin: 8px 16px; }
th, td { padding: 4px 10px; text-align: left; border-bottom: 1px solid #e5e5e5; }
th.sort { cursor: pointer; user-select: none; text-decoration: underline dotted; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #eef3ff; }
td.thumb { width: 120px; height: 52px; padding: 2px 10px; }
td.thumb img { max-height: 48px; max-width: 120px; display: block; }
td.score { font-variant-numeric: tabular-nums; text-align: right; }
td.verdict { font-weight: bold; color: #fff; text-align: center; width: 40px; }
tr.ok td.verdict { background: var(--ok); }
tr.ng td.verdict { background: var(--ng); }
tr.wrong td.label { color: var(--ng); font-weight: bold; }
td.name { word-break: break-all; max-width: 520px; }
#viewer { position: fixed; inset: 0; background: rgba(0,0,0,.85); display: none; z-index: 2; padding: 16px;
  box-sizing: border-box; text-align: center; }
#viewer.open { display: block; }
#viewer img { max-width: 100%; max-height: calc(100% - 40px); background: #fff; }
#viewer p { color: #fff; margin: 6px 0; }
#viewer a { color: #9cf; }
</style>
</head>
<body>
<script type="application/json" id="page-data">{{DATA}}</script>
<header>
<h1 id="title"></h1>
<div class="controls">
<label>threshold <output id="thr-value"></output></label>
<div class="slider"><span id="mark"></span><input type="range" id="threshold" step="any"></div>
<button id="reset" type="button">stored threshold</button>
<span class="counts"><b class="count-ng" id="ng-count"></b> NG of <b id="total"></b>
<span id="shown"></span></span>
<span class="counts" id="rates"></span>
<label>verdict <select id="verdict-filter"><option value="">all</option><option>NG</option><option>OK</option>
</select></label>
<label id="type-box">defect type <select id="type-filter"><option value="">all</option></select></label>
</div>
</header>
<table>
<thead><tr><th>#</th><th>overlay</th><th class="sort" data-key="name">name</th>
<th class="sort" data-key="score">score</th><th>verdict</th><th class="extra">type</th><th class="extra">label</th>
</tr></thead>
<tbody id="rows"></tbody>
</table>
<div id="viewer"><p><span id="viewer-name"></span> &middot; <a id="viewer-link" target="_blank">open alone</a>
&middot; Esc or click to close</p><img id="viewer-img" alt="4-panel picture"></div>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("page-data").textContent);
const $ = (id) => document.getElementById(id);
const state = { threshold: DATA.threshold, sortKey: "", sortDown: true, trs: [] };

function cell(tr, cls, text) {
  const td = document.createElement("td");
  td.className = cls;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function buildRow(row, i) {
  const tr = document.createElement("tr");
  cell(tr, "index", String(i + 1));
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = "";
  img.src = row.thumb;
  cell(tr, "thumb", "").appendChild(img);
  cell(tr, "name", row.name);
  cell(tr, "score", row.score.toFixed(4));
  tr.verdictCell = cell(tr, "verdict", "");
  if (DATA.has_types || DATA.has_labels) {
    cell(tr, "type", row.type === null ? "" : row.type);
    cell(tr, "label", row.label === null ? "" : row.label);
  }
  tr.row = row;
  tr.ng = null;
  tr.addEventListener("click", () => openViewer(row));
  return tr;
}

function buildRows() {
  const body = document.createDocumentFragment();
  state.trs = DATA.rows.map(buildRow);
  state.trs.forEach((tr) => body.appendChild(tr));
  $("rows").appendChild(body);
}

function setVerdicts(t) {
  let ng = 0, goodNg = 0, good = 0, defectNg = 0, defect = 0;
  for (const tr of state.trs) {
    const isNg = tr.row.score > t;
    if (tr.ng !== isNg) {
      tr.ng = isNg;
      const wrong = tr.row.label !== null && isNg !== (tr.row.label === "defect");
      tr.className = (isNg ? "ng" : "ok") + (wrong ? " wrong" : "");  // wrong: the label says otherwise
      tr.verdictCell.textContent = isNg ? "NG" : "OK";
    }
    if (isNg) ng++;
    if (tr.row.label === "good") { good++; if (isNg) goodNg++; }
    if (tr.row.label === "defect") { defect++; if (isNg) defectNg++; }
  }
  return { ng, goodNg, good, defectNg, defect };
}

function rate(k, n) {
  return n === 0 ? "n/a" : k + "/" + n + " (" + (100 * k / n).toFixed(1) + "%)";
}

function update() {
  const t = state.threshold;
  const c = setVerdicts(t);
  $("thr-value").textContent = t.toFixed(4);
  $("ng-count").textContent = String(c.ng);
  if (DATA.has_labels) {
    $("rates").textContent = "false-reject rate " + rate(c.goodNg, c.good) + " \u00b7 recall " +
      rate(c.defectNg, c.defect);
  }
  applyFilter();
}

function applyFilter() {
  const verdict = $("verdict-filter").value, type = $("type-filter").value;
  let shown = 0;
  for (const tr of state.trs) {
    const hide = (verdict !== "" && (tr.ng ? "NG" : "OK") !== verdict) ||
      (type !== "" && tr.row.type !== type);
    if (tr.hidden !== hide) tr.hidden = hide;
    if (!hide) shown++;
  }
  $("shown").textContent = shown === state.trs.length ? "" : "(" + shown + " shown)";
}

function sortRows(key) {
  state.sortDown = state.sortKey === key ? !state.sortDown : key === "score";
  state.sortKey = key;
  const sign = state.sortDown ? -1 : 1;
  const byName = (a, b) => (a.row.name < b.row.name ? -1 : a.row.name > b.row.name ? 1 : 0);
  const cmp = key === "score" ? (a, b) => a.row.score - b.row.score || byName(a, b) : byName;
  const body = $("rows"), sorted = state.trs.slice().sort((a, b) => sign * cmp(a, b));
  const frag = document.createDocumentFragment();
  sorted.forEach((tr) => frag.appendChild(tr));
  body.appendChild(frag);
}

function openViewer(row) {
  $("viewer-img").src = row.picture;
  $("viewer-link").href = row.picture;
  $("viewer-name").textContent = row.name + " \u00b7 score " + row.score.toFixed(4);
  $("viewer").classList.add("open");
}

function setThreshold(t) {
  state.threshold = Math.min(DATA.high, Math.max(DATA.low, t));
  $("threshold").value = String(state.threshold);
  update();
}

function initSlider() {
  const s = $("threshold");
  s.min = String(DATA.low);
  s.max = String(DATA.high);
  const stored = DATA.threshold;
  if (stored === null) {
    $("mark").textContent = "no stored threshold";
    $("reset").hidden = true;
    state.threshold = DATA.high;
  } else {
    $("mark").textContent = "stored " + stored.toFixed(4);
    $("mark").style.left = "calc(8px + " + ((stored - DATA.low) / (DATA.high - DATA.low)) + " * (100% - 16px))";
  }
  s.value = String(state.threshold);
  s.addEventListener("input", () => { state.threshold = Number(s.value); update(); });
  $("reset").addEventListener("click", () => setThreshold(stored));
}

function fromAddress() {
  const m = /(?:^#|&)threshold=([-+0-9.eE]+)/.exec(location.hash);
  if (m && isFinite(Number(m[1]))) setThreshold(Number(m[1]));
}

function initFilters() {
  $("verdict-filter").addEventListener("change", applyFilter);
  const types = [...new Set(DATA.rows.map((r) => r.type).filter((t) => t !== null))].sort();
  $("type-box").hidden = types.length === 0;
  for (const t of types) {
    const o = document.createElement("option");
    o.textContent = t;
    o.value = t;
    $("type-filter").appendChild(o);
  }
  $("type-filter").addEventListener("change", applyFilter);
  document.querySelectorAll("th.extra").forEach((th) => { th.hidden = !(DATA.has_types || DATA.has_labels); });
}

function init() {
  document.title = DATA.title;
  $("title").textContent = DATA.title;
  $("total").textContent = String(DATA.rows.length);
  buildRows();
  initSlider();
  initFilters();
  document.querySelectorAll("th.sort").forEach((th) =>
    th.addEventListener("click", () => sortRows(th.dataset.key)));
  $("viewer").addEventListener("click", () => $("viewer").classList.remove("open"));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("viewer").classList.remove("open"); });
  sortRows("score");
  update();
  fromAddress();
  window.addEventListener("hashchange", fromAddress);
  document.body.dataset.ready = "1";
}

init();
</script>
</body>
</html>
"""
