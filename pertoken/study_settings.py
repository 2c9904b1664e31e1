"""The per-token study's own settings (`Study`, `--taus`) and the checks on its rows made before the model
loads: the ranking exists, the training rows exist and share nothing with the evaluation rows by content."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.oracle.inputs import load_examples


@dataclass(frozen=True)
class Study:
    """The study's own settings (the model, task and decoding ones are the oracle's `OracleSettings`)."""

    train_offset: int = 100
    train_limit: int = 150
    importance: str = "runs/ranking.json"
    probe_layer: int = 1
    taus: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    budgets: str = "16,20,22,24,26,28,29"
    seed: int = 0
    resamples: int = 200


def parse_taus(text: str) -> tuple[float, ...]:
    """`0.5,0.9` -> (0.5, 0.9): finite, >= 0 (above 1 always decides the full model), sorted, distinct."""
    try:
        taus = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise BadInput(f"--taus {text!r}: expected comma-separated numbers like 0.5,0.9") from None
    if not taus:
        raise BadInput("--taus: none given")
    bad = [t for t in taus if not math.isfinite(t) or t < 0]
    if bad:
        raise BadInput(f"--taus {text!r}: {bad[0]} is not a threshold (use numbers >= 0)")
    return tuple(taus)


def check_rows(settings, study: Study) -> None:
    """Before the model loads: the ranking file exists, the training rows exist and share no input text
    with the evaluation rows (by content hash)."""

    if not Path(study.importance).is_file():
        raise BadInput(f"--importance {study.importance!r} not found: run make ranking (or skiporacle rank)")
    _, evaluated = load_examples(settings, settings.limit, settings.offset)
    try:
        _, training = load_examples(settings, study.train_limit, study.train_offset)
    except BadInput as err:
        raise BadInput(f"training rows (--train-offset {study.train_offset}): {err}") from None
    refuse_shared([e.source for e in evaluated], [e.source for e in training], "input text")


def refuse_shared(evaluated: list[str], training: list[str], what: str) -> None:
    """BadInput if any training text equals an evaluation text (by content hash); `what` names the texts."""
    shared = {content_hash(t) for t in evaluated} & {content_hash(t) for t in training}
    if shared:
        raise BadInput(f"{len(shared)} training row(s) share their {what} with evaluation rows (by content); "
                       "choose disjoint rows with --train-offset/--offset")
