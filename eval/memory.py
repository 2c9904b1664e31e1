"""Memory arithmetic: a model's weight bytes from its config, what the device has free, and whether it fits.

The weight estimate builds the model on the meta device (no memory is
allocated) and counts its parameters, tied ones once.  A model is refused
before loading when its weights, plus FIT_HEADROOM for activations and
caches, exceed the memory available on the device: on the CPU that is
/proc/meminfo's MemAvailable, on a GPU `torch.cuda.mem_get_info`'s free bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from skiporacle.data.errors import BadInput

FIT_HEADROOM = 1.2  # weights x this must fit: activations, caches and the loader's own buffers need room too
GIB = 1 << 30


def parameter_count(config) -> int:
    """Parameters of the causal LM that `config` describes, counted on the meta device (tied weights once)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of the model's weights in `dtype`."""
    return parameter_count(config) * torch.tensor([], dtype=dtype).element_size()


def available_bytes(device: torch.device | str) -> int:
    """Memory the device can still give: free GPU memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(folder: Path, name: str, dtype: torch.dtype, device: torch.device | str) -> None:
    """BadInput (one line) if the model in `folder` cannot fit in the device's available memory."""
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        needed = weight_bytes(config, dtype)
    except Exception:  # noqa: BLE001 - an estimate only: the loader reports what is wrong with the folder
        return
    free = available_bytes(device)
    if needed * FIT_HEADROOM > free:
        where = "GPU memory free" if torch.device(device).type == "cuda" else "memory available"
        raise BadInput(f"model {name!r} needs about {needed / GIB:.1f} GiB for its weights in "
                       f"{str(dtype).removeprefix('torch.')} (+{FIT_HEADROOM - 1:.0%} headroom), but only "
                       f"{free / GIB:.1f} GiB of {where} on {torch.device(device).type}; use a smaller model, "
                       "--dtype bfloat16 or a GPU")


def kv_head_shape(config) -> tuple[int, int]:
    """(key/value heads, head dimension) of one layer's cache entries."""
    config = config.get_text_config()
    heads = config.num_attention_heads
    return getattr(config, "num_key_value_heads", None) or heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Key/value cache bytes of one token through every layer."""
    kv_heads, head_dim = kv_head_shape(config)
    size = torch.tensor([], dtype=dtype).element_size()
    return 2 * config.get_text_config().num_hidden_layers * kv_heads * head_dim * size


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Transient bytes of one token inside one layer: the MLP's hidden width twice, the residual stream four times."""
    config = config.get_text_config()
    inner = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * config.hidden_size
    size = torch.tensor([], dtype=dtype).element_size()
    return (2 * inner + 4 * config.hidden_size) * size
