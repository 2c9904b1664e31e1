"""The controller model: from prompt features, per candidate allocation, predict
(a) the probability that its score reaches the full model's and
(b) its score minus the full model's.

Features are standardised; the hidden-state block is reduced by PCA; both
fitted on the training rows only.  Head (a) is an L2-regularised logistic
regression per candidate, head (b) a ridge regression; their regularisation is
chosen by 3-fold cross-validation inside the training rows, so a controller
never looks at the rows it will be judged on.  Deterministic: no random
initialisation, full-batch L-BFGS from zero.

Shapes: N = sequences, F = features, D = reduced features, K = candidates.
The full model (the last candidate) is not modelled: probability 1, delta 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

ALPHAS = (0.01, 0.1, 1.0, 10.0)  # L2 strengths tried, per mean-loss unit
COMPONENTS = 16  # PCA components kept of the hidden-state block


@dataclass(frozen=True)
class Fitted:
    """A trained controller: every array needed to predict, nothing of the training rows."""

    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F]
    scalar_columns: int  # the first columns are kept as they are (after standardising); the rest go through PCA
    basis: np.ndarray  # [F - scalar_columns, C] PCA directions, scaled to unit variance on the training rows
    match_weights: np.ndarray  # [D + 1, K - 1] logistic weights, the last row the bias
    delta_weights: np.ndarray  # [D + 1, K - 1] ridge weights, the last row the bias
    alpha_match: float
    alpha_delta: float

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probability of matching the full score [N, K], predicted score - full score [N, K])."""
        x = _design(self, features)
        prob = 1 / (1 + np.exp(-(x @ self.match_weights)))
        delta = x @ self.delta_weights
        n = len(features)
        return np.hstack([prob, np.ones((n, 1))]), np.hstack([delta, np.zeros((n, 1))])

    def regress(self, features: np.ndarray) -> np.ndarray:
        """The ridge head's predictions [N, K] of a `fit_values` controller."""
        return _design(self, features) @ self.delta_weights


def _design(fitted: Fitted, features: np.ndarray) -> np.ndarray:
    z = (features - fitted.mean) / fitted.scale
    reduced = z[:, fitted.scalar_columns:] @ fitted.basis
    return np.hstack([z[:, : fitted.scalar_columns], reduced, np.ones((len(z), 1))])


def fit(features: np.ndarray, match: np.ndarray, delta: np.ndarray, scalar_columns: int) -> Fitted:
    """Train on features [N, F], match labels [N, K] (bool) and score deltas [N, K]; column K-1 is the full model."""
    shell, x = _reduced(features, scalar_columns)
    y_match, y_delta = match[:, :-1].astype(np.float64), delta[:, :-1].astype(np.float64)
    alpha_match = _choose_alpha(x, y_match, _logistic, log_loss)
    alpha_delta = _choose_alpha(x, y_delta, _ridge, _squared_error)
    return replace(shell, match_weights=_logistic(x, y_match, alpha_match), delta_weights=_ridge(x, y_delta, alpha_delta),
                   alpha_match=alpha_match, alpha_delta=alpha_delta)


def fit_values(features: np.ndarray, values: np.ndarray, scalar_columns: int) -> Fitted:
    """A regression-only controller: features [N, F] to values [N, K] (every column modelled, no full-model
    column), read back by `Fitted.regress`; the same reduction and ridge head as `fit`."""
    shell, x = _reduced(features, scalar_columns)
    alpha = _choose_alpha(x, values.astype(np.float64), _ridge, _squared_error)
    return replace(shell, match_weights=np.zeros((x.shape[1], 0)), delta_weights=_ridge(x, values, alpha),
                   alpha_delta=alpha)


def _reduced(features: np.ndarray, scalar_columns: int) -> tuple[Fitted, np.ndarray]:
    """A controller without heads that standardises and reduces like one trained on `features`, and the
    training rows' design matrix [N, D + 1]."""
    mean = features.mean(0)
    scale = features.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (features - mean) / scale
    block = z[:, scalar_columns:]
    components = max(0, min(COMPONENTS, len(z) - 2, block.shape[1]))
    basis = np.zeros((block.shape[1], 0))
    if components:
        _, singular, vt = np.linalg.svd(block, full_matrices=False)
        basis = vt[:components].T / np.maximum(singular[:components] / np.sqrt(len(z)), 1e-6)
    shell = Fitted(mean, scale, scalar_columns, basis, np.zeros(0), np.zeros(0), 0.0, 0.0)
    return shell, _design(shell, features)


def _choose_alpha(x, y, train, loss) -> float:
    """The L2 strength of ALPHAS with the least 3-fold held-out loss on these (training) rows."""
    folds = np.arange(len(x)) % 3
    if len(x) < 6:
        return ALPHAS[len(ALPHAS) // 2]
    losses = [sum(loss(x[folds == f] @ train(x[folds != f], y[folds != f], a), y[folds == f]) for f in range(3))
              for a in ALPHAS]
    return ALPHAS[int(np.argmin(losses))]


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin mean |x w - y|^2 + alpha |w|^2 (bias unpenalised), for every column of y."""
    penalty = alpha * len(x) * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def _logistic(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin mean binary cross-entropy + alpha/2 |w|^2 (bias unpenalised), for every column of y."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = torch.zeros((x.shape[1], y.shape[1]), dtype=torch.float64, requires_grad=True)
    mask = torch.ones_like(w)
    mask[-1] = 0.0
    optimiser = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w, yt, reduction="mean") * y.shape[1]
        loss = loss + alpha / 2 * ((w * mask) ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().numpy()


def log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(1 / (1 + np.exp(-logits)), 1e-9, 1 - 1e-9)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


def _squared_error(pred: np.ndarray, y: np.ndarray) -> float:
    return float(((pred - y) ** 2).sum())


def save_arrays(fitted: Fitted) -> dict[str, np.ndarray]:
    """The arrays of a fitted controller, for np.savez (no pickle)."""
    return {"mean": fitted.mean, "scale": fitted.scale, "scalar_columns": np.array(fitted.scalar_columns),
            "basis": fitted.basis, "match_weights": fitted.match_weights, "delta_weights": fitted.delta_weights,
            "alphas": np.array([fitted.alpha_match, fitted.alpha_delta])}


def load_arrays(arrays) -> Fitted:
    """The inverse of `save_arrays`."""
    alpha_match, alpha_delta = (float(a) for a in arrays["alphas"])
    return Fitted(arrays["mean"], arrays["scale"], int(arrays["scalar_columns"]), arrays["basis"],
                  arrays["match_weights"], arrays["delta_weights"], alpha_match, alpha_delta)
