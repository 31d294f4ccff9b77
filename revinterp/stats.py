"""Confidence intervals and tests, each named by its method (see ../shared/SCIENCE.md for which to use where).

- :func:`bootstrap_ci`: the percentile bootstrap over examples (Efron & Tibshirani 1993, *An Introduction to the
  Bootstrap*, ch. 13): resample with replacement ``n_resamples`` times and report the ``(1 - confidence) / 2``
  and ``(1 + confidence) / 2`` quantiles of the statistic. Deterministic given ``seed``. Not for proportions
  (all-zero data give ``[0, 0]``) nor for a handful of seeds (it under-covers).
- :func:`clopper_pearson`: the exact binomial interval of a proportion from one run (Clopper & Pearson 1934).
- :func:`t_interval`: Student's t interval of a mean over a few seeds.
- :func:`hierarchical_bootstrap`: the mean over seeds of per-seed means, resampling seeds and then items within
  each resampled seed (Davison & Hinkley 1997, sec. 3.8).
- :func:`equivalence_test`: two one-sided tests (TOST; Schuirmann 1987) that a mean effect lies within
  ``+-margin`` of zero: the only way to claim "no effect".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}]"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_ci(
    values: Float[Tensor, " n"] | list[float],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of ``values`` with a percentile-bootstrap interval.

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0]).low
        1.0
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    n = x.numel()
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a value in (0, 1)")
    mean = x.mean().item()
    if n == 1:
        return Estimate(mean, mean, mean, 1, confidence)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_resamples, n), generator=gen)
    means = x[idx].mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(mean, low, high, n, confidence)


RESAMPLE_BLOCK = 256  # resamples drawn at a time: bounds the memory, same draws as one call


def normalized_ci(
    values: Float[Tensor, "site batch"],
    clean: Float[Tensor, " batch"],
    corrupted: Float[Tensor, " batch"],
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> list[Estimate]:
    """Percentile-bootstrap intervals of the normalized effect
    ``(mean values - mean corrupted) / (mean clean - mean corrupted)`` per site, resampling examples jointly
    (paired, a ratio of means); the resamples are those of :func:`bootstrap_ci` with the same seed."""
    n = values.shape[-1]
    x = torch.cat([values, clean[None], corrupted[None]]).double().cpu()
    point = (x[:-2].mean(1) - x[-1].mean()) / (x[-2].mean() - x[-1].mean())
    gen = torch.Generator().manual_seed(seed)
    ratios = []
    for start in range(0, n_resamples, RESAMPLE_BLOCK):  # blocks bound the memory; same draws as one call
        index = torch.randint(n, (min(RESAMPLE_BLOCK, n_resamples - start), n), generator=gen)
        counts = torch.zeros(index.shape, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(index.shape, dtype=torch.float64)
        )  # how often each example is drawn
        means = x @ counts.T / n  # [site + 2, resample]
        ratios.append((means[:-2] - means[-1]) / (means[-2] - means[-1]))
    alpha = (1 - confidence) / 2
    bounds = torch.quantile(torch.cat(ratios, dim=1), torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=1)
    return [
        Estimate(point[i].item(), bounds[0, i].item(), bounds[1, i].item(), n, confidence) for i in range(len(point))
    ]


def format_fixed(x: float, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals, never ``-0.00``: a value that rounds to zero is written without a sign."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def error_bars(estimates: Sequence[Estimate]) -> dict:
    """Plotly ``error_y`` (or ``error_x``) of asymmetric intervals: from each mean up to its high and down to its
    low bound."""
    return dict(type="data", symmetric=False, array=[e.high - e.mean for e in estimates],
                arrayminus=[e.mean - e.low for e in estimates])


def clopper_pearson(successes: int, n: int, *, confidence: float = 0.95) -> Estimate:
    """The proportion ``successes / n`` with its exact two-sided binomial (Clopper-Pearson) interval.

    ``low = Beta((1 - c) / 2; k, n - k + 1)``, ``high = Beta((1 + c) / 2; k + 1, n - k)``, with ``low = 0`` at
    ``k = 0`` and ``high = 1`` at ``k = n``. Unlike a bootstrap it says how large a proportion zero hits allow.

    Example:
        >>> round(clopper_pearson(0, 29).high, 4)
        0.1194
    """
    from scipy.stats import beta

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"successes={successes}, n={n}: expected 0 <= successes <= n and n >= 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a value in (0, 1)")
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return Estimate(successes / n, low, high, n, confidence)


def t_interval(values: Sequence[float] | Tensor, *, confidence: float = 0.95) -> Estimate:
    """Mean with Student's t interval ``mean +- t_{n-1} s / sqrt(n)`` (for a few seeds; needs n >= 2)."""
    from scipy.stats import t

    x = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    n = x.numel()
    if n < 2:
        raise ValueError(f"t_interval got {n} value(s); expected at least 2")
    if not torch.isfinite(x).all():
        raise ValueError("t_interval got non-finite values; expected finite ones")
    mean, sd = x.mean().item(), x.std(unbiased=True).item()
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, confidence)


