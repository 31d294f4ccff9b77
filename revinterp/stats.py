"""Confidence intervals: the percentile bootstrap over examples (or over seeds).

Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, ch. 13: resample the values with
replacement ``n_resamples`` times, take the statistic of each resample, and report the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. Deterministic given ``seed``.
"""

from __future__ import annotations

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


def error_bars(estimates: Sequence[Estimate]) -> dict:
    """Plotly ``error_y`` (or ``error_x``) of asymmetric intervals: from each mean up to its high and down to its
    low bound."""
    return dict(type="data", symmetric=False, array=[e.high - e.mean for e in estimates],
                arrayminus=[e.mean - e.low for e in estimates])
