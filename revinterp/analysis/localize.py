"""Causal localization: the smallest set of sites whose joint restoration recovers the clean answer.

Ranking single sites by their patching effect (:func:`revinterp.analysis.patching.patch_sweeps`) is not
yet a localization: effects overlap and interact. :func:`localize` ranks every site by its own denoising
effect and restores the top ones *together* (:func:`revinterp.analysis.patching.joint_patch`,
downstream activations recomputed) until the measured recovered fraction reaches a target (Meng et al.
2022; Heimersheim & Nanda 2024)::

    recovered(S) = (mean metric with S restored - mean corrupted) / (mean clean - mean corrupted)

What is chosen on data is measured on other data: by default the sites are ranked and chosen on one random half
of the prompt pairs and the reported recovery is measured on the other half. Where the clean-corrupted gap is a
small fraction of a reference gap (e.g. held-out reverse prompts against seen ones), the recovered fraction is a
ratio of two noises and is not reported (``recovered`` is None, "n/a" in the summary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.metrics import metric_values
from revinterp.analysis.patching import joint_patch, patch_sweeps
from revinterp.analysis.prompts import PromptPairs
from revinterp.analysis.sites import Site
from revinterp.stats import Estimate, normalized_ci


@dataclass(frozen=True)
class Localization:
    """Where the clean answer is carried: sites ranked by their own denoising effect, and the
    smallest prefix of that ranking whose joint restoration recovers ``target`` of the clean metric.

    ``curve[k - 1]`` is the normalized metric (0 corrupted, 1 clean) *measured* on the discovery pairs
    (those the sites were chosen on) by patching the first ``k`` chosen sites together into the
    corrupted run. ``joint``, ``clean`` and ``corrupted`` are the per-example metrics on the evaluation
    pairs (the other half; the same pairs when ``n_discovery == n_evaluation`` is not held out), from which
    :attr:`recovered` is measured.
    """

    sites: tuple[Site, ...]
    effects: Float[Tensor, " site"]
    effects_low: Float[Tensor, " site"]
    effects_high: Float[Tensor, " site"]
    chosen: tuple[Site, ...]
    curve: Float[Tensor, " step"]
    joint: Float[Tensor, " batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    target: float
    metric: str
    labels: tuple[str, ...]
    n_discovery: int = 0
    held_out: bool = True
    reference_gap: float | None = None
    min_gap_fraction: float = 0.1

    @property
    def n_evaluation(self) -> int:
        return len(self.clean)

    @property
    def gap(self) -> float:
        """Mean clean minus mean corrupted metric on the evaluation pairs: the normalization's denominator."""
        return (self.clean.double().mean() - self.corrupted.double().mean()).item()

    @property
    def normalizable(self) -> bool:
        """Whether :attr:`gap` is at least ``min_gap_fraction`` of ``|reference_gap|`` (always, without one)."""
        return self.reference_gap is None or abs(self.gap) >= self.min_gap_fraction * abs(self.reference_gap)

    @property
    def recovered(self) -> float | None:
        """Normalized metric on the evaluation pairs with every chosen site restored (0 when none is chosen);
        None where the gap is too small to normalize."""
        if not self.normalizable:
            return None
        if not self.chosen:
            return 0.0
        return ((self.joint.double().mean() - self.corrupted.double().mean()) / self.gap).item()

    @property
    def reached(self) -> bool:
        return self.recovered is not None and self.recovered >= self.target

    def recovered_ci(self, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate | None:
        """:attr:`recovered` with a paired bootstrap interval over the evaluation pairs (ratio of means resampled);
        None where the gap is too small to normalize."""
        if not self.normalizable:
            return None
        return normalized_ci(self.joint[None], self.clean, self.corrupted, confidence=confidence,
                             n_resamples=n_resamples, seed=seed)[0]

    def to_frame(self):
        """One row per ranked site: its own effect with interval, and (for chosen sites) the joint
        recovery once it is added."""
        import pandas as pd

        step = {site: k for k, site in enumerate(self.chosen)}
        rows = []
        for rank, site in enumerate(self.sites):
            k = step.get(site)
            rows.append(dict(
                rank=rank, site=site.label(self.labels), component=site.component, layer=site.layer, pos=site.pos,
                head=site.head, effect=float(self.effects[rank]), ci_low=float(self.effects_low[rank]),
                ci_high=float(self.effects_high[rank]), chosen=k is not None,
                joint_recovered=float(self.curve[k]) if k is not None else None,
            ))
        return pd.DataFrame(rows)

    def plot(self):
        """Plotly bars: the recovered fraction measured after each chosen site is added (one bar per step, so a
        single chosen site is a single bar), with the target marked."""
        import plotly.graph_objects as go

        labels = [f"+{s.label(self.labels)}" for s in self.chosen]
        fig = go.Figure(go.Bar(x=labels, y=self.curve.tolist(), hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
        fig.add_hline(y=self.target, line_dash="dash", annotation_text=f"target {self.target:g}")
        measured = (f"; on the {self.n_evaluation} other pairs: {self.recovered:.3f}" if self.held_out
                    and self.recovered is not None else "")
        fig.update_layout(
            title=f"Joint restoration of the top sites ({self.metric}, chosen on n={self.n_discovery}{measured})",
            xaxis=dict(title="sites restored together (in order of own effect)", type="category"),
            yaxis=dict(title="recovered fraction (normalized)",
                       range=[min([0.0, *self.curve.tolist()]), max([1.05, *self.curve.tolist()])]),
        )
        return fig

    def summary(self) -> str:
        est = self.recovered_ci()
        where = (f"chosen on {self.n_discovery} prompt pairs, measured on {self.n_evaluation} others" if self.held_out
                 else f"chosen and measured on the same {self.n_evaluation} prompt pairs")
        recovered = (f"{est}" if est is not None else
                     f"n/a (gap {self.gap:.3g} under {self.min_gap_fraction:g} of the reference gap "
                     f"{self.reference_gap:.3g}: too small to normalize)")
        lines = [
            f"localization ({self.metric}; {where}): {len(self.chosen)} site(s) recover {recovered} of the clean "
            f"effect (target {self.target:g}, {'reached' if self.reached else 'NOT reached'})",
        ]
        for k, site in enumerate(self.chosen):
            rank = self.sites.index(site)
            lines.append(
                f"  +{site.label(self.labels):<32} own {self.effects[rank]:.3f} "
                f"[{self.effects_low[rank]:.3f}, {self.effects_high[rank]:.3f}]  joint {self.curve[k]:.3f}"
            )
        return "\n".join(lines)


def localize(
    model,
    pairs: PromptPairs,
    *,
    target: float = 0.8,
    components: Sequence[str] = ("attn_out", "mlp_out", "head_out_by_pos"),
    metric: str = "logit_diff",
    max_sites: int | None = None,
    method: str = "fast",
    held_out: bool = True,
    seed: int = 0,
    reference_gap: float | None = None,
    min_gap_fraction: float = 0.1,
) -> Localization:
    """Rank sites by their own denoising effect and restore them greedily until ``target`` is recovered.

    Causal localization in the sense of Meng et al. (2022) and Heimersheim & Nanda (2024): every
    site of ``components`` is ranked by its normalized denoising effect (clean activation patched
    into the corrupted run; bootstrap intervals over examples); sites with a positive effect are
    then added in that order, and after each addition all chosen sites are restored *together*
    (:func:`joint_patch`) and the recovered fraction is measured, until it reaches ``target`` (or
    the candidates, or ``max_sites``, run out). A head's output at a (layer, position) whose whole
    attention output is already chosen is skipped (it is restored already).

    Args:
        model: an eval-mode bridge.
        pairs: clean/corrupted prompt pairs.
        target: recovered fraction to reach, in (0, 1].
        components: components whose sites are candidates (:data:`~revinterp.analysis.sites.COMPONENTS`).
        metric: the metric (:data:`revinterp.analysis.metrics.METRICS`).
        max_sites: stop after this many sites.
        method: how the single-site sweeps are computed (:data:`~revinterp.analysis.patching.PATCH_METHODS`).
        held_out: choose the sites on one random half of the pairs (:meth:`PromptPairs.halves`) and measure the
            recovery on the other half (needs 4 pairs); ``False`` chooses and measures on the same pairs.
        seed: the seed of the split into halves.
        reference_gap: a clean-corrupted gap to compare with (e.g. the seen-reverse gap for held-out reverse
            prompts); where the evaluation gap is under ``min_gap_fraction`` of it, no recovery is reported.
        min_gap_fraction: that fraction.

    Example:
        >>> loc = localize(run.model, pairs, target=0.8)                       # doctest: +SKIP
        >>> loc.recovered, [s.label(pairs.labels) for s in loc.chosen]         # doctest: +SKIP
    """
    if not 0 < target <= 1:
        raise ValueError(f"target={target}: expected a fraction in (0, 1]")
    if max_sites is not None and max_sites < 1:
        raise ValueError(f"max_sites={max_sites}: expected at least 1")
    if not 0 <= min_gap_fraction < 1:
        raise ValueError(f"min_gap_fraction={min_gap_fraction}: expected a fraction in [0, 1)")
    discovery, evaluation = pairs.halves(seed) if held_out else (pairs, pairs)
    sweeps = patch_sweeps(model, discovery, components, metric=metric, method=method)
    sites: list[Site] = []
    estimates: list[Estimate] = []
    for result in sweeps.values():
        sites += result.sites()
        estimates += result.estimates()
    order = sorted(range(len(sites)), key=lambda i: -estimates[i].mean)
    sites = [sites[i] for i in order]
    estimates = [estimates[i] for i in order]
    first = next(iter(sweeps.values()))
    clean, corrupted = first.clean, first.corrupted
    gap = clean.double().mean() - corrupted.double().mean()
    chosen: list[Site] = []
    curve: list[float] = []
    joint = corrupted
    for site, est in zip(sites, estimates):
        if est.mean <= 0 or (max_sites is not None and len(chosen) >= max_sites):
            break
        if _covered(site, chosen):
            continue
        chosen.append(site)
        joint = joint_patch(model, discovery, chosen, metric=metric)
        curve.append(((joint.double().mean() - corrupted.double().mean()) / gap).item())
        if curve[-1] >= target:
            break
    if held_out:  # the chosen sites measured on the pairs they were not chosen on
        with torch.no_grad():
            clean, corrupted = (metric_values(metric, model(tokens)[:, -1], evaluation.clean_answer,
                                              evaluation.corrupted_answer)
                                for tokens in (evaluation.clean, evaluation.corrupted))
        joint = joint_patch(model, evaluation, chosen, metric=metric) if chosen else corrupted
    return Localization(
        sites=tuple(sites),
        effects=torch.tensor([e.mean for e in estimates], dtype=torch.float64),
        effects_low=torch.tensor([e.low for e in estimates], dtype=torch.float64),
        effects_high=torch.tensor([e.high for e in estimates], dtype=torch.float64),
        chosen=tuple(chosen), curve=torch.tensor(curve, dtype=torch.float64), joint=joint, clean=clean,
        corrupted=corrupted, target=target, metric=metric, labels=pairs.labels, n_discovery=len(discovery),
        held_out=held_out, reference_gap=reference_gap, min_gap_fraction=min_gap_fraction,
    )


def _covered(site: Site, chosen: Sequence[Site]) -> bool:
    """A head's output at (layer, pos) is already restored when the whole attention output there is."""
    return site.component == "head_out_by_pos" and any(
        c.component == "attn_out" and c.layer == site.layer and c.pos == site.pos for c in chosen
    )
