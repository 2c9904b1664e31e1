"""The settings schema of a heal run, and its defaults (also the `skiporacle heal` CLI's)."""

from __future__ import annotations

from dataclasses import dataclass

# Tasks whose last rows give the training texts: news and dialogue summaries and instructions, so that a variant
# is healed on more than the tasks it is judged on (cnndm and wmt22 play no part: they are the unseen tasks).
DEFAULT_SOURCES = ("xsum", "samsum", "alpaca")


@dataclass(frozen=True)
class HealSettings:
    """Everything that determines a heal run's result (a resume must match all but `steps`)."""

    model: str
    layers: tuple[int, ...]
    spec: str
    steps: int  # the most optimiser steps (the compute budget)
    learning_rate: float = 3e-4
    batch_size: int = 4  # windows per step
    seq_len: int = 256  # tokens per window
    bf16: bool = False  # bfloat16 autocast for teacher and student (weights and optimiser stay float32)
    lora_rank: int = 0  # 0 = full fine-tuning of the kept layers
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES
    examples: int = 200  # last rows of each source task
    holdout: int = 16  # windows kept out of training to measure KL
    checkpoint_every: int = 25
    # `steps` is the most a run may take; it stops earlier on a plateau of the held-out KL, measured every
    # `eval_every` steps: when the best of the last `patience` measurements is not `min_gain` (relative) below
    # the best before them.  patience 0 runs every step.
    eval_every: int = 25
    patience: int = 2
    min_gain: float = 0.02
    # Which weights train: the last `train_last` kept layers only (0: every kept layer), and the final norm
    # when `train_norm` (the "reassessing layer pruning" baseline: drop the last layers, heal next to the cut).
    train_last: int = 0
    train_norm: bool = False
    # What each window's answer is: "reference" (the task's first reference, EOS appended) or "teacher" (the full
    # model's greedy answer of at most `answer_tokens` tokens: the positions a variant generates; `answers.py`).
    answers: str = "reference"
    answer_tokens: int = 64


ANSWER_KINDS = ("reference", "teacher")
DEFAULTS = HealSettings(model="smollm2-135m", layers=(), spec="", steps=0)  # the optional fields' defaults
