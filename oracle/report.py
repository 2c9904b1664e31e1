"""`skiporacle report`: one self-contained HTML page per run (RUN/report.html).

Contract:
- The page needs no network and no server: the plots are embedded as base64 PNG, the per-sequence data
  once as a JSON block, the code as a few kilobytes of inline JavaScript (template: oracle/report_page.py).
- Run contents are untrusted text.  They reach the HTML only through Jinja2 with autoescaping on; in the
  JSON block every "<" is written as \\u003c, so no "</script>" or "<!--" in an output can end the block;
  the JavaScript puts data into the page with textContent only.
- The model is never run.  curves.png, similarity.png and controller/controller.png are embedded when they
  exist; a missing curves.png is drawn from the records (oracle.curves.write_curves, in a temporary folder,
  the run folder untouched); a missing similarity.png is named on the page.
- Headline figures come from summary.json as they are (a run without one says so); each shown figure
  carries its dotted key in summary.json (or controller.json) as `data-key`.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import tempfile
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.files import read_json_object
from skiporacle.oracle.records import load_run
from skiporacle.oracle.report_figures import controller_block, fmt, headline
from skiporacle.oracle.schema import SequenceRecord
from skiporacle.oracle.curves import write_curves
from skiporacle.oracle.guard import read_plausibility
from skiporacle.oracle.report_page import TEMPLATE

REPORT = "report.html"
CONTROLLER = Path("controller") / "controller.json"

def _clean(x, digits: int = 4):
    """A JSON-safe number: rounded, None for a missing or non-finite one."""
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def page_data(records: list[SequenceRecord], plausibility: dict | None) -> dict:
    """The per-sequence block: candidate specs and output strings stored once, every sequence compactly.

    Sequence: id, p (prompt), r (references), f = [output index, tokens, score, cost, NLL],
    c = [[spec index, cost, score, tokens, identical 0/1, output index, NLL], ...], t / e = the rule's and
    the exact rule's choice (specs, "all" for the full model).
    """
    specs, strings = {}, {}
    table = (plausibility or {}).get("sequences") or {}
    sequences = []
    for r in records:
        nll = table.get(r.id) if isinstance(table.get(r.id), dict) else {}
        by_spec = nll.get("candidates") if isinstance(nll.get("candidates"), dict) else {}
        full = r.full
        sequences.append({
            "id": str(r.id), "p": r.prompt, "r": list(r.references),
            "f": [strings.setdefault(full.output, len(strings)), full.tokens, _clean(full.score),
                  full.cost, _clean(nll.get("full"))],
            "c": [[specs.setdefault(c.spec, len(specs)), c.cost, _clean(c.score), c.tokens,
                   int(bool(c.identical)), strings.setdefault(c.output, len(strings)), _clean(by_spec.get(c.spec))]
                  for c in r.candidates],
            "t": r.choice_rule, "e": r.choice_exact,
        })
    return {"specs": list(specs), "strings": list(strings), "num_layers": records[0].full.cost,
            "margin": None if plausibility is None else plausibility.get("margin"), "sequences": sequences}


def script_json(value) -> str:
    """JSON that is safe inside <script type="application/json">: "<", ">" and "&" as \\u escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def images(out: Path, records: list[SequenceRecord], settings: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """([(caption, base64 PNG)], [notes on plots that are missing]); draws curves.png if it is missing."""
    shown, missing = [], []
    if (out / "curves.png").exists():
        shown.append(("compute vs quality (curves.png)", _png(out / "curves.png")))
    else:

        with tempfile.TemporaryDirectory() as tmp:
            if (out / "split_scores.json").exists():  # the re-scored outputs' cache, so nothing is scored twice
                shutil.copy(out / "split_scores.json", Path(tmp) / "split_scores.json")
            _, png = write_curves(Path(tmp), records, settings)
            shown.append(("compute vs quality (drawn from the records; `skiporacle curves` also writes curves.csv)", _png(png)))
    if (out / "similarity.png").exists():
        shown.append(("hidden-state similarity, uniform vs early exit (similarity.png)", _png(out / "similarity.png")))
    else:
        missing.append("similarity.png is missing: `skiporacle curves --run RUN` draws it (it runs the model).")
    if (out / "controller" / "controller.png").exists():
        shown.append(("controller (controller/controller.png)", _png(out / "controller" / "controller.png")))
    return shown, missing


def render(out: Path) -> str:
    """The report page of the run in `out` as a string (BadInput: no run, or no finished sequence)."""
    import jinja2


    settings, records, summary = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    plausibility = read_plausibility(out)
    controller = read_json_object(out / CONTROLLER)
    notes = [] if summary else ["summary.json is missing (an unfinished run): no headline figures. "
                                "Finish or resume the run to get them."]
    if summary and summary.get("guarded_skipped"):
        notes.append(summary["guarded_skipped"])
    info = [("model", settings.get("model")), ("task", settings.get("task") if not settings.get("data_file")
                                                 else f"file:{settings['data_file']}"),
            ("metric", settings.get("metric")), ("sequences (N)", len(records)),
            ("candidates", len(records[0].candidates) + 1), ("layers", records[0].full.cost)]
    info += [(k, v) for k, v in settings.items() if k not in ("model", "task", "metric", "candidates")]
    info += [(f"summary: {k}", summary[k]) for k in ("wall_seconds", "workers", "machine", "versions")
             if summary and k in summary]
    static = [{"spec": s["spec"], "percent": fmt(s["percent_layers"]), "score": fmt(s["mean_score"]),
               "ci": fmt(s.get("mean_score_ci95")), "identical": fmt(s["identical_percent"])}
              for s in (summary or {}).get("static", [])]
    shown, missing = images(out, records, settings)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        title=f"skiporacle report: {settings.get('model')} on {info[1][1]} ({len(records)} sequences)",
        notes=notes, facts=[(k, _text(v)) for k, v in info[:6]], settings=[(k, _text(v)) for k, v in info[6:]],
        groups=headline(summary) if summary else [], static=static, controller=controller_block(controller),
        images=shown, missing_images=missing, data_json=script_json(page_data(records, plausibility)))


def write_report(out: Path, target: Path | None = None) -> Path:
    """Write the report of the run in `out` to `target` (default RUN/report.html); BadInput if it cannot."""
    target = target or out / REPORT
    if out.is_dir() and not target.parent.is_dir():
        raise BadInput(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")
    page = render(out)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as err:
        raise BadInput(f"cannot write {str(target)!r} ({err.strerror or err})") from None
    return target


def report_command(args) -> int:
    """`skiporacle report --run RUN [--output FILE]`."""
    target = write_report(Path(args.run), Path(args.output) if args.output else None)
    print(f"skiporacle: wrote {target} ({target.stat().st_size / 1e6:.2f} MB)")
    return 0
