"""The per-token probe: from the full model's hidden state after layer `probe_layer` at the predicting
position, predict for every cheaper member m >= 1 of a nested family the probability that member m's
next token equals the full model's.

The seed paper (Glavas et al. 2024) trained a linear layer with a Gumbel-softmax over skip decisions.
This probe is plainer: the hidden state is standardised (mean and scale of the training tokens), and per
member an L2-regularised logistic regression is fitted full-batch with L-BFGS from zero (deterministic,
like `controller/classifier.py`, with a short history, on one torch thread: the solver's many small
products are dominated by thread synchronisation otherwise, 10-100x slower on a busy CPU).  A member whose
training labels are all alike gets a constant probability, (positives + 1/2) / (tokens + 1).  The L2
strength is chosen by 3-fold cross-validation inside the training rows, with folds of whole
*sequences* (tokens of one sequence are never split between a fold's training and held-out part).

Decision at threshold tau: the largest m such that P(m' correct) >= tau for every m' in 1..m; member 0
(the full model) when P(1 correct) < tau.  Larger tau never decides a cheaper member (monotone).

Shapes: T = tokens, D = hidden size, M = members of the family (member 0 = the full model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from skiporacle.controller.classifier import log_loss
from skiporacle.eval.device import one_thread

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried, per mean-loss unit
FOLDS = 3  # cross-validation folds (of sequences) that choose the L2 strength
MAX_ITER = 300  # L-BFGS iterations per fit at most
HISTORY = 10  # L-BFGS history size


@dataclass(frozen=True)
class Probe:
    """A fitted probe: every array needed to predict, nothing of the training tokens."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weights: np.ndarray  # [D + 1, M - 1] logistic weights of members 1..M-1, the last row the bias
    alpha: float  # the L2 strength chosen by cross-validation

    @property
    def members(self) -> int:
        """M: the family's members, the full model (never modelled) included."""
        return self.weights.shape[1] + 1

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """P(member m's token is the full model's) [T, M - 1], column j for member j + 1."""
        return _sigmoid(_design(self.mean, self.scale, features) @ self.weights)

    def decide(self, features: np.ndarray, tau: float) -> np.ndarray:
        """Decided member [T] (int) at threshold tau (see `decide`)."""
        return decide(self.probabilities(features), tau)


def decide(prob: np.ndarray, tau: float) -> np.ndarray:
    """The largest m with prob[:, m' - 1] >= tau for every m' in 1..m, else 0; prob [T, M - 1] -> [T] int."""
    ok = np.asarray(prob) >= tau
    return np.cumprod(ok, axis=1).sum(axis=1).astype(np.int64)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # = 1 / (1 + exp(-x)), without overflow


def _design(mean: np.ndarray, scale: np.ndarray, features: np.ndarray) -> np.ndarray:
    z = (np.asarray(features, dtype=np.float64) - mean) / scale
    return np.hstack([z, np.ones((len(z), 1))])


def fit_probe(features: np.ndarray, correct: np.ndarray, groups: np.ndarray) -> Probe:
    """Fit on features [T, D], labels correct [T, M] (bool; column 0, the full model, is not modelled) and
    groups [T] (the sequence of each token: cross-validation folds never split a sequence)."""
    x_raw = np.asarray(features, dtype=np.float64)
    if len(x_raw) == 0 or correct.shape[1] < 2:
        raise ValueError("the probe needs at least one token and a family of at least two members")
    mean = x_raw.mean(0)
    scale = x_raw.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    x = _design(mean, scale, x_raw)
    y = np.asarray(correct[:, 1:], dtype=np.float64)
    alpha = _choose_alpha(x, y, np.asarray(groups))
    return Probe(mean, scale, _logistic(x, y, alpha), alpha)


def _choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """The strength of ALPHAS with the least held-out log loss over FOLDS folds of whole sequences."""
    distinct = np.unique(groups)
    if len(distinct) < FOLDS:
        return ALPHAS[len(ALPHAS) // 2]
    fold_of_group = {g: k % FOLDS for k, g in enumerate(distinct)}
    folds = np.array([fold_of_group[g] for g in groups])
    losses = [sum(log_loss(x[folds == f] @ _logistic(x[folds != f], y[folds != f], a), y[folds == f])
                  for f in range(FOLDS)) for a in ALPHAS]
    return ALPHAS[int(np.argmin(losses))]


def _logistic(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin mean binary cross-entropy + alpha/2 |w|^2 (bias unpenalised) per column of y [T, C] -> w [D + 1, C].

    Columns whose labels are all alike get w = 0 and the bias of the smoothed rate (positives + 1/2) / (T + 1)."""
    w = np.zeros((x.shape[1], y.shape[1]))
    rate = (y.sum(0) + 0.5) / (len(y) + 1)
    w[-1] = np.log(rate / (1 - rate))
    varied = np.flatnonzero((y.min(0) != y.max(0)))
    if len(varied) == 0:
        return w
    with one_thread():
        xt, yt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y[:, varied]))
        wt = torch.zeros((x.shape[1], len(varied)), dtype=torch.float64, requires_grad=True)
        mask = torch.ones_like(wt)
        mask[-1] = 0.0
        optimiser = torch.optim.LBFGS([wt], max_iter=MAX_ITER, history_size=HISTORY, tolerance_grad=1e-9,
                                      tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ wt, yt, reduction="mean") * len(varied)
            loss = loss + alpha / 2 * ((wt * mask) ** 2).sum()
            loss.backward()
            return loss

        optimiser.step(closure)
    w[:, varied] = wt.detach().numpy()
    return w


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half; Mann-Whitney with average ranks); None with one class."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks (1-based) over runs of equal scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def member_accuracy(prob: np.ndarray, correct: np.ndarray, costs) -> list[dict]:
    """Per member m >= 1: its layers, the share of tokens it gets right, the probe's accuracy at P >= 0.5
    and its AUC, on labels correct [T, M] and probabilities prob [T, M - 1]."""
    rows = []
    for m in range(1, correct.shape[1]):
        truth = np.asarray(correct[:, m], dtype=bool)
        rows.append({"member": m, "layers": int(costs[m]), "positive_rate": float(truth.mean()),
                     "accuracy": float(((prob[:, m - 1] >= 0.5) == truth).mean()),
                     "auc": auc(prob[:, m - 1], truth)})
    return rows
