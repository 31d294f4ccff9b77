"""The one-layer-transformer side of Zhu et al. (2024), section 4, in its effective-weights form.

Tokens: entities ``A_0..A_{n-1}`` (ids ``0..n-1``), ``B_0..B_{n-1}`` (ids ``n..2n-1``), the relations ``->``
(id ``2n``) and ``<-`` (id ``2n+1``), and, with ``second_relation=True``, ``~`` (id ``2n+2``); ``M`` tokens in
all. Facts are the sequences ``A_i -> B_i`` (forward) and ``B_i <- A_i`` (reverse).

Model. In the framework of Tian et al. (2023) that the paper uses, the prompt ``s r`` has one contextual token
``s`` before the query token ``r``, so attention puts all its weight on ``s`` and the next-token logits are a
sum of effective weights: ``logit(b | s r) = Y[s, b] + Y[r, b]``. ``Y`` (M x M) is the token-to-next-token
logit map: row ``s`` is the subject's OV path, row ``r`` the relation token's own (direct) path. LayerNorm and
the attention logits are dropped: with a single contextual token the attention weights receive no gradient.

Training: ``Y(0) ~ N(0, init_std^2)`` entrywise; full-batch gradient descent on the answer-only mean
cross-entropy over the whole vocabulary, ``L(Y) = -(1/N) Σ_{(s, r, o)} log softmax(Y[s] + Y[r])[o]``, whose
gradient is ``∂L/∂Y[u] = (1/N) Σ_{(s, r, o): u ∈ {s, r}} (p(· | s r) - e_o)``. Only the rows of tokens that
occur in some prompt receive gradient. The subject of a held-out statement occurs in no training prompt (each
entity belongs to one pair), so its whole row, and the held-out entry ``Y[subject, answer]`` with it, stays at
its initial value bit for bit, while ``Y[A_i, B_i]`` of trained facts grows until ``p(B_i | A_i ->) -> 1``.
The relation row learns which tokens answer that relation in training; the held-out answer never does (its
pair's other direction is the held-out one), so ``Y[r, answer]`` is only pushed down and the held-out answer
ends below chance ``1/n``: the answer-side half of the starvation.

That exactness is the "embedding starvation" of the project's design notes. ``second_relation=True`` is the
control: every entity is also the subject of a fact ``e ~ e'`` (``e'`` another entity of the same alphabet, a
random derangement), so every row is trained. The held-out entry then moves, but only down: its row's facts
never have the held-out answer as their answer, so each step changes it by ``-(η/N) Σ p(answer | s ~) < 0``.
It even falls faster than the row's other entries: ``~`` prompts of subjects whose reverse is trained put mass
on their reverse answer, which pushes those answers down in the ``~`` row, and the held-out answers, exempt from
that, end with larger ``Y[~, answer]`` and hence larger ``p(answer | s ~)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["EffectiveWeightsRun", "effective_weights_gradient", "train_effective_weights"]


def effective_weights_gradient(
    weights: Float[Tensor, "vocab vocab"],
    statements: Int[Tensor, "example 3"],
) -> tuple[Float[Tensor, ""], Float[Tensor, "vocab vocab"]]:
    """Mean answer-only cross-entropy and its closed-form gradient with respect to ``Y``.

    For statements ``(s, r, o)``: ``L = -(1/N) Σ log p(o | s r)`` with ``p(· | s r) = softmax(Y[s] + Y[r])``, and
    ``∂L/∂Y[u] = (1/N) Σ_{statements with u ∈ {s, r}} (p(· | s r) - e_o)``; rows of tokens in no prompt are zero.
    """
    subject, relation, answer = statements.unbind(-1)
    log_p = torch.log_softmax(weights[subject] + weights[relation], dim=-1)
    rows = torch.arange(len(statements), device=statements.device)
    loss = -log_p[rows, answer].mean()
    residual = log_p.exp()
    residual[rows, answer] -= 1.0
    residual = residual / len(statements)
    grad = torch.zeros_like(weights)
    grad.index_add_(0, subject, residual)
    grad.index_add_(0, relation, residual)
    return loss, grad


@dataclass(frozen=True)
class EffectiveWeightsRun:
    """One gradient-descent run of the effective-weights model; curves have ``steps + 1`` entries.

    Attributes:
        tokens: token names, index = token id.
        train_statements: trained ``(subject, relation, answer)`` ids.
        held_out_statements: held-out ``(subject, relation, answer)`` ids (the untrained direction of a pair).
        both_pairs: pair indices trained in both directions.
        initial_weights, final_weights: ``Y(0)`` and ``Y(T)``.
        forward_entry: mean ``Y[A_i, B_i]`` over pairs whose forward ``A_i -> B_i`` is trained.
        seen_reverse_entry: mean ``Y[B_i, A_i]`` over pairs trained in both directions.
        held_out_entry: mean ``Y[subject, answer]`` over held-out statements (the weight a held-out answer needs).
        baseline_entry: mean ``Y[a, b]`` over cross-alphabet pairs ``(a, b)`` that are no fact.
        held_out_max_change: ``max |Y[s, o](t) - Y[s, o](0)|`` over held-out statements.
        train_loss: mean training cross-entropy.
        train_probability: mean ``p(answer | prompt)`` over training statements.
        held_out_probability: mean ``p(answer | prompt)`` over held-out statements.
    """

    n_pairs: int
    lr: float
    both_fraction: float
    seed: int
    second_relation: bool
    tokens: tuple[str, ...]
    train_statements: Int[Tensor, "train 3"]
    held_out_statements: Int[Tensor, "held 3"]
    both_pairs: Int[Tensor, " both"]
    initial_weights: Float[Tensor, "vocab vocab"]
    final_weights: Float[Tensor, "vocab vocab"]
    forward_entry: Float[Tensor, " step"]
    seen_reverse_entry: Float[Tensor, " step"]
    held_out_entry: Float[Tensor, " step"]
    baseline_entry: Float[Tensor, " step"]
    held_out_max_change: Float[Tensor, " step"]
    train_loss: Float[Tensor, " step"]
    train_probability: Float[Tensor, " step"]
    held_out_probability: Float[Tensor, " step"]

    @property
    def steps(self) -> int:
        return len(self.train_loss) - 1

    @property
    def chance(self) -> float:
        """Chance probability ``1/n`` of the answer among the entities of its alphabet."""
        return 1.0 / self.n_pairs

    _CURVES = ("forward_entry", "seen_reverse_entry", "held_out_entry", "baseline_entry", "held_out_max_change",
               "train_loss", "train_probability", "held_out_probability")

    def to_frame(self):
        """One row per step with every curve."""
        import pandas as pd

        data = {"step": list(range(self.steps + 1))}
        data.update({name: getattr(self, name).tolist() for name in self._CURVES})
        return pd.DataFrame(data)

    def plot(self):
        """Mean effective-weight entries over training: forward, seen reverse, held-out, baseline."""
        import plotly.graph_objects as go

        steps = list(range(self.steps + 1))
        fig = go.Figure()
        for name, label in [
            ("forward_entry", "forward Y[A_i, B_i] (trained)"),
            ("seen_reverse_entry", "reverse Y[B_i, A_i] (trained)"),
            ("held_out_entry", "held-out Y[subject, answer]"),
            ("baseline_entry", "baseline: non-fact cross-alphabet entries"),
        ]:
            fig.add_trace(go.Scatter(x=steps, y=getattr(self, name).tolist(), mode="lines", name=label))
        variant = ", every entity also a subject (~)" if self.second_relation else ""
        fig.update_layout(title=f"Effective weights, n={self.n_pairs} pairs{variant}",
                          xaxis_title="gradient step", yaxis_title="mean entry of Y")
        return fig

    def summary(self) -> str:
        return (
            f"effective weights n={self.n_pairs} steps={self.steps}"
            f"{' +second relation' if self.second_relation else ''}: "
            f"forward {self.forward_entry[0]:.3g} -> {self.forward_entry[-1]:.3g}, "
            f"seen reverse {self.seen_reverse_entry[0]:.3g} -> {self.seen_reverse_entry[-1]:.3g}, "
            f"held-out {self.held_out_entry[0]:.3g} -> {self.held_out_entry[-1]:.3g} "
            f"(max change {self.held_out_max_change.max():.3g}), "
            f"baseline {self.baseline_entry[0]:.3g} -> {self.baseline_entry[-1]:.3g}; "
            f"p(train answer) {self.train_probability[-1]:.3f}, p(held-out answer) "
            f"{self.held_out_probability[-1]:.3f} (chance {self.chance:.3f})"
        )


def _split(n_pairs: int, both_fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs trained in both directions, and for the others the trained direction (0 forward, 1 reverse)."""
    order = torch.randperm(n_pairs, generator=gen)
    n_both = round(both_fraction * n_pairs)
    both, single = order[:n_both].sort().values, order[n_both:].sort().values
    reverse_trained = torch.randint(2, (len(single),), generator=gen)
    return both, single, reverse_trained


