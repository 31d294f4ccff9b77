"""Tests against chance: is behaviour on a split better, or worse, than guessing among the candidates?

A question with M candidates of which k are valid answers has, under the null that the answer is exchangeable
with its candidates (the model's scores carry no information about which candidate is right):

- a hit (a valid answer scored highest) with probability k / M;
- a rank R of the best valid answer among the M - k invalid candidates and itself, R = 1 .. M - k + 1, distributed
  as the position of the first valid item in a random order of the M: ``P(R = r) = C(M - r, k - 1) / C(M, k)``,
  with mean ``(M + 1) / (k + 1)`` ((M + 1) / 2 for one answer).

Questions are independent, so the number of hits over a split is Poisson-binomial (binomial when every question
has the same M and k). The tests here are one-sided and return p-values:

- :func:`accuracy_above_chance`: exact Poisson-binomial upper tail of the number of hits;
- :func:`rank_worse_than_chance`: exact test of the number of questions whose rank is worse than the null mean
  (a sign test with per-question success probabilities, again an exact Poisson-binomial tail); exact for any n
  and M, less powerful than a test of the rank sum, whose exact null would need a convolution of n rank
  distributions;
- :func:`logprob_below_uniform`: one-sided one-sample t-test of ``log p_candidates(answer) + ln(M / k)`` below 0,
  the uniform baseline. Scores that are exchangeable but not uniform also give a mean below ``-ln(M / k)``
  (Jensen: E log p <= log E p), so this test says "below the uniform baseline"; the rank test is the one against
  exchangeability.

Example:
    >>> round(accuracy_above_chance([True, False, False], [0.5, 0.5, 0.5]), 4)   # P(Bin(3, 1/2) >= 1)
    0.875
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

ArrayLike = Sequence | np.ndarray | Tensor


def _array(values: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1)


def poisson_binomial_sf(successes: int, probabilities: ArrayLike) -> float:
    """``P(X >= successes)`` for ``X`` the number of successes of independent trials with ``probabilities``.

    Exact: the distribution of X by successive convolution (float64, O(n^2)); scipy's binomial tail when every
    probability is the same.
    """
    p = _array(probabilities)
    if p.size == 0 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"probabilities {p[:5].tolist()}...: expected at least one probability in [0, 1]")
    if successes <= 0:
        return 1.0
    if successes > p.size:
        return 0.0
    if np.all(p == p[0]):
        from scipy.stats import binom

        return float(binom.sf(successes - 1, p.size, p[0]))
    pmf = np.zeros(p.size + 1)
    pmf[0] = 1.0
    for i, q in enumerate(p, start=1):
        pmf[1:i + 1] = pmf[1:i + 1] * (1 - q) + pmf[:i] * q
        pmf[0] *= 1 - q
    return float(min(1.0, pmf[successes:].sum()))


def accuracy_above_chance(hits: ArrayLike, chance: ArrayLike) -> float:
    """One-sided exact p-value of ``sum(hits)`` or more hits when question i is hit with probability ``chance[i]``
    (k_i / M_i): the Poisson-binomial upper tail, :func:`poisson_binomial_sf`."""
    h, c = _array(hits), _array(chance)
    if h.shape != c.shape:
        raise ValueError(f"{h.size} hits and {c.size} chance levels; expected one chance level per question")
    return poisson_binomial_sf(int(h.sum()), c)


def rank_null_pmf(n_candidates: int, n_valid: int = 1) -> np.ndarray:
    """``P(R = r)`` for ``r = 1 .. M - k + 1``: the rank of the best of ``k`` valid answers among ``M`` exchangeable
    candidates (the position of the first valid one in a random order), ``C(M - r, k - 1) / C(M, k)``."""
    m, k = int(n_candidates), int(n_valid)
    if not 1 <= k <= m:
        raise ValueError(f"n_candidates={m}, n_valid={k}: expected 1 <= n_valid <= n_candidates")
    return np.array([math.comb(m - r, k - 1) for r in range(1, m - k + 2)], dtype=np.float64) / math.comb(m, k)


def chance_rank(n_candidates: int, n_valid: int = 1) -> float:
    """The null mean rank ``(M + 1) / (k + 1)`` (:func:`rank_null_pmf`)."""
    return (n_candidates + 1) / (n_valid + 1)


def rank_worse_than_chance(rank: ArrayLike, n_candidates: ArrayLike, n_valid: ArrayLike | None = None) -> float:
    """One-sided exact p-value that ranks are worse (larger) than under exchangeability.

    Counts the questions whose rank exceeds the null mean ``(M_i + 1) / (k_i + 1)``; under the null question i does
    so with probability ``q_i = P(R_i > (M_i + 1) / (k_i + 1))`` from :func:`rank_null_pmf`, independently, so the
    count is Poisson-binomial and the p-value its exact upper tail. A rank past ``M - k + 1`` (a non-finite score)
    counts as worse.
    """
    r, m = _array(rank), _array(n_candidates, np.int64)
    k = np.ones_like(m) if n_valid is None else _array(n_valid, np.int64)
    if not r.shape == m.shape == k.shape:
        raise ValueError(f"{r.size} ranks, {m.size} candidate counts and {k.size} valid-answer counts; expected "
                         "one of each per question")
    worse, q = 0, np.empty(r.size)
    cache: dict[tuple[int, int], float] = {}
    for i, (ri, mi, ki) in enumerate(zip(r, m, k)):
        mean = chance_rank(int(mi), int(ki))
        if (int(mi), int(ki)) not in cache:
            pmf = rank_null_pmf(int(mi), int(ki))
            cache[int(mi), int(ki)] = float(pmf[np.arange(1, pmf.size + 1) > mean].sum())
        q[i] = cache[int(mi), int(ki)]
        worse += bool(ri > mean)
    return poisson_binomial_sf(worse, q)


def logprob_below_uniform(logprob_candidates: ArrayLike, uniform: ArrayLike) -> float | None:
    """One-sided one-sample t-test p-value that ``mean(logprob_candidates - uniform) < 0`` (``uniform[i] =
    -ln(M_i / k_i)``); ``None`` when it is undefined (fewer than two questions, or every difference the same)."""
    from scipy.stats import ttest_1samp

    d = _array(logprob_candidates) - _array(uniform)
    if d.size < 2 or np.all(d == d[0]):
        return None
    return float(ttest_1samp(d, 0.0, alternative="less").pvalue)


def chance_tests(hits: ArrayLike, rank: ArrayLike, logprob_candidates: ArrayLike | None, n_candidates: ArrayLike,
                 n_valid: ArrayLike) -> dict:
    """The three one-sided tests of one split as plain numbers: ``accuracy_above_chance_p``,
    ``rank_below_chance_p`` (ranks worse than chance) and ``logprob_below_chance_p`` (``None`` without
    log-probabilities, or where the t-test is undefined)."""
    m, k = _array(n_candidates), _array(n_valid)
    return {
        "accuracy_above_chance_p": accuracy_above_chance(hits, k / m),
        "rank_below_chance_p": rank_worse_than_chance(rank, m, k),
        "logprob_below_chance_p": None if logprob_candidates is None
        else logprob_below_uniform(logprob_candidates, -np.log(m / k)),
    }
