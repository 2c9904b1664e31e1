"""The `--out FILE.jsonl` stream of `skiporacle generate`: one line per finished sequence, resumable.

The stream (`--out FILE.jsonl`) holds one line per finished sequence,
{"id", "output", "tokens", "allocation", "layers", "score"} (tokens generated, the allocation's spec and its
layers per generated token, the sequence's score), appended and fsynced per batch; `FILE.jsonl.settings.json`
holds what determines the lines.  `--resume` cuts a torn last line, skips the ids already written and runs
the batches that hold the others, planned over all rows as before, so that the file ends equal to an
uninterrupted run's: every sequence once, in the order its batch finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.files import append_lines, read_appended, refuse_other_settings, write_json_atomic
from skiporacle.eval.generate import Generation
from skiporacle.search.allocation import Allocation


@dataclass(frozen=True)
class OutputStream:
    """An open `--out` stream: its file and the ids it already holds."""

    path: Path
    done: frozenset[str]

    def write(self, rows: list[dict]) -> None:
        """Append one batch's lines and force them to disk."""
        append_lines(self.path, rows)

    def summary(self, rows: list[dict], seconds: float | None = None) -> str:
        """How many lines the file holds (`rows`, as read back after the run), how many were there before this
        run, and (`seconds`) how long it took."""
        took = "" if seconds is None else f" in {seconds:.1f} s"
        return (f"skiporacle: {len(rows)} outputs in {self.path} ({len(self.done)} resumed, "
                f"{len(rows) - len(self.done)} written now{took})")


def settings_path(path: Path) -> Path:
    return path.with_name(path.name + ".settings.json")


def open_stream(path: Path, fingerprint: dict, resume: bool) -> OutputStream:
    """Check `--out` before the model loads: a file holding outputs needs `--resume` and the same settings."""
    if path.is_dir():
        raise BadInput(f"--out {str(path)!r} is a folder; name a .jsonl file")
    held = path.exists() and path.stat().st_size > 0
    if held and not resume:
        raise BadInput(f"--out {str(path)!r} already holds outputs; pass --resume to continue it, or choose another file")
    stored = settings_path(path)
    if resume and stored.exists():
        refuse_other_settings(path, json.loads(stored.read_text(encoding="utf-8")), fingerprint, list(fingerprint))
    elif held:
        raise BadInput(f"--resume: {str(stored)!r} is missing, so the outputs in {str(path)!r} cannot be checked")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not stored.exists():
            write_json_atomic(stored, fingerprint)
        rows = read_appended(path, repair=True)
    except OSError as err:
        raise BadInput(f"--out {str(path)!r} is not writable ({err.strerror or err})") from None
    return OutputStream(path, frozenset(r["id"] for r in rows))


def stream_line(example_id: str, generation: Generation, allocation: Allocation, score: float) -> dict:
    """One finished sequence's line of the stream."""
    return {"id": example_id, "output": generation.text, "tokens": len(generation.tokens),
            "allocation": allocation.spec, "layers": allocation.cost, "score": score}
