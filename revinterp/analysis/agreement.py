"""Agreement of estimated per-site effects with exact ones: does an approximation rank and size sites right?

Syed et al. (2023, "Attribution Patching Outperforms Automated Circuit Discovery") and Nanda (2023,
"Attribution patching: activation patching at industrial scale") judge attribution patching by how well it
ranks sites against activation patching. :func:`attribution_agreement` reports the rank correlation
(Spearman), the top-k recall and the calibration slope of ``estimate ~ intercept + slope * exact`` (1 when
the estimate has the right size, below 1 when it underestimates);
:meth:`revinterp.analysis.effects.SiteEffects.agreement_with` compares two results over the same sites.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Agreement:
    """How well per-site estimated effects agree with exact ones (e.g. attribution vs activation patching).

    Attributes:
        spearman: rank correlation of the effects over the compared sites (ties get average ranks).
        pearson: linear correlation over the same sites.
        top_k_recall: fraction of the ``k`` sites with the largest exact ``|effect|`` that are also among
            the ``k`` largest estimated ``|effect|``.
        k: the ``k`` used.
        slope: calibration slope, least squares ``estimate ~ intercept + slope * exact``: 1 when the
            estimate has the right size, below 1 when it underestimates.
        intercept: the intercept of that fit.
        n_sites: number of sites compared.
        n_trivial: sites left out because both effects were zero (see ``exclude_trivial``).
        disagreements: ``(site, estimate, exact)`` of the sites farthest from the calibration line
            (largest ``|estimate - intercept - slope * exact|``), worst first.
        sites: the compared sites' names, in order.
        estimates: their estimated mean effects.
        exacts: their exact mean effects.
    """

    spearman: float
    pearson: float
    top_k_recall: float
    k: int
    slope: float
    intercept: float
    n_sites: int
    n_trivial: int
    disagreements: tuple[tuple[str, float, float], ...]
    sites: tuple[str, ...] = ()
    estimates: tuple[float, ...] = ()
    exacts: tuple[float, ...] = ()

    def to_frame(self):
        """One row per compared site: ``site``, ``estimate``, ``exact`` and ``residual`` from the calibration line."""
        import pandas as pd

        frame = pd.DataFrame({"site": list(self.sites), "estimate": list(self.estimates),
                              "exact": list(self.exacts)})
        frame["residual"] = frame["estimate"] - self.intercept - self.slope * frame["exact"]
        return frame

    def plot(self):
        """Plotly scatter of estimate against exact effect per site, with the identity and the calibration line."""
        import plotly.graph_objects as go

        low, high = min(*self.exacts, *self.estimates), max(*self.exacts, *self.estimates)
        fig = go.Figure()
        fig.add_scatter(x=list(self.exacts), y=list(self.estimates), mode="markers", text=list(self.sites),
                        name="sites")
        fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="estimate = exact",
                        line=dict(dash="dot", color="black"))
        fig.add_scatter(x=[low, high], y=[self.intercept + self.slope * low, self.intercept + self.slope * high],
                        mode="lines", name=f"calibration (slope {self.slope:.2f})")
        fig.update_layout(title=f"Estimated against exact effect per site: Spearman {self.spearman:.3f}, "
                                f"top-{self.k} recall {self.top_k_recall:.2f} ({self.n_sites} sites)",
                          xaxis_title="exact effect", yaxis_title="estimated effect")
        return fig

    def summary(self) -> str:
        lines = [
            f"agreement over {self.n_sites} sites ({self.n_trivial} trivial left out): Spearman {self.spearman:.3f}, "
            f"Pearson {self.pearson:.3f}, top-{self.k} recall {self.top_k_recall:.2f}, "
            f"calibration slope {self.slope:.3f} (intercept {self.intercept:+.3f})",
            "  largest disagreements (site, estimate, exact):",
        ]
        lines += [f"    {site:<24}{est:+9.3f}{exact:+9.3f}" for site, est, exact in self.disagreements]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "spearman": self.spearman, "pearson": self.pearson, "top_k_recall": self.top_k_recall, "k": self.k,
            "slope": self.slope, "intercept": self.intercept, "n_sites": self.n_sites, "n_trivial": self.n_trivial,
            "disagreements": [list(d) for d in self.disagreements],
        }


def attribution_agreement(
    estimate_values: Float[Tensor, "*site"],
    exact_values: Float[Tensor, "*site"],
    *,
    labels: Sequence[str] | None = None,
    k: int = 5,
    exclude_trivial: bool = True,
    rtol: float = 1e-6,
) -> Agreement:
    """Agreement of estimated per-site mean effects with exact ones: rank correlation, top-k recall, calibration.

    Syed et al. (2023) and Nanda (2023) judge attribution patching by how well it ranks sites against
    activation patching; the calibration slope says whether its magnitudes can be read as effects.

    Args:
        estimate_values: mean estimated effect per site (any shape; flattened).
        exact_values: mean exact effect per site, same shape.
        labels: one name per site in flattened order (e.g. ``SiteEffects.site_labels()``);
            default ``"site {i}"``.
        k: sites for the top-k recall and the disagreement list.
        exclude_trivial: leave out sites where both effects are zero (patches that change nothing, such
            as positions where clean and corrupted tokens agree, or positions the answer cannot read);
            their tied ranks would inflate the rank correlation.
        rtol: what counts as zero, relative to the largest ``|effect|`` of either tensor.

    Returns:
        An :class:`Agreement`.
    """
    if estimate_values.shape != exact_values.shape:
        raise ValueError(
            f"estimate has shape {tuple(estimate_values.shape)} but exact {tuple(exact_values.shape)}; "
            "expected the same sites"
        )
    if k < 1:
        raise ValueError(f"k={k}: expected a positive integer")
    est = estimate_values.detach().flatten().double().cpu()
    exact = exact_values.detach().flatten().double().cpu()
    names = list(labels) if labels is not None else [f"site {i}" for i in range(est.numel())]
    if len(names) != est.numel():
        raise ValueError(f"{len(names)} labels for {est.numel()} sites; expected one label per site")
    keep = torch.ones_like(est, dtype=torch.bool)
    if exclude_trivial:
        atol = rtol * max(est.abs().max().item(), exact.abs().max().item())
        keep = (est.abs() > atol) | (exact.abs() > atol)
    n_trivial = int((~keep).sum())
    est, exact = est[keep], exact[keep]
    names = [n for n, kept in zip(names, keep.tolist()) if kept]
    n = est.numel()
    if n < 2:
        raise ValueError(f"{n} non-trivial site(s) to compare; expected at least 2")
    k = min(k, n)
    top_exact = set(exact.abs().argsort(descending=True)[:k].tolist())
    top_est = set(est.abs().argsort(descending=True)[:k].tolist())
    x_centred = exact - exact.mean()
    var = (x_centred**2).sum().item()
    slope = (x_centred * (est - est.mean())).sum().item() / var if var > 0 else math.nan
    intercept = est.mean().item() - slope * exact.mean().item()
    off = (est - intercept - slope * exact).abs()
    worst = off.argsort(descending=True)[:k].tolist() if not math.isnan(slope) else []
    return Agreement(
        spearman=_pearson(_average_ranks(est), _average_ranks(exact)), pearson=_pearson(est, exact),
        top_k_recall=len(top_exact & top_est) / k, k=k, slope=slope, intercept=intercept, n_sites=n,
        n_trivial=n_trivial, disagreements=tuple((names[i], est[i].item(), exact[i].item()) for i in worst),
        sites=tuple(names), estimates=tuple(est.tolist()), exacts=tuple(exact.tolist()),
    )


def _average_ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks 1..n, tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def _pearson(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return (x * y).sum().item() / denom if denom > 0 else math.nan
