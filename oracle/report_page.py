"""The Jinja2 template of report.html (see oracle/report.py), kept as a string so that it installs with the code.

Contract with `report.render`: the context holds `title`, `notes`, `facts` and `settings` (label, text pairs), `groups`
(headline figure groups: name and rows with label, key, ci_key, value, ci), `static` rows, `controller`
(None or a dict with `rows` and `notes`), `images` (caption, base64 PNG), `missing_images` and `data_json`,
the per-sequence JSON already escaped for a <script> element (no "<" in it).  Everything else is
autoescaped.  The JavaScript writes data into the page with textContent and createElement only.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#666}.note{color:#8a5a00}img{max-width:100%;border:1px solid #eee}
#seqs tbody tr{cursor:pointer}#seqs tbody tr:hover{background:#eef5ff}#seqs tr.open{background:#dde9ff}
#seqs th.sort{cursor:pointer;color:#0645ad}.scroll{max-height:420px;overflow:auto}
pre,.text{white-space:pre-wrap;word-break:break-word;margin:0}pre{background:#f7f7f7;padding:6px;max-height:300px;overflow:auto}
mark{background:#ffe27a}del{color:#b00;background:#fde}.pick{font-weight:bold;color:#063}
tr.full td{background:#f3fff3}tr.picked td{background:#f5f9ff}#cands td.text{min-width:420px}
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% for note in notes %}<p class="note">{{ note }}</p>{% endfor %}
<p id="facts">{% for label, text in facts %}<b>{{ label }}</b> {{ text }}{% if not loop.last %} · {% endif %}{% endfor %}</p>
<details><summary>All settings</summary>
<table id="settings">{% for label, text in settings %}<tr><th>{{ label }}</th><td>{{ text }}</td></tr>{% endfor %}</table></details>
<h2>Headline figures</h2>
<p>Intervals: 95 % bootstrap over sequences (see summary.json's <code>bootstrap</code>).</p>
<table id="headline">
<tr><th>figure</th><th>value</th><th>95 % interval</th></tr>
{% for group in groups %}<tr><th colspan="3">{{ group.name }}</th></tr>
{% for row in group.rows %}<tr><td>{{ row.label }}</td><td class="num" data-key="{{ row.key }}">{{ row.value }}</td><td class="num ci" data-key="{{ row.ci_key }}">{{ row.ci }}</td></tr>
{% endfor %}{% endfor %}</table>
{% if static %}<h3>Static candidates (each applied to every sequence)</h3>
<table id="static"><tr><th>candidate</th><th>% of layers</th><th>mean score</th><th>95 % interval</th><th>identical to full, %</th></tr>
{% for row in static %}<tr><td>{{ row.spec }}</td><td class="num">{{ row.percent }}</td><td class="num">{{ row.score }}</td><td class="num ci">{{ row.ci }}</td><td class="num">{{ row.identical }}</td></tr>
{% endfor %}</table>{% endif %}
{% if controller %}<h2>Controller (decides from the prompt alone)</h2>
{% for note in controller.notes %}<p>{{ note }}</p>{% endfor %}
<table id="controller"><tr><th>figure</th><th>value</th><th>95 % interval</th></tr>
{% for row in controller.rows %}<tr><td>{{ row.label }}</td><td class="num" data-key="{{ row.key }}">{{ row.value }}</td><td class="num ci" data-key="{{ row.ci_key }}">{{ row.ci }}</td></tr>
{% endfor %}</table>{% endif %}
<h2>Plots</h2>
{% for caption, b64 in images %}<figure><img alt="{{ caption }}" src="data:image/png;base64,{{ b64 }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}{% for note in missing_images %}<p class="note">{{ note }}</p>{% endfor %}
<h2>Sequences</h2>
<p>Click a column name to sort, a row to open the sequence. Filter (id, prompt, references or any output):
<input id="filter" type="search" size="40"> <span id="count"></span></p>
<div class="scroll"><table id="seqs"><thead><tr>
<th class="sort" data-sort="i">#</th><th class="sort" data-sort="id">id</th><th class="sort" data-sort="full">full score</th>
<th>rule's choice</th><th class="sort" data-sort="cost">chosen cost (layers)</th><th class="sort" data-sort="gain">score gain</th><th>exact rule's choice</th>
</tr></thead><tbody></tbody></table></div>
<div id="detail"></div>
<script type="application/json" id="data">{{ data_json|safe }}</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent), S = D.strings, N = D.num_layers;
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; };
const fmt = x => x === null || x === undefined ? "\u2013" : (typeof x === "number" ? x.toFixed(2) : String(x));
const row = (cells) => { const tr = el("tr"); for (const c of cells) { const td = c instanceof Node ? c : el("td", c); tr.appendChild(td.tagName === "TD" || td.tagName === "TH" ? td : wrap(td)); } return tr; };
const wrap = n => { const td = el("td"); td.appendChild(n); return td; };
const num = x => el("td", fmt(x), "num"), int = x => el("td", x === null ? "\u2013" : String(x), "num");
function cand(s, spec) { if (spec === "all") return {spec: "all", cost: s.f[3], score: s.f[2]}; const c = s.c.find(c => D.specs[c[0]] === spec); return c ? {spec, cost: c[1], score: c[2]} : {spec, cost: null, score: null}; }
const seqs = D.sequences.map((s, i) => { const ch = cand(s, s.t); return {s, i, id: s.id, full: s.f[2], cost: ch.cost, gain: ch.score === null ? null : ch.score - s.f[2], hay: null}; });
let key = "i", asc = true;
function hay(q) { if (q.hay === null) q.hay = [q.s.id, q.s.p, ...q.s.r, S[q.s.f[0]], ...q.s.c.map(c => S[c[5]])].join("\n").toLowerCase(); return q.hay; }
function draw() {
  const f = document.getElementById("filter").value.toLowerCase(), body = document.querySelector("#seqs tbody");
  const shown = seqs.filter(q => !f || hay(q).includes(f));
  shown.sort((a, b) => { const x = a[key], y = b[key]; const c = x === y ? a.i - b.i : x === null ? 1 : y === null ? -1 : x < y ? -1 : 1; return asc ? c : -c; });
  body.replaceChildren(...shown.map(q => { const tr = row([int(q.i + 1), q.id, num(q.full), q.s.t, int(q.cost), num(q.gain), q.s.e]); tr.dataset.id = q.id; tr.addEventListener("click", () => { location.hash = "seq=" + encodeURIComponent(q.id); }); return tr; }));
  document.getElementById("count").textContent = shown.length + " of " + seqs.length + " sequences";
}
function words(t) { return t.split(/\s+/).filter(Boolean); }
function diff(a, b) {  // word-level LCS: ops [kind, word], kind "=" both, "+" only in b, "-" only in a
  const n = a.length, m = b.length; if (n * m > 4e6) return null;
  const L = Array.from({length: n + 1}, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const ops = []; let i = 0, j = 0;
  while (i < n || j < m) { if (i < n && j < m && a[i] === b[j]) { ops.push(["=", a[i]]); i++; j++; } else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) ops.push(["+", b[j++]]); else ops.push(["-", a[i++]]); }
  return ops;
}
function diffNode(full, out) {
  const box = el("div", undefined, "text"), ops = diff(words(full), words(out));
  if (ops === null) { box.textContent = out; return box; }
  ops.forEach(([k, w], n) => { if (n) box.appendChild(document.createTextNode(" ")); box.appendChild(k === "=" ? document.createTextNode(w) : el(k === "+" ? "mark" : "del", w)); });
  return box;
}
function show(id) {
  const q = seqs.find(q => q.id === id), box = document.getElementById("detail");
  document.querySelectorAll("#seqs tr.open").forEach(tr => tr.classList.remove("open"));
  if (!q) { box.replaceChildren(); return; }
  document.querySelectorAll("#seqs tbody tr").forEach(tr => { if (tr.dataset.id === id) tr.classList.add("open"); });
  const s = q.s, full = S[s.f[0]], parts = [el("h2", "Sequence " + s.id), el("h3", "Prompt"), el("pre", s.p, "prompt"), el("h3", "References")];
  const refs = el("ol", undefined, "refs"); s.r.forEach(r => refs.appendChild(el("li", r, "text"))); parts.push(refs);
  parts.push(el("h3", "Full model output"), el("pre", full, "full-output"), el("h3", "Candidates"));
  parts.push(el("p", "Words marked yellow are not in the full output; struck-out words are the full output's words the candidate lacks. The rule picks the cheapest candidate scoring at least the full score (minus the tolerance); the exact rule the cheapest token-identical one."));
  const t = el("table"); t.id = "cands";
  const head = ["candidate", "layers", "score", "\u0394 score", "tokens", "identical"].concat(D.margin === null ? [] : ["NLL (nats/token)"], ["picked by", "output"]);
  t.appendChild(row(head.map(h => el("th", h))));
  const picks = spec => [spec === s.t ? "rule" : "", spec === s.e ? "exact rule" : ""].filter(Boolean).join(", ");
  const nll = x => D.margin === null ? [] : [num(x)];
  for (const c of s.c) {
    const spec = D.specs[c[0]], tr = row([spec, int(c[1]), num(c[2]), num(c[2] - s.f[2]), int(c[3]), c[4] ? "yes" : "no", ...nll(c[6]), el("td", picks(spec), "pick"), c[4] ? el("div", S[c[5]], "text") : diffNode(full, S[c[5]])]);
    tr.dataset.spec = spec; if (picks(spec)) tr.className = "picked"; t.appendChild(tr);
  }
  const tr = row(["all (full model)", int(s.f[3]), num(s.f[2]), num(0), int(s.f[1]), "yes", ...nll(s.f[4]), el("td", picks("all"), "pick"), el("div", full, "text")]);
  tr.dataset.spec = "all"; tr.className = "full"; t.appendChild(tr); parts.push(t);
  if (D.margin !== null) parts.push(el("p", "NLL: the full model's teacher-forced mean NLL of the output; plausible iff \u2264 the full output's + " + D.margin + " nats/token (plausibility.json)."));
  box.replaceChildren(...parts);
}
document.querySelectorAll("#seqs th.sort").forEach(th => th.addEventListener("click", () => { const k = th.dataset.sort; asc = k === key ? !asc : k === "i" || k === "id"; key = k; draw(); }));
document.getElementById("filter").addEventListener("input", draw);
const open = () => { const m = location.hash.match(/^#seq=(.*)$/); show(m ? decodeURIComponent(m[1]) : null); };
window.addEventListener("hashchange", () => { open(); document.getElementById("detail").scrollIntoView(); });
draw(); open();
</script>
</body>
</html>
"""
