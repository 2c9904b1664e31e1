"""The Makefile's row ranges, read from the Makefile itself: the rows `make oracle` and `make pertoken` evaluate
never overlap the rows that rank layers, calibrate, label the controller, train the per-token probe or heal.

(The row guards in the code check runs by content as they happen; this checks the defaults before anything
runs, so that editing one default cannot quietly make the targets overlap.)
"""

from __future__ import annotations

import re
from pathlib import Path

from skiporacle.cli.parsers import build_parser
from skiporacle.data.tasks import load_task
from skiporacle.heal.heal_settings import DEFAULTS as HEAL
from skiporacle.oracle.oracle_settings import DEFAULTS as ORACLE

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def _defaults(text: str) -> dict[str, str]:
    """VAR -> value of every `VAR ?= value` line."""
    return {m[1]: m[2].strip() for m in re.finditer(r"^([A-Z_]+)\s*\?=\s*(.*)$", text, re.M)}


def _recipe_rows(text: str, target: str) -> range:
    """The rows `--offset A --limit B` of the skiporacle line under `target`."""
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.M)[1]
    offset, limit = re.search(r"--offset (\d+) --limit (\d+)", recipe).groups()
    return range(int(offset), int(offset) + int(limit))


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


def ranges() -> dict[str, range]:
    """Every row range the Makefile's defaults name, for the default TASK (xsum)."""
    text = MAKEFILE.read_text(encoding="utf-8")
    values = _defaults(text)
    n, label_offset, label_n = int(values["N"]), int(values["LABEL_OFFSET"]), int(values["LABEL_N"])
    xsum_rows = len(load_task("xsum")[1])
    probe = build_parser().parse_args(["pertoken"])  # make pertoken passes skiporacle pertoken's defaults
    return {
        "evaluated (make oracle, make pertoken)": range(0, n),
        "calibration (make oracle)": range(n, n + ORACLE.calibration),
        "ranking (make ranking)": _recipe_rows(text, "$(RANKING)"),
        "labels (make labels)": range(label_offset, label_offset + label_n),
        "probe training (make pertoken)": range(probe.train_offset, probe.train_offset + probe.train_limit),
        "healing (make heal)": range(xsum_rows - HEAL.examples, xsum_rows),
    }


def test_evaluated_rows_overlap_no_other_range():
    found = ranges()
    evaluated = found.pop("evaluated (make oracle, make pertoken)")
    assert evaluated == range(0, 50) and found["ranking (make ranking)"] == range(60, 68)
    clashes = [name for name, rows in found.items() if _overlap(evaluated, rows)]
    assert not clashes, f"rows 0-{evaluated.stop - 1} overlap {clashes}"


def test_labels_overlap_neither_ranking_nor_healing():
    found = ranges()
    labels = found["labels (make labels)"]
    assert not _overlap(labels, found["ranking (make ranking)"]) and not _overlap(labels, found["healing (make heal)"])


def test_the_check_sees_an_overlap():
    assert _overlap(range(0, 50), range(49, 60)) and not _overlap(range(0, 50), range(50, 60))
    assert _recipe_rows("x: y\n\tcmd --offset 7 --limit 3 --out z\n", "x") == range(7, 10)


def test_the_savings_rows_overlap_no_other_range():
    """make savings judges on XSum rows nothing else uses: not evaluated, calibrated, ranked, labelled or healed."""
    savings = _recipe_rows(MAKEFILE.read_text(encoding="utf-8"), "savings")
    assert savings == range(400, 800)
    clashes = [name for name, rows in ranges().items() if _overlap(savings, rows)]
    assert not clashes, f"make savings' rows {savings.start}-{savings.stop - 1} overlap {clashes}"
