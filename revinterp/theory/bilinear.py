"""The bilinear model of Zhu et al. (2024), section 3: why a step on ``x -> y`` barely moves ``y -> x``.

Setup (the paper's, with 0-based pair indices: the paper's pair 1 is pair 0 here):

- Entities ``x_0..x_{n-1}`` and ``y_0..y_{n-1}`` have fixed embeddings drawn i.i.d. from N(0, I/d), so
  ``|x|^2 ≈ 1`` and ``x^T y = O(1/sqrt d)`` for distinct entities.
- The vocabulary is all ``2n`` entities, ``V = {x_0..x_{n-1}, y_0..y_{n-1}}``; the answer to any input is
  chosen among all of them (the paper's setup; a forward question can thus be answered with an ``x`` too):
  ``p_Θ(c | u) = exp(u^T Θ c) / Σ_{c' ∈ V} exp(u^T Θ c')``.
- Training set: ``(x_i -> y_i)`` for every pair and ``(y_i -> x_i)`` for the pairs ``i >= held_out``; the
  reverse of pairs ``0..held_out-1`` is never trained and is the test set.
- ``Θ(0) = 0``; full-batch gradient descent with step ``η`` on the mean cross-entropy
  ``L(Θ) = -(1/N) Σ_{(u, v) ∈ train} log p_Θ(v | u)``.

Gradient of one example (closed form, used for training and checked against autograd in the tests):
``∇_Θ ℓ(u -> v) = -u (v - E_p[c])^T`` with ``E_p[c] = Σ_c p_Θ(c | u) c``. A step on ``(x -> y)`` adds
``η x (y - ȳ)^T`` to Θ, which raises the forward logit ``x^T Θ y`` by ``η |x|^2 (y - ȳ)^T y ≈ η`` but the
reverse logit ``y^T Θ x`` only by ``η (y^T x)(y - ȳ)^T x = O(η / d)``.

Paper's claim: ``L_rev(t) / L_rev(0) >= (L(t) / L(0))^ε`` with ``ε -> 0`` as ``d`` grows. The measured
exponent is ``ε̂(t) = log(L_rev(t)/L_rev(0)) / log(L(t)/L(0))``; the bound holds at step ``t`` exactly when
``ε̂(t) <= ε`` (``L(t) < L(0)``), so ``max_t ε̂(t)`` is the smallest exponent for which it holds along a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "BilinearRun",
    "ExponentSweep",
    "LogitChange",
    "bilinear_loss_and_gradient",
    "entity_embeddings",
    "example_gradient",
    "exponent_vs_dimension",
    "reverse_logit_change",
    "train_bilinear",
]


@dataclass(frozen=True)
class LogitChange:
    """Change of the forward logit ``x^T Θ y`` and the reverse logit ``y^T Θ x`` after one step on ``x -> y``."""

    forward: Float[Tensor, ""]
    reverse: Float[Tensor, ""]


def example_gradient(
    x: Float[Tensor, " d"],
    y: Float[Tensor, " d"],
    theta: Float[Tensor, "d d"],
    candidates: Float[Tensor, "m d"],
) -> Float[Tensor, "d d"]:
    """Closed-form gradient of ``ℓ = -log p_Θ(y | x)`` with respect to Θ.

    ``ℓ(Θ) = -x^T Θ y + log Σ_c exp(x^T Θ c)`` over the rows ``c`` of ``candidates``, so
    ``∇_Θ ℓ = x (E_p[c] - y)^T = -x (y - ȳ)^T`` with ``p = softmax_c(x^T Θ c)`` and ``ȳ = Σ_c p_c c``.
    The formula holds whether or not ``y`` is one of the candidates.
    """
    p = torch.softmax(candidates @ (theta.T @ x), dim=0)
    expected = p @ candidates
    return -torch.outer(x, y - expected)


def reverse_logit_change(
    x: Float[Tensor, " d"],
    y: Float[Tensor, " d"],
    theta: Float[Tensor, "d d"],
    candidates: Float[Tensor, "m d"],
    lr: float,
) -> LogitChange:
    """Exact change of the forward and reverse logits after one gradient step of size ``lr`` on ``x -> y``.

    The step is ``ΔΘ = -η ∇_Θ ℓ = η x (y - ȳ)^T`` (see :func:`example_gradient`). The logits are linear in Θ,
    so the changes are exact, not first-order:

    - forward: ``Δ(x^T Θ y) = η |x|^2 (y - ȳ)^T y``  (≈ η for nearly orthogonal unit-norm embeddings);
    - reverse: ``Δ(y^T Θ x) = η (y^T x) (y - ȳ)^T x``  (= O(η / d): both factors are O(1/sqrt d)).
    """
    expected = torch.softmax(candidates @ (theta.T @ x), dim=0) @ candidates
    residual = y - expected
    forward = lr * (x @ x) * (residual @ y)
    reverse = lr * (y @ x) * (residual @ x)
    return LogitChange(forward=forward, reverse=reverse)


def entity_embeddings(
    n_pairs: int,
    d: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Float[Tensor, "pair d"], Float[Tensor, "pair d"]]:
    """Embeddings ``x_i, y_i ~ N(0, I/d)`` i.i.d. (drawn on the CPU from ``generator``, then moved to ``device``)."""
    x = torch.randn(n_pairs, d, generator=generator, dtype=dtype) / math.sqrt(d)
    y = torch.randn(n_pairs, d, generator=generator, dtype=dtype) / math.sqrt(d)
    return x.to(device), y.to(device)


def bilinear_loss_and_gradient(
    theta: Float[Tensor, "d d"],
    inputs: Float[Tensor, "example d"],
    targets: Int[Tensor, " example"],
    vocabulary: Float[Tensor, "vocab d"],
) -> tuple[Float[Tensor, ""], Float[Tensor, "d d"]]:
    """Mean cross-entropy ``L = -(1/N) Σ_k log p_Θ(v_k | u_k)`` and its closed-form gradient.

    Logits are ``l_kc = u_k^T Θ c`` for every vocabulary row ``c``; with ``P = softmax(l)`` and ``E`` the one-hot
    targets, ``∇_Θ L = (1/N) U^T (P - E) V``, the sum of the per-example gradients of :func:`example_gradient`.
    """
    logits = inputs @ theta @ vocabulary.T
    log_p = torch.log_softmax(logits, dim=-1)
    loss = -log_p.gather(1, targets[:, None]).mean()
    residual = log_p.exp()
    residual[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    grad = inputs.T @ residual @ vocabulary / len(targets)
    return loss, grad


@dataclass(frozen=True)
class BilinearRun:
    """One gradient-descent run of the bilinear model; curves have ``steps + 1`` entries (t = 0..steps).

    Attributes:
        train_loss: ``L(t)``, mean cross-entropy over the training set (``L(0) = ln 2n``).
        reverse_loss: ``L_rev(t)``, mean loss of the held-out reverse examples ``y_i -> x_i``, ``i < held_out``.
        held_out_forward_loss: loss of the trained forward examples ``x_i -> y_i`` of the same pairs.
        forward_logit: mean ``x_i^T Θ y_i`` over the held-out pairs.
        reverse_logit: mean ``y_i^T Θ x_i`` over the held-out pairs.
    """

    n_pairs: int
    d: int
    lr: float
    held_out: int
    seed: int
    x: Float[Tensor, "pair d"]
    y: Float[Tensor, "pair d"]
    theta: Float[Tensor, "d d"]
    train_loss: Float[Tensor, " step"]
    reverse_loss: Float[Tensor, " step"]
    held_out_forward_loss: Float[Tensor, " step"]
    forward_logit: Float[Tensor, " step"]
    reverse_logit: Float[Tensor, " step"]

    @property
    def steps(self) -> int:
        return len(self.train_loss) - 1

    @property
    def loss_ratio(self) -> float:
        """``L(T) / L(0)`` at the end of training."""
        return (self.train_loss[-1] / self.train_loss[0]).item()

    @property
    def reverse_loss_ratio(self) -> float:
        """``L_rev(T) / L_rev(0)`` at the end of training."""
        return (self.reverse_loss[-1] / self.reverse_loss[0]).item()

    @property
    def exponent(self) -> Float[Tensor, " step"]:
        """``ε̂(t) = log(L_rev(t)/L_rev(0)) / log(L(t)/L(0))``; NaN where ``L(t) >= L(0)`` (t = 0 included)."""
        log_train = torch.log(self.train_loss / self.train_loss[0])
        log_rev = torch.log(self.reverse_loss / self.reverse_loss[0])
        eps = log_rev / log_train
        return torch.where(log_train < 0, eps, torch.full_like(eps, float("nan")))

    @property
    def final_exponent(self) -> float:
        """``ε̂(T)`` at the last step."""
        return self.exponent[-1].item()

    @property
    def max_exponent(self) -> float:
        """``max_t ε̂(t)``: the smallest ε for which ``L_rev(t)/L_rev(0) >= (L(t)/L(0))^ε`` holds at every step."""
        eps = self.exponent
        eps = eps[~eps.isnan()]
        return eps.max().item() if len(eps) else float("nan")

    def bound_holds(self, eps: float) -> bool:
        """Whether ``L_rev(t)/L_rev(0) >= (L(t)/L(0))^eps`` at every step."""
        lhs = self.reverse_loss / self.reverse_loss[0]
        rhs = (self.train_loss / self.train_loss[0]) ** eps
        return bool((lhs >= rhs * (1 - 1e-12)).all())

    def to_frame(self):
        """One row per step: losses, logits and the measured exponent."""
        import pandas as pd

        return pd.DataFrame({
            "step": range(self.steps + 1),
            "train_loss": self.train_loss.tolist(),
            "reverse_loss": self.reverse_loss.tolist(),
            "held_out_forward_loss": self.held_out_forward_loss.tolist(),
            "forward_logit": self.forward_logit.tolist(),
            "reverse_logit": self.reverse_logit.tolist(),
            "exponent": self.exponent.tolist(),
        })

    def plot(self):
        """Loss ratios ``L(t)/L(0)`` (training and held-out forward) against ``L_rev(t)/L_rev(0)``, log scale."""
        import plotly.graph_objects as go

        steps = list(range(self.steps + 1))
        fig = go.Figure()
        for name, curve in [
            ("training loss L(t)/L(0)", self.train_loss),
            ("held-out pairs, forward (trained)", self.held_out_forward_loss),
            ("held-out pairs, reverse L_rev(t)/L_rev(0)", self.reverse_loss),
        ]:
            fig.add_trace(go.Scatter(x=steps, y=(curve / curve[0]).tolist(), mode="lines", name=name))
        fig.update_layout(
            title=f"Bilinear model, n={self.n_pairs} pairs, d={self.d}: final ε̂ = {self.final_exponent:.3g}",
            xaxis_title="gradient step", yaxis_title="loss / initial loss", yaxis_type="log",
        )
        return fig

    def summary(self) -> str:
        return (
            f"bilinear n={self.n_pairs} d={self.d} lr={self.lr:g} steps={self.steps}: "
            f"L(T)/L(0)={self.loss_ratio:.3g}, L_rev(T)/L_rev(0)={self.reverse_loss_ratio:.3g}, "
            f"ε̂(T)={self.final_exponent:.3g}, max_t ε̂={self.max_exponent:.3g}"
        )


def train_bilinear(
    n_pairs: int,
    d: int,
    steps: int,
    lr: float,
    held_out: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> BilinearRun:
    """Train the bilinear model ``l(c | u) = u^T Θ c`` from ``Θ = 0`` by full-batch gradient descent.

    ``Θ(t+1) = Θ(t) - η ∇L(Θ(t))`` with ``L`` the mean cross-entropy over ``N = 2n - held_out`` examples and the
    gradient of :func:`bilinear_loss_and_gradient`. Each example then moves by ``η / N`` per step, so ``η`` of a
    few times ``N`` fits the training set within a few hundred steps (for ``d`` at least about ``2n``).

    Computed in the equivalent kernel form ``Θ(t) = V^T C(t) V`` (``V``: the ``2n x d`` vocabulary embeddings):
    every update ``u (v - ȳ)^T`` lies in that span, so the run costs ``O(n^3)`` per step whatever ``d`` is; the
    tests check it against gradient descent on Θ itself.

    Args:
        n_pairs: number of pairs ``n``; the vocabulary has ``2n`` entities.
        d: embedding dimension.
        steps: gradient steps.
        lr: step size ``η``.
        held_out: pairs ``0..held_out-1`` have their reverse ``y_i -> x_i`` held out (the paper: one pair).
        seed: seed of the embeddings.
        device: where to compute (default: PyTorch's default device).
        dtype: floating-point type (float64 keeps loss ratios near 1 accurate).
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs={n_pairs}: expected at least 2")
    if not 1 <= held_out < n_pairs:
        raise ValueError(f"held_out={held_out}: expected 1 <= held_out < n_pairs={n_pairs}")
    if d < 1 or steps < 0 or lr <= 0:
        raise ValueError(f"d={d}, steps={steps}, lr={lr}: expected d >= 1, steps >= 0, lr > 0")
    gen = torch.Generator().manual_seed(seed)
    x, y = entity_embeddings(n_pairs, d, generator=gen, dtype=dtype, device=device)
    vocabulary = torch.cat([x, y])  # x_i is row i, y_i is row n + i
    ids = torch.arange(n_pairs, device=x.device)
    input_ids = torch.cat([ids, ids[held_out:] + n_pairs])
    targets = torch.cat([ids + n_pairs, ids[held_out:]])
    held = ids[:held_out]
    rows = torch.arange(len(targets), device=x.device)

    # Kernel form: Θ(t) = V^T C(t) V, so every logit u^T Θ c is an entry of K C K with K = V V^T, and the step
    # Θ -= (η/N) U^T (P - E) V becomes C[input] -= (η/N) (P - E): d enters only through the Gram matrix K.
    gram = vocabulary @ vocabulary.T
    coef = torch.zeros_like(gram)
    curves: dict[str, list[Tensor]] = {k: [] for k in ("train", "rev", "fwd", "flogit", "rlogit")}
    for t in range(steps + 1):
        logits = gram @ coef @ gram  # logits[u, c] = u^T Θ c over the whole vocabulary
        log_p = torch.log_softmax(logits, dim=-1)
        train_log_p = log_p[input_ids]
        curves["train"].append(-train_log_p[rows, targets].mean())
        curves["rev"].append(-log_p[held + n_pairs, held].mean())
        curves["fwd"].append(-log_p[held, held + n_pairs].mean())
        curves["flogit"].append(logits[held, held + n_pairs].mean())
        curves["rlogit"].append(logits[held + n_pairs, held].mean())
        if t < steps:
            residual = train_log_p.exp()
            residual[rows, targets] -= 1.0
            coef = coef.index_add(0, input_ids, residual, alpha=-lr / len(targets))
    theta = vocabulary.T @ coef @ vocabulary
    stacked = {k: torch.stack(v) for k, v in curves.items()}
    return BilinearRun(
        n_pairs=n_pairs, d=d, lr=float(lr), held_out=held_out, seed=seed, x=x, y=y, theta=theta,
        train_loss=stacked["train"], reverse_loss=stacked["rev"], held_out_forward_loss=stacked["fwd"],
        forward_logit=stacked["flogit"], reverse_logit=stacked["rlogit"],
    )


@dataclass(frozen=True)
class ExponentSweep:
    """Measured exponents against the embedding dimension ``d`` (rows: dimensions, columns: seeds).

    Attributes:
        final_exponent: ``ε̂(T)`` at the end of training.
        max_exponent: ``max_t ε̂(t)``, the smallest ε satisfying the paper's bound along the whole run.
        loss_ratio: ``L(T)/L(0)``.
        reverse_loss_ratio: ``L_rev(T)/L_rev(0)``.
    """

    dims: tuple[int, ...]
    seeds: tuple[int, ...]
    n_pairs: int
    steps: int
    lr: float
    final_exponent: Float[Tensor, "dim seed"]
    max_exponent: Float[Tensor, "dim seed"]
    loss_ratio: Float[Tensor, "dim seed"]
    reverse_loss_ratio: Float[Tensor, "dim seed"]

    @property
    def mean_abs_exponent(self) -> Float[Tensor, " dim"]:
        """Mean over seeds of ``|ε̂(T)|`` per dimension (ε̂ has either sign; its size is what shrinks)."""
        return self.final_exponent.abs().mean(dim=1)

    def scaling_slope(self) -> float:
        """Least-squares slope of ``log mean|ε̂(T)|`` against ``log d`` (about -1 would mean ε̂ ∝ 1/d)."""
        log_d = torch.log(torch.tensor(self.dims, dtype=torch.float64))
        log_eps = torch.log(self.mean_abs_exponent.double().cpu())
        log_d, log_eps = log_d - log_d.mean(), log_eps - log_eps.mean()
        return ((log_d * log_eps).sum() / (log_d * log_d).sum()).item()

    def to_frame(self):
        """One row per (dimension, seed)."""
        import pandas as pd

        rows = []
        for i, d in enumerate(self.dims):
            for j, seed in enumerate(self.seeds):
                rows.append({
                    "d": d, "seed": seed,
                    "final_exponent": self.final_exponent[i, j].item(),
                    "max_exponent": self.max_exponent[i, j].item(),
                    "loss_ratio": self.loss_ratio[i, j].item(),
                    "reverse_loss_ratio": self.reverse_loss_ratio[i, j].item(),
                })
        return pd.DataFrame(rows)

    def plot(self):
        """``|ε̂(T)|`` per seed and its mean against ``d``, log-log."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for j, seed in enumerate(self.seeds):
            fig.add_trace(go.Scatter(
                x=list(self.dims), y=self.final_exponent[:, j].abs().tolist(), mode="markers",
                name=f"seed {seed}", opacity=0.5,
            ))
        fig.add_trace(go.Scatter(x=list(self.dims), y=self.mean_abs_exponent.tolist(), mode="lines+markers",
                                 name="mean over seeds"))
        fig.update_layout(
            title=f"Measured exponent |ε̂| against dimension (n={self.n_pairs}, slope {self.scaling_slope():.2f})",
            xaxis_title="embedding dimension d", yaxis_title="|ε̂(T)|", xaxis_type="log", yaxis_type="log",
        )
        return fig

    def summary(self) -> str:
        parts = ", ".join(f"d={d}: {e:.3g}" for d, e in zip(self.dims, self.mean_abs_exponent.tolist()))
        return (f"mean |ε̂(T)| over {len(self.seeds)} seed(s), n={self.n_pairs}: {parts}; "
                f"log-log slope {self.scaling_slope():.2f}")


def exponent_vs_dimension(
    dims: Sequence[int],
    n_pairs: int = 10,
    steps: int = 200,
    lr: float | None = None,
    held_out: int = 1,
    seeds: Sequence[int] = (0,),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> ExponentSweep:
    """Run :func:`train_bilinear` for every dimension and seed and collect the measured exponents.

    Args:
        dims: embedding dimensions to compare.
        n_pairs: as in :func:`train_bilinear`.
        steps: as in :func:`train_bilinear`.
        held_out: as in :func:`train_bilinear`.
        device: as in :func:`train_bilinear`.
        dtype: as in :func:`train_bilinear`.
        lr: step size; ``None`` uses ``2 N`` with ``N = 2n - held_out`` training examples (each example's own
            step is then 2).
        seeds: embedding seeds, the same at every dimension.
    """
    if not dims or not seeds:
        raise ValueError(f"dims={dims!r}, seeds={seeds!r}: expected at least one of each")
    step = float(lr) if lr is not None else 2.0 * (2 * n_pairs - held_out)
    values = torch.empty(4, len(dims), len(seeds), dtype=torch.float64)
    for i, d in enumerate(dims):
        for j, seed in enumerate(seeds):
            run = train_bilinear(n_pairs, d, steps, step, held_out=held_out, seed=seed, device=device, dtype=dtype)
            values[:, i, j] = torch.tensor([run.final_exponent, run.max_exponent, run.loss_ratio,
                                            run.reverse_loss_ratio], dtype=torch.float64)
    return ExponentSweep(
        dims=tuple(int(d) for d in dims), seeds=tuple(int(s) for s in seeds), n_pairs=n_pairs, steps=steps,
        lr=step, final_exponent=values[0], max_exponent=values[1], loss_ratio=values[2],
        reverse_loss_ratio=values[3],
    )
