"""Export a decision as a standalone Hugging Face folder: only the kept layers, loadable by plain
`AutoModelForCausalLM.from_pretrained(DIR)` without skiporacle installed.

An allocation is exported as the base model with the other layers removed (config sliced, the kept layers'
weights copied and renumbered 0..k-1, embeddings, final norm and LM head as they are); a healed variant,
already such a folder, is copied with its heal.json.  Either way the folder holds the base model's tokenizer
(chat template included) and `export.json`, which says where it came from.  Its greedy outputs are those of
skiporacle's `--prompt-under-allocation` protocol: the kept layers read the prompt too.

The folder is written beside its final name and renamed into place, so a folder with that name is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.data.files import package_versions
from skiporacle.eval.model import num_layers, resolve_model
from skiporacle.heal.student import build_student
from skiporacle.heal.variants import variant_allocation
from skiporacle.search.allocation import Allocation

EXPORT_METADATA = "export.json"  # beside the weights of an exported folder: its base model, layers and source


def refuse_export_target(out: Path) -> None:
    """BadInput if `out` exists (an export never overwrites) or its parent cannot hold it."""
    if out.exists():
        raise BadInput(f"{str(out)!r} already exists; choose another --out or delete it")
    if out.parent.exists() and not out.parent.is_dir():
        raise BadInput(f"cannot write {str(out)!r}: {str(out.parent)!r} is not a folder")


def export_allocation(base: PreTrainedModel, base_name: str, allocation: Allocation, out: Path) -> dict:
    """Write `base` running only `allocation.layers` to `out`; return the export.json written there."""
    model = build_student(base, allocation.layers)
    for parameter in model.parameters():
        parameter.requires_grad = False
    meta = _metadata(base_name, num_layers(base), allocation, source="allocation", model=model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _base_tokenizer(base_name).save_pretrained(tmp)

    _write_atomically(out, write, meta)
    return meta


def export_variant(folder: Path, base_name: str, base_layers: int, out: Path) -> dict:
    """Copy the healed variant in `folder` (BadInput if it is not one, or not of `base_name`) to `out`."""
    allocation = variant_allocation(folder, base_layers, base_name, on_base=False)
    meta = _metadata(base_name, base_layers, allocation, source=f"healed variant {Path(folder).resolve()}")

    def write(tmp: Path) -> None:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(".*"))
        if not (tmp / "tokenizer_config.json").is_file():
            _base_tokenizer(base_name).save_pretrained(tmp)

    _write_atomically(out, write, meta)
    return meta


def _metadata(base_name: str, base_layers: int, allocation: Allocation, source: str, model=None) -> dict:
    meta = {"base_model": base_name, "num_layers": base_layers, "layers": list(allocation.layers),
            "spec": allocation.spec, "source": source, "versions": package_versions()}
    if model is not None:
        meta["parameters"] = sum(p.numel() for p in model.parameters())
    return meta


def _base_tokenizer(base_name: str):
    """The base model's tokenizer as its folder stores it (not the left-padding one skiporacle batches with)."""
    return AutoTokenizer.from_pretrained(resolve_model(base_name), local_files_only=True)


def _write_atomically(out: Path, write, meta: dict) -> None:
    refuse_export_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        (tmp / EXPORT_METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        raise BadInput(f"cannot write {str(out)!r} ({err.strerror or err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
