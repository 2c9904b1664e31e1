"""Tests for `skiporacle report` (oracle/report.py): escaping, the page in headless Chromium, size, bad input.

The runs here are synthetic (records written directly, summary.json from `oracle.summary.summarize`, so
its split-reference and guarded blocks are real), except one oracle run of the tiny saved Llama.  The
browser tests need Debian's `chromium`, which `make test` installs where it runs as root; where none can be
had they skip with the command that installs it, except under CI=true, where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import one_thread
from test_cli import assert_bad, data_args, oracle_args, run_cli  # noqa: F401 (data_args: a fixture)
from skiporacle.data.files import write_json_atomic
from skiporacle.oracle.choose import cheapest_identical, cheapest_matching
from skiporacle.oracle.records import SETTINGS, append_records
from skiporacle.oracle.report import page_data, render
from skiporacle.oracle.schema import SequenceRecord
from skiporacle.oracle.report_figures import fmt, lookup
from skiporacle.oracle.summary import summarize

NASTY = ['<script>alert(1)</script>', 'end </script><script>alert(2)</script> & <!-- x', '</SCRIPT >"\'&amp;']
WORDS = [f"w{i}" for i in range(3000)] + ["the", "a", "of", "to", "in", "and", "said", "on", "for", "was"] * 60
N_LAYERS = 30


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def synthetic_run(out: Path, n: int, k: int, seed: int = 0, nasty: bool = True, summary: bool = True) -> list[dict]:
    """A run folder of n sequences x k skip candidates (+ the full model) with made-up outputs and scores.

    Sequence 0 carries NASTY texts (outputs, prompt, a reference) when `nasty`; two references per sequence,
    so summary.json has the split-reference block; plausibility.json gives it the guarded block."""
    rng = random.Random(seed)
    out.mkdir(parents=True)
    budgets = [int(b) for b in np.linspace(6, N_LAYERS - 1, k)]
    specs = [f"uniform:{b}" for b in budgets]
    settings = {"model": '<img src=x onerror=alert("m")>' if nasty else "synthetic", "task": "xsum", "data_file": None,
                "metric": "rougeL", "seed": 0, "tolerance": 0.0, "max_new_tokens": 48, "candidates": specs}
    write_json_atomic(out / SETTINGS, settings)
    records, nll = [], {}
    for i in range(n):
        full_out = _text(rng, 40)
        cands = []
        for j, (spec, b) in enumerate(zip(specs, budgets)):
            same = rng.random() < 0.05
            output = full_out if same else (NASTY[j % 3] + " " + full_out[:60] if nasty and i == 0 else _text(rng, 40))
            cands.append({"spec": spec, "layers": list(range(b)), "cost": b, "fraction": b / N_LAYERS, "output": output,
                          "tokens": 48, "score": 40 * rng.random() if not same else 20.0, "identical": same})
        full = {"output": full_out, "tokens": 48, "score": 20.0 + 10 * rng.random(), "cost": N_LAYERS,
                "token_ids": [rng.randrange(50000) for _ in range(48)]}
        for c in cands:
            if c["identical"]:
                c["score"] = full["score"]
        scores = np.array([[c["score"] for c in cands] + [full["score"]]])
        identical = np.array([[c["identical"] for c in cands] + [True]])
        costs = budgets + [N_LAYERS]
        pick = lambda col: (specs + ["all"])[col]
        records.append({"id": f"doc-{i}" if not (nasty and i == 0) else 'id "<b>0</b>"', "prompt": _text(rng, 400)
                        + (" " + NASTY[1] if nasty and i == 0 else ""), "references": [_text(rng, 22), _text(rng, 22)]
                        + ([NASTY[0]] if nasty and i == 0 else []), "full": full, "candidates": cands,
                        "choice": {"tolerance": pick(cheapest_matching(scores, costs, scores[:, -1], 0.0)[0]),
                                   "exact": pick(cheapest_identical(identical, scores, costs)[0])}})
        nll[records[-1]["id"]] = {"full": 2.0, "candidates": {c["spec"]: 1.0 + 3 * rng.random() for c in cands}}
    append_records(out, [SequenceRecord.from_json(r) for r in records])
    if summary:
        write_json_atomic(out / "plausibility.json", {"margin": 1.0, "sequences": nll})
        summarize(out, settings, 12.5, {"workers": 1})
    return records


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A 12 x 6 synthetic run with summary, plausibility and a controller folder (json + png)."""
    import matplotlib.pyplot as plt

    out = tmp_path_factory.mktemp("report") / "run"
    records = synthetic_run(out, 12, 6)
    (out / "controller").mkdir()
    write_json_atomic(out / "controller" / "controller.json", {
        "mode": "cross-validation", "folds": 5, "deploy_tau": 0.4, "layers_at_full_quality_percent": 81.25,
        "oracle_layers_at_full_quality_percent": 62.5, "saving_kept": 0.5,
        "intervals": {"layers_at_full_quality_percent": [70.0, 95.5], "oracle_layers_at_full_quality_percent": [55.0, 70.0],
                      "saving_kept": [0.1, 0.9]},
        "baselines": {"static_layers_at_full_quality_percent": 100.0, "static_interval": [90.0, 100.0],
                      "prompt_length_layers_at_full_quality_percent": None, "prompt_length_interval": None,
                      "shuffled_oracle_layers_at_full_quality_percent": 97.0}})
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 0, 1])
    fig.savefig(out / "controller" / "controller.png")
    plt.close(fig)
    return out, records


