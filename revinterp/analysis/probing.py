"""A linear probe that decodes classes it never saw: label-embedding classification of activations.

A linear probe (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes") reads a
property off activations with a linear map. A plain classifier has one free weight vector per class, so it has
nothing to score a class absent from its training data with. The probe here ties each class's weight vector to a
fixed vector ``t_a`` of the class that exists whether or not the probe saw it (label-embedding, or "zero-shot",
classification; Frome et al. 2013, DeViSE; Akata et al. 2016). With the activation ``x`` standardised to ``z``::

    score(x, a) = z^T W t_a          p(a | x) = softmax_a score(x, a)          prediction = argmax_a score

a multinomial logistic regression whose class weight vectors are ``W t_a``, fitted (:func:`fit_identity_probe`) by
full-batch L-BFGS on the cross-entropy over the training classes plus ``weight_decay / 2 * |W|^2``: strictly convex,
so a unique optimum, the same on every run. The targets are best centred over the candidates and scaled to unit
norm (:func:`normalize_targets`), so that no candidate wins on its length. The fitted ``W`` only moves along
differences of the training targets: the part of an unseen target outside their span is invisible to the probe.

Scoring: an example is right when its answer scores strictly above every other candidate (:func:`top1_correct`; a
tie is a miss), and :func:`answer_ranks` gives its rank with ties split. :mod:`revinterp.analysis.probes` applies
this probe to the answer entity of the fact statements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "DEFAULT_WEIGHT_DECAY", "IdentityProbe", "answer_ranks", "fit_identity_probe", "normalize_targets",
    "top1_correct",
]

DEFAULT_WEIGHT_DECAY = 0.3
"""The L2 penalty of :func:`fit_identity_probe` unless told otherwise. Chosen for selectivity on the seen pairs of
the 2-layer seed run (never on a test split), as Hewitt & Liang advise: from 0.001 to 1 the cross-validated accuracy
barely moved (1.00 at the relation token, 0.55-0.61 at the subject after layer 0) while the shuffled-label probe's
training accuracy (memorisation) fell from about 0.9 to 0.25-0.5; at 0.3 it is 0.4-0.8 and the cross-validated
accuracy is within 0.02 of its best."""


# == the probe ====================================================================================
@dataclass(frozen=True)
class IdentityProbe:
    """A fitted label-embedding probe: ``score(x, a) = ((x - mean) / scale)^T W t_a``.

    Attributes:
        weight: ``W``, from standardised features to the target space.
        mean: the training features' mean.
        scale: the training features' root-mean-square per dimension after centring (1 when they
            are constant, in which case every score is 0).
    """

    weight: Float[Tensor, "d_in d_target"]
    mean: Float[Tensor, " d_in"]
    scale: float

    def scores(
        self, features: Float[Tensor, "n d_in"], targets: Float[Tensor, "m d_target"]
    ) -> Float[Tensor, "n m"]:
        """Score of every candidate (row of ``targets``) for every example."""
        z = (features.to(self.weight) - self.mean) / self.scale
        return (z @ self.weight @ targets.to(self.weight).T).float()

    def predict(self, features: Float[Tensor, "n d_in"], targets: Float[Tensor, "m d_target"]) -> Int[Tensor, " n"]:
        """The arg-max candidate (row of ``targets``) per example."""
        return self.scores(features, targets).argmax(-1)


def fit_identity_probe(
    features: Float[Tensor, "n d_in"],
    labels: Int[Tensor, " n"],
    targets: Float[Tensor, "m d_target"],
    *,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    max_iter: int = 500,
    init: Tensor | None = None,
) -> IdentityProbe:
    """Fit ``W`` minimising ``mean_i CE(softmax_c z_i^T W t_c, labels_i) + weight_decay / 2 * |W|_F^2``.

    The softmax runs over the classes present in ``labels`` only: classes the probe never sees are not
    pushed down, so they can be decoded afterwards on an equal footing (:meth:`IdentityProbe.predict`
    with all of ``targets``). Features are centred and scaled to unit mean square per dimension, so
    ``weight_decay`` means the same at every layer. Full-batch L-BFGS with a strong-Wolfe line search in
    float64 from ``W = 0``; the objective is strictly convex, so the result does not depend on a seed.

    Args:
        features: one activation per example.
        labels: each example's class, a row index of ``targets``.
        targets: one fixed vector per class, best centred and unit-norm (:func:`normalize_targets`).
        weight_decay: the L2 penalty on ``W`` (must be positive).
        max_iter: L-BFGS iterations.
        init: the starting ``W`` (default 0), e.g. a probe fitted on most of the same examples, which a
            cross-validation fold starts from: the objective is strictly convex, so the start changes the iterations
            it takes, not the optimum.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> codes = normalize_targets(torch.randn(100, 16, generator=gen))    # one target per class
        >>> x = codes @ torch.randn(16, 32, generator=gen)                    # features: a linear image of it
        >>> probe = fit_identity_probe(x[:80], torch.arange(80), codes)      # classes 80..99 never seen
        >>> (probe.predict(x[80:], codes) == torch.arange(80, 100)).float().mean().item()
        1.0
    """
    n = features.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} examples; expected one label per example")
    if labels.numel() and (labels.min() < 0 or labels.max() >= targets.shape[0]):
        raise ValueError(f"labels must index the {targets.shape[0]} rows of targets; got values outside that")
    if not weight_decay > 0:
        raise ValueError(f"weight_decay={weight_decay}: expected a positive L2 penalty (it makes the fit unique)")
    classes, y = torch.unique(labels, return_inverse=True)
    if classes.numel() < 2:
        raise ValueError(f"{classes.numel()} distinct class(es) among the labels; expected at least 2 to fit a probe")
    x = features.detach().double()
    mean = x.mean(0)
    centred = x - mean
    scale = centred.pow(2).mean().sqrt().item()
    # Features equal up to float error (e.g. every prompt's <bos>) carry no signal: don't blow up the noise.
    if scale <= 1e-6 * max(x.pow(2).mean().sqrt().item(), 1e-30):
        centred, scale = torch.zeros_like(centred), 1.0
    z = centred / scale
    t = targets.detach().to(z)[classes]
    if init is not None and tuple(init.shape) != (z.shape[1], t.shape[1]):
        raise ValueError(f"init of shape {tuple(init.shape)}; expected {(z.shape[1], t.shape[1])} (d_in x d_target)")
    weight = (torch.zeros(z.shape[1], t.shape[1], dtype=z.dtype, device=z.device) if init is None
              else init.detach().to(z).clone())
    optimizer = torch.optim.LBFGS(
        [weight], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    onehot = F.one_hot(y, len(classes)).to(z)
    z_t = z.T / len(z)

    def closure():
        # the objective and its gradient by hand (no autograd graph per evaluation):
        # d/dW [mean_i CE(z_i W t^T, y_i) + wd/2 |W|^2] = z^T (softmax(z W t^T) - onehot(y)) t / n + wd W
        logits = z @ weight @ t.T
        logp = logits.log_softmax(-1)
        loss = -(logp * onehot).sum() / len(z) + 0.5 * weight_decay * weight.pow(2).sum()
        weight.grad = z_t @ ((logp.exp_() - onehot) @ t) + weight_decay * weight
        return loss

    optimizer.step(closure)
    return IdentityProbe(weight=weight.detach(), mean=mean, scale=scale)


def normalize_targets(vectors: Float[Tensor, "m d_target"]) -> Float[Tensor, "m d_target"]:
    """Centre target vectors over the candidates and scale each to unit norm.

    Scores are inner products, so without this a candidate with a long vector, or with a large share of a
    direction common to all candidates, would win on its length rather than its direction.
    """
    vectors = vectors - vectors.mean(0)
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# == scoring ======================================================================================
def top1_correct(scores: Float[Tensor, "*site n m"], answers: Int[Tensor, " n"]) -> Bool[Tensor, "*site n"]:
    """Whether each example's answer (an index into the last axis of ``scores``) scores strictly above every other
    candidate. A tie is no hit: constant activations, such as every prompt's ``<bos>``, score all candidates 0 and
    must not hit the first one by arg-max order."""
    answer_scores = scores.gather(-1, answers.expand(*scores.shape[:-1])[..., None])
    return (scores >= answer_scores).sum(-1) == 1


def answer_ranks(scores: Float[Tensor, "*site n m"], answers: Int[Tensor, " n"]) -> Float[Tensor, "*site n"]:
    """Each example's answer rank among the ``m`` candidates: 1 + the candidates scored above it + half the others
    tied with it (the expectation under a random tie-break), so uniform guessing has mean rank ``(m + 1) / 2``."""
    answer_scores = scores.gather(-1, answers.expand(*scores.shape[:-1])[..., None])
    above = (scores > answer_scores).sum(-1)
    tied_others = (scores == answer_scores).sum(-1) - 1
    return 1 + above + 0.5 * tied_others
