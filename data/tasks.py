"""Evaluation tasks: the built-in test sets under the shared data folder, and user files.

Every loader returns ``(Task, examples)`` where the examples keep file order, so that
``offset``/``limit`` select the deterministic slice ``examples[offset:offset + limit]``.
Anything wrong with the input raises :class:`BadInput` with a one-line message.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.examples import METRICS, Example, Task, check_window, finish  # noqa: F401 (re-exported)
from skiporacle.data.ptb import detokenize_ptb
from skiporacle.data.readers import bad as _bad, field as _field, lines as _lines, read_rows as _read_rows

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
    return finish(task, triples, limit, offset, f"wmt22:{pair}")


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
    check_window(limit, offset)
    if name.startswith("wmt22:"):
        return _wmt22(name[len("wmt22:"):], limit, offset)
    if name not in _BUILTIN:
        raise _bad(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    relative, to_rows = _BUILTIN[name]
    path = _needed(relative)
    triples = []
    for index, row in enumerate(_read_rows(path)):
        try:
            triples.extend(to_rows(index, row))
        except KeyError as e:
            raise _bad(f"{path} row {index} has no field {e.args[0]!r}") from e
    return finish(_TASKS[name], triples, limit, offset, str(path))


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
    check_window(limit, offset)
    check_prompt_options(instruction, template)
    if metric not in METRICS:
        raise _bad(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    path = Path(path)
    if not path.exists():
        raise _bad(f"input file {path} not found")
    triples = []
    for index, row in enumerate(_read_rows(path)):
        where = f"{path} row {index}"
        row_id = _field(row, id_field, where) if id_field else index
        source, refs = _field(row, input_field, where), _field(row, reference_field, where)
        triples.append((row_id, source, refs))
    task = Task(f"file:{path}", metric, instruction, "Input", "Output", FILE_MAX_NEW_TOKENS, template)
    return finish(task, triples, limit, offset, str(path))
