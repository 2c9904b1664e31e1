"""Batches of prompts: planned once from lengths and the device's memory, padded on the left, split on OOM.

On the CPU the limits are the module constants (sized for a 2-core machine
with a few GB of memory).  On a GPU they come from its free memory (see
`gpu_limits` and docs/gpu.md); a batch that still runs out of GPU memory is
split in two and each half retried (`split_on_oom`), so no sequence is lost
and results stay in plan order.

Shapes: B = sequences in a batch, P = padded prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

from skiporacle.eval.memory import activation_bytes_per_token, kv_bytes_per_token

# Per prefill batch on the CPU: at most this many padded prompt tokens, and attention
# scores (batch x heads x P x P floats) of at most this many bytes.
TOKENS_PER_BATCH = 32768
SCORE_BYTES_PER_BATCH = 1 << 30
GPU_MEMORY_SHARE = 0.8  # of the free GPU memory (after the weights) that batches may plan for
KV_COPIES = 3  # the shared prompt cache, one candidate's copy of it, and the decode-time buffers

T = TypeVar("T")


@dataclass(frozen=True)
class BatchLimits:
    tokens: int  # padded prompt tokens per batch
    score_bytes: int  # attention-score bytes per batch (batch x heads x P x P x 4)


def gpu_limits(config, dtype: torch.dtype, free: int) -> BatchLimits:
    """Limits for a GPU with `free` bytes left after the weights.

    tokens = GPU_MEMORY_SHARE x free / (KV_COPIES x KV bytes per token + activation bytes per token),
    and attention scores half of that share; both rounded down to a power of two, so that small
    changes in free memory plan the same batches.
    """
    budget = int(GPU_MEMORY_SHARE * free)
    per_token = KV_COPIES * kv_bytes_per_token(config, dtype) + activation_bytes_per_token(config, dtype)
    return BatchLimits(tokens=_power_of_two(budget // per_token), score_bytes=_power_of_two(budget // 2))


def _power_of_two(n: int) -> int:
    """The largest power of two <= n (1 for n < 1)."""
    return 1 << (max(n, 1).bit_length() - 1)


def batch_limits(model, spare: int = 0) -> BatchLimits | None:
    """The limits for `model` where it lives: None (the CPU constants), or planned from the GPU's free memory.

    `spare`: bytes to keep free beyond what is measured (e.g. a worker's own copy of the weights).
    """
    if model.device.type != "cuda":
        return None
    free = torch.cuda.mem_get_info(model.device)[0] - spare
    return gpu_limits(model.config, model.dtype, max(free, 0))


def plan_batches(lengths: Sequence[int], num_heads: int, max_batch: int = 0,
                 limits: BatchLimits | None = None) -> list[list[int]]:
    """Group sequence indices into prefill batches of similar lengths, longest first.

    Sorting by length keeps left padding small (mixed lengths double prefill
    cost).  A batch must keep its padded tokens and attention-score memory
    under `limits` (default: the CPU constants), so batch size follows model and prompt sizes;
    `max_batch` > 0 also caps the sequences per batch.  Batches are filled
    greedily, then the shortest sequences of each batch move to the next one
    while that evens out their sizes, so no batch is left nearly empty (a batch
    of one decodes several times slower per token than a batch of 16).
    """
    tokens = limits.tokens if limits is not None else TOKENS_PER_BATCH
    score_bytes = limits.score_bytes if limits is not None else SCORE_BYTES_PER_BATCH

    def fits(group: list[int]) -> bool:
        size, width = len(group), lengths[group[0]]
        return (size * width <= tokens and size * num_heads * width * width * 4 <= score_bytes
                and (max_batch <= 0 or size <= max_batch))

    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches and fits(batches[-1] + [i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    for j in range(len(batches) - 1, 0, -1):
        previous, current = batches[j - 1], batches[j]
        while len(current) < len(previous) - 1 and fits([previous[-1]] + current):
            current.insert(0, previous.pop())
    return batches


def plan_for(model, lengths: Sequence[int], max_batch: int = 0, spare: int = 0) -> list[list[int]]:
    """`plan_batches` with `model`'s head count and the limits of the device it lives on."""
    return plan_batches(lengths, model.config.get_text_config().num_attention_heads, max_batch,
                        batch_limits(model, spare))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, P] and attention_mask [B, P], padded on the left, on `device`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def split_on_oom(run: Callable[[list], list[T]], items: Sequence) -> list[T]:
    """run(items), a list with one result per item; on a device out-of-memory error, each half instead.

    Halves are split again as needed and their results joined in order, so no
    item is lost and the order is kept.  A single item that does not fit
    raises the error.  (The CPU raises no `torch.cuda.OutOfMemoryError`: there the
    batch runs as planned.)
    """
    items = list(items)
    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        if len(items) <= 1:
            raise
    # Outside the handler, so that the failed attempt's tensors are freed before the retry.
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(items) // 2
    return split_on_oom(run, items[:half]) + split_on_oom(run, items[half:])
