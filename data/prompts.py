"""Prompt rendering: the chat template for instruct models, a plain template for base models."""
from __future__ import annotations

from typing import Any

from skiporacle.data.errors import BadInput
from skiporacle.data.tasks import Example, Task


def render_prompt(task: Task, example: Example, tokenizer: Any, source: str | None = None) -> str:
    """The prompt text for one example.

    Tokenizers with a chat template get a single user turn ``"{instruction}\\n\\n{source}"``
    with the generation prompt appended; others get ``task.template`` with every
    ``{input}`` replaced by the source (nothing else in it is interpreted) or, without one,
    ``"### {source_label}: {source}\\n\\n### {target_label}:"``. ``source`` overrides
    ``example.source`` (e.g. a truncated one).
    """
    text = example.source if source is None else source
    if getattr(tokenizer, "chat_template", None) is not None:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{task.instruction}\n\n{text}"}],
            tokenize=False, add_generation_prompt=True)
    if task.template is not None:
        return task.template.replace("{input}", text)
    return f"### {task.source_label}: {text}\n\n### {task.target_label}:"


def _count(tokenizer: Any, text: str) -> int:
    # The chat template already writes the special tokens, so none are added here.
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def fit_prompt(task: Task, example: Example, tokenizer: Any,
               max_prompt_tokens: int) -> tuple[str, bool]:
    """The rendered prompt, cut to at most ``max_prompt_tokens`` tokens, and whether it was cut.

    Only the end of the source is cut (whole tokens, decoded back to text); the template
    around it stays intact. Raises BadInput if even an empty source does not fit.
    """
    if max_prompt_tokens < 1:
        raise BadInput(f"max_prompt_tokens must be at least 1, got {max_prompt_tokens}")
    text = render_prompt(task, example, tokenizer)
    if _count(tokenizer, text) <= max_prompt_tokens:
        return text, False
    overhead = _count(tokenizer, render_prompt(task, example, tokenizer, source=""))
    if overhead > max_prompt_tokens:
        raise BadInput(f"prompt template for task {task.name} needs {overhead} tokens, "
                       f"more than max_prompt_tokens={max_prompt_tokens}")
    ids = tokenizer(example.source, add_special_tokens=False).input_ids
    keep = min(len(ids), max_prompt_tokens - overhead)
    while True:
        # Tokens can merge differently across the template boundary, so re-count and
        # shrink by the excess until it fits; keep == 0 always fits (checked above).
        # A cut inside a multi-byte character decodes to U+FFFD, which is dropped.
        cut = tokenizer.decode(ids[:keep], skip_special_tokens=False,
                               clean_up_tokenization_spaces=False).rstrip("\ufffd")
        text = render_prompt(task, example, tokenizer, source=cut)
        excess = _count(tokenizer, text) - max_prompt_tokens
        if excess <= 0 or keep == 0:
            return text, True
        keep = max(0, keep - excess)


def prompt_budget(model, tokenizer, max_new_tokens: int) -> tuple[int, int]:
    """(context length, most prompt tokens that leave room for `max_new_tokens`), in tokens."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or tokenizer.model_max_length
    return context, context - max_new_tokens
