"""The full model's own answers as heal targets (sequence-level distillation).

With `HealSettings.answers == "teacher"` a heal window ends with the full
model's greedy answer to the prompt instead of the human reference: the
positions a variant is trained on are then the ones it will generate, on the
teacher's own trajectory (Kim & Rush, 2016).  Answers are generated once, the
prompt fitted and read as an evaluation run reads it (`fit_prompt`,
`prompt_budget`), and appended batch by batch to `answers.jsonl` in
`answers_folder` (beside the variants, shared by a whole family: `make heal`
generates them once), so an interrupted run regenerates only unfinished
batches; `answers.json` pins the model and answer length they were made with,
and the folder's name carries a hash of both.  Each line: {"id": "task:example id", "tokens": [generated ids, EOS
included where reached]}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from transformers import PreTrainedModel

from skiporacle.data.files import append_lines, read_appended, read_json_object, refuse_other_settings, write_json_atomic
from skiporacle.data.fingerprint import content_hash
from skiporacle.data.prompts import fit_prompt, prompt_budget
from skiporacle.data.tasks import Example, Task
from skiporacle.eval.decode_protocol import DecodeProtocol
from skiporacle.eval.generate import generate_in_batches
from skiporacle.heal.texts import example_id
from skiporacle.search.allocation import full

ANSWERS_FILE = "answers.jsonl"
ANSWERS_FOLDER = "teacher-answers-{}"  # under the variants' parent folder; {}: hash of the model and answer length
ANSWERS_SETTINGS = "answers.json"  # what the answers were generated with, checked on resume


def answers_folder(variants: Path, model: str, max_new_tokens: int) -> Path:
    """The folder under `variants` (the healed variants' parent) that holds `model`'s answers of that length."""
    key = content_hash(json.dumps({"model": model, "max_new_tokens": max_new_tokens}, sort_keys=True))[:12]
    return variants / ANSWERS_FOLDER.format(key)


def teacher_answers(teacher: PreTrainedModel, tokenizer, examples: Sequence[tuple[Task, Example]], max_new_tokens: int,
                    folder: Path, progress: bool = True) -> dict[str, tuple[int, ...]]:
    """"task:id" -> the full model's greedy answer token ids (at most `max_new_tokens`) for every example.

    `folder` must exist.  Answers already in `folder/ANSWERS_FILE` are kept (a torn last line is cut);
    the rest are generated in the planned batches of all prompts, so a resumed
    run's answers equal an uninterrupted run's.
    """
    path, pinned = folder / ANSWERS_FILE, folder / ANSWERS_SETTINGS
    now = {"model": teacher.name_or_path, "max_new_tokens": max_new_tokens}
    stored = read_json_object(pinned)
    if stored is None:
        write_json_atomic(pinned, now)
    else:
        refuse_other_settings(folder, stored, now, list(now))
    done = {row["id"]: tuple(row["tokens"]) for row in read_appended(path, repair=True)}
    ids = [example_id(task, e) for task, e in examples]
    wanted = {i for i, name in enumerate(ids) if name not in done}
    if wanted:
        _, budget = prompt_budget(teacher, tokenizer, max_new_tokens)
        prompts = [fit_prompt(task, e, tokenizer, budget)[0] for task, e in examples]
        layers = teacher.config.get_text_config().num_hidden_layers
        batches = generate_in_batches(teacher, tokenizer, prompts, [full(layers)], DecodeProtocol(max_new_tokens),
                                      progress=progress, wanted=wanted)
        for batch in batches:
            rows = [{"id": ids[i], "tokens": list(generations[0].tokens)} for i, generations, _ in batch]
            append_lines(path, rows)
            done.update((row["id"], tuple(row["tokens"])) for row in rows)
    return {name: done[name] for name in ids}
