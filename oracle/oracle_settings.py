"""The settings schema of an oracle run: every setting that determines its records, stored in settings.json
as the resume fingerprint.  The defaults here are the CLI's defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from skiporacle.eval.decode_protocol import DEFAULT_FIRST_TOKEN, DecodeProtocol, FirstToken, Decoder
from skiporacle.oracle.records import SETTINGS


@dataclass(frozen=True)
class OracleSettings:
    """Everything that determines the records of a run (stored as its resume fingerprint)."""

    model: str = "smollm2-135m"
    task: str = "xsum"
    data_file: str | None = None
    input_field: str | None = None
    reference_field: str | None = None
    id_field: str | None = None
    limit: int = 50
    offset: int = 0
    spaces: tuple[str, ...] = ("uniform", "early-exit", "importance")
    budgets: tuple[int, ...] = (8, 12, 16, 20, 24, 26, 28, 29)
    metric: str = ""  # "" = the task's
    max_new_tokens: int = 0  # 0 = the task's
    dtype: str = "float32"
    seed: int = 0
    tolerance: float = 0.0
    calibration: int = 8
    prompt_under_allocation: bool = False
    batch_size: int = 0  # most sequences per batch; 0 = chosen from model and prompt sizes
    importance_file: str | None = None  # a stored ranking (importance.json) instead of ranking on calibration rows
    first_token: FirstToken = DEFAULT_FIRST_TOKEN  # who predicts the first generated token (see DecodeProtocol)
    instruction: str | None = None  # chat models: the instruction before the input instead of the task's
    template: str | None = None  # base models: the prompt, with {input} standing for the input text
    decoder: Decoder = "together"  # "together": all candidates in one decode loop; "per-candidate": one after another
    search_rule: str = "score"  # per-sequence search: "score" (score >= full - tolerance) or "exact" (the full output)
    search_generate: int = 4  # score rule: proposals generated per step or round (those closest to the full model by KL)
    search_width: int = 5  # random search: proposals per round
    search_evaluations: int = 50  # random search: proposals judged per sequence at most

    def __post_init__(self) -> None:
        self.protocol  # noqa: B018 (checks the decoding fields once, here: BadInput for a bad one)

    @property
    def protocol(self) -> DecodeProtocol:
        """The decoding protocol these settings name (EOS ids are filled where the model is loaded)."""
        return DecodeProtocol(self.max_new_tokens, self.first_token, self.prompt_under_allocation, self.decoder)


DEFAULTS = OracleSettings()

# Fields added after run folders were first written, with the value a settings.json without one was made with.
_ADDED_LATER = {"first_token": DEFAULT_FIRST_TOKEN, "instruction": None, "template": None, "decoder": "per-candidate",
                "search_rule": "score", "search_generate": 4, "search_width": 5, "search_evaluations": 50}


def fingerprint(settings: OracleSettings, resumed: Path | None = None) -> dict:
    """The settings as stored in settings.json (they determine every candidate and record).

    Resuming the run in `resumed`, a field added later that its settings.json lacks
    is left out while at the value the run was made with, so a run older than the
    field still resumes (with `--decoder per-candidate` for runs older than the
    cross-candidate decoder).
    """
    stored = json.loads(json.dumps(asdict(settings)))
    path = resumed / SETTINGS if resumed is not None else None
    if path is None or not path.exists():
        return stored
    existing = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in stored.items() if k in existing or k not in _ADDED_LATER or v != _ADDED_LATER[k]}
