"""Tolerances for comparing floating-point results that differ only in summation order.

Two computations of one quantity through the same weights (another batch shape, thread count, chunking, code
path, or another processor's kernels) add the same terms in another order.  A tolerance tuned on one machine's
kernels fails on another (issue 26: 1.38e-5 against an absolute 1e-5), so the bound here is derived from the
computation's size and dtype instead: per stage, Higham's bound for a sum of n terms, |error| <= n * eps *
sum|terms|, with `magnitude` standing for sum|terms| and the stages in sequence adding up.  Both sides round, so the
bound is doubled.  `bench/tolerances.py` measures the largest difference each comparison shows over repeated runs
beside a CPU load and under other kernel dispatches; docs/performance.md keeps its figures (the largest
difference seen, 6.1e-5, lies 460x below its tolerance).

Setting SKIPORACLE_TOLERANCE_LOG=FILE makes every comparison append {test, difference, tolerance} to FILE.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

LOGIT_SCALE = 16.0  # the largest |logit| of any tiny test model on random prompts: 15.3 (opt; the others 9.0-11.3)


def rounding_bound(reduction: int, depth: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """2 * depth * reduction * eps(dtype) * magnitude: the largest difference rounding alone can make between two
    orders of `depth` stages, each a sum of at most `reduction` terms of total size `magnitude`."""
    return 2.0 * depth * reduction * torch.finfo(dtype).eps * magnitude


def model_tolerance(config, magnitude: float = LOGIT_SCALE, dtype: torch.dtype = torch.float32) -> float:
    """`rounding_bound` through a whole decoder described by `config`: its widest matrix product (hidden or MLP
    width) per stage, two stages per layer (attention, MLP) plus the final norm and the head.

    The vocabulary's softmax sums are left out: they add positive terms in torch's cascade order, whose error grows
    with log2 of the vocabulary, far below the matrix products'.  For the tiny models (width 128, 6 layers, logits
    up to 16) this is 6.8e-3."""
    config = config.get_text_config()
    width = max(config.hidden_size, getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
                or 4 * config.hidden_size)
    return rounding_bound(width, 2 * config.num_hidden_layers + 2, magnitude, dtype)


def max_difference(actual, expected) -> float:
    """The largest absolute difference between two equally shaped (nested) sequences, arrays or tensors of floats."""
    a, b = _array(actual), _array(expected)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} against {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def assert_rounding_close(actual, expected, tolerance: float) -> None:
    """Fail unless every element of `actual` lies within `tolerance` of `expected` (see `model_tolerance`)."""
    difference = max_difference(actual, expected)
    log = os.environ.get("SKIPORACLE_TOLERANCE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
            f.write(json.dumps({"test": test, "difference": difference, "tolerance": tolerance}) + "\n")
    assert difference <= tolerance, f"largest difference {difference:.3g} exceeds the rounding tolerance {tolerance:.3g}"


def _array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
