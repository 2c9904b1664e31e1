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

ALLOCATIONS = "allocations.jsonl"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
IMPORTANCE = "importance.json"


def write_json_atomic(path: Path, value: object) -> None:
    """Write JSON to path via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict | None:
    """A JSON object stored in the run folder, or None when the file does not exist (BadInput if it is
    not readable JSON or not an object)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadInput(f"{str(path)!r} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{str(path)!r} is not a JSON object")
    return data


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
        diff = [k for k in sorted(set(stored) | set(settings)) if k != "candidates" and stored.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise BadInput(
                f"--resume: {str(out)!r} was made with different settings ({k}: {stored.get(k)!r} there, {settings.get(k)!r} now)"
            )
    check_writable(out)
    if not resume or not stored_path.exists():
        (out / IMPORTANCE).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        write_json_atomic(stored_path, settings)
    return {r["id"] for r in read_records(out, repair=True)}


def pin_candidates(out: Path, candidates: list) -> None:
    """Store the run's candidate list in settings.json, or refuse one that differs from the stored list.

    Settings alone fix the candidates except for a `file:` space, whose file can change between a run and its resume.
    """
    stored = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    if "candidates" in stored and stored["candidates"] != candidates:
        raise BadInput(f"--resume: the candidate allocations differ from those of the run in {str(out)!r}")
    if "candidates" not in stored:
        write_json_atomic(out / SETTINGS, {**stored, "candidates": candidates})


def read_records(out: Path, repair: bool = False) -> list[dict]:
    """All complete records of a run, in file order.

    With `repair`, a torn last line (a crash mid-write) is cut from the file.
    """
    path = out / ALLOCATIONS
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start:end]
        try:
            if end < 0:
                raise ValueError("no newline")
            records.append(json.loads(line))
        except ValueError:
            if end >= 0 and data[end + 1 :].strip():
                raise BadInput(f"{str(path)!r}: line {len(records) + 1} is corrupt (not a torn last line)") from None
            break
        good_end = start = end + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return records


def append_records(out: Path, records: Iterable[dict]) -> None:
    """Append records, one JSON line each, and force them to disk."""
    with open(out / ALLOCATIONS, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_run(out: Path) -> tuple[dict, list[dict], dict | None]:
    """(settings, records, summary or None) of a finished or partial run; BadInput if it is no run."""
    if not (out / SETTINGS).exists():
        raise BadInput(f"{str(out)!r} is not a skiporacle run folder (no {SETTINGS})")
    settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else None
    return settings, read_records(out), summary
