"""Teacher-forced verification of per-sequence candidate lists in one batched pass.

Sequence b's target y_b is the full model's greedy output.  Under the default
"allocation" first-token protocol (`generate`), an allocation's greedy output
is y_b exactly when, fed [last prompt token, y_b[:-1]] with its own layers on
the full model's prompt cache, it predicts y_b at every position; that takes
one parallel pass instead of len(y_b) decode steps.  Here every (sequence,
candidate) row, plus one full-model row per sequence for the reference
distribution, runs in chunks of rows: each decoder layer runs once, on the
rows that keep it (gather, one product per projection with the model's own
modules, scatter back); rows that skip it pass through.  Attention is split in
two parts merged by their log-sum-exps, as in `crossdecode`: all rows of a
sequence read its one copy of the prompt cache in a single product (dense
[B, C] query layout, `crosslanes`), and each row reads its own fed positions
under a causal mask.  Positions past a row's target are padding: causal
attention keeps them out of earlier positions and the verdicts ignore them.

Shapes: B sequences, n rows of a chunk, T fed positions (the chunk's longest
target), D hidden, H query heads, Hkv key/value heads, G = H/Hkv, hd head dim,
P prefix length, V vocabulary, C the most rows of one sequence at a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.attention import attention_with_lse
from skiporacle.eval.crossdecode import unsupported_reason
from skiporacle.eval.crosslanes import finish, project, prompt_prefixes, rotary_function, with_shared_prefix
from skiporacle.eval.model import allocation_view, decoder_layers
from skiporacle.search.allocation import Allocation

NEAR_TIE = 1e-4  # a top-2 logit gap below this is a near-tie: float rounding may flip the greedy choice
HEAD_ELEMENTS = 1 << 25  # logits computed at once (float32: 128 MiB), rows x positions x vocabulary


@dataclass(frozen=True)
class Verdict:
    """One candidate against its sequence's target y (the full model's greedy output).

    `agrees`: the allocation's argmax equals y at every position, so its greedy
    output is y.  `first_difference`: the first position where it differs (-1
    when it agrees).  `kl`: mean over y's positions of KL(full || allocation),
    nats per token.  `min_margin`: the smallest top-2 logit gap of the
    allocation over positions 0..first_difference (all when it agrees); below
    NEAR_TIE the verdict may differ from incremental greedy decoding.
    """

    agrees: bool
    first_difference: int
    kl: float
    min_margin: float


@torch.inference_mode()
def verify_candidates(
    model: PreTrainedModel,
    prompt_cache: DynamicCache,
    prefix_mask: torch.Tensor,
    last_prompt_token: torch.Tensor,
    targets: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Allocation]],
    max_rows: int = 256,
) -> list[list[Verdict]]:
    """Verdicts [sequence][candidate] of sequence b's candidates[b] against targets[b].

    `prompt_cache` holds the full model's keys/values of the left-padded prompts
    without their last token, `prefix_mask` [B, P] its mask, `last_prompt_token`
    [B] the token each row reads first (at position prefix_mask.sum(-1)).
    targets[b] (non-empty, EOS included when reached) is fed shifted by one.
    Rows (the candidates plus one full-model row per sequence that has
    candidates) run `max_rows` at a time.  ValueError for mismatched lengths,
    an empty target, or a layout `crossdecode` does not cover.
    """
    B = len(last_prompt_token)
    if len(targets) != B or len(candidates) != B:
        raise ValueError(f"{len(targets)} targets and {len(candidates)} candidate lists for {B} sequences")
    if any(len(t) == 0 for t in targets) or max_rows < 1:
        raise ValueError("every target must be non-empty and max_rows at least 1")
    reason = unsupported_reason(model, prefix_mask.shape[1] + 1 + max(map(len, targets), default=0))
    if reason is not None:
        raise ValueError(f"cannot verify: {reason}")
    base_layers = list(decoder_layers(model))
    rows: list[tuple[int, list[nn.Module | None]]] = []  # (sequence, module per layer or None where skipped)
    for b, per_sequence in enumerate(candidates):
        if per_sequence:
            rows.append((b, base_layers))
        for allocation in per_sequence:
            modules = (base_layers if not allocation.weights
                       else dict(zip(allocation.layers, decoder_layers(allocation_view(model, allocation)))))
            rows.append((b, [modules[i] if i in allocation.layers else None for i in range(len(base_layers))]))
    prefixes = prompt_prefixes(model, prompt_cache, B)
    out: list[list[Verdict]] = [[] for _ in range(B)]
    full: dict[int, torch.Tensor] = {}  # sequence -> the full row's final hidden [T_b, D]
    for start in range(0, len(rows), max_rows):
        chunk = rows[start : start + max_rows]
        hidden = _forward(model, chunk, prefixes, prefix_mask, last_prompt_token, targets)
        is_full = [start + i == 0 or rows[start + i - 1][0] != b for i, (b, _) in enumerate(chunk)]
        full = {b: h for b, h in full.items() if b == chunk[0][0]}  # rows come by sequence: earlier ones are done
        full.update((b, hidden[i, : len(targets[b])]) for i, (b, _) in enumerate(chunk) if is_full[i])
        picked = [i for i in range(len(chunk)) if not is_full[i]]
        for i, verdict in zip(picked, _verdicts(model, hidden[picked], [chunk[i][0] for i in picked], full, targets)):
            out[chunk[i][0]].append(verdict)
    return out


def _forward(model, chunk, prefixes, prefix_mask, last_prompt_token, targets) -> torch.Tensor:
    """Final normed hidden states [n, T, D] of the chunk's rows (sequences s0..s1, contiguous, in order)."""
    base, device = model.base_model, last_prompt_token.device
    s0, s1 = chunk[0][0], chunk[-1][0] + 1
    T = max(len(targets[b]) for b in range(s0, s1))
    fed = torch.zeros((s1 - s0, T), dtype=torch.long)  # padding past a target: any id, never read back
    for b in range(s0, s1):
        fed[b - s0, 1 : len(targets[b])] = torch.tensor(list(targets[b][:-1]), dtype=torch.long)
    fed = fed.to(device)
    fed[:, 0] = last_prompt_token[s0:s1]
    sequence = [b - s0 for b, _ in chunk]
    hidden = base.embed_tokens(fed[torch.tensor(sequence, device=device)])  # [n, T, D]
    cos, sin = base.rotary_emb(hidden, prefix_mask[s0:s1].sum(-1, keepdim=True) + torch.arange(T, device=device))
    dtype = hidden.dtype
    mask = prefix_mask[s0:s1]
    prefix_bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(mask == 0, float("-inf"))
    empty = ~mask.bool().any(-1)  # [s1-s0] sequences with nothing before the fed tokens
    H, Hkv = model.config.get_text_config().num_attention_heads, prefixes[0][0].shape[1]
    causal = torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu(1).repeat(H // Hkv, 1)
    rotate = rotary_function(model)
    for layer, (keys, values) in enumerate(prefixes):
        groups: dict[int, tuple[nn.Module, list[int]]] = {}
        for i, (_, modules) in enumerate(chunk):
            if modules[layer] is not None:
                groups.setdefault(id(modules[layer]), (modules[layer], []))[1].append(i)
        for module, members in groups.values():
            count: dict[int, int] = {}  # rows of each sequence so far: a row's place among its sequence's
            rank = []
            for i in members:
                rank.append(count.get(sequence[i], 0))
                count[sequence[i]] = rank[-1] + 1
            C = max(count.values())
            slot = [sequence[i] * C + r for i, r in zip(members, rank)]
            index = torch.tensor(members, device=device)
            seq = torch.tensor([sequence[i] for i in members], device=device)
            prefix = (keys[s0:s1], values[s0:s1], prefix_bias[:, None, None], empty)
            hidden[index] = _layer(module, hidden[index], cos[seq], sin[seq], torch.tensor(slot, device=device), C,
                                   prefix, causal[None, None], rotate)
    return base.norm(hidden)


def _layer(layer, x, cos, sin, slot, C, prefix, causal, rotate) -> torch.Tensor:
    """One decoder layer over rows x [m, T, D] at rotary cos/sin [m, T, hd]; returns the new x."""
    m, T, _ = x.shape
    q, k, v = (t.transpose(1, 2) for t in project(layer, layer.input_layernorm(x), cos, sin, rotate))  # [m, heads, T, hd]
    out = _attention(q, k, v, slot, C, *prefix, causal, layer.self_attn.scaling)
    return finish(layer, x, out.transpose(1, 2).reshape(m, T, -1))


def _attention(q, k, v, slot, C, prefix_keys, prefix_values, prefix_bias, prefix_empty, causal, scale) -> torch.Tensor:
    """Attention [m, H, T, hd] of queries q [m, H, T, hd] over their sequence's prefix and own k/v [m, Hkv, T, hd].

    Query head h reads key/value head h // G, so queries are grouped as
    [m, Hkv, G*T, hd] (`causal` [1, 1, G*T, T] repeats the T x T mask per g).
    """
    m, H, T, hd = q.shape
    Hkv = prefix_keys.shape[1]
    GT = H // Hkv * T
    grouped = q.reshape(m, Hkv, GT, hd)
    own, own_lse = attention_with_lse(grouped, k, v, causal, scale)
    return with_shared_prefix(grouped, own, own_lse, slot, C, prefix_keys, prefix_values, prefix_bias, prefix_empty,
                              scale).reshape(m, H, T, hd)


def _verdicts(model, hidden, sequences, full, targets) -> list[Verdict]:
    """Verdicts of rows with final hidden [m, T, D] of `sequences` [m], against full[b] [T_b, D] and targets[b]."""
    head = model.get_output_embeddings()
    m, T, _ = hidden.shape
    device = hidden.device
    per_group = max(1, HEAD_ELEMENTS // (T * head.weight.shape[0]))
    out: list[Verdict] = []
    for start in range(0, m, per_group):
        rows = range(start, min(start + per_group, m))
        wanted = torch.zeros((len(rows), T), dtype=torch.long)
        for j, r in enumerate(rows):
            wanted[j, : len(targets[sequences[r]])] = torch.tensor(list(targets[sequences[r]]), dtype=torch.long)
        lengths = torch.tensor([len(targets[sequences[r]]) for r in rows], device=device)
        logits = head(hidden[start : rows.stop]).float()  # [g, T, V]
        gap = logits.topk(2, dim=-1).values.diff(dim=-1).neg().squeeze(-1)  # [g, T]
        valid = torch.arange(T, device=device) < lengths[:, None]
        wrong = (logits.argmax(-1) != wanted.to(device)) & valid
        log_probs = logits.log_softmax(-1)
        kl = torch.empty((len(rows), T), device=device)
        for b in dict.fromkeys(sequences[r] for r in rows):  # rows come by sequence: one reference per sequence
            same = torch.tensor([sequences[r] == b for r in rows], device=device)
            reference = head(full[b]).float().log_softmax(-1)  # [T_b, V]
            n = len(reference)
            kl[same, :n] = (reference.exp() * (reference - log_probs[same, :n])).sum(-1)
        kl = kl.masked_fill(~valid, 0).sum(-1) / lengths
        differs = wrong.any(-1)
        first = torch.where(differs, wrong.int().argmax(-1), -1)  # argmax gives the first of equal maxima
        upto = torch.where(differs, first, lengths - 1)
        margin = gap.masked_fill(torch.arange(T, device=device) > upto[:, None], float("inf")).amin(-1)
        for f, k, g in zip(*torch.stack([first.float(), kl, margin]).tolist()):  # the group's one copy to the host
            out.append(Verdict(f < 0, int(f), k, g))
    return out
