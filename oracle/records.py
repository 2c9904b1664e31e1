"""The run folder: settings fingerprint, crash-safe allocation records, summary.

Layout of `runs/NAME/`:
  settings.json      every setting that changes a record (the resume fingerprint)
  importance.json    the calibrated layer ranking, when the importance space is used
  allocations.jsonl  one JSON record per finished sequence, appended and fsynced
  summary.json       aggregates and timings, rewritten at the end of a run

A record reaches disk whole or is detected as torn: on resume a last line that
is incomplete or unparsable is cut off; a bad line elsewhere is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from skiporacle.data.errors import BadInput
from skiporacle.data.files import append_lines, read_appended, refuse_other_settings, write_json_atomic
from skiporacle.oracle.schema import SequenceRecord

ALLOCATIONS = "allocations.jsonl"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
IMPORTANCE = "importance.json"


def check_writable(out: Path) -> None:
    """Create `out` if needed and make sure files can be written there (BadInput otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise BadInput(f"output folder {str(out)!r} is not writable ({err.strerror or err})") from None


def open_run(out: Path, settings: dict, resume: bool) -> set[str]:
    """Prepare `out` for a run with `settings`; return the ids already done.

    Without `resume`, a folder that already holds records is refused (nothing
    is overwritten); one without records (a run killed before its first
    record) is started afresh, its stale settings and importance ranking
    dropped.  With `resume`, the stored settings must equal `settings`.
    Refusals raise BadInput before any file is touched.
    """
    path = out / ALLOCATIONS
    stored_path = out / SETTINGS
    has_records = path.exists() and path.stat().st_size > 0
    if has_records and not resume:
        raise BadInput(f"{str(out)!r} already holds a run; pass --resume to continue it, or choose another --out")
    if resume and stored_path.exists():
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
        refuse_other_settings(out, stored, settings, [k for k in sorted(set(stored) | set(settings)) if k != "candidates"])
    check_writable(out)
    if not resume or not stored_path.exists():
        (out / IMPORTANCE).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        write_json_atomic(stored_path, settings)
    return {r.id for r in read_records(out, repair=True)}


def pin_candidates(out: Path, candidates: list) -> None:
    """Store the run's candidate list in settings.json, or refuse one that differs from the stored list.

    Settings alone fix the candidates except for a `file:` space, whose file can change between a run and its resume.
    """
    stored = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    if "candidates" in stored and stored["candidates"] != candidates:
        raise BadInput(f"--resume: the candidate allocations differ from those of the run in {str(out)!r}")
    if "candidates" not in stored:
        write_json_atomic(out / SETTINGS, {**stored, "candidates": candidates})


def read_records(out: Path, repair: bool = False) -> list[SequenceRecord]:
    """All complete records of a run, in file order (see `files.read_appended`: with `repair`, a torn last
    line, a crash mid-write, is cut from the file)."""
    return [SequenceRecord.from_json(r) for r in read_appended(out / ALLOCATIONS, repair)]


def append_records(out: Path, records: Iterable[SequenceRecord]) -> None:
    """Append records, one JSON line each, and force them to disk."""
    append_lines(out / ALLOCATIONS, (r.to_json() for r in records))


def load_run(out: Path) -> tuple[dict, list[SequenceRecord], dict | None]:
    """(settings, records, summary or None) of a finished or partial run; BadInput if it is no run."""
    if not (out / SETTINGS).exists():
        raise BadInput(f"{str(out)!r} is not a skiporacle run folder (no {SETTINGS})")
    settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    return settings, read_records(out), summary
