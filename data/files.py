"""Ground floor for every file the package writes: atomic replacement, JSON objects, crash-safe appended JSON
lines, the "different settings" refusal of a resume, and the package versions stored in metadata files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, IO

from skiporacle.data.errors import BadInput

PACKAGES = ("skiporacle", "torch", "transformers", "rouge-score", "sacrebleu", "numpy", "peft")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through write(file) into a temporary sibling, fsync it, then rename it into place,
    so that readers and a crash never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: object) -> None:
    """Write JSON (indented, UTF-8, final newline) to path atomically (see `write_atomic`)."""
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def read_appended(path: Path, repair: bool = False) -> list[dict]:
    """Every complete JSON line of an appended file (`append_lines`), in file order; [] without the file.

    A last line without its newline, or unparsable, is a torn write (a crash mid-append): it is left out,
    and with `repair` cut from the file.  A bad line before the last is refused (BadInput).
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end, start = [], 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start:end]
        try:
            if end < 0:
                raise ValueError("no newline")
            rows.append(json.loads(line))
        except ValueError:
            if end >= 0 and data[end + 1 :].strip():
                raise BadInput(f"{str(path)!r}: line {len(rows) + 1} is corrupt (not a torn last line)") from None
            break
        good_end = start = end + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return rows


def append_lines(path: Path, rows) -> None:
    """Append each row as one JSON line (UTF-8, unescaped) and force them to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json_object(path: Path) -> dict | None:
    """A JSON object stored in a file, or None when the file does not exist (BadInput if it is
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


def refuse_other_settings(where: Path, stored: dict, now: dict, keys) -> None:
    """BadInput naming the first of `keys` whose value differs between the stored settings of the run
    in `where` and the settings now (a resume must continue with the same settings)."""
    diff = [k for k in keys if stored.get(k) != now.get(k)]
    if diff:
        k = diff[0]
        raise BadInput(f"--resume: {str(where)!r} was made with different settings "
                       f"({k}: {stored.get(k)!r} there, {now.get(k)!r} now)")


def package_versions() -> dict:
    """Python's and the key packages' versions (None where not installed), for metadata files."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
