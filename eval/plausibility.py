"""Plausibility of outputs: their mean negative log-likelihood under the full model, prompt given.

A skipping candidate can win on ROUGE with degenerate text that shares words
with the reference.  The full model finds such text implausible: its
teacher-forced NLL per token is far above that of the full model's own
output.  The plausibility guard of the oracle and the controller compares the
two (see `skiporacle plausibility`).

Each batch's prompts are read once by the full model (all tokens but the
last, as in generation); every output column is then one parallel
teacher-forced pass over [last prompt token, output[:-1]] on that cache.
Outputs are scored as their text re-tokenised (records keep the text; the
generated ids of skipping candidates are not stored), without EOS.

Shapes: B = sequences in a batch, T = longest output in tokens.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from skiporacle.eval.batching import left_pad, plan_for
from skiporacle.eval.decode import prefill
from skiporacle.eval.generate import encode_prompts
from skiporacle.eval.model import num_layers
from skiporacle.eval.teacher_forcing import teacher_forced_hidden


@torch.inference_mode()
def output_nll(model: PreTrainedModel, tokenizer, prompts: Sequence[str], outputs: Sequence[Sequence[str]],
               progress: bool = False) -> list[list[float]]:
    """Mean NLL in nats per token [sequence][column] of each output text under the full model.

    `outputs[i]` holds the K output texts of prompt i (same K for every prompt).
    An empty output gets +inf: it carries no text to judge.
    """
    rows = encode_prompts(tokenizer, prompts)
    tokens = [[tokenizer(text, add_special_tokens=False).input_ids for text in texts] for texts in outputs]
    k = len(outputs[0])
    result = [[math.inf] * k for _ in prompts]
    runs = tuple(range(num_layers(model)))
    head = model.get_output_embeddings()
    for batch in tqdm(plan_for(model, [len(r) for r in rows]), disable=not progress, unit="batch", desc="plausibility"):
        ids, mask = left_pad([rows[i] for i in batch], tokenizer.pad_token_id, model.device)
        shared = prefill(model, ids[:, :-1], mask[:, :-1], DynamicCache())
        for column in range(k):
            lengths = [len(tokens[i][column]) for i in batch]
            if max(lengths) == 0:
                continue
            targets = torch.full((len(batch), max(lengths)), tokenizer.pad_token_id, dtype=torch.long)
            for b, i in enumerate(batch):
                targets[b, : lengths[b]] = torch.tensor(tokens[i][column], dtype=torch.long)
            targets = targets.to(model.device)
            hidden = teacher_forced_hidden(model, shared, runs, ids[:, -1], mask, targets)
            logits = head(hidden).float()  # [B, T, V]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T]
            for b, i in enumerate(batch):
                if lengths[b]:
                    result[i][column] = float(nll[b, : lengths[b]].mean())
    return result
