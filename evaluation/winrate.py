"""Win rates from pairwise preferences: the raw rate with its standard error, and the
length-controlled rate (see docs/EVAL.md, "Pairwise judge").

A preference is 1 (the model's output won), 0 (the reference won) or 0.5 (a tie: identical
outputs). The length-controlled rate fits P(model wins) = sigmoid(b + w * x) with
x = (len(model) - len(reference)) / sd, lengths in characters and sd the standard deviation of
that difference over the judged pairs, and reports sigmoid(b): the predicted win probability
when both outputs have the same length. x is scaled but not centred, so that x = 0 still means
"equal length". The fit is Newton's method (IRLS) on the log-likelihood with a small L2 penalty
on w only, because a judge that always prefers the longer output makes the data separable and
the unpenalised w infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

L2_PENALTY = 1e-2  # on the slope only; small next to the information of even a few pairs


def win_rate(preferences: list[float]) -> tuple[float | None, float | None]:
    """The mean preference and its standard error (sample sd / sqrt(n)); None where undefined."""
    n = len(preferences)
    if n == 0:
        return None, None
    p = np.asarray(preferences, dtype=float)
    se = float(p.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    return float(p.mean()), se


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2_PENALTY, max_iter: int = 200,
                 tol: float = 1e-10) -> tuple[float, float]:
    """(intercept, slope) minimising -sum[y log p + (1-y) log(1-p)] + l2/2 * slope^2,
    p = sigmoid(intercept + slope * x); y may be fractional (ties). Newton steps with step
    halving, so every step lowers the objective (the objective is convex)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([0.0, l2])
    beta = np.zeros(2)

    def objective(b: np.ndarray) -> float:
        z = design @ b
        # log(1 + e^z) - y z, written so that large |z| neither overflows nor loses precision
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * b[1] ** 2)

    current = objective(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        grad = design.T @ (p - y) + penalty @ beta
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        # A tiny ridge keeps the solve defined when every pair is decided with certainty.
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        t = 1.0
        while t > 1e-8:
            candidate = beta - t * step
            value = objective(candidate)
            if value <= current + 1e-15:
                break
            t /= 2
        beta, current = candidate, value
        if np.max(np.abs(t * step)) < tol:
            break
    return float(beta[0]), float(beta[1])


@dataclass
class LengthControlled:
    win_rate: float
    intercept: float
    slope: float  # per standard deviation of the length difference
    length_sd: float  # characters


def length_controlled(preferences: list[float], model_lengths: list[int], reference_lengths: list[int],
                      l2: float = L2_PENALTY) -> LengthControlled | None:
    """sigmoid(intercept) of the fit above; None without any judged pair."""
    if not preferences:
        return None
    diff = np.asarray(model_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float)
    sd = float(diff.std())
    x = diff / sd if sd > 0 else np.zeros_like(diff)  # no spread: the length says nothing
    b, w = fit_logistic(x, np.asarray(preferences, dtype=float), l2)
    return LengthControlled(1.0 / (1.0 + math.exp(-b)), b, w, sd)
