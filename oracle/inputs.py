"""Inputs of a run: the model, loaded by name, and the prompts of the evaluated and calibration splits."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from skiporacle.data.errors import BadInput
from skiporacle.data.prompts import fit_prompt, prompt_budget
from skiporacle.data.tasks import Example, Task, check_prompt_options, load_file, load_task
from skiporacle.eval.model import load_model, num_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_named_model(name: str, dtype: str, device: str = "cpu"):
    """(model, tokenizer) of a model name or folder, in the dtype named by `--dtype`, on `device`."""
    return load_model(name, DTYPES[dtype], device)


@dataclass(frozen=True)
class RunInputs:
    task: Task
    ids: list[str]
    prompts: list[str]
    references: list[tuple[str, ...]]
    calibration_ids: list[str]
    calibration_prompts: list[str]
    num_layers: int
    truncated: int  # prompts whose source was shortened to fit the context
    sources: tuple[str, ...] = ()  # the evaluated examples' source texts, uncut (for content-overlap checks)

    def scored_references(self) -> list[list[str]]:
        """Per sequence, the references its score is computed against (the task's rule, e.g. CNN/DM's highlights)."""
        return [self.task.scoring_references(r) for r in self.references]


def load_examples(settings, limit: int, offset: int) -> tuple[Task, list[Example]]:
    """The task's examples[offset:offset+limit], from the registry or a user's file.

    `settings.instruction` and `settings.template`, when set, replace the task's own.
    """
    instruction, template = getattr(settings, "instruction", None), getattr(settings, "template", None)
    check_prompt_options(instruction, template)
    if settings.data_file:
        task, examples = load_file(settings.data_file, settings.input_field, settings.reference_field,
                                   settings.id_field, limit=limit, offset=offset)
    else:
        task, examples = load_task(settings.task, limit=limit, offset=offset)
    return replace(task, instruction=instruction or task.instruction, template=template or task.template), examples


def load_inputs(settings, model, tokenizer) -> RunInputs:
    """Load the evaluated examples and, after them, up to `settings.calibration` disjoint calibration examples,
    as prompts fitted to `model`'s context."""
    task, examples = load_examples(settings, settings.limit, settings.offset)
    try:
        _, calibration = load_examples(settings, settings.calibration, settings.offset + settings.limit)
    except BadInput:  # no examples left after the evaluated ones
        calibration = []
    chat = getattr(tokenizer, "chat_template", None) is not None
    if getattr(settings, "template", None) and chat:
        raise BadInput(f"--template is for base models; {settings.model} has a chat template: use --instruction")
    if getattr(settings, "instruction", None) and not chat:
        raise BadInput(f"--instruction is for chat models; {settings.model} has no chat template: use --template")
    context, budget = prompt_budget(model, tokenizer, settings.max_new_tokens)
    fitted = [fit_prompt(task, e, tokenizer, budget) for e in examples]
    truncated = sum(t for _, t in fitted)
    if truncated:
        print(f"skiporacle: warning: {truncated} prompt(s) truncated to fit the {context}-token context")
    calibration_prompts = [fit_prompt(task, e, tokenizer, budget)[0] for e in calibration]
    return RunInputs(
        task=task,
        ids=[e.id for e in examples],
        prompts=[p for p, _ in fitted],
        references=[e.references for e in examples],
        calibration_ids=[e.id for e in calibration],
        calibration_prompts=calibration_prompts,
        num_layers=num_layers(model),
        truncated=truncated,
        sources=tuple(e.source for e in examples),
    )
