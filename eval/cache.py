"""Key/value caches for models that run only some of their layers.

Two things differ from transformers' DynamicCache:
- lengths (positions, mask sizes) are read from a layer that runs, since layer 0
  may be skipped and its entry then stale or absent;
- each running layer appends into a preallocated buffer instead of
  concatenating: `torch.cat` re-copies the whole cache every token and took
  ~80 % of decode time on the embedded model.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class BufferedLayer(DynamicLayer):
    """A DynamicLayer that writes new entries into spare capacity (doubling when full).

    `keys`/`values` are always views of the filled part, [B, heads, length, head_dim],
    so every inherited length query keeps working.
    """

    def __init__(self, reserve: int, prompt: DynamicLayer | None = None):
        super().__init__()
        self.reserve = reserve  # spare positions allocated beyond what is needed now
        self.length = 0
        if prompt is not None and prompt.is_initialized and prompt.keys.numel():
            self._allocate(prompt.keys, prompt.values, prompt.keys.shape[-2] + reserve)
            self._write(prompt.keys, prompt.values)

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        b, h, _, d = keys.shape
        k_buf = keys.new_empty((b, h, capacity, d))
        v_buf = values.new_empty((b, h, capacity, values.shape[-1]))
        if self.length:
            k_buf[:, :, : self.length] = self._k_buf[:, :, : self.length]
            v_buf[:, :, : self.length] = self._v_buf[:, :, : self.length]
        self._k_buf, self._v_buf = k_buf, v_buf
        self.device, self.is_initialized = keys.device, True

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        end = self.length + keys.shape[-2]
        self._k_buf[:, :, self.length : end] = keys
        self._v_buf[:, :, self.length : end] = values
        self.length = end
        self.keys, self.values = self._k_buf[:, :, :end], self._v_buf[:, :, :end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        needed = self.length + key_states.shape[-2]
        if not self.is_initialized or needed > self._k_buf.shape[-2]:
            self._allocate(key_states, value_states, max(needed + self.reserve, 2 * self.length))
        self._write(key_states, value_states)
        return self.keys, self.values

    def crop(self, max_length: int) -> None:
        """Forget every entry past the first `max_length` (a draft's tokens once the full model checked them)."""
        if self.is_initialized and max_length < self.length:
            self.length = max_length
            self.keys, self.values = self._k_buf[:, :, :max_length], self._v_buf[:, :, :max_length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k_buf, self._v_buf = self._k_buf[indices], self._v_buf[indices]
            self.keys, self.values = self._k_buf[:, :, : self.length], self._v_buf[:, :, : self.length]


class AllocationCache(DynamicCache):
    """The cache of one allocation: entries indexed by each module's own `layer_idx`.

    With `prompt_cache` (the full model's cache of the prompt), running layers
    copy the prompt entries into their own buffers with `reserve` spare
    positions; skipped layers share the prompt's tensors read-only.  The prompt
    cache itself is never modified.
    """

    def __init__(self, runs: tuple[int, ...], prompt_cache: DynamicCache | None = None, reserve: int = 64):
        super().__init__()
        self.reference_layer = runs[0]
        self._runs = frozenset(runs)
        prompt_layers = prompt_cache.layers if prompt_cache is not None else []
        for i in range(max(max(runs) + 1, len(prompt_layers))):
            prompt = prompt_layers[i] if i < len(prompt_layers) else None
            if i in self._runs:
                self.layers.append(BufferedLayer(reserve, prompt))
            else:
                self.layers.append(copy.copy(prompt) if prompt is not None else DynamicLayer())

    def sharing(self, runs: tuple[int, ...]) -> "AllocationCache":
        """The same layer buffers, seen by an allocation that runs only `runs` (a subset of this cache's layers):
        what it writes lands in these buffers, and lengths are read from a layer it runs."""
        other = copy.copy(self)  # shallow: `layers` is the same list of the same buffers
        other._runs, other.reference_layer = frozenset(runs), runs[0]
        return other

    def _reference(self, layer_idx: int) -> int:
        return layer_idx if layer_idx in self._runs else self.reference_layer

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(self._reference(layer_idx))

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return super().get_mask_sizes(query_length, self._reference(layer_idx))
