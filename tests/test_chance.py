"""Tests against chance: exact tails against scipy and brute-force enumeration, the rank null's analytic values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest, t, ttest_1samp

from revinterp.chance import (
    accuracy_above_chance,
    chance_rank,
    logprob_below_uniform,
    poisson_binomial_sf,
    rank_null_pmf,
    rank_worse_than_chance,
)


@pytest.mark.parametrize("k, n, p", [(0, 29, 0.005), (1, 29, 0.005), (3, 29, 1 / 29), (7, 20, 0.25), (20, 20, 0.5)])
def test_constant_chance_is_the_exact_binomial_test(k, n, p):
    hits = [True] * k + [False] * (n - k)
    expected = binomtest(k, n, p, alternative="greater").pvalue
    assert math.isclose(accuracy_above_chance(hits, [p] * n), expected, rel_tol=1e-9)
    # the convolution path (used for unequal chance levels) agrees with scipy on equal ones too
    nudged = [p] * (n - 1) + [p * (1 + 1e-12)]
    assert math.isclose(poisson_binomial_sf(k, nudged), expected, rel_tol=1e-6)


def test_poisson_binomial_tail_against_enumeration():
    p = [0.5, 0.1, 1 / 3, 0.9, 0.02, 0.25]
    for k in range(len(p) + 2):
        brute = sum(
            math.prod(q if hit else 1 - q for q, hit in zip(p, outcome))
            for outcome in itertools.product([0, 1], repeat=len(p)) if sum(outcome) >= k
        )
        assert math.isclose(poisson_binomial_sf(k, p), brute, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("m, k", [(5, 1), (6, 2), (7, 3), (4, 4)])
def test_rank_null_is_the_first_valid_position_in_a_random_order(m, k):
    counts = np.zeros(m - k + 1)
    orders = list(itertools.permutations([True] * k + [False] * (m - k)))
    for order in orders:
        counts[order.index(True)] += 1
    assert np.allclose(rank_null_pmf(m, k), counts / len(orders))
    assert math.isclose(float((np.arange(1, m - k + 2) * rank_null_pmf(m, k)).sum()), chance_rank(m, k))


def test_rank_test_with_one_answer_among_an_even_number_is_a_fair_sign_test():
    # M = 10, one answer: rank > 5.5 with probability 1/2, so the test is binomtest(worse, n, 1/2, 'greater')
    ranks = [10, 9, 8, 7, 6, 6, 2, 1, 9, 10, 3, 7]
    worse = sum(r > 5.5 for r in ranks)
    expected = binomtest(worse, len(ranks), 0.5, alternative="greater").pvalue
    assert math.isclose(rank_worse_than_chance(ranks, [10] * len(ranks)), expected, rel_tol=1e-9)
    # M = 3, rank > 2 (only rank 3) has probability 1/3; ranks of 1 or 2 are not worse
    assert math.isclose(rank_worse_than_chance([3, 3, 2, 1], [3] * 4),
                        binomtest(2, 4, 1 / 3, alternative="greater").pvalue, rel_tol=1e-9)


def test_logprob_test_is_the_one_sided_t_test():
    lp = np.array([-3.1, -2.2, -4.0, -2.9, -3.5])
    m = np.array([10, 10, 20, 20, 20])
    d = lp + np.log(m)
    stat = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert math.isclose(logprob_below_uniform(lp, -np.log(m)), t.cdf(stat, len(d) - 1), rel_tol=1e-9)
    assert math.isclose(logprob_below_uniform(lp, -np.log(m)),
                        ttest_1samp(d, 0, alternative="less").pvalue, rel_tol=1e-12)
    assert logprob_below_uniform([-1.0], [-2.0]) is None


def test_chance_inputs_are_checked():
    with pytest.raises(ValueError, match="expected one chance level per question"):
        accuracy_above_chance([True, False], [0.5])
    with pytest.raises(ValueError, match="n_valid <= n_candidates"):
        rank_null_pmf(3, 4)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        poisson_binomial_sf(1, [1.5])
