"""The judge's arithmetic against hand calculations and closed forms: the win rate's standard
error, the logistic fit (a saturated two-point design has an exact solution), the length-
controlled rate, and reading verdicts (never guessing)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from evaluation.pairs import Pair, build_prompt, load_template, model_first, parse_verdict
from evaluation.winrate import fit_logistic, length_controlled, win_rate


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_win_rate_and_its_standard_error_by_hand():
    # mean 3/4; sample sd of (1, 0, 1, 1) = sqrt(((1/4)^2 * 3 + (3/4)^2) / 3) = 1/2; se = 1/2 / 2
    assert win_rate([1, 0, 1, 1]) == (0.75, 0.25)
    rate, se = win_rate([1, 0.5, 0])  # a tie counts a half: mean 1/2, sd 1/2, se 1/2 / sqrt(3)
    assert rate == 0.5 and se == pytest.approx(0.5 / math.sqrt(3))
    assert win_rate([1]) == (1.0, None) and win_rate([]) == (None, None)


def test_two_point_design_matches_the_closed_form():
    """x in {-1, +1}: the unpenalised fit is saturated, sigmoid(b -/+ w) equals each group's mean,
    so b = (logit(0.8) + logit(0.4)) / 2 = ln(8/3) / 2 and w = (logit(0.8) - logit(0.4)) / 2."""
    x = np.array([1.0] * 10 + [-1.0] * 10)
    y = np.array([1.0] * 8 + [0.0] * 2 + [1.0] * 4 + [0.0] * 6)
    b, w = fit_logistic(x, y, l2=0.0)
    assert b == pytest.approx(math.log(8 / 3) / 2, abs=1e-9)
    assert w == pytest.approx((logit(0.8) - logit(0.4)) / 2, abs=1e-9)
    # the default small penalty moves the estimate by little
    b_pen, _ = fit_logistic(x, y)
    assert abs(b_pen - b) < 1e-3


def test_no_length_difference_gives_the_plain_win_rate():
    """x = 0 everywhere: the fit is the intercept alone, logit(mean), so LC = the raw rate."""
    prefs = [1, 1, 1, 0, 0.5]
    lc = length_controlled(prefs, [10] * 5, [10] * 5)
    assert lc.win_rate == pytest.approx(np.mean(prefs), abs=1e-9)


def test_separable_data_gives_a_finite_fit():
    """The longer output always wins: without the penalty the slope would be infinite."""
    diff = [-30, -20, -10, 10, 20, 30, 40, 50]
    prefs = [float(d > 0) for d in diff]
    lc = length_controlled(prefs, [100 + d for d in diff], [100] * len(diff))
    assert math.isfinite(lc.slope) and lc.slope > 5 and 0.0 < lc.win_rate < 1.0


def test_lc_undoes_a_known_length_effect_on_exact_probabilities():
    """Fractional targets equal to the true probabilities sigmoid(0.3 + 1.5 x): the fit recovers
    the parameters, so LC = sigmoid(0.3) whatever the length distribution."""
    rng = random.Random(1)
    diff = [rng.gauss(80, 60) for _ in range(400)]
    sd = float(np.std(diff))
    prefs = [1 / (1 + math.exp(-(0.3 + 1.5 * d / sd))) for d in diff]
    lc = length_controlled(prefs, [500 + d for d in diff], [500] * len(diff), l2=0.0)
    assert lc.win_rate == pytest.approx(1 / (1 + math.exp(-0.3)), abs=1e-6)
    assert lc.slope == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("text, expected", [
    ("Output (a)", "a"), ("Output (b)", "b"), ("Reasons.\n\n**Output (b)**\n", "b"), ("output (A).", "a"),
    ("`Output (a)`", "a"), ("Output (a) or Output (b)", None), ("Output (c)", None), ("", None),
    ("Output (a) is better", None), ("I cannot tell.", None), ("Output (a)\nOn reflection, neither.", None),
])
def test_verdicts_are_read_from_the_last_line_or_not_at_all(text, expected):
    assert parse_verdict(text) == expected


def test_prompt_shows_the_order_and_keeps_braces_in_outputs_as_text():
    template = load_template(None)
    pair = Pair(0, "Say {output_b}.", "", "model {output_a} says", "reference")
    first = build_prompt(template, pair, True)
    assert "<output_a>\nmodel {output_a} says\n</output_a>" in first
    assert "<output_b>\nreference\n</output_b>" in first and "Say {output_b}." in first
    assert "<output_a>\nreference\n</output_a>" in build_prompt(template, pair, False)


def test_the_order_is_a_seeded_coin_per_pair():
    flips = [model_first(0, i) for i in range(1000)]
    assert flips == [random.Random(f"0:{i}").random() < 0.5 for i in range(1000)]
    assert 450 < sum(flips) < 550 and flips != [model_first(1, i) for i in range(1000)]
