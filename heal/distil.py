"""Healing by distillation: train a student of the kept layers to match the full model.

Loss: KL(full model || student) of the next-token distribution, at every real
position of each training window, averaged over positions (nats per token).
The full model is the frozen teacher; the optimiser is AdamW at a constant
learning rate.  Batch k of step s is a fixed function of (seed, s), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would
(the checkpoint holds torch's random state too, for dropout: see checkpoint.py).
Held-out KL is always measured in eval mode (no dropout), training runs in
train mode: at step 0, every `eval_every` steps (the learning curve) and at the
end.  A run stops at `steps`, or earlier on a plateau of that curve (`plateaued`).

Layout while training `models/NAME`: `models/NAME.partial/checkpoint.pt`
(written every `checkpoint_every` steps, atomically).  When done, the variant
is renamed into `models/NAME` and the partial folder removed.  With teacher answers (`answers.py`) the
full model's answers are kept in `models/teacher-answers-HASH/`, shared by every variant of the family.

Shapes: B = batch size, L = window length (tokens), V = vocabulary.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from skiporacle.data.errors import BadInput
from skiporacle.data.files import package_versions
from skiporacle.heal.checkpoint import load_checkpoint, restore, save_checkpoint
from skiporacle.heal.student import build_student, save_variant
from skiporacle.heal.heal_settings import HealSettings
from skiporacle.heal.answers import answers_folder, teacher_answers
from skiporacle.heal.texts import HealText, example_id, heal_examples, heal_texts, pad_batch, split_holdout


def kl_per_token(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions of KL(teacher || student); logits [B, L, V], mask [B, L] -> scalar (nats)."""
    student_logprobs = F.log_softmax(student_logits.float(), dim=-1)
    kl = F.kl_div(student_logprobs, teacher_logprobs, log_target=True, reduction="none").sum(-1)  # [B, L]
    weights = mask.to(kl.dtype)
    return (kl * weights).sum() / weights.sum()


