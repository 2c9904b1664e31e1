"""Reading the rows of data files (JSONL, JSON, CSV, Parquet, a `datasets` folder) as dicts, with
one-line BadInput errors that name the file, line or field."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from skiporacle.data.errors import BadInput


def bad(message: str) -> BadInput:
    # Messages embed ids and parser errors; the CLI contract is one line.
    return BadInput(" ".join(message.split("\n")))


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise bad(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise bad(f"{path} is not valid UTF-8 (byte {e.start})") from e


def lines(path: Path) -> list[str]:
    """Lines split on ``\\n`` only: ``str.splitlines`` would also split on U+2028 inside text."""
    text = read_text(path)
    return (text[:-1] if text.endswith("\n") else text).split("\n") if text else []


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"{path} line {number} is not valid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise bad(f"{path} line {number} is not a JSON object")
        rows.append(row)
    return rows


def read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise bad(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise bad(f"{path} must hold a JSON list of objects")
    return data


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL/JSON/CSV/Parquet file or a ``save_to_disk`` folder, as dicts."""
    if path.is_dir():
        import datasets  # slow import, only for this format

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for a non-dataset folder
            raise bad(f"{path} is not a folder saved with datasets.save_to_disk: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise bad(f"{path} holds splits {sorted(ds)}; save a single split")
            ds = next(iter(ds.values()))
        return ds.to_list()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path)
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors for a bad file vary by version
            raise bad(f"{path} is not a readable Parquet file: {e}") from e
    raise bad(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet "
               "or a datasets folder")


def field(row: dict, name: str, where: str) -> Any:
    if name not in row:
        raise bad(f"{where} has no field {name!r}; fields present: {', '.join(map(str, row))}")
    return row[name]
