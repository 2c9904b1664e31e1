"""Per-token layer skipping: per-token oracle labels by teacher forcing over a nested `Family` (search/families.py).

For the
full model's greedy output of a prompt, `per_token_labels` says, for each
output token and member, whether that member alone would predict the token
when every earlier position is the full model's: the token's state runs only
the member's layers, while it attends, at each layer it runs, to the full
model's keys/values of earlier positions plus its own.  Generation that
picks a member per token lives in `pertoken/token_generation.py`.

Shapes: B sequences of a batch, W padded width (prompt + output[:-1]), T the
batch's longest output, D hidden, M members, N_tok labelled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.batching import left_pad
from skiporacle.eval.decode import positions, top2_margin
from skiporacle.eval.model import decoder_layers
from skiporacle.pertoken.token_generation import attend, check_model
from skiporacle.eval.crosslanes import finish, project, rotary_function
from skiporacle.search.families import Family


def kv_fill_fraction(model: PreTrainedModel) -> float:
    """What a skipped layer still costs under per-token skipping, as a fraction of a whole layer's weights:
    its input norm and key/value projections (and Qwen3's key norm), which fill its cache entry."""
    layer = decoder_layers(model)[0]
    attn = layer.self_attn
    parts = [layer.input_layernorm, attn.k_proj, attn.v_proj] + ([attn.k_norm] if hasattr(attn, "k_norm") else [])
    return sum(p.numel() for m in parts for p in m.parameters()) / sum(p.numel() for p in layer.parameters())


@dataclass(frozen=True)
class TokenLabels:
    """One row per output token of every sequence, ordered by (sequence, position)."""

    correct: np.ndarray  # [N_tok, M] bool: member m's argmax equals the full model's token there
    features: np.ndarray  # [N_tok, D] float32: full model's hidden after layer probe_layer at the predicting position
    sequence: np.ndarray  # [N_tok] int64: index of the row's sequence in the inputs
    position: np.ndarray  # [N_tok] int64: index of the output token in its sequence (0 = first generated token)
    margin: np.ndarray  # [N_tok] float32: full model's top-2 logit gap there (near-ties: < 1e-4)


@torch.inference_mode()
def per_token_labels(model: PreTrainedModel, prompt_rows: list[list[int]], outputs: list[list[int]], family: Family,
                     probe_layer: int, batch_size: int = 8) -> TokenLabels:
    """Per output token, which members predict the full model's token with the full model's states before it.

    outputs[i] is the full model's greedy output for prompt_rows[i]; output
    token j is predicted at position len(prompt_rows[i]) - 1 + j.  The full model
    runs once per batch over prompt + output[:-1]; each member then runs in one
    parallel pass over all predicting positions, starting from the full model's
    hidden entering its first skipped layer (the layers before it are the full
    model's).  probe_layer -1 gives the embeddings as features.  Sequences with
    an empty output give no rows; batches group sequences of similar lengths.
    """
    if len(prompt_rows) != len(outputs) or any(len(p) == 0 for p in prompt_rows):
        raise ValueError("one output per prompt, and every prompt needs at least one token")
    lengths = [len(p) + len(o) for p, o in zip(prompt_rows, outputs)]
    check_model(model, family, probe_layer, max(lengths, default=0))
    order = sorted((i for i, o in enumerate(outputs) if o), key=lambda i: (lengths[i], i))
    parts = [_label_batch(model, prompt_rows, outputs, order[s : s + batch_size], family, probe_layer)
             for s in range(0, len(order), batch_size)]
    D, M = model.config.get_text_config().hidden_size, len(family.members)
    if not parts:
        return TokenLabels(np.zeros((0, M), bool), np.zeros((0, D), np.float32), np.zeros(0, np.int64),
                           np.zeros(0, np.int64), np.zeros(0, np.float32))
    joined = [np.concatenate(arrays) for arrays in zip(*parts)]
    rows = np.lexsort((joined[3], joined[2]))
    return TokenLabels(*(a[rows] for a in joined))


def _label_batch(model, prompt_rows, outputs, batch, family, probe_layer) -> tuple[np.ndarray, ...]:
    """(correct, features, sequence, position, margin) of the sequences `batch`, in batch order."""
    layers, base, head, rotate = decoder_layers(model), model.base_model, model.get_output_embeddings(), rotary_function(model)
    outs = [outputs[i] for i in batch]
    ids, mask = left_pad([prompt_rows[i] + outputs[i][:-1] for i in batch], 0, head.weight.device)
    B, W = ids.shape
    T = max(map(len, outs))  # the predicting positions are each row's last len(output) columns
    states: list[torch.Tensor] = []  # [layers] x [B, T, D]: each layer's input there (a copy: the rest is freed)

    def keep_input(module, args, kwargs):
        states.append((args[0] if args else kwargs["hidden_states"])[:, W - T :].clone())

    hooks = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in layers]
    cache = DynamicCache()
    try:
        final = base(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=cache,
                     use_cache=True).last_hidden_state[:, W - T :]  # [B, T, D], normed
    finally:
        for hook in hooks:
            hook.remove()
    counts = torch.tensor([len(o) for o in outs], device=ids.device)
    valid = torch.arange(T, device=ids.device)[None] >= (T - counts)[:, None]  # [B, T]
    targets = torch.zeros((B, T), dtype=torch.long, device=ids.device)
    for b, o in enumerate(outs):
        targets[b, T - len(o) :] = torch.tensor(o, device=ids.device)
    # Position W - T + t reads the full model's keys/values before it (not padding), and its own.
    columns = torch.arange(W, device=ids.device)
    before = (columns[None, :] < (W - T + torch.arange(T, device=ids.device))[:, None])[None] & mask[:, None].bool()
    own = torch.eye(T, dtype=torch.bool, device=ids.device).expand(B, T, T)
    bias = torch.zeros((B, 1, T, W + T), dtype=head.weight.dtype, device=ids.device)
    bias = bias.masked_fill(~torch.cat([before, own], -1)[:, None], float("-inf"))
    cos, sin = base.rotary_emb(states[0], positions(mask)[:, W - T :])  # [B, T, hd]
    full_logits = head(final)
    correct = []
    for member in family.members:
        skipped = [l for l in range(len(layers)) if l not in member.layers]
        if not skipped:
            correct.append(full_logits.argmax(-1) == targets)
            continue
        hidden = states[skipped[0]]
        for l in range(skipped[0], len(layers)):
            if l in member.layers:
                layer = layers[l]
                q, k, v = project(layer, layer.input_layernorm(hidden), cos, sin, rotate)  # [B, T, heads, hd]
                keys = torch.cat([cache.layers[l].keys, k.transpose(1, 2)], 2)  # [B, Hkv, W + T, hd]
                values = torch.cat([cache.layers[l].values, v.transpose(1, 2)], 2)
                hidden = finish(layer, hidden, attend(q, keys, values, bias, layer.self_attn.scaling))
        correct.append(head(base.norm(hidden)).argmax(-1) == targets)
    sequence = torch.tensor(batch, device=ids.device)[:, None].expand(B, T)
    position = torch.arange(T, device=ids.device)[None] - (T - counts)[:, None]
    return (torch.stack(correct, -1)[valid].cpu().numpy(), states[probe_layer + 1][valid].float().cpu().numpy(),
            sequence[valid].cpu().numpy().astype(np.int64), position[valid].cpu().numpy().astype(np.int64),
            top2_margin(full_logits[valid]).cpu().numpy().astype(np.float32))
