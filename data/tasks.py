"""Evaluation tasks: the built-in test sets under the shared data folder, and user files.

Every loader returns ``(Task, examples)`` where the examples keep file order, so that
``offset``/``limit`` select the deterministic slice ``examples[offset:offset + limit]``.
Anything wrong with the input raises :class:`BadInput` with a one-line message.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from skiporacle.data.errors import BadInput
from skiporacle.data.ptb import detokenize_ptb

METRICS: tuple[str, ...] = ("rougeL", "bleu", "chrf", "exact_match")


@dataclass(frozen=True)
class Example:
    """One input with its reference outputs; ``id`` is unique within a task."""

    id: str
    source: str
    references: tuple[str, ...]  # non-empty strings, at least one


@dataclass(frozen=True)
class Task:
    """How to prompt for and score a task; ``metric`` is one of :data:`METRICS`."""

    name: str
    metric: str
    instruction: str  # chat-prompt instruction, put before the source
    source_label: str  # plain-template labels: "### Article: ...\n\n### Summary:"
    target_label: str
    # The default --max-new-tokens, room for a typical answer: a decoding default, so it is
    # left out of comparisons, which concern what the task asks and how it is scored.
    max_new_tokens: int = field(default=48, compare=False)
    template: str | None = None  # base models: the whole prompt, "{input}" standing for the source
    # How many of an example's references score it (0: all).  CNN/DM keeps its 10 crowd summaries for
    # the split-reference oracle, but the paper's per-sequence score is against the highlights alone.
    scored_references: int = 0

    def scoring_references(self, references: tuple[str, ...]) -> list[str]:
        """The references a sequence's score is computed against."""
        return list(references[: self.scored_references] if self.scored_references else references)


TASK_NAMES: tuple[str, ...] = (
    "xsum", "cnndm", "samsum", "alpaca", "self-instruct", "gsm8k", "wmt22:<src>-<tgt>",
)

_TASKS = {
    "xsum": Task("xsum", "rougeL", "Summarize the following article in one sentence.",
                 "Article", "Summary"),
    "cnndm": Task("cnndm", "rougeL", "Summarize the following news article in a few sentences.",
                  "Article", "Summary", max_new_tokens=128, scored_references=1),
    "samsum": Task("samsum", "rougeL", "Summarize the following dialogue.", "Dialogue", "Summary"),
    "alpaca": Task("alpaca", "rougeL", "Respond to the following instruction.",
                   "Instruction", "Response", max_new_tokens=256),
    "self-instruct": Task("self-instruct", "rougeL", "Respond to the following instruction.",
                          "Instruction", "Response", max_new_tokens=256),
    "gsm8k": Task("gsm8k", "exact_match",
                  "Solve the following math problem step by step. "
                  "End with the final numeric answer after '####'.", "Question", "Answer",
                  max_new_tokens=256),
}
WMT22_MAX_NEW_TOKENS = 128  # one segment, often a paragraph; non-Latin scripts take more tokens
FILE_MAX_NEW_TOKENS = 48  # --data: no task to go by, so the summarisation default

_LANGUAGES = {
    "cs": "Czech", "de": "German", "en": "English", "fr": "French", "hr": "Croatian",
    "ja": "Japanese", "liv": "Livonian", "ru": "Russian", "sah": "Yakut", "uk": "Ukrainian",
    "zh": "Chinese",
}

_SET_HINT = "set SKIPORACLE_DATA to the folder holding the evaluation datasets"


def _bad(message: str) -> BadInput:
    # Messages embed ids and parser errors; the CLI contract is one line.
    return BadInput(" ".join(message.split("\n")))


def data_root() -> Path:
    """The datasets folder: ``$SKIPORACLE_DATA`` if set, else ``<repo>/../shared/datasets``.

    Raises BadInput if that folder does not exist.
    """
    env = os.environ.get("SKIPORACLE_DATA")
    repo = Path(__file__).resolve().parent.parent
    root = Path(env) if env else repo.parent / "shared" / "datasets"
    if not root.is_dir():
        raise _bad(f"data folder {root} not found; {_SET_HINT}")
    return root


