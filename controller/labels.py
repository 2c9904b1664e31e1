"""Labels for a controller: an oracle run read as arrays, one row per sequence sorted by id.

A run's records give, per sequence, every candidate's score and the full
model's; its settings pin the candidate list (spec and layers), which a
controller carries so that it only ever applies to runs with the same list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.oracle.choose import FULL
from skiporacle.oracle.guard import missing_sequences, plausible_mask
from skiporacle.oracle.plausibility_file import PLAUSIBILITY
from skiporacle.oracle.records import load_run
from skiporacle.oracle.stats import token_matrix
from skiporacle.oracle.table import RunTable
from skiporacle.oracle.schema import SequenceRecord

@dataclass(frozen=True)
class Labels:
    """One run as arrays; rows sorted by id, the last column is the full model."""

    run: str
    settings: dict
    ids: list[str]
    prompts: list[str]
    candidates: list[list]  # [[spec, layers(, weights)], ...] as pinned in settings.json, the full model last
    costs: list[int]  # layers per generated token [K]
    scores: np.ndarray  # [N, K], 0-100
    tokens: np.ndarray  # [N, K] generated tokens
    plausible: np.ndarray | None  # [N, K] bool from plausibility.json at the run's margin, or None

    @property
    def full(self) -> np.ndarray:
        return self.scores[:, FULL]

    @property
    def num_layers(self) -> int:
        return self.costs[FULL]

    def matches(self, tolerance: float, guarded: bool) -> np.ndarray:
        """[N, K] bool: the candidate's score >= full - tolerance (and, if guarded, its output is plausible)."""
        ok = self.scores >= self.full[:, None] - tolerance - 1e-9
        return ok & self.plausible if guarded and self.plausible is not None else ok

    def content_hashes(self) -> set[str]:
        return {content_hash(p) for p in self.prompts}


def load_labels(run: Path, min_sequences: int = 1) -> Labels:
    """The labels of the run in `run` (BadInput if it is missing, unfinished or too small)."""
    if not (run / "settings.json").exists():
        raise BadInput(f"{str(run)!r} is not a skiporacle run folder (no settings.json)")
    settings, records, _ = load_run(run)
    if len(records) < min_sequences:
        raise BadInput(f"{str(run)!r} holds {len(records)} finished sequences; this needs at least {min_sequences}")
    records = sorted(records, key=lambda r: r.id)
    table = RunTable.from_records(records)
    specs, costs, scores = table.specs, table.costs, table.scores
    tokens = token_matrix(records).astype(int)
    candidates = settings["candidates"]  # the full model is pinned last
    if [c[0] for c in candidates] != specs:
        raise BadInput(f"{str(run)!r}: its records do not follow its pinned candidate list")
    return Labels(str(run), settings, [r.id for r in records], [r.prompt for r in records], candidates,
                  costs, scores, tokens, _plausible(run, records, specs))


def _plausible(run: Path, records: list[SequenceRecord], specs: list[str]) -> np.ndarray | None:
    """The plausibility guard's mask [N, K] at the margin stored with the table, or None without a table."""
    path = run / PLAUSIBILITY
    if not path.exists():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    missing = missing_sequences(records, stored)
    if missing:
        raise BadInput(f"{str(path)!r} lacks {len(missing)} sequences (e.g. {missing[0]!r}); rerun skiporacle plausibility")
    return plausible_mask(records, stored, stored.get("margin"))