def hierarchical_bootstrap(
    groups: Sequence[Sequence[float] | Tensor], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean over groups (seeds) of the per-group means, with a two-level percentile bootstrap.

    Each resample draws the groups with replacement, then the items within each drawn group with replacement,
    and takes the mean of the drawn groups' means: both the seed-to-seed and the item-to-item variation enter.
    """
    data = [torch.as_tensor(g, dtype=torch.float64).flatten().cpu() for g in groups]
    if len(data) < 2 or any(g.numel() == 0 for g in data):
        raise ValueError(f"hierarchical_bootstrap got {len(data)} group(s); expected at least 2, each non-empty")
    gen = torch.Generator().manual_seed(seed)
    point = torch.stack([g.mean() for g in data]).mean().item()
    n_groups = len(data)
    means = torch.empty(n_resamples, dtype=torch.float64)
    for r in range(n_resamples):
        drawn = torch.randint(n_groups, (n_groups,), generator=gen).tolist()
        means[r] = torch.stack([data[i][torch.randint(data[i].numel(), (data[i].numel(),), generator=gen)].mean()
                                for i in drawn]).mean()
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(point, low, high, n_groups, confidence)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's step-down procedure (Holm 1979) rejects at family-wise level ``alpha``: sort the
    ``m`` p-values, reject ``p_(k) <= alpha / (m - k + 1)`` for ``k = 1, 2, ...`` until the first that is not.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.5])
        [True, False, False, False]
    """
    m = len(p_values)
    rejected = [False] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        if not p_values[i] <= alpha / (m - k):
            break
        rejected[i] = True
    return rejected


EQUIVALENT, DIFFERENT, UNDETERMINED = "equivalent to zero", "different from zero", "undetermined"


@dataclass(frozen=True)
class Equivalence:
    """The outcome of :func:`equivalence_test`.

    Attributes:
        verdict: ``"equivalent to zero"`` (both one-sided tests reject ``|mean| >= margin``), ``"different from
            zero"`` (not equivalent, and the two-sided t-test rejects a zero mean) or ``"undetermined"`` (neither:
            too few pairs for the margin; ``n_needed`` says about how many would do).
        mean: the mean effect, with ``low``/``high`` its ``1 - 2 alpha`` t interval (the TOST interval: equivalence
            holds exactly when it lies inside ``+-margin``).
        margin: the equivalence margin.
        p_equivalence: the larger of the two one-sided p-values.
        p_zero: the two-sided p-value of a zero mean.
        n: the number of values; ``n_needed``: pairs for 80 % power to show equivalence at this standard
            deviation when the true effect is zero (``((z_{1-alpha} + z_{0.9}) sd / margin)^2``).
        differs_from_zero: whether the two-sided test rejects zero (an effect may be both small and nonzero).
    """

    verdict: str
    mean: float
    low: float
    high: float
    margin: float
    p_equivalence: float
    p_zero: float
    n: int
    n_needed: int
    alpha: float = 0.05
    differs_from_zero: bool = False

    def __str__(self) -> str:
        text = (f"{self.verdict} (mean {self.mean:.3g}, {100 * (1 - 2 * self.alpha):.0f} % CI [{self.low:.3g}, "
                f"{self.high:.3g}] against margin +-{self.margin:.3g}; TOST p={self.p_equivalence:.2g}, n={self.n})")
        if self.verdict == UNDETERMINED:
            text += f"; about {self.n_needed} pairs would be needed"
        return text

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "mean": self.mean, "low": self.low, "high": self.high, "margin": self.margin,
                "p_equivalence": self.p_equivalence, "p_zero": self.p_zero, "n": self.n, "n_needed": self.n_needed,
                "alpha": self.alpha, "differs_from_zero": self.differs_from_zero,
                "method": "two one-sided t-tests (TOST)"}


def equivalence_test(values: Sequence[float] | Tensor, margin: float, *, alpha: float = 0.05) -> Equivalence:
    """Two one-sided t-tests (Schuirmann 1987) that the mean of ``values`` lies within ``(-margin, margin)``.

    ``t_low = (mean + margin) / se`` tests ``mean <= -margin``, ``t_high = (mean - margin) / se`` tests
    ``mean >= margin``; equivalence at level ``alpha`` when both reject, i.e. when the ``1 - 2 alpha`` t interval
    lies inside the margin. Use it for paired per-pair effects (a patched minus an unpatched metric).

    Example:
        >>> equivalence_test([0.01, -0.02, 0.0, 0.02, -0.01] * 40, margin=0.1).verdict
        'equivalent to zero'
    """
    from scipy.stats import norm, t

    x = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    n = x.numel()
    if n < 2:
        raise ValueError(f"equivalence_test got {n} value(s); expected at least 2")
    if not torch.isfinite(x).all():
        raise ValueError("equivalence_test got non-finite values; expected finite ones")
    if not margin > 0 or not math.isfinite(margin):
        raise ValueError(f"margin={margin}: expected a positive finite number")
    mean, sd = x.mean().item(), x.std(unbiased=True).item()
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0:
        p_low = p_high = 0.0 if abs(mean) < margin else 1.0
        p_zero = 0.0 if mean != 0 else 1.0
    else:
        p_low = float(t.sf((mean + margin) / se, df))
        p_high = float(t.cdf((mean - margin) / se, df))
        p_zero = float(2 * t.sf(abs(mean) / se, df))
    half = float(t.ppf(1 - alpha, df)) * se
    p_equivalence = max(p_low, p_high)
    differs = p_zero < alpha
    if p_equivalence < alpha:
        verdict = EQUIVALENT
    elif differs:
        verdict = DIFFERENT
    else:
        verdict = UNDETERMINED
    n_needed = math.ceil(((norm.ppf(1 - alpha) + norm.ppf(0.9)) * sd / margin) ** 2)
    return Equivalence(verdict, mean, mean - half, mean + half, margin, p_equivalence, p_zero, n, max(n_needed, 2),
                       alpha, differs)
