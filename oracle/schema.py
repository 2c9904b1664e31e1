"""The record schema: one sequence's record in allocations.jsonl, typed, and its flat rows for `dump`.

`SequenceRecord.to_json()` writes, and `SequenceRecord.from_json()` reads, the JSON objects run folders have
always stored, key for key and in the same order, so a file read and written again is byte-identical.  A
record's "choice" holds the rule oracle's pick under "tolerance" (`choice_rule`) and the exact rule's under
"exact" (`choice_exact`); per-sequence search runs add their statistics under "search".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skiporacle.data.errors import BadInput
from skiporacle.eval.candidates import Candidate
from skiporacle.oracle.choose import cheapest_identical, cheapest_matching

FULL_SPEC = "all"  # the full model's spec, and its column's name in the run table


@dataclass(frozen=True)
class CandidateRecord:
    """One skipping candidate's output for a sequence; `cost` in layers per generated token, `score` 0-100."""

    spec: str
    layers: tuple[int, ...]
    cost: int
    fraction: float  # cost / the model's layers
    output: str
    tokens: int  # generated tokens
    score: float
    identical: bool  # the output's tokens equal the full model's

    def to_json(self) -> dict:
        return {"spec": self.spec, "layers": list(self.layers), "cost": self.cost, "fraction": self.fraction,
                "output": self.output, "tokens": self.tokens, "score": self.score, "identical": self.identical}


@dataclass(frozen=True)
class FullRecord:
    """The full model's output for a sequence, with its token ids (teacher-forced studies replay them)."""

    output: str
    tokens: int
    score: float
    cost: int  # the model's layers
    token_ids: tuple[int, ...]

    def to_json(self) -> dict:
        return {"output": self.output, "tokens": self.tokens, "score": self.score, "cost": self.cost,
                "token_ids": list(self.token_ids)}


@dataclass(frozen=True)
class SequenceRecord:
    """One finished sequence: its input, the full model, every candidate in the run's order, the oracles' picks."""

    id: str
    prompt: str
    references: tuple[str, ...]
    full: FullRecord
    candidates: tuple[CandidateRecord, ...]
    choice_rule: str  # spec of the rule oracle's pick at the run's tolerance ("all": the full model)
    choice_exact: str  # spec of the exact rule's pick
    search: dict | None = None  # a per-sequence search's statistics (oracle/search.py), else None

    def to_json(self) -> dict:
        stored = {"id": self.id, "prompt": self.prompt, "references": list(self.references),
                  "full": self.full.to_json(), "candidates": [c.to_json() for c in self.candidates],
                  "choice": {"tolerance": self.choice_rule, "exact": self.choice_exact}}
        return stored if self.search is None else {**stored, "search": self.search}

    @classmethod
    def from_json(cls, stored: dict) -> "SequenceRecord":
        """The record of one stored JSON object (BadInput naming the first missing or mistyped field)."""
        try:
            return cls(str(stored["id"]), stored["prompt"], tuple(stored["references"]),
                       FullRecord(**{**stored["full"], "token_ids": tuple(stored["full"]["token_ids"])}),
                       tuple(CandidateRecord(**{**c, "layers": tuple(c["layers"])}) for c in stored["candidates"]),
                       stored["choice"]["tolerance"], stored["choice"]["exact"], stored.get("search"))
        except (KeyError, TypeError) as err:
            name = stored.get("id", "?") if isinstance(stored, dict) else "?"
            raise BadInput(f"record {name!r} is not a skiporacle sequence record ({type(err).__name__}: {err})") from None

    @property
    def columns(self) -> tuple[CandidateRecord | FullRecord, ...]:
        """The candidates in the run's order, then the full model: the columns of `RunTable`."""
        return (*self.candidates, self.full)


def make_record(example_id: str, prompt: str, references: list[str], candidates: list[Candidate],
                tolerance: float, search: dict | None = None) -> SequenceRecord:
    """The record of one sequence from its scored candidates, as the scorer returns them (the full model last)."""
    *skipped, full_model = candidates
    rows = tuple(CandidateRecord(c.allocation.spec, tuple(c.allocation.layers), c.allocation.cost,
                                 c.allocation.fraction, c.output, len(c.tokens), c.score, c.tokens == full_model.tokens)
                 for c in skipped)
    specs, costs = [r.spec for r in rows] + [FULL_SPEC], [c.allocation.cost for c in candidates]
    scores = np.array([[c.score for c in candidates]])  # [1, K], the full model last: it always matches itself
    rule = cheapest_matching(scores, costs, scores[:, -1], tolerance)[0]
    exact = cheapest_identical(np.array([[c.tokens == full_model.tokens for c in candidates]]), scores, costs)[0]
    full = FullRecord(full_model.output, len(full_model.tokens), full_model.score, full_model.allocation.cost,
                      tuple(full_model.tokens))
    return SequenceRecord(example_id, prompt, tuple(references), full, rows, specs[rule], specs[exact], search)


def dump_rows(records: list[SequenceRecord]) -> list[dict]:
    """One flat row per sequence x candidate, the full model included (`skiporacle dump`)."""
    rows = []
    for r in records:
        base = {"id": r.id, "full_score": r.full.score, "full_output": r.full.output,
                "choice_tolerance": r.choice_rule, "choice_exact": r.choice_exact}
        for c in r.candidates:
            rows.append({**base, "spec": c.spec, "cost": c.cost, "fraction": c.fraction, "score": c.score,
                         "tokens": c.tokens, "identical": c.identical, "output": c.output})
        rows.append({**base, "spec": FULL_SPEC, "cost": r.full.cost, "fraction": 1.0, "score": r.full.score,
                     "tokens": r.full.tokens, "identical": True, "output": r.full.output})
    return rows
