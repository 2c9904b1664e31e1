"""Checkpoints of an interrupted heal run: `models/NAME.partial/checkpoint.pt`.

A checkpoint holds the trainable weights, the optimiser state, the losses so
far, the training seconds, the held-out learning curve, and torch's random number generator states (CPU,
and CUDA when initialised), so that dropout masks after a resume are the ones
the uninterrupted run would have drawn.  Batches need no saved state: they are
a fixed function of (seed, step) (see `distil.batch_at`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from skiporacle.data.errors import BadInput
from skiporacle.data.files import refuse_other_settings, write_atomic

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    """torch's generator states now: {"cpu": ByteTensor, "cuda": [ByteTensor per device] or absent}."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(partial: Path, settings: dict, student, optimizer, losses: list[float], seconds: float,
                    curve: list[tuple[int, float]]) -> None:
    """Write `partial/checkpoint.pt` atomically (temporary file, fsync, rename); `settings` as `asdict`."""
    state = {
        "settings": settings,
        "trainable": {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "losses": list(losses),
        "seconds": seconds,
        "curve": [list(point) for point in curve],
        "rng": rng_state(),
    }
    write_atomic(partial / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(partial: Path, settings: dict) -> dict | None:
    """The checkpoint in `partial`, or None if there is none.

    BadInput if it was made with settings other than `settings` (all but
    "steps" must match) or is past `settings["steps"]` already.
    """
    path = partial / CHECKPOINT
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False, map_location="cpu")  # restore() copies onto the student's device
    stored, now = {**state["settings"], "steps": None}, {**settings, "steps": None}
    refuse_other_settings(partial, stored, now, list(now))
    if "curve" not in state:
        raise BadInput(f"--resume: the checkpoint in {str(partial)!r} predates learning curves; delete it and heal again")
    if len(state["losses"]) > settings["steps"]:
        raise BadInput(f"--resume: the checkpoint is past step {settings['steps']} already")
    return state


def restore(student, optimizer, state: dict) -> None:
    """Load the checkpoint's trainable weights, optimiser state and generator states."""
    params = dict(student.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:
        set_rng_state(state["rng"])
    else:  # written before checkpoints held generator states
        print("skiporacle: warning: this checkpoint holds no random state; with dropout the resumed run "
              "will not match an uninterrupted one", file=sys.stderr)
