"""Patching and attribution side by side on several splits: does anything carry the answer where it was never trained?

Zhu et al. (2024) predict that nothing in the network carries ``A_i`` when it reads a held-out reverse prompt
``<bos> B_i <-``; the reverse prompts of pairs trained both ways (``reverse_seen``) are the positive control, where
a path must show. :func:`compare_splits` runs the localization analyses on each split's prompt pairs (clean
subject ``i`` against corrupted subject ``j`` of the same split, answers ``A_i`` and ``A_j``) and measures per pair,
in units of the logit difference ``logit(A_i) - logit(A_j)``:

- the **total effect** ``clean - corrupted``: what swapping the subject changes at all (for a single-token
  subject, also the denoising effect of ``resid_pre L0 @subject``);
- exact **activation patching** (denoising) at every site of
  :data:`~revinterp.analysis.sites.SWEEP_COMPONENTS`: the change ``patched - corrupted``;
- **direct logit attribution** of the clean logit difference to the embeddings, every head, every attention bias
  and every MLP (exact, on a compatibility-mode copy);
- **attribution patching**: the first-order estimate of the same patching effects.

Each effect gets a percentile-bootstrap interval over pairs and is *distinguishable from zero* when the interval
excludes 0. Sites whose patch changes no pair at all (a position before the subject, or one that cannot reach the
answer) are left out of the counts. With dozens of sites about ``1 - confidence`` of those with no effect still
exclude zero by chance, so the summary gives that expectation beside the count; with few pairs (under about ten)
percentile intervals are too narrow and the count is inflated further. Sites are nested (a head's output is part
of its layer's attention output, which flows into the next residual stream), so the counts are not independent
tests: one small effect is counted at every site it passes through. Where no path exists the total effect and
every site's effect scatter around zero with no consistent sign over seeds; read the held-out numbers against the
seen ones.

Example:
    >>> result = compare_splits(run, splits=("reverse_seen", "reverse_held_out"))             # doctest: +SKIP
    >>> print(result.summary())                                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from revinterp.analysis.attribution_patching import attribution_patch_components
from revinterp.analysis.checks import check_choice
from revinterp.analysis.dla import DirectLogitAttributionResult, direct_logit_attribution
from revinterp.analysis.effects import SiteEffects
from revinterp.analysis.patching import patch_sweeps
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.analysis.sites import SWEEP_COMPONENTS, Site, nested_groups
from revinterp.data import REVERSE_HELD_OUT, REVERSE_SEEN, FactSet
from revinterp.evaluation import model_device
from revinterp.models import unpack_run
from revinterp.stats import Equivalence, Estimate, bootstrap_ci, equivalence_test, error_bars, holm

INTERVENTION_METHODS = ("patching", "attribution", "dla")
"""Exact activation patching, attribution patching, direct logit attribution."""


def excludes_zero(estimate: Estimate) -> bool:
    """Whether the interval of ``estimate`` lies entirely above or below zero."""
    return not (estimate.low <= 0.0 <= estimate.high)


@dataclass(frozen=True)
class InterventionEffect:
    """One site's (or one attribution part's) effect on the logit difference, with its interval over pairs."""

    site: str
    estimate: Estimate
    trivial: bool  # the intervention changes no pair (exactly zero everywhere)
    p_value: float = 1.0  # two-sided one-sample t-test of a zero mean over pairs
    location: Site | None = None  # the patched site (None for attribution parts)

    @property
    def distinguishable(self) -> bool:
        return not self.trivial and excludes_zero(self.estimate)


@dataclass(frozen=True)
class SplitInterventions:
    """The interventions of :func:`compare_splits`, per split.

    Attributes:
        splits: the splits compared, in order.
        n_pairs: prompt pairs per split.
        total: the total effect (clean - corrupted logit difference) per split, with its interval.
        effects: per split and method (:data:`INTERVENTION_METHODS`), every site's effect in logit-difference units.
        patching: per split, the exact sweeps (``patch_sweeps``), per-example values kept.
        attribution: per split, the attribution-patching estimates of the same sweeps.
        dla: per split, the direct logit attribution of the clean logit difference.
        confidence: the intervals' confidence level.
    """

    splits: tuple[str, ...]
    n_pairs: dict[str, int]
    total: dict[str, Estimate]
    effects: dict[str, dict[str, tuple[InterventionEffect, ...]]]
    patching: dict[str, dict[str, SiteEffects]]
    attribution: dict[str, dict[str, SiteEffects]]
    dla: dict[str, DirectLogitAttributionResult]
    confidence: float = 0.95

    def total_values(self, split: str) -> torch.Tensor:
        """Per prompt pair of ``split``: the total effect ``clean - corrupted`` (float64)."""
        if split not in self.patching:
            raise KeyError(f"split {split!r} was not compared; expected one of {self.splits}")
        first = next(iter(self.patching[split].values()))
        return (first.clean - first.corrupted).double().cpu()

    def equivalence(self, split: str, reference: str, fraction: float = 0.05) -> Equivalence:
        """Two one-sided tests that the total effect on ``split`` is within ``fraction`` of the mean total effect on
        ``reference`` (the seen-reverse split: :func:`revinterp.stats.equivalence_test`), so that "no effect" is a
        claim of equivalence with a stated margin, not a failure to reject."""
        margin = fraction * abs(self.total[reference].mean)
        if not margin > 0:
            raise ValueError(f"the total effect on {reference!r} is {self.total[reference].mean}; it cannot set a "
                             "margin (expected a nonzero seen effect)")
        values = self.total_values(split)
        return equivalence_test(values if values.numel() > 1 else values.repeat(2), margin)

    def distinguishable(self, split: str, method: str = "patching") -> list[InterventionEffect]:
        """The sites of ``split`` whose effect interval excludes zero, largest ``|effect|`` first."""
        found = [e for e in self._effects(split, method) if e.distinguishable]
        return sorted(found, key=lambda e: -abs(e.estimate.mean))

    def largest(self, split: str, method: str = "patching", k: int = 5) -> list[InterventionEffect]:
        """The ``k`` sites of ``split`` with the largest mean ``|effect|``."""
        return sorted(self._effects(split, method), key=lambda e: -abs(e.estimate.mean))[:k]

    def n_groups(self, split: str, method: str = "patching") -> int:
        """How many nested groups (:func:`~revinterp.analysis.sites.nested_groups`) the distinguishable sites form:
        an effect that passes through several nested sites counts once. DLA parts are additive and never nest."""
        found = self.distinguishable(split, method)
        if any(e.location is None for e in found):
            return len(found)
        return len(nested_groups([e.location for e in found]))

    def n_holm(self, split: str, method: str = "patching") -> int:
        """Sites whose effect differs from zero after Holm's correction over the tested sites
        (:func:`revinterp.stats.holm` at ``1 - confidence``)."""
        tested = [e for e in self._effects(split, method) if not e.trivial]
        return sum(holm([e.p_value for e in tested], 1.0 - self.confidence))

    def n_tested(self, split: str, method: str = "patching") -> int:
        """Sites whose intervention changes at least one pair (those the counts are over)."""
        return sum(not e.trivial for e in self._effects(split, method))

    def _effects(self, split: str, method: str) -> tuple[InterventionEffect, ...]:
        if split not in self.effects:
            raise KeyError(f"split {split!r} was not compared; expected one of {self.splits}")
        check_choice("method", method, INTERVENTION_METHODS)
        return self.effects[split][method]

    def to_frame(self):
        """One row per (split, method, site): mean effect, interval, whether trivial and distinguishable;
        the total effect as method ``"total"``."""
        import pandas as pd

        rows = []
        for split in self.splits:
            t = self.total[split]
            rows.append(dict(split=split, method="total", site="clean - corrupted", mean=t.mean, ci_low=t.low,
                             ci_high=t.high, n=t.n, trivial=False, distinguishable=excludes_zero(t)))
            for method in INTERVENTION_METHODS:
                for e in self.effects[split][method]:
                    rows.append(dict(split=split, method=method, site=e.site, mean=e.estimate.mean,
                                     ci_low=e.estimate.low, ci_high=e.estimate.high, n=e.estimate.n,
                                     trivial=e.trivial, distinguishable=e.distinguishable))
        return pd.DataFrame(rows)

    def summary(self, k: int = 3) -> str:
        """Per split: the total effect, and per method how many sites are distinguishable from zero (against the
        count expected by chance) with the largest effects."""
        chance = 1.0 - self.confidence
        lines = [f"Interventions per split, effects on the logit difference with {100 * self.confidence:.0f} % "
                 "intervals over prompt pairs"]
        for split in self.splits:
            total = self.total[split]
            verdict = "distinguishable" if excludes_zero(total) else "indistinguishable"
            lines.append(f"{split} ({self.n_pairs[split]} pairs): total effect {total} ({verdict} from zero)")
            for method in INTERVENTION_METHODS:
                n = self.n_tested(split, method)
                found = self.distinguishable(split, method)
                top = ", ".join(f"{e.site} {e.estimate}" for e in self.largest(split, method, k))
                lines.append(f"  {method:<12} {len(found)} of {n} sites distinguishable from zero (about "
                             f"{chance * n:.1f} by chance) in {self.n_groups(split, method)} nested group(s), "
                             f"{self.n_holm(split, method)} after Holm's correction; largest: {top}")
        return "\n".join(lines)

    def plot(self, method: str = "patching", k: int = 12):
        """Plotly bars: the total effect and the ``k`` sites of largest ``|effect|`` (over all splits), one bar
        per split with its interval. Sites are matched by their place in the sweep, so splits whose prompts have
        different tokens at a position (``->`` against ``<-``) share a bar labelled with both."""
        import plotly.graph_objects as go

        per_split = [self._effects(split, method) for split in self.splits]
        n_sites = len(per_split[0])
        if any(len(effects) != n_sites for effects in per_split):
            raise ValueError(f"the splits {self.splits} have different sites (prompts of different lengths); plot "
                             "a SplitInterventions of one prompt length")
        size = [max(abs(effects[i].estimate.mean) for effects in per_split) for i in range(n_sites)]
        chosen = sorted(range(n_sites), key=lambda i: -size[i])[:k]
        names = [" | ".join(dict.fromkeys(effects[i].site for effects in per_split)) for i in chosen]
        fig = go.Figure()
        for split, effects in zip(self.splits, per_split):
            values = [self.total[split]] + [effects[i].estimate for i in chosen]
            fig.add_bar(x=["total (clean - corrupted)", *names], y=[v.mean for v in values], name=split,
                        error_y=error_bars(values))
        fig.update_layout(
            title=f"{method}: effect on the logit difference per split ({100 * self.confidence:.0f} % intervals "
                  "over prompt pairs)",
            yaxis_title="change of logit(answer) - logit(corrupted answer)", barmode="group",
        )
        return fig


def compare_splits(
    model_or_run,
    facts: FactSet | None = None,
    splits: Sequence[str] = (REVERSE_SEEN, REVERSE_HELD_OUT),
    *,
    tokenizer=None,
    components: Sequence[str] = SWEEP_COMPONENTS,
    max_pairs: int | None = None,
    prompt_length: int | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: bool = False,
) -> SplitInterventions:
    """Patching, attribution patching and direct logit attribution on each split's prompt pairs.

    Args:
        model_or_run: a :class:`~revinterp.models.LoadedRun` (``compare_splits(run)``), or a ``TransformerBridge``
            in eval mode with its ``facts``.
        facts: the fact set the model was trained on; only with a model, not with a run.
        splits: the splits to compare (each with at least two statements of one relation and prompt length).
        tokenizer: default the run's, or ``model.tokenizer``.
        components: the patched components (:data:`~revinterp.analysis.sites.SWEEP_COMPONENTS`).
        max_pairs: at most this many prompt pairs per split (:func:`make_prompt_pairs`).
        prompt_length: the prompt length to use where a split's prompts have several
            (:func:`~revinterp.analysis.prompts.make_prompt_pairs`).
        confidence: the intervals' confidence level.
        n_resamples: bootstrap resamples per interval.
        seed: the pairing's and the bootstrap's seed.
        progress: show a progress bar over the patched sites of each split.

    Returns:
        A :class:`SplitInterventions`.
    """
    if not splits:
        raise ValueError("splits is empty; expected at least one split name")
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    interval = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    n_pairs, total, effects, patching, attribution, dla = {}, {}, {}, {}, {}, {}
    for split in splits:
        pairs = make_prompt_pairs(facts, split, tokenizer, max_pairs=max_pairs, prompt_length=prompt_length,
                                  max_length=model.cfg.n_ctx, seed=seed).to(model_device(model))
        sweeps = patch_sweeps(model, pairs, components, progress=progress)
        estimates = attribution_patch_components(model, pairs, components)
        parts = direct_logit_attribution(model, pairs)
        n_pairs[split] = len(pairs)
        first = sweeps[components[0]]
        total[split] = bootstrap_ci((first.clean - first.corrupted).double().cpu(), **interval)
        effects[split] = {
            "patching": _site_effects(sweeps.values(), interval),
            "attribution": _site_effects(estimates.values(), interval),
            "dla": tuple(
                InterventionEffect(label, bootstrap_ci(row, **interval), bool(torch.all(row == 0)), _p_zero(row))
                for label, row in zip(parts.labels, parts.values.double().cpu())
            ),
        }
        patching[split], attribution[split], dla[split] = sweeps, estimates, parts
    return SplitInterventions(
        splits=tuple(splits), n_pairs=n_pairs, total=total, effects=effects, patching=patching,
        attribution=attribution, dla=dla, confidence=confidence,
    )


def _site_effects(results, interval: dict) -> tuple[InterventionEffect, ...]:
    """Per site of every result: the change ``patched - unpatched`` per pair, bootstrapped over pairs."""
    out = []
    for result in results:
        changes = (result.values - result.unpatched).reshape(-1, result.n).double().cpu()
        for site, row in zip(result.sites(), changes):
            out.append(InterventionEffect(site.label(result.labels), bootstrap_ci(row, **interval),
                                          bool(torch.all(row == 0)), _p_zero(row), site))
    return tuple(out)


def _p_zero(row: torch.Tensor) -> float:
    """Two-sided p-value of a zero mean (one-sample t-test over pairs); 1 for a row that is exactly zero."""
    from scipy.stats import ttest_1samp

    if row.numel() < 2 or torch.all(row == row[0]):
        return 1.0 if torch.all(row == 0) or row.numel() < 2 else 0.0
    return float(ttest_1samp(row.numpy(), 0.0).pvalue)
