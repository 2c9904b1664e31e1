"""RUN/plausibility.json: every output's mean NLL under the full model, for the plausibility guard.

Format: {"margin": nats/token, "sequences": {id: {"full": nll, "candidates": {spec: nll}}}, "seconds": s}.
A candidate is plausible when its NLL <= the full output's NLL + margin (see oracle/guard.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.files import write_json_atomic
from skiporacle.oracle.records import load_run
from skiporacle.eval.plausibility import output_nll
import json

PLAUSIBILITY = "plausibility.json"
DEFAULT_MARGIN = 2.0  # nats/token: the review counted outputs this far above the full output's as degenerate


def write_plausibility(out: Path, margin: float, load_model, progress: bool = True) -> dict:
    """Compute (or re-use, if it covers every record) the NLL table and store it with `margin`."""

    if not margin >= 0 or math.isinf(margin):
        raise BadInput(f"--margin must be a non-negative number of nats per token, got {margin}")
    settings, records, _ = load_run(out)
    if not records:
        raise BadInput(f"{str(out)!r} holds no finished sequence yet")
    path = out / PLAUSIBILITY
    stored = _read(path)
    start = time.perf_counter()
    if stored is None or set(stored["sequences"]) != {r.id for r in records}:
        model, tokenizer = load_model(settings["model"], settings["dtype"])
        specs = [c.spec for c in records[0].candidates]
        texts = [[c.output for c in r.columns] for r in records]
        nll = output_nll(model, tokenizer, [r.prompt for r in records], texts, progress)
        nll = [[None if math.isinf(v) else v for v in row] for row in nll]  # null: an empty output, nothing to judge
        table = {r.id: {"full": row[-1], "candidates": dict(zip(specs, row[:-1]))} for r, row in zip(records, nll)}
        stored = {"sequences": table, "seconds": time.perf_counter() - start}
    stored = {**stored, "margin": margin}
    write_json_atomic(path, stored)
    return stored


def _read(path: Path) -> dict | None:

    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # a damaged table is recomputed