# --- a DOM reader for Chromium's --dump-dom ----------------------------------------------------

class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def all(self, pred) -> list["Node"]:
        found = [self] if pred(self) else []
        for c in self.children:
            if isinstance(c, Node):
                found += c.all(pred)
        return found

    def text(self, skip: tuple[str, ...] = ()) -> str:
        return "".join(c if isinstance(c, str) else c.text(skip) for c in self.children
                       if isinstance(c, str) or c.tag not in skip)


class _Builder(HTMLParser):
    VOID = {"meta", "img", "input", "br", "hr", "link"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        if tag not in self.VOID:
            self.node = node

    def handle_endtag(self, tag):
        n = self.node
        while n.parent is not None and n.tag != tag:
            n = n.parent
        if n.parent is not None:
            self.node = n.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    return b.root


def chromium(*args: str, timeout: int = 180) -> str:
    """Run headless Chromium; its stdout.  Without Chromium: a skip naming the install command (a failure in CI)."""
    exe = shutil.which("chromium")
    if exe is None:
        missing = "chromium not found (the report's browser tests need it): sudo apt-get install chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    # No background networking: this machine's closed network refuses Chromium's own connections.
    done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def by_id(root: Node, id_: str) -> Node:
    (node,) = root.all(lambda n: n.attrs.get("id") == id_)
    return node


def words(text: str) -> str:
    return " ".join(text.split())


# --- tests -----------------------------------------------------------------------------------


def test_missing_browser_skips_with_the_install_command_but_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        chromium("--version")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium("--version")

def test_outputs_are_escaped_text(small_run):
    out, records = small_run
    page = render(out)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(&#34;m&#34;)&gt;" in page  # the model name, autoescaped by Jinja2
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the JSON block and the code, nothing from data
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in block
    data = json.loads(block)
    assert data == page_data([SequenceRecord.from_json(r) for r in records], json.loads((out / "plausibility.json").read_text()))
    first = data["sequences"][0]
    assert [data["strings"][c[5]] for c in first["c"]] == [c["output"] for c in records[0]["candidates"]]
    assert any(NASTY[0] in data["strings"][c[5]] for c in first["c"]) and first["id"] == records[0]["id"]
    assert first["p"] == records[0]["prompt"] and first["r"] == records[0]["references"]


def test_report_in_chromium(capsys, small_run, tmp_path):
    out, records = small_run
    code, stdout, _ = run_cli(capsys, "report", "--run", out)
    assert code == 0 and str(out / "report.html") in stdout
    summary = json.loads((out / "summary.json").read_text())
    controller = json.loads((out / "controller" / "controller.json").read_text())
    record = records[0]  # the one with <script> in its outputs, prompt, references and id
    from urllib.parse import quote

    url = (out / "report.html").resolve().as_uri() + "#seq=" + quote(record["id"], safe="")
    root = parse(chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url))
    scripts = root.all(lambda n: n.tag == "script")  # only the JSON block and the code: no <script> from data ran
    assert len(scripts) == 2 and scripts[0].attrs.get("id") == "data" and "<" not in scripts[0].text()
    assert "alert" not in scripts[1].text()
    assert not root.all(lambda n: n.tag == "img" and not n.attrs.get("src", "").startswith("data:"))
    # headline figures: every shown figure equals its summary.json (controller.json) key
    shown = {}
    for table, source in (("headline", summary), ("controller", controller)):
        for cell in by_id(root, table).all(lambda n: n.tag == "td" and n.attrs.get("data-key")):
            assert cell.text() == fmt(lookup(source, cell.attrs["data-key"])), cell.attrs["data-key"]
            shown[cell.attrs["data-key"]] = cell.text()
    for key in ("full_mean_score", "full_mean_score_ci95", "rule.mean_percent_layers", "rule.mean_percent_layers_ci95",
                "rule_exact.mean_percent_layers", "knapsack.percent_layers_at_full_quality",
                "knapsack.percent_layers_at_full_quality_ci95", "split_reference.held_out.knapsack.percent_layers_at_full_quality",
                "split_reference.in_sample.knapsack.percent_layers_at_full_quality", "guarded.knapsack.percent_layers_at_full_quality",
                "guarded.rule.mean_percent_layers_ci95", "layers_at_full_quality_percent", "saving_kept", "intervals.saving_kept"):
        assert key in shown, key
    assert shown["full_mean_score"] == f"{summary['full_mean_score']:.2f}"
    assert len(root.all(lambda n: n.tag == "img" and n.attrs.get("src", "").startswith("data:image/png;base64,"))) == 2
    assert "similarity.png is missing" in root.text()
    # the sequence browser and the opened sequence
    rows = by_id(root, "seqs").all(lambda n: n.tag == "tr" and "data-id" in n.attrs)
    assert [r.attrs["data-id"] for r in rows] == [r["id"] for r in records]
    detail = by_id(root, "detail")
    assert detail.all(lambda n: n.attrs.get("class") == "prompt")[0].text() == record["prompt"]
    assert [li.text() for li in detail.all(lambda n: n.tag == "li")] == record["references"]
    assert detail.all(lambda n: n.attrs.get("class") == "full-output")[0].text() == record["full"]["output"]
    cand_rows = {r.attrs["data-spec"]: r for r in by_id(root, "cands").all(lambda n: "data-spec" in n.attrs)}
    assert list(cand_rows) == [c["spec"] for c in record["candidates"]] + ["all"]
    marked = 0
    for c in record["candidates"] + [{**record["full"], "spec": "all", "identical": True}]:
        cells = [td for td in cand_rows[c["spec"]].children if isinstance(td, Node)]
        assert abs(float(cells[2].text()) - c["score"]) <= 0.005 + 1e-9, c["spec"]
        assert int(cells[1].text()) == c["cost"] and int(cells[4].text()) == c["tokens"]
        assert cells[5].text() == ("yes" if c["identical"] else "no")
        picks = set(cells[7].text().split(", "))
        assert ("rule" in picks) == (c["spec"] == record["choice"]["tolerance"])
        assert ("exact rule" in picks) == (c["spec"] == record["choice"]["exact"])
        assert words(cells[8].text(skip=("del",))) == words(c["output"]), c["spec"]
        marked += len(cells[8].all(lambda n: n.tag in ("mark", "del")))
    assert marked > 0 and "<script>alert(1)</script>" in by_id(root, "cands").text()
    shot = tmp_path / "shot.png"
    chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000", url)
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24)
    assert len(colours) > 50 and max(n for n, _ in colours) < 0.95 * sum(n for n, _ in colours)