def _needed(relative: str) -> Path:
    path = data_root() / relative
    if not path.exists():
        raise _bad(f"data file {path} not found; {_SET_HINT}")
    return path


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _bad(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad(f"{path} is not valid UTF-8 (byte {e.start})") from e


def _lines(path: Path) -> list[str]:
    """Lines split on ``\\n`` only: ``str.splitlines`` would also split on U+2028 inside text."""
    text = _read_text(path)
    return (text[:-1] if text.endswith("\n") else text).split("\n") if text else []


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(f"{path} line {number} is not valid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise _bad(f"{path} line {number} is not a JSON object")
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise _bad(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise _bad(f"{path} must hold a JSON list of objects")
    return data


def _read_records(path: Path) -> list[dict]:
    """Rows of a JSONL/JSON/CSV/Parquet file or a ``save_to_disk`` folder, as dicts."""
    if path.is_dir():
        import datasets  # slow import, only for this format

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises several types for a non-dataset folder
            raise _bad(f"{path} is not a folder saved with datasets.save_to_disk: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise _bad(f"{path} holds splits {sorted(ds)}; save a single split")
            ds = next(iter(ds.values()))
        return ds.to_list()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors for a bad file vary by version
            raise _bad(f"{path} is not a readable Parquet file: {e}") from e
    raise _bad(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet "
               "or a datasets folder")


def _field(row: dict, name: str, where: str) -> Any:
    if name not in row:
        raise _bad(f"{where} has no field {name!r}; fields present: {', '.join(map(str, row))}")
    return row[name]


def _texts(value: Any, what: str, example_id: str) -> tuple[str, ...]:
    """A string or list of strings as a non-empty tuple of non-blank strings."""
    items = value if isinstance(value, (list, tuple)) else [value]
    texts = []
    for item in items:
        if item is None:  # a CSV's short row or a null JSON value
            item = ""
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise _bad(f"example {example_id!r}: {what} must be a string or list of strings, "
                       f"got {type(item).__name__}")
        texts.append(item)
    if not texts or any(not t.strip() for t in texts):
        raise _bad(f"example {example_id!r}: empty {what}")
    return tuple(texts)


def _check_window(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 1:
        raise _bad(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise _bad(f"offset must be 0 or more, got {offset}")


def _finish(task: Task, rows: Iterable[tuple[Any, Any, Any]], limit: int | None, offset: int,
            where: str) -> tuple[Task, list[Example]]:
    """Validate (id, source, references) rows into Examples and take the offset/limit window."""
    examples: list[Example] = []
    seen: set[str] = set()
    for raw_id, source, refs in rows:
        example_id = str(raw_id)
        if raw_id is None or not example_id.strip():
            raise _bad(f"{where}: an example has an empty id")
        if example_id in seen:
            raise _bad(f"{where}: duplicate id {example_id!r}")
        seen.add(example_id)
        if isinstance(source, (list, tuple)):
            raise _bad(f"example {example_id!r}: input must be a single string, got a list")
        (text,) = _texts(source, "input", example_id)
        examples.append(Example(example_id, text, _texts(refs, "reference", example_id)))
    if not examples:
        raise _bad(f"{where} holds no examples")
    if offset >= len(examples):
        raise _bad(f"offset {offset} is past the end of {where} ({len(examples)} examples)")
    end = None if limit is None else offset + limit
    return task, examples[offset:end]


def _alpaca_row(index: int, row: dict) -> list[tuple]:
    # Upstream rows 247 and 504 have an empty reference output; a reference is required,
    # so they are dropped. Ids stay the file index so they match the upstream row.
    return [(index, row["instruction"], row["output"])] if row["output"].strip() else []


def _cnndm_row(row: dict) -> list[tuple]:
    # References: the original highlights first (the paper's reference, which the
    # split-reference oracle chooses with), then SummEval's 10 crowd-written summaries
    # (`references[1:]`; its `references[0]` repeats the highlights).
    crowd = row.get("references", [])
    if not isinstance(crowd, list):
        raise _bad(f"cnndm row {row.get('id')!r}: 'references' must be a list of strings")
    refs = [detokenize_ptb(t) if isinstance(t, str) else t for t in [row["highlights"], *crowd[1:]]]
    return [(row["id"], detokenize_ptb(row["article"]), refs)]


def _self_instruct_row(index: int, row: dict) -> list[tuple]:
    rows = []
    for k, instance in enumerate(row["instances"]):
        given, instruction = instance["input"], row["instruction"]
        source = f"{instruction}\n\n{given}" if given.strip() else instruction
        rows.append((f"{row['id']}-{k}", source, instance["output"]))
    return rows


# name -> (file under data_root, row index and row -> [(id, source, references), ...])
_BUILTIN = {
    "xsum": ("xsum/xsum-1000.jsonl", lambda i, r: [(r["id"], r["document"], r["summary"])]),
    "cnndm": ("summeval_cnndm/summeval_cnndm_test100.jsonl", lambda i, r: _cnndm_row(r)),
    "samsum": ("samsum/test.jsonl", lambda i, r: [(r["id"], r["dialogue"], r["summary"])]),
    "alpaca": ("alpaca_eval/text_davinci_003_model_outputs.json", _alpaca_row),
    "self-instruct": ("self_instruct_user_oriented/user_oriented_instructions.jsonl",
                      _self_instruct_row),
    "gsm8k": ("gsm8k/test.jsonl", lambda i, r: [(i, r["question"], r["answer"])]),
}


def _wmt22(pair: str, limit: int | None, offset: int) -> tuple[Task, list[Example]]:
    folder = _needed("wmt22")
    available = sorted(p.name.split(".")[1] for p in folder.glob("generaltest2022.*-*.src.*"))
    match = re.fullmatch(r"([a-z]+)-([a-z]+)", pair)
    if not match or pair not in available:
        raise _bad(f"unknown wmt22 pair {pair!r}; available: {', '.join(available)}")
    src, tgt = match.groups()
    sources = _lines(folder / f"generaltest2022.{pair}.src.{src}")
    ref_files = sorted(folder.glob(f"generaltest2022.{pair}.ref.*.{tgt}"))
    if not ref_files:
        raise _bad(f"no reference files generaltest2022.{pair}.ref.*.{tgt} in {folder}")
    refs = []
    for ref_file in ref_files:
        lines = _lines(ref_file)
        if len(lines) != len(sources):
            raise _bad(f"{ref_file} has {len(lines)} lines but the source has {len(sources)}")
        refs.append(lines)
    src_name, tgt_name = _LANGUAGES.get(src, src), _LANGUAGES.get(tgt, tgt)
    instruction = f"Translate the following {src_name} text into {tgt_name}."
    task = Task(f"wmt22:{pair}", "chrf", instruction, src_name, tgt_name, max_new_tokens=WMT22_MAX_NEW_TOKENS)
    triples = ((i, line, [r[i] for r in refs]) for i, line in enumerate(sources))
    return _finish(task, triples, limit, offset, f"wmt22:{pair}")


def check_prompt_options(instruction: str | None, template: str | None) -> None:
    """Refuse (BadInput) a blank instruction, or a template without the ``{input}`` it fills in."""
    if instruction is not None and not instruction.strip():
        raise _bad("--instruction is empty")
    if template is not None and "{input}" not in template:
        raise _bad(f"--template {template!r} has no {{input}} to put the input text in")


def scored_references(name: str) -> int:
    """How many references score a sequence of registered task `name` (0: all, also for files and unknown names)."""
    task = _TASKS.get(name)
    return task.scored_references if task else 0


def max_new_tokens_defaults() -> dict[str, int]:
    """The default --max-new-tokens of each registered task, of wmt22 pairs and of --data files."""
    return {**{name: task.max_new_tokens for name, task in _TASKS.items()},
            "wmt22": WMT22_MAX_NEW_TOKENS, "--data": FILE_MAX_NEW_TOKENS}


def load_task(name: str, limit: int | None = None, offset: int = 0) -> tuple[Task, list[Example]]:
    """Load a built-in task (see :data:`TASK_NAMES`) from :func:`data_root`.

    Returns ``examples[offset:offset + limit]`` in file order. Raises BadInput for an unknown
    task or wmt22 pair, a missing data file, bad ``limit``/``offset``, or malformed data.
    """
    _check_window(limit, offset)
    if name.startswith("wmt22:"):
        return _wmt22(name[len("wmt22:"):], limit, offset)
    if name not in _BUILTIN:
        raise _bad(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    relative, to_rows = _BUILTIN[name]
    path = _needed(relative)
    triples = []
    for index, row in enumerate(_read_records(path)):
        try:
            triples.extend(to_rows(index, row))
        except KeyError as e:
            raise _bad(f"{path} row {index} has no field {e.args[0]!r}") from e
    return _finish(_TASKS[name], triples, limit, offset, str(path))


def load_file(path: str | Path, input_field: str, reference_field: str, id_field: str | None = None,
              limit: int | None = None, offset: int = 0, metric: str = "rougeL",
              instruction: str = "Respond to the following input.",
              template: str | None = None) -> tuple[Task, list[Example]]:
    """Load a user file: JSONL, JSON (list of objects), CSV, Parquet, or a ``save_to_disk`` folder.

    ``input_field`` holds the source text; ``reference_field`` a string or a list of strings
    (several references). Ids come from ``id_field`` or, without it, are row indices as strings.
    The task is named ``file:<path>``; chat models get ``instruction`` before the input, base
    models ``template`` (see :func:`skiporacle.data.prompts.render_prompt`) or, without it,
    the plain labels "Input"/"Output".
    """
    _check_window(limit, offset)
    check_prompt_options(instruction, template)
    if metric not in METRICS:
        raise _bad(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    path = Path(path)
    if not path.exists():
        raise _bad(f"input file {path} not found")
    triples = []
    for index, row in enumerate(_read_records(path)):
        where = f"{path} row {index}"
        row_id = _field(row, id_field, where) if id_field else index
        source, refs = _field(row, input_field, where), _field(row, reference_field, where)
        triples.append((row_id, source, refs))
    task = Task(f"file:{path}", metric, instruction, "Input", "Output", FILE_MAX_NEW_TOKENS, template)
    return _finish(task, triples, limit, offset, str(path))
