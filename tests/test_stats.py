"""Intervals and tests of revinterp.stats against known values and planted effects."""

from __future__ import annotations

import math

import pytest
import torch

from revinterp.stats import (
    DIFFERENT,
    EQUIVALENT,
    UNDETERMINED,
    clopper_pearson,
    equivalence_test,
    hierarchical_bootstrap,
    t_interval,
)


def test_clopper_pearson_known_values():
    zero = clopper_pearson(0, 29)
    assert zero.mean == 0 and zero.low == 0
    assert zero.high == pytest.approx(1 - 0.025 ** (1 / 29), abs=1e-12)  # closed form at k = 0
    assert round(zero.high, 4) == 0.1194
    full = clopper_pearson(10, 10)
    assert full.high == 1 and full.low == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    half = clopper_pearson(5, 10)
    assert (round(half.low, 4), round(half.high, 4)) == (0.1871, 0.8129)  # tabulated exact limits
    with pytest.raises(ValueError, match="successes=11, n=10"):
        clopper_pearson(11, 10)


def test_t_interval_matches_the_formula():
    values = [1.0, 2.0, 4.0, 7.0, 6.0]
    est = t_interval(values)
    x = torch.tensor(values, dtype=torch.float64)
    half = 2.7764451051977987 * x.std().item() / math.sqrt(5)  # t_{0.975, 4}
    assert est.mean == 4.0 and est.low == pytest.approx(4 - half) and est.high == pytest.approx(4 + half)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def test_hierarchical_bootstrap_is_wider_than_items_alone_when_seeds_differ():
    gen = torch.Generator().manual_seed(0)
    groups = [torch.randn(50, generator=gen) * 0.1 + offset for offset in (0.0, 1.0, 2.0, 3.0, 4.0)]
    est = hierarchical_bootstrap(groups)
    assert est.mean == pytest.approx(sum(g.mean().item() for g in groups) / 5)
    assert est.high - est.low > 1.0  # the seed-to-seed spread (sd 1.58 over 5 seeds) dominates
    same = hierarchical_bootstrap([g - g.mean() for g in groups])
    assert same.high - same.low < 0.1
    assert hierarchical_bootstrap(groups, seed=3) == hierarchical_bootstrap(groups, seed=3)


def test_equivalence_needs_power():
    gen = torch.Generator().manual_seed(1)
    noisy = torch.randn(5, generator=gen)  # 5 noisy pairs, true effect 0, sd 1, margin 0.5
    few = equivalence_test(noisy, margin=0.5)
    assert few.verdict == UNDETERMINED and few.n_needed > 5
    planted = torch.randn(200, generator=gen) * 1.0  # 200 pairs of a planted zero effect
    many = equivalence_test(planted, margin=0.5)
    assert many.verdict == EQUIVALENT and -0.5 < many.low < many.high < 0.5
    shifted = equivalence_test(planted + 2.0, margin=0.5)
    assert shifted.verdict == DIFFERENT and shifted.differs_from_zero
    assert "pairs would be needed" in str(few) and many.to_dict()["method"].startswith("two one-sided")


def test_holm_rejects_step_down_until_the_first_failure():
    from revinterp.stats import holm

    # sorted 0.001 <= 0.05/4, 0.012 <= 0.05/3, 0.03 > 0.05/2: the third and everything after it stand
    assert holm([0.03, 0.001, 0.3, 0.012]) == [False, True, False, True]
    assert holm([0.04, 0.04], alpha=0.05) == [False, False] and holm([0.02, 0.04]) == [True, True]
    assert holm([]) == []