PROBE = """<script>
const ids = () => [...document.querySelectorAll("#seqs tbody tr")].map(tr => tr.dataset.id), out = {};
const th = k => document.querySelector(`#seqs th[data-sort="${k}"]`);
for (const [name, k] of [["full_desc", "full"], ["full_asc", "full"], ["cost", "cost"], ["gain", "gain"]]) { th(k).click(); out[name] = ids(); }
const f = document.getElementById("filter"); f.value = "DOC-3"; f.dispatchEvent(new Event("input")); out.filter = ids();
document.body.appendChild(Object.assign(document.createElement("pre"), {id: "probe", textContent: JSON.stringify(out)}));
</script>"""


def test_sort_and_filter_in_chromium(small_run, tmp_path):
    """Clicks on the column names sort the table (first click: descending), typing in the filter narrows it."""
    out, records = small_run
    page = tmp_path / "probe.html"
    page.write_text(render(out).replace("</body>", PROBE + "</body>"), encoding="utf-8")
    probe = json.loads(by_id(parse(chromium(f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", page.as_uri())), "probe").text())
    by = {r["id"]: r for r in records}
    full = lambda i: by[i]["full"]["score"]
    chosen = lambda i: next((c for c in by[i]["candidates"] if c["spec"] == by[i]["choice"]["tolerance"]), by[i]["full"])
    assert probe["full_desc"] == sorted(by, key=full, reverse=True) and probe["full_asc"] == sorted(by, key=full)
    costs = [chosen(i)["cost"] for i in probe["cost"]]
    gains = [chosen(i)["score"] - full(i) for i in probe["gain"]]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) > 1 and sorted(probe["cost"]) == sorted(by)
    assert all(a >= b - 1e-3 for a, b in zip(gains, gains[1:])) and sorted(probe["gain"]) == sorted(by)
    assert probe["filter"] == ["doc-3"]


def test_report_bad_input(capsys, tmp_path, small_run):
    assert_bad(capsys, "report", "--run", tmp_path / "none", match="not a skiporacle run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "settings.json").write_text("{}")
    assert_bad(capsys, "report", "--run", empty, match="holds no finished sequence")
    assert_bad(capsys, "report", "--run", small_run[0], "--output", tmp_path / "no" / "r.html", match="does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(small_run[0], broken)
    (broken / "controller" / "controller.json").write_text("{not json")
    assert_bad(capsys, "report", "--run", broken, match="controller.json' is not readable JSON")


def test_report_of_a_tiny_oracle_run(capsys, data_args, tmp_path):
    out = tmp_path / "run"
    with one_thread():
        assert run_cli(capsys, *oracle_args(data_args, out))[0] == 0
    code, stdout, _ = run_cli(capsys, "report", "--run", out, "--output", tmp_path / "page.html")
    assert code == 0 and not (out / "report.html").exists() and not (out / "curves.png").exists()
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/png;base64,") == 1  # curves drawn from the records, in a temporary folder
    records = [json.loads(line) for line in (out / "allocations.jsonl").read_text().splitlines()]
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert [s["id"] for s in data["sequences"]] == [r["id"] for r in records]
    assert [data["strings"][s["f"][0]] for s in data["sequences"]] == [r["full"]["output"] for r in records]


def test_size_for_1000_sequences_by_24_candidates(tmp_path, capsys):
    """The measured size of a 1,000 x 24 page (printed); it must stay well under the records' own size."""
    import matplotlib.pyplot as plt

    out = tmp_path / "big"
    synthetic_run(out, 1000, 24, nasty=False, summary=False)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for k in range(6):
        ax.plot(np.linspace(0, 100, 30), np.random.default_rng(k).random(30) * 20, marker="o")
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    page = render(out)
    size, records_size = len(page.encode()), (out / "allocations.jsonl").stat().st_size
    with capsys.disabled():
        print(f"\nreport.html for 1000 x 24: {size / 1e6:.2f} MB (allocations.jsonl {records_size / 1e6:.2f} MB)")
    assert size < 0.9 * records_size and size < 12e6
    (out / "report.html").write_text(page, encoding="utf-8")
    root = parse(chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          (out / "report.html").resolve().as_uri() + "#seq=doc-999"))
    assert len(by_id(root, "seqs").all(lambda n: n.tag == "tr" and "data-id" in n.attrs)) == 1000
    assert len(by_id(root, "cands").all(lambda n: "data-spec" in n.attrs)) == 25