def train_effective_weights(
    n_pairs: int,
    steps: int,
    lr: float,
    both_fraction: float = 0.7,
    seed: int = 0,
    *,
    init_std: float = 0.02,
    second_relation: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> EffectiveWeightsRun:
    """Train the effective weights ``Y`` on the seed experiment's split by full-batch gradient descent.

    ``Y(t+1) = Y(t) - η ∂L/∂Y`` with the loss and gradient of :func:`effective_weights_gradient`. Split (as in the
    seed experiment): ``round(both_fraction * n)`` random pairs are trained in both directions; each other pair
    has one direction, chosen by a fair coin, trained and the other held out. The mean loss spreads the step over
    ``N`` statements, so ``η`` of a few times ``N`` fits them within a few hundred steps.

    Args:
        n_pairs: number of pairs ``n``.
        steps: gradient steps.
        lr: step size ``η``.
        both_fraction: fraction of pairs trained in both directions, in [0, 1).
        seed: seed of the split, the derangement of ``~`` facts and ``Y(0)``.
        init_std: standard deviation of the entries of ``Y(0)`` (0 starts from zero).
        second_relation: add the facts ``e ~ e'`` so that every entity is a subject (the embedding-starvation
            control of the module docstring).
        device: where to compute (default: PyTorch's default device).
        dtype: floating-point type.
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs={n_pairs}: expected at least 2")
    if not 0 <= both_fraction < 1:
        raise ValueError(f"both_fraction={both_fraction}: expected a value in [0, 1)")
    if steps < 0 or lr <= 0 or init_std < 0:
        raise ValueError(f"steps={steps}, lr={lr}, init_std={init_std}: expected steps >= 0, lr > 0, init_std >= 0")
    n = n_pairs
    fwd, rev, sim = 2 * n, 2 * n + 1, 2 * n + 2
    tokens = tuple([f"A{i}" for i in range(n)] + [f"B{i}" for i in range(n)] + ["->", "<-"]
                   + (["~"] if second_relation else []))
    gen = torch.Generator().manual_seed(seed)
    both, single, reverse_trained = _split(n, both_fraction, gen)
    if len(single) == 0:
        raise ValueError(f"both_fraction={both_fraction} with n_pairs={n}: every pair is trained in both directions, "
                         "expected at least one pair with a held-out direction")

    a, b = torch.arange(n), torch.arange(n) + n
    forward_facts = torch.stack([a, torch.full((n,), fwd), b], dim=-1)   # A_i -> B_i
    reverse_facts = torch.stack([b, torch.full((n,), rev), a], dim=-1)   # B_i <- A_i
    single_fwd, single_rev = single[reverse_trained == 0], single[reverse_trained == 1]
    train = [forward_facts[both], reverse_facts[both], forward_facts[single_fwd], reverse_facts[single_rev]]
    held_out = torch.cat([reverse_facts[single_fwd], forward_facts[single_rev]])
    if second_relation:
        shift = torch.randint(1, n, (), generator=gen)   # a derangement of each alphabet: e_i ~ e_{perm(i + shift)}
        perm = torch.randperm(n, generator=gen)
        partner = torch.empty(n, dtype=torch.long)
        partner[perm] = perm.roll(-int(shift))
        for alphabet in (a, b):
            train.append(torch.stack([alphabet, torch.full((n,), sim), alphabet[partner]], dim=-1))
    train_statements = torch.cat(train)

    vocab = len(tokens)
    init = (init_std * torch.randn(vocab, vocab, generator=gen, dtype=dtype)).to(device)
    train_statements, held_out, both = train_statements.to(init.device), held_out.to(init.device), both.to(init.device)
    a, b = a.to(init.device), b.to(init.device)
    forward_pairs = torch.cat([both, single_fwd.to(init.device)])
    fact = torch.zeros(vocab, vocab, dtype=torch.bool, device=init.device)
    fact[a, b] = fact[b, a] = True
    cross = torch.zeros_like(fact)
    cross[:n, n:2 * n] = cross[n:2 * n, :n] = True
    baseline_mask = cross & ~fact
    hs, hr, ho = held_out.unbind(-1)

    weights = init.clone()
    names = ("forward_entry", "seen_reverse_entry", "held_out_entry", "baseline_entry", "held_out_max_change",
             "train_loss", "train_probability", "held_out_probability")
    curves: dict[str, list[Tensor]] = {k: [] for k in names}
    train_rows = torch.arange(len(train_statements), device=init.device)
    for t in range(steps + 1):
        loss, grad = effective_weights_gradient(weights, train_statements)
        s, r, o = train_statements.unbind(-1)
        p_train = torch.softmax(weights[s] + weights[r], dim=-1)[train_rows, o]
        p_held = torch.softmax(weights[hs] + weights[hr], dim=-1)[torch.arange(len(hs), device=init.device), ho]
        curves["forward_entry"].append(weights[a[forward_pairs], b[forward_pairs]].mean())
        curves["seen_reverse_entry"].append(weights[b[both], a[both]].mean())
        curves["held_out_entry"].append(weights[hs, ho].mean())
        curves["baseline_entry"].append((weights * baseline_mask).sum() / baseline_mask.sum())
        curves["held_out_max_change"].append((weights[hs, ho] - init[hs, ho]).abs().max())
        curves["train_loss"].append(loss)
        curves["train_probability"].append(p_train.mean())
        curves["held_out_probability"].append(p_held.mean())
        if t < steps:
            weights = weights - lr * grad
    stacked = {k: torch.stack(v) for k, v in curves.items()}
    return EffectiveWeightsRun(
        n_pairs=n, lr=float(lr), both_fraction=float(both_fraction), seed=seed, second_relation=second_relation,
        tokens=tokens, train_statements=train_statements, held_out_statements=held_out, both_pairs=both,
        initial_weights=init, final_weights=weights, **stacked,
    )
