"""Wilson intervals and the exact McNemar test against hand computations."""

import math

import pytest

from rstar_core.stats import Accuracy, PairedTest, paired_test, wilson_interval


@pytest.mark.parametrize("successes,n,low,high", [
    # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) with z = 1.96, by hand.
    (0, 10, 0.0, 0.27754),
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72246, 1.0),
    (1, 1, 0.20654, 1.0),
    (81, 263, 0.25529, 0.36621),
])
def test_wilson_interval_known_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=5e-5) and got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edges_and_bad_input():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 1000)[0] == 0.0 and wilson_interval(1000, 1000)[1] == 1.0
    wide, narrow = wilson_interval(5, 10, z=2.576), wilson_interval(5, 10, z=1.0)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    for successes, n in [(-1, 10), (11, 10), (0, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(successes, n)
    with pytest.raises(ValueError, match="z"):
        wilson_interval(1, 2, z=0)


def test_accuracy_from_outcomes():
    accuracy = Accuracy.from_outcomes([True] * 5 + [False] * 5)
    assert (accuracy.correct, accuracy.n, accuracy.rate) == (5, 10, 0.5)
    assert (accuracy.low, accuracy.high) == wilson_interval(5, 10)
    assert str(accuracy) == "50.0% (5/10, 95% CI 23.7-76.3%)"
    empty = Accuracy.from_outcomes([])
    assert (empty.n, empty.rate, empty.low, empty.high) == (0, 0.0, 0.0, 1.0)


def test_no_discordant_pairs_gives_p_one():
    same = [True, False, True, True]
    assert paired_test(same, same) == PairedTest(n=4, a_only=0, b_only=0, p_value=1.0, diff=0.0)
    assert paired_test([], []).p_value == 1.0


def test_ten_to_zero_discordant():
    a = [True] * 10 + [True] * 5 + [False] * 5
    b = [False] * 10 + [True] * 5 + [False] * 5
    result = paired_test(a, b)
    assert (result.n, result.a_only, result.b_only) == (20, 10, 0)
    assert result.p_value == pytest.approx(2 / 1024)
    assert result.diff == pytest.approx(0.5)
    # Symmetric in the methods, the difference changes sign.
    swapped = paired_test(b, a)
    assert swapped.p_value == result.p_value and swapped.diff == -result.diff


def test_exact_binomial_tail_by_hand():
    # 7 vs 2 discordant: 2 * (C(9,0) + C(9,1) + C(9,2)) / 2^9 = 2 * 46 / 512.
    a = [True] * 7 + [False] * 2 + [True] * 3
    b = [False] * 7 + [True] * 2 + [True] * 3
    assert paired_test(a, b).p_value == pytest.approx(92 / 512)
    # Balanced discordance caps at 1 (the two tails overlap).
    assert paired_test([True, False], [False, True]).p_value == 1.0


def test_large_n_stays_exact_and_finite():
    a = [True] * 600 + [False] * 400
    b = [False] * 600 + [True] * 400
    p = paired_test(a, b).p_value
    assert 0 < p < 1e-9 and math.isfinite(p)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([True], [True, False])
