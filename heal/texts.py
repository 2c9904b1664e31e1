"""Training text for healing: task examples the oracle does not evaluate.

The default source is the *last* rows of each named task (evaluation runs take
the first rows, and the oracle refuses a healed candidate whose training ids
overlap the evaluated ones).  Each text is the chat prompt followed by the
reference answer and EOS (or the full model's own answer: `answers`), cut to its last `seq_len` tokens so every window ends
with the answer, where a healed variant will be generating.

The first `holdout` rows (in `heal_examples` order) are held out to measure KL;
the rest are trained on (`split_holdout`).  Every row carries the content hash
of its source (`skiporacle.data.fingerprint`), so that the oracle can refuse
evaluated rows with the same text under another id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

import torch

from skiporacle.data.errors import BadInput
from skiporacle.data.fingerprint import content_hash
from skiporacle.data.prompts import fit_prompt
from skiporacle.data.tasks import Example, Task, load_task

T = TypeVar("T")


@dataclass(frozen=True)
class HealText:
    """One training window: `id` is "task:example id"; `tokens` has 2 to seq_len ids;
    `source_hash` is `content_hash` of the example's source text."""

    id: str
    tokens: tuple[int, ...]
    source_hash: str = ""


def heal_examples(sources: Sequence[str], per_task: int) -> list[tuple[Task, Example]]:
    """The last `per_task` examples of each task in `sources`, interleaved task by task."""
    if per_task < 1:
        raise BadInput(f"heal texts: need at least 1 example per task, got {per_task}")
    groups = []
    for name in sources:
        task, examples = load_task(name)
        groups.append([(task, e) for e in examples[-per_task:]])
    longest = max(map(len, groups))
    return [g[k] for k in range(longest) for g in groups if k < len(g)]


def split_holdout(rows: Sequence[T], holdout: int) -> tuple[list[T], list[T]]:
    """(held out, trained): the first `holdout` rows and the rest, for examples and windows alike."""
    return list(rows[:holdout]), list(rows[holdout:])


def example_id(task: Task, example: Example) -> str:
    """The id a heal run records for an example: "task:id", as the oracle compares them."""
    return f"{task.name}:{example.id}"


def heal_texts(examples: Sequence[tuple[Task, Example]], tokenizer, seq_len: int,
               answers: Mapping[str, tuple[int, ...]] | None = None) -> list[HealText]:
    """One window per example: the last `seq_len` tokens of prompt + first reference + EOS, or, with
    `answers` ("task:id" -> token ids, `answers.teacher_answers`), of prompt + the full model's answer."""
    if seq_len < 2:
        raise BadInput(f"heal texts: windows need at least 2 tokens, got {seq_len}")
    out = []
    for task, example in examples:
        prompt, _ = fit_prompt(task, example, tokenizer, 10**6)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        name = example_id(task, example)
        if answers is None:
            ids += tokenizer(example.references[0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        else:
            ids += list(answers[name])
        out.append(HealText(name, tuple(ids[-seq_len:]), content_hash(example.source)))
    return out


def pad_batch(texts: Sequence[HealText], pad_id: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, L] and attention_mask [B, L] on `device`, right-padded (every window starts at position 0)."""
    width = max(len(t.tokens) for t in texts)
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for b, text in enumerate(texts):
        ids[b, : len(text.tokens)] = torch.tensor(text.tokens)
        mask[b, : len(text.tokens)] = 1
    return ids.to(device), mask.to(device)