def teacher_logprobs(teacher: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The full model's next-token log-probabilities [B, L, V] (float32, no grad)."""
    with torch.no_grad(), _autocast(bf16, ids.device):
        logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return F.log_softmax(logits.float(), dim=-1)


def train_step(student, optimizer, teacher, ids: torch.Tensor, mask: torch.Tensor, bf16: bool) -> float:
    """One AdamW step on windows ids [B, L]; returns the batch's KL (nats per token)."""
    target = teacher_logprobs(teacher, ids, mask, bf16)
    with _autocast(bf16, ids.device):
        logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
    loss = kl_per_token(logits, target, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def held_out_kl(student, teacher, texts: list[HealText], batch_size: int, pad_id: int) -> float:
    """KL (nats per token, float32) over held-out windows, weighted by their tokens.

    Measured in eval mode (dropout off); the student is left in the mode it was in.
    """
    total, tokens = 0.0, 0
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids, mask = pad_batch(texts[start : start + batch_size], pad_id, teacher.device)
                logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
                n = int(mask.sum())
                total += float(kl_per_token(logits, teacher_logprobs(teacher, ids, mask, False), mask)) * n
                tokens += n
    finally:
        student.train(was_training)
    return total / tokens


def plateaued(kls: list[float], patience: int, min_gain: float) -> bool:
    """Whether the best of the last `patience` held-out KLs is not `min_gain` (relative) below the best before
    them; never with patience 0 or fewer than patience + 1 measurements."""
    if patience < 1 or len(kls) <= patience:
        return False
    return min(kls[-patience:]) > min(kls[:-patience]) * (1 - min_gain)


def batch_at(step: int, train: list[HealText], settings: HealSettings) -> list[HealText]:
    """The windows of step `step` (0-based): epochs are seeded permutations of the training windows."""
    per_epoch = max(1, len(train) // settings.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([settings.seed, epoch]).permutation(len(train))
    return [train[i] for i in order[k * settings.batch_size : (k + 1) * settings.batch_size]]


def heal(settings: HealSettings, teacher: PreTrainedModel, tokenizer, out: Path, resume: bool = False,
         progress: bool = True, calibration_ids: tuple[str, ...] = ()) -> dict:
    """Train the student of `settings.layers` and save it to `out`; return its metadata (also heal.json).

    `calibration_ids` are the examples that chose the layers, if any: they must
    be training rows (BadInput otherwise), so that held-out KL is measured on
    rows that chose nothing.  `teacher` is put in eval mode.
    """
    examples = heal_examples(settings.sources, settings.examples)
    if len(examples) < settings.holdout + settings.batch_size:
        raise BadInput(f"heal: {len(examples)} windows is too few for {settings.holdout} held out and batches of {settings.batch_size}")
    strangers = sorted(set(calibration_ids) - {example_id(*e) for e in split_holdout(examples, settings.holdout)[1]})
    if strangers:
        raise BadInput(f"heal: calibration row {strangers[0]} is not a training row")
    partial = out.with_name(out.name + ".partial")
    _check_out(out, partial, resume)
    state = load_checkpoint(partial, asdict(settings)) if resume else None  # refuses other settings before any work
    teacher.eval()
    answers = None
    if settings.answers == "teacher":
        folder = answers_folder(out.parent, settings.model, settings.answer_tokens)
        folder.mkdir(exist_ok=True)
        answers = teacher_answers(teacher, tokenizer, examples, settings.answer_tokens, folder, progress)
    texts = heal_texts(examples, tokenizer, settings.seq_len, answers)
    holdout, train = split_holdout(texts, settings.holdout)
    torch.manual_seed(settings.seed)
    student = build_student(teacher, settings.layers, settings.lora_rank, settings.train_last, settings.train_norm)
    student.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    pad_id = tokenizer.pad_token_id

    def measure() -> float:
        return held_out_kl(student, teacher, holdout, settings.batch_size, pad_id)

    losses: list[float] = []
    seconds = 0.0
    if state is not None:
        restore(student, optimizer, state)
        losses, seconds, curve = state["losses"], state["seconds"], [tuple(c) for c in state["curve"]]
    else:
        curve = [(0, measure())]  # (step, held-out KL in nats per token)
    bar = tqdm(total=settings.steps, initial=len(losses), unit="step", desc=f"heal {settings.spec}", disable=not progress)
    stop = "max-steps"
    for step in range(len(losses), settings.steps):
        start = time.perf_counter()
        ids, mask = pad_batch(batch_at(step, train, settings), pad_id, teacher.device)
        losses.append(train_step(student, optimizer, teacher, ids, mask, settings.bf16))
        seconds += time.perf_counter() - start
        if (step + 1) % settings.eval_every == 0 and step + 1 < settings.steps:
            curve.append((step + 1, measure()))
            if plateaued([kl for _, kl in curve], settings.patience, settings.min_gain):
                stop = "plateau"
        bar.set_postfix(kl=f"{np.mean(losses[-10:]):.3f}", held_out=f"{curve[-1][1]:.3f}")
        bar.update(1)
        if stop == "plateau":
            break
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            save_checkpoint(partial, asdict(settings), student, optimizer, losses, seconds, curve)
    bar.close()
    if curve[-1][0] != len(losses):
        curve.append((len(losses), measure()))
    student.eval()
    metadata = {
        "base_model": settings.model,
        "num_layers": teacher.config.get_text_config().num_hidden_layers,
        "layers": list(settings.layers),
        "spec": settings.spec,
        "settings": asdict(settings),
        "data": {"sources": list(settings.sources), "train_ids": [t.id for t in train],
                 "holdout_ids": [t.id for t in holdout], "calibration_ids": list(calibration_ids),
                 "source_hashes": sorted({t.source_hash for t in texts})},
        "kl": {"initial": curve[0][1], "final": curve[-1][1], "holdout_windows": len(holdout)},
        "curve": [list(point) for point in curve],
        "stopped": stop,
        "losses": losses,
        "train_seconds": seconds,
        "versions": package_versions(),
    }
    save_variant(student, tokenizer, metadata, out)
    shutil.rmtree(partial, ignore_errors=True)
    return metadata


def _autocast(bf16: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def refuse_existing(out: Path) -> None:
    """BadInput if the variant folder `out` exists already (a heal never overwrites one)."""
    if out.exists():
        raise BadInput(f"{str(out)!r} already exists; choose another --out or delete it")


def _check_out(out: Path, partial: Path, resume: bool) -> None:
    refuse_existing(out)
    if partial.exists() and not resume:
        raise BadInput(f"an interrupted heal run is in {str(partial)!r}; pass --resume to continue it, or delete it")
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"cannot write {str(partial)!r} ({err.strerror or err})") from None
