"""Node-level patching effects: one result type for exact activation patching and its estimates.

:class:`SiteEffects` holds, for every site of one component (:mod:`revinterp.analysis.sites`), the
per-example metric with that site patched. Exact TransformerLens patching, the fast exact path
(:func:`revinterp.analysis.patching.patch_sweeps`) and attribution patching
(:func:`revinterp.analysis.attribution_patching.attribution_patch`) all return it, so their results read,
tabulate and plot alike and can be compared site by site (:meth:`SiteEffects.agreement_with`).

With clean/corrupted prompt pairs there are two directions (Heimersheim & Nanda 2024, "How to use and
interpret activation patching"; Zhang & Nanda 2024, "Towards Best Practices of Activation Patching"):

- **denoising**: clean activations patched into the corrupted run. A site that restores the
  answer is *sufficient* (together with what it can reach) to carry the fact.
- **noising**: corrupted activations patched into the clean run. A site whose patch destroys the
  answer is *necessary*.

Every result is normalized the same way in both directions (:attr:`SiteEffects.normalized`)::

    normalized = (mean patched - mean corrupted) / (mean clean - mean corrupted)

so 0 is the corrupted run and 1 the clean run: denoising effects rise from 0, noising effects fall
from 1 (1 - normalized is the share of the effect a noising patch destroys).

:meth:`SiteEffects.to_transformer_lens` gives the same values as TransformerLens's own
``transformer_lens.patching.PatchingResult``, for its statistics (``stderr``, ``permutation_pvalue``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.agreement import Agreement, attribution_agreement
from revinterp.analysis.metrics import normalize
from revinterp.analysis.prompts import PromptPairs
from revinterp.analysis.sites import Site, sites_in_grid
from revinterp.stats import Estimate, bootstrap_ci, normalized_ci

EFFECT_METHODS = ("fast", "transformer_lens", "attribution")
"""How a :class:`SiteEffects` was computed: the fast exact path, TransformerLens's ``get_act_patch_*``, or
attribution patching (a first-order estimate)."""


def receiving_and_source(
    pairs: PromptPairs, direction: str
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """(receiving tokens, source tokens): the run that is patched and the run the patch comes from.

    Denoising patches the clean run's activations into the corrupted run; noising the reverse.
    """
    if direction == "denoising":
        return pairs.corrupted, pairs.clean
    return pairs.clean, pairs.corrupted


@dataclass(frozen=True)
class SiteEffects:
    """Per-example patched metric for every site of one component.

    ``values[*site, i]`` is the metric of example ``i`` with that site patched (for ``method="attribution"``,
    its first-order estimate); ``clean`` and ``corrupted`` are the unpatched runs' metrics. In the denoising
    direction the patched run is the corrupted one (its unpatched value is ``corrupted``), in the noising
    direction the clean one. See the module docstring for the normalization.

    Attributes:
        values: patched metric per site and example; site axes named by ``axes``.
        clean: the metric on the clean prompts.
        corrupted: the metric on the corrupted prompts.
        axes: the site axes, e.g. ``("layer", "pos")`` (:data:`revinterp.analysis.sites.COMPONENTS`).
        component: the patched component.
        direction: ``"denoising"`` or ``"noising"``.
        metric: one of :data:`revinterp.analysis.metrics.METRICS`.
        labels: the position labels of the prompts (e.g. ``("<bos>", "subject", "->")``).
        method: one of :data:`EFFECT_METHODS`.

    Example:
        >>> result = patch_sweep(model, pairs, "resid_pre")                  # doctest: +SKIP
        >>> result.normalized                                                # [layer, pos]  # doctest: +SKIP
        >>> print(result.summary())                                          # doctest: +SKIP
    """

    values: Float[Tensor, "*site batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    axes: tuple[str, ...]
    component: str
    direction: str
    metric: str
    labels: tuple[str, ...]
    method: str

    def __post_init__(self):
        if self.values.ndim != len(self.axes) + 1:
            raise ValueError(f"values have {self.values.ndim} axes; expected the site axes {self.axes} and batch")
        if self.method not in EFFECT_METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {EFFECT_METHODS}")

    @property
    def n(self) -> int:
        return self.values.shape[-1]

    @property
    def unpatched(self) -> Float[Tensor, " batch"]:
        """The metric of the run that is patched (``corrupted`` when denoising, ``clean`` when noising)."""
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def normalized_unpatched(self) -> float:
        """Normalized value of the unpatched run: 0 when denoising, 1 when noising."""
        return 0.0 if self.direction == "denoising" else 1.0

    @property
    def gap(self) -> float:
        """``mean clean - mean corrupted``: the normalization's denominator."""
        return (self.clean.double().mean() - self.corrupted.double().mean()).item()

    @property
    def mean(self) -> Float[Tensor, "*site"]:
        """Mean patched metric per site."""
        return self.values.mean(-1)

    @property
    def effect(self) -> Float[Tensor, "*site"]:
        """Mean change the patch makes, ``mean_i (patched_i - unpatched_i)``, in metric units (exactly 0 where
        the patch changes nothing)."""
        return (self.values - self.unpatched).mean(-1)

    @property
    def normalized(self) -> Float[Tensor, "*site"]:
        """``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` per site (a ratio of means)."""
        return normalize(self.values.mean(-1), self.clean.mean(), self.corrupted.mean())

    @property
    def normalized_per_example(self) -> Float[Tensor, "*site batch"]:
        """``(patched_i - corrupted_i) / (clean_i - corrupted_i)``: unstable where an example's own gap is small."""
        return normalize(self.values, self.clean, self.corrupted)

    def sites(self) -> list[Site]:
        """Every site, in the order of ``values.reshape(-1, batch)``."""
        return sites_in_grid(self.component, self.values.shape[:-1])

    def site_labels(self) -> list[str]:
        """:meth:`Site.label` of every site, in :meth:`sites` order."""
        return [site.label(self.labels) for site in self.sites()]

    def estimates(
        self, *, normalized: bool = True, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
    ) -> list[Estimate]:
        """Mean per site with its percentile-bootstrap interval over examples, in :meth:`sites` order.

        ``normalized=True``: :attr:`normalized` with a paired bootstrap of the ratio of means
        (examples resampled, patched, clean and corrupted means recomputed per resample), so a site
        that reproduces the clean or the corrupted run on every example gets exactly [1, 1] or
        [0, 0]. ``normalized=False``: the mean patched metric (:func:`revinterp.stats.bootstrap_ci`).
        """
        flat = self.values.reshape(-1, self.n)
        if normalized:
            return normalized_ci(flat, self.clean, self.corrupted, confidence=confidence,
                                 n_resamples=n_resamples, seed=seed)
        return [
            bootstrap_ci(row, n_resamples=n_resamples, confidence=confidence, seed=seed) for row in flat.double().cpu()
        ]

    def ci(
        self, *, normalized: bool = True, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
    ) -> tuple[Float[Tensor, "*site"], Float[Tensor, "*site"]]:
        """Lower and upper bootstrap bounds per site (see :meth:`estimates`), shaped like :attr:`mean`."""
        est = self.estimates(normalized=normalized, confidence=confidence, n_resamples=n_resamples, seed=seed)
        shape = self.values.shape[:-1]
        low = torch.tensor([e.low for e in est], dtype=torch.float64).reshape(shape)
        high = torch.tensor([e.high for e in est], dtype=torch.float64).reshape(shape)
        return low, high

    def top(self, k: int = 5, *, by: str = "abs") -> list[tuple[Site, float]]:
        """The ``k`` sites with the largest normalized effect (``by="abs"``: largest change from the
        unpatched run in either direction; ``"max"``: highest normalized value)."""
        norm = self.normalized.flatten()
        score = (norm - self.normalized_unpatched).abs() if by == "abs" else norm
        order = torch.argsort(score, descending=True, stable=True)[:k].tolist()
        sites = self.sites()
        return [(sites[i], norm[i].item()) for i in order]

    def agreement_with(self, exact: SiteEffects | Tensor, *, k: int = 5) -> Agreement:
        """:func:`~revinterp.analysis.agreement.attribution_agreement` of these effects (e.g. attribution
        patching's estimates) with an exact sweep over the same sites.

        Args:
            exact: the exact sweep's result, or its ``values`` tensor ``[*site, batch]`` of patched metrics
                on the same pairs.
            k: for the top-k recall and the disagreement list.
        """
        exact_values = exact if isinstance(exact, Tensor) else exact.values
        if exact_values.shape != self.values.shape:
            raise ValueError(
                f"exact values have shape {tuple(exact_values.shape)}; expected {tuple(self.values.shape)} "
                f"({self.component}: {self.axes} x batch)"
            )
        exact_effect = (exact_values.to(self.values.device) - self.unpatched).mean(-1)
        return attribution_agreement(self.effect, exact_effect, labels=self.site_labels(), k=k)

    def to_frame(self, *, per_example: bool = False, confidence: float = 0.95):
        """One row per site: component, method, direction, metric, the site (``layer``, ``pos``, ``pos_label``,
        ``head``; ``None`` where the component has no such axis), ``mean``, ``effect``, ``normalized`` with its
        interval (``ci_low``, ``ci_high``, :meth:`estimates`) and ``n``.

        ``per_example=True``: long form, one row per (site, example) with the ``value`` (patched metric) and
        the example's ``clean`` and ``corrupted`` metric.
        """
        import numpy as np
        import pandas as pd

        sites = self.sites()
        first = dict(component=self.component, method=self.method, direction=self.direction, metric=self.metric)
        layer = [s.layer for s in sites]
        pos = pd.array([s.pos for s in sites], dtype="Int64")
        pos_label = [self.labels[s.pos] if s.pos is not None else None for s in sites]
        head = pd.array([s.head for s in sites], dtype="Int64")
        if per_example:
            n_sites, n = len(sites), self.n
            repeat = np.repeat(np.arange(n_sites), n)
            return pd.DataFrame(dict(
                **first, layer=np.asarray(layer)[repeat], pos=pos[repeat], pos_label=np.asarray(pos_label)[repeat],
                head=head[repeat], example=np.tile(np.arange(n), n_sites),
                value=self.values.detach().reshape(n_sites, n).flatten().cpu().numpy(),
                clean=np.tile(self.clean.detach().cpu().numpy(), n_sites),
                corrupted=np.tile(self.corrupted.detach().cpu().numpy(), n_sites),
            ))
        est = self.estimates(confidence=confidence)
        return pd.DataFrame(dict(
            **first, layer=layer, pos=pos, pos_label=pos_label, head=head,
            mean=self.mean.detach().flatten().cpu().tolist(), effect=self.effect.detach().flatten().cpu().tolist(),
            normalized=[e.mean for e in est], ci_low=[e.low for e in est], ci_high=[e.high for e in est], n=self.n,
        ))

    def to_transformer_lens(self):
        """The same values as a ``transformer_lens.patching.PatchingResult``, for TransformerLens's statistics.

        ``reduced=False`` (per-example values ``[*site, batch]``), ``baseline`` the unpatched run's metric
        (:attr:`unpatched`), ``axis_names`` the site axes and ``index_df`` one row per site in :meth:`sites`
        order. Its ``mean()`` is :attr:`mean`, ``effect().mean(-1)`` is :attr:`effect`; ``stderr()``,
        ``bootstrap_ci()`` and ``permutation_pvalue()`` (sign-flip test that a site's mean effect is zero) work
        on it. When denoising, its ``normalized(self.clean)`` is :attr:`normalized_per_example`.

        Example:
            >>> tl = patch_sweep(model, pairs, "attn_out").to_transformer_lens()   # doctest: +SKIP
            >>> tl.permutation_pvalue()                                             # [layer, pos]  # doctest: +SKIP
        """
        from transformer_lens.patching import PatchingResult, make_df_from_ranges

        return PatchingResult(
            values=self.values, axis_names=list(self.axes),
            index_df=make_df_from_ranges(list(self.values.shape[:-1]), list(self.axes)),
            metric_names=[self.metric], reduced=False, baseline=self.unpatched,
        )

    def plot(self):
        """Plotly heatmap of the normalized effect: layers x positions (labelled with the prompt's
        position labels), layers x heads, or one layers x positions panel per head."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        norm = self.normalized.detach().cpu().numpy()
        layers = [f"L{i}" for i in range(norm.shape[0])]
        positions = [f"{p}: {lab}" for p, lab in enumerate(self.labels)]
        heat = dict(colorscale="RdBu", zmid=self.normalized_unpatched, colorbar=dict(title="normalized"))
        title = f"{self.component} {self._what} ({self.direction}, {self.metric}; n={self.n})"
        if self.axes == ("layer", "pos", "head"):
            n_heads = norm.shape[2]
            fig = make_subplots(
                rows=1, cols=n_heads, shared_yaxes=True, subplot_titles=[f"H{h}" for h in range(n_heads)]
            )
            for h in range(n_heads):
                fig.add_trace(
                    go.Heatmap(z=norm[:, :, h], x=positions, y=layers, showscale=h == 0, zmin=norm.min(),
                               zmax=norm.max(), **heat),
                    row=1, col=h + 1,
                )
        else:
            x = positions if self.axes[1] == "pos" else [f"H{h}" for h in range(norm.shape[1])]
            fig = go.Figure(go.Heatmap(z=norm, x=x, y=layers, **heat))
            fig.update_xaxes(title_text=self.axes[1])
        fig.update_yaxes(title_text="layer", autorange="reversed")
        fig.update_layout(title=title)
        return fig

    def summary(self, k: int = 5) -> str:
        """Baselines and the ``k`` sites of largest effect with 95 % intervals."""
        clean, corrupted = bootstrap_ci(self.clean), bootstrap_ci(self.corrupted)
        lines = [
            f"{self.component} {self._what}, {self.direction}, metric {self.metric}, {self.n} prompt pairs",
            f"clean {clean}   corrupted {corrupted}   (normalized: 0 = corrupted, 1 = clean)",
        ]
        sites = self.sites()
        est = self.estimates()
        for site, _ in self.top(k):
            e = est[sites.index(site)]
            lines.append(f"  {site.label(self.labels):<32} {e}")
        return "\n".join(lines)

    @property
    def _what(self) -> str:
        if self.method == "attribution":
            return "attribution patching (first-order estimate)"
        return "activation patching"
