"""The settings schema of a heal run, and its defaults (also the `skiporacle heal` CLI's)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SOURCES = ("xsum", "samsum")  # tasks whose last rows give the training texts


@dataclass(frozen=True)
class HealSettings:
    """Everything that determines a heal run's result (a resume must match all but `steps`)."""

    model: str
    layers: tuple[int, ...]
    spec: str
    steps: int
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


DEFAULTS = HealSettings(model="smollm2-135m", layers=(), spec="", steps=0)  # the optional fields' defaults
