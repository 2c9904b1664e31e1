"""Examples and tasks: what an example holds, how a task is prompted and scored, and the validation that
turns raw (id, input, references) rows into examples, with one-line BadInput errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from skiporacle.data.readers import bad as _bad

# Every per-sequence metric (all on 0-100), scored by eval/metrics.py; a task's metric is one of them.
METRICS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match")


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


def check_window(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 1:
        raise _bad(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise _bad(f"offset must be 0 or more, got {offset}")


def finish(task: Task, rows: Iterable[tuple[Any, Any, Any]], limit: int | None, offset: int,
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
