"""The importance ranking of layers, as importance.json: measured once on given rows, or read back.

`importance:B` keeps B layers by this ranking.  One ranking file (`skiporacle rank`) passed to every
run with `oracle --importance` makes `importance:B` name the same layers in every run.
"""

from __future__ import annotations

import json
from pathlib import Path

from skiporacle.data.errors import BadInput
from skiporacle.data.files import write_json_atomic
from skiporacle.eval.importance import measure_importance


def read_ranking(path: Path, model_name: str, num_layers: int) -> dict:
    """A stored importance.json, checked to rank every layer of `model_name` (BadInput otherwise)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        order = stored["drop_order"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(f"--importance {str(path)!r}: not a readable importance.json ({err})") from None
    if sorted(order) != list(range(num_layers)):
        raise BadInput(f"--importance {str(path)!r}: its drop order does not rank the model's {num_layers} layers")
    if stored.get("model", model_name) != model_name:
        raise BadInput(f"--importance {str(path)!r} ranks the layers of {stored['model']!r}, not of {model_name!r}")
    return stored


def cached_drop_order(path: Path, model, tokenizer, model_name: str, ids: list[str], prompts: list[str],
                      max_new_tokens: int, progress: bool) -> tuple[int, ...]:
    """The importance drop order of `model` (named `model_name`) measured on `prompts`, read from `path`
    if it was measured there on the same ids."""
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["calibration_ids"] == ids and stored.get("model", model_name) == model_name:
            return tuple(stored["drop_order"])
    ranking = measure_importance(model, tokenizer, prompts, max_new_tokens, progress)
    write_json_atomic(
        path,
        {
            "model": model_name,
            "calibration_ids": ids,
            "full_perplexity": ranking.full_perplexity,
            "perplexity_without": list(ranking.perplexity_without),
            "tokens": ranking.tokens,
            "drop_order": list(ranking.drop_order),
        },
    )
    return ranking.drop_order
