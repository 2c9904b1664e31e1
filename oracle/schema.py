"""The record schema: one sequence's JSON record in allocations.jsonl, and its flat rows for `dump`.

A record's "choice" holds the rule oracle's pick under "tolerance" (the summary calls it "rule") and the
exact rule's under "exact"; the keys stay as run folders have always stored them.
"""

from __future__ import annotations

from skiporacle.eval.candidates import Candidate
from skiporacle.oracle.table import FULL_SPEC, RunTable


def make_record(example_id: str, prompt: str, references: list[str], candidates: list[Candidate], tolerance: float) -> dict:
    """The JSON record of one sequence; `references` are its gold texts, the last candidate is the full model."""
    *skipped, full_model = candidates
    rows = [
        {
            "spec": c.allocation.spec,
            "layers": list(c.allocation.layers),
            "cost": c.allocation.cost,
            "fraction": c.allocation.fraction,
            "output": c.output,
            "tokens": len(c.tokens),
            "score": c.score,
            "identical": c.tokens == full_model.tokens,
        }
        for c in skipped
    ]
    table = RunTable.of_sequence([r["spec"] for r in rows] + [FULL_SPEC], [c.allocation.cost for c in candidates],
                                 [c.score for c in candidates], [c.tokens == full_model.tokens for c in candidates])
    return {
        "id": example_id,
        "prompt": prompt,
        "references": references,
        "full": {"output": full_model.output, "tokens": len(full_model.tokens), "score": full_model.score,
                 "cost": full_model.allocation.cost, "token_ids": list(full_model.tokens)},
        "candidates": rows,
        "choice": {
            "tolerance": table.specs[table.rule(tolerance)[0]],
            "exact": table.specs[table.exact_rule()[0]],
        },
    }


def dump_rows(records: list[dict]) -> list[dict]:
    """One flat row per sequence x candidate, the full model included (`skiporacle dump`)."""
    rows = []
    for r in records:
        base = {"id": r["id"], "full_score": r["full"]["score"], "full_output": r["full"]["output"],
                "choice_tolerance": r["choice"]["tolerance"], "choice_exact": r["choice"]["exact"]}
        for c in r["candidates"] + [{**r["full"], "spec": FULL_SPEC, "fraction": 1.0, "identical": True}]:
            rows.append({**base, "spec": c["spec"], "cost": c["cost"], "fraction": c["fraction"],
                         "score": c["score"], "tokens": c["tokens"], "identical": c["identical"],
                         "output": c["output"]})
    return rows
