"""The student of a heal run and the saved healed variant.

A student is an ordinary, standalone model holding copies of only the kept
layers (renumbered 0..k-1); embeddings, final norm and LM head are copied from
the base model and stay frozen, so a healed variant differs from its base only
inside the kept layers.  A finished variant is a plain HF folder plus
`heal.json`; it is written beside its final name and renamed into place, so a
folder with that name is always complete.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.eval.model import decoder_layers, final_norm_name, layer_path, sliced_config
from skiporacle.heal.variants import write_heal_metadata


def build_student(base: PreTrainedModel, layers: tuple[int, ...], lora_rank: int = 0, train_last: int = 0,
                  train_norm: bool = False) -> PreTrainedModel:
    """A trainable copy of `base` running only `layers`; only decoder-layer weights require grad: those of the
    last `train_last` kept layers (0: all), plus the final norm's with `train_norm`.

    With `lora_rank` > 0 the layers' linear maps get LoRA adapters (peft) and
    only the adapters train.
    """
    config = sliced_config(copy.deepcopy(base.config), layers)
    student = AutoModelForCausalLM.from_config(config, dtype=base.dtype)
    prefix = ".".join(layer_path(base)) + "."
    position = {old: new for new, old in enumerate(layers)}
    state = {}
    for name, tensor in base.state_dict().items():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            if int(index) not in position:
                continue
            name = f"{prefix}{position[int(index)]}.{rest}"
        state[name] = tensor.clone()
    student.load_state_dict(state, strict=True)
    student.to(base.device)
    student.generation_config = copy.deepcopy(base.generation_config)
    first_trained = len(layers) - train_last if train_last else 0
    trained = tuple(f"{prefix}{i}." for i in range(first_trained, len(layers)))
    norm = (f"{'.'.join(layer_path(base)[:-1])}.{final_norm_name(base)}.",) if train_norm else ()
    for name, parameter in student.named_parameters():
        parameter.requires_grad = (name.startswith(trained) and not lora_rank) or name.startswith(norm)
    if lora_rank:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise BadInput("--lora needs peft: pip install -e '.[lora]'") from None
        modules = sorted({n.rsplit(".", 1)[-1] for n, m in decoder_layers(student).named_modules()
                          if isinstance(m, torch.nn.Linear)})
        lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=modules,
                          layers_to_transform=list(range(first_trained, len(layers))))
        with warnings.catch_warnings():  # peft calls a transformers property deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            student = get_peft_model(student, lora)
    return student


def merged(student: PreTrainedModel) -> PreTrainedModel:
    """The plain model: LoRA adapters folded into the weights (a no-op for full fine-tuning)."""
    return student.merge_and_unload() if hasattr(student, "merge_and_unload") else student


def save_variant(student: PreTrainedModel, tokenizer, metadata: dict, out: Path) -> None:
    """Write the variant to `out` atomically: a sibling temporary folder renamed into place."""
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = merged(student)
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_heal_metadata(tmp, metadata)
    os.replace(tmp, out)
