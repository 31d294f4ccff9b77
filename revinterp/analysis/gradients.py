"""The gradient view of the reversal curse: how far one training step on a fact moves its other direction.

Zhu et al. (2024), "Towards a Theoretical Understanding of the 'Reversal Curse' via Training Dynamics", section 3: in a
bilinear model a gradient step on ``x -> y`` adds about ``x y^T`` to the weights, raising the forward logit by about
``|x|^2 |y|^2`` but the reverse logit only by ``(x^T y)^2 = O(1/d)``. Here that mechanism is measured on the
transformer itself. For a trained statement ``s r o`` (say ``A_i -> B_i``) with answer-only cross-entropy ``L`` (the
training loss, :func:`revinterp.training.batch_loss`), and a logit ``f`` of the answer:

- own: ``f_own = logit(o | <bos> s r)`` (the statement's own answer, e.g. ``B_i`` after ``A_i ->``);
- counterpart: ``f_rev = logit(s | <bos> o r^-1)`` (the same fact in the other direction, e.g. ``A_i`` after
  ``B_i <-``), whether that statement is trained (``reverse_seen``) or held out (``reverse_held_out``).

A plain SGD step ``theta -> theta - lr * grad L`` changes ``f`` to first order by::

    delta f = -lr * <grad f, grad L>

computed exactly by autograd (one backward per scalar). The ratio ``delta f_rev / delta f_own`` is the theory's
quantity: near zero means forward steps barely move the reverse logit. ``actual=True`` also takes the step on a deep
copy of the model and reports the real change, to validate the first-order number (they agree for small ``lr``).
The training itself used AdamW, whose steps are preconditioned; the SGD step is the theory's gradient flow.

``metric`` picks ``f``: the raw ``"logit"``, the ``"centered_logit"`` (minus the mean over the vocabulary, which
removes shifts shared by every token that a softmax ignores) or the ``"logprob"``. For a multi-token answer ``f`` reads
its first token.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.checkpoints import as_loaded_run, iter_checkpoints
from revinterp.data import SPLITS, FactSet, Statement, encode_statements
from revinterp.evaluation import model_device
from revinterp.models import LoadedRun, unpack_run
from revinterp.stats import Estimate, bootstrap_ci, error_bars
from revinterp.training import batch_loss, plain_model

GRADIENT_METRICS = ("logit", "centered_logit", "logprob")
"""The quantities ``f`` whose change is measured (see the module docstring)."""

__all__ = [
    "GRADIENT_METRICS", "GradientStepDynamics", "GradientStepEffects", "gradient_step_effects",
    "gradient_step_effects_over_training",
]


@dataclass(frozen=True)
class GradientStepEffects:
    """Per trained statement: how one SGD step on it moves its own answer's logit and its counterpart's.

    Attributes:
        statements: the trained statements stepped on.
        counterparts: per statement, the statement of the same fact in the other direction.
        loss: the answer-only cross-entropy of each statement before the step.
        own_change: first-order change of ``f`` of the statement's own answer, ``-lr <grad f_own, grad L>``.
        counterpart_change: first-order change of ``f`` of the counterpart's answer, ``-lr <grad f_rev, grad L>``.
        cosine: cosine similarity of ``grad f_rev`` and ``-grad L`` (the direction of the step).
        actual_own_change: the real change after the SGD step (``None`` unless ``actual=True``).
        actual_counterpart_change: likewise for the counterpart.
        lr: the step size.
        metric: one of :data:`GRADIENT_METRICS`.
        step: the training step of the weights, when known.
    """

    statements: tuple[Statement, ...]
    counterparts: tuple[Statement, ...]
    loss: Float[Tensor, " example"]
    own_change: Float[Tensor, " example"]
    counterpart_change: Float[Tensor, " example"]
    cosine: Float[Tensor, " example"]
    actual_own_change: Float[Tensor, " example"] | None
    actual_counterpart_change: Float[Tensor, " example"] | None
    lr: float
    metric: str = "logit"
    step: int | None = None

    @property
    def splits(self) -> list[str]:
        """The splits of the stepped-on statements, in :data:`revinterp.data.SPLITS` order."""
        present = {s.split for s in self.statements}
        return [name for name in SPLITS if name in present]

    def _rows(self, split: str) -> list[int]:
        rows = [k for k, s in enumerate(self.statements) if s.split == split]
        if not rows:
            raise KeyError(f"split {split!r} has no stepped-on statements here; present: {self.splits}")
        return rows

    def estimate(self, split: str, which: str = "counterpart_change") -> Estimate:
        """Mean of a per-example quantity (``own_change``, ``counterpart_change``, ``cosine``, ``loss``, ...) over the
        statements of ``split``, with a 95 % bootstrap interval."""
        values = getattr(self, which)
        if values is None:
            raise ValueError(f"{which} was not computed (pass actual=True)")
        return bootstrap_ci(values[self._rows(split)])

    def ratio(self, split: str) -> Estimate:
        """``mean(counterpart_change) / mean(own_change)`` over the statements of ``split``, with a 95 % bootstrap
        interval (statements resampled with their pairs)."""
        rows = self._rows(split)
        return _ratio_of_means(self.counterpart_change[rows], self.own_change[rows])

    def to_frame(self):
        """One row per stepped-on statement: its split, the counterpart's split, the loss and every change."""
        import pandas as pd

        data = {
            "split": [s.split for s in self.statements],
            "counterpart_split": [c.split for c in self.counterparts],
            "subject": [s.subject for s in self.statements],
            "relation": [s.relation for s in self.statements],
            "object": [s.object for s in self.statements],
            "fact": [s.fact for s in self.statements],
            "loss": self.loss.tolist(),
            "own_change": self.own_change.tolist(),
            "counterpart_change": self.counterpart_change.tolist(),
            "cosine": self.cosine.tolist(),
        }
        if self.actual_own_change is not None:
            data["actual_own_change"] = self.actual_own_change.tolist()
            data["actual_counterpart_change"] = self.actual_counterpart_change.tolist()
        frame = pd.DataFrame(data)
        frame.insert(0, "metric", self.metric)
        if self.step is not None:
            frame.insert(0, "step", self.step)
        return frame

    def plot(self):
        """Plotly figure: per split of the stepped-on statement, the mean change of the own and the counterpart
        answer's ``f`` with 95 % bootstrap intervals, and their ratio."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        splits = self.splits
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            f"first-order change of the {self.metric} per SGD step (lr {self.lr:g})", "counterpart / own"))
        for which, name in (("own_change", "own answer"), ("counterpart_change", "counterpart (other direction)")):
            est = [self.estimate(split, which) for split in splits]
            fig.add_trace(go.Bar(
                x=splits, y=[e.mean for e in est], name=name,
                error_y=error_bars(est),
            ), row=1, col=1)
        ratios = [self.ratio(split) for split in splits]
        fig.add_trace(go.Bar(
            x=splits, y=[e.mean for e in ratios], name="ratio", showlegend=False,
            error_y=error_bars(ratios),
        ), row=1, col=2)
        fig.update_layout(barmode="group", title="One gradient step on a statement: own answer vs the other direction"
                                                 + (f" (step {self.step})" if self.step is not None else ""))
        return fig

    def summary(self) -> str:
        """Per split: mean own and counterpart change, their ratio, and (with ``actual``) the first-order error."""
        lines = [f"gradient step effects ({self.metric}, SGD lr {self.lr:g}"
                 + (f", step {self.step}" if self.step is not None else "")
                 + "): mean [95% CI] per stepped-on split"]
        for split in self.splits:
            rows = self._rows(split)
            counterpart = sorted({self.counterparts[k].split for k in rows})
            line = (f"  {split:<16}-> {'/'.join(counterpart):<18} own {self.estimate(split, 'own_change')}; "
                    f"counterpart {self.estimate(split, 'counterpart_change')}; ratio {self.ratio(split)}")
            if self.actual_own_change is not None:
                error = (self.actual_counterpart_change - self.counterpart_change)[rows].abs().max().item()
                line += f"; max |actual - first order| (counterpart) {error:.2g}"
            lines.append(line)
        return "\n".join(lines)


def gradient_step_effects(
    model_or_run,
    facts: FactSet | None = None,
    *,
    splits: Sequence[str] | None = None,
    lr: float = 0.01,
    metric: str = "logit",
    actual: bool = False,
    dtype: torch.dtype | None = None,
    tokenizer=None,
    step: int | None = None,
) -> GradientStepEffects:
    """First-order change of a statement's own answer and of its other direction under one SGD step on it.

    For every trained statement with a counterpart (the same fact in the other direction) and answer-only
    cross-entropy ``L``::

        own_change         = -lr * <grad f(o | s r),      grad L>
        counterpart_change = -lr * <grad f(s | o r^-1),   grad L>

    (Zhu et al. 2024: a step on ``A -> B`` raises the forward logit by O(1) but the reverse one by O(1/d).)

    Args:
        model_or_run: a :class:`~revinterp.models.LoadedRun` (``gradient_step_effects(run)``), or a
            ``TransformerBridge`` with its ``facts``; its weights are never modified (``actual`` and ``dtype`` work
            on a copy).
        facts: the fact set the model was trained on; only with a model, not with a run.
        splits: trained splits whose statements are stepped on (default every trained split that has statements
            with a counterpart, e.g. ``forward_seen``, ``forward_only``, ``reverse_seen``, ``reverse_only``).
        lr: SGD step size; the first-order changes are linear in it.
        metric: ``"logit"``, ``"centered_logit"`` or ``"logprob"`` (see the module docstring).
        actual: also take each step on a copy and record the real changes.
        dtype: compute on a copy in this dtype (e.g. ``torch.float64`` to validate against ``actual``).
        tokenizer: default the run's, or ``model.tokenizer``.
        step: the training step of the weights, recorded in the result.

    Example:
        >>> from revinterp.models import load_run                                    # doctest: +SKIP
        >>> run = load_run("runs/seed0")                                             # doctest: +SKIP
        >>> effects = gradient_step_effects(run)                                     # doctest: +SKIP
        >>> effects.ratio("forward_only")                                            # doctest: +SKIP
    """
    if metric not in GRADIENT_METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {GRADIENT_METRICS}")
    if not lr > 0:
        raise ValueError(f"lr={lr}: expected a positive step size")
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    pairs = counterpart_pairs(facts, splits)
    if not pairs:
        raise ValueError(f"no trained statement of splits {splits} has a counterpart in the other direction; "
                         f"the fact set has {facts.split_names}")
    analysed = model
    if actual or (dtype is not None and dtype != next(model.parameters()).dtype):
        analysed = copy.deepcopy(model)
        if dtype is not None:
            analysed.to(dtype, print_details=False)
    was_training = analysed.training
    analysed.eval()
    device = model_device(analysed)
    params = [p for p in analysed.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True; expected a trainable model")
    encoded = encode_statements(facts, [s for pair in pairs for s in pair], tokenizer).to(device)
    values = {name: [] for name in ("actual_own", "actual_counterpart")}
    try:
        first_order = _first_order_changes(analysed, encoded, metric, lr)
        if actual:
            for k in range(len(pairs)):
                rows = encoded.select(torch.tensor([2 * k, 2 * k + 1], device=device))
                loss = batch_loss(analysed, rows.select(torch.tensor([0], device=device)), "answer")
                f_own, f_counterpart = _answer_metric(analysed, rows, metric)
                before = torch.stack([f_own, f_counterpart]).detach()
                after = _after_sgd_step(analysed, params, _flat_grad(loss, params), lr, rows, metric)
                values["actual_own"].append((after[0] - before[0]).item())
                values["actual_counterpart"].append((after[1] - before[1]).item())
    finally:
        analysed.train(was_training)
    values.update(first_order)

    def as_tensor(name: str) -> Tensor | None:
        return torch.tensor(values[name], dtype=torch.float64) if values[name] else None

    return GradientStepEffects(
        statements=tuple(p[0] for p in pairs), counterparts=tuple(p[1] for p in pairs), loss=as_tensor("loss"),
        own_change=as_tensor("own"), counterpart_change=as_tensor("counterpart"), cosine=as_tensor("cosine"),
        actual_own_change=as_tensor("actual_own"), actual_counterpart_change=as_tensor("actual_counterpart"),
        lr=lr, metric=metric, step=step,
    )


# == over training ================================================================================
@dataclass(frozen=True)
class GradientStepDynamics:
    """:class:`GradientStepEffects` at each checkpoint of a run.

    Attributes:
        steps: the training step of each checkpoint.
        results: the effects at each step (same statements, same order).
    """

    steps: tuple[int, ...]
    results: tuple[GradientStepEffects, ...]

    def ratios(self, split: str) -> list[Estimate]:
        return [r.ratio(split) for r in self.results]

    def to_frame(self):
        """The frames of every checkpoint, stacked (a ``step`` column tells them apart)."""
        import pandas as pd

        return pd.concat([r.to_frame() for r in self.results], ignore_index=True)

    def plot(self):
        """Plotly lines over training: mean own and counterpart change per split, and their ratio (95 % bands)."""
        from plotly.subplots import make_subplots

        x = list(self.steps)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("first-order change per SGD step", "counterpart / own"))
        for split in self.results[0].splits:
            for which, dash in (("own_change", "solid"), ("counterpart_change", "dash")):
                est = [r.estimate(split, which) for r in self.results]
                fig.add_scatter(x=x, y=[e.mean for e in est], mode="lines+markers", line=dict(dash=dash),
                                name=f"{split}: {which.replace('_', ' ')}", row=1, col=1)
            est = self.ratios(split)
            fig.add_scatter(x=x + x[::-1], y=[e.high for e in est] + [e.low for e in est][::-1], fill="toself",
                            line=dict(width=0), opacity=0.2, showlegend=False, hoverinfo="skip", row=1, col=2)
            fig.add_scatter(x=x, y=[e.mean for e in est], mode="lines+markers", name=f"{split}: ratio", row=1, col=2)
        fig.update_xaxes(title_text="training step")
        first = self.results[0]
        fig.update_layout(title=f"Gradient view over training ({first.metric}, SGD lr {first.lr:g})")
        return fig

    def summary(self) -> str:
        lines = [f"gradient step effects over training ({self.results[0].metric}): counterpart/own ratio [95% CI]"]
        splits = self.results[0].splits
        lines.append(f"  {'step':>7}  " + "  ".join(f"{s:<30}" for s in splits))
        for step, result in zip(self.steps, self.results):
            lines.append(f"  {step:>7}  " + "  ".join(f"{str(result.ratio(s)):<30}" for s in splits))
        return "\n".join(lines)


def gradient_step_effects_over_training(
    run: str | Path | LoadedRun,
    *,
    checkpoints: Sequence[int] | None = None,
    device=None,
    **kwargs,
) -> GradientStepDynamics:
    """:func:`gradient_step_effects` at every weight snapshot of a run (or the steps in ``checkpoints``).

    Args:
        run: a run directory written by :func:`revinterp.training.train`, or a loaded run (its model is left as
            it is: the checkpoints go into a separate one, :func:`~revinterp.analysis.checkpoints.iter_checkpoints`).
        checkpoints: training steps to read (default every snapshot, from step 0).
        device: where to load the model (default the loaded run's device, or
            :func:`revinterp.models.default_device`).
        **kwargs: passed to :func:`gradient_step_effects` (``splits``, ``lr``, ``metric``, ``actual``, ``dtype``).

    Example:
        >>> dyn = gradient_step_effects_over_training("runs/seed0", splits=["forward_only"])   # doctest: +SKIP
        >>> print(dyn.summary())                                                               # doctest: +SKIP
    """
    run = as_loaded_run(run, device=device)
    results = [gradient_step_effects(model, run.facts, tokenizer=run.tokenizer, step=step, **kwargs)
               for step, model in iter_checkpoints(run, checkpoints, device=device)]
    return GradientStepDynamics(steps=tuple(r.step for r in results), results=tuple(results))


# == helpers ======================================================================================
def counterpart_pairs(facts: FactSet, splits: Sequence[str] | None = None) -> list[tuple[Statement, Statement]]:
    """(trained statement, its counterpart in the other direction) for every trained statement of ``splits`` (default
    all) that has one; empty for data without forward/reverse pairs (e.g. chains)."""
    by_fact: dict[int, dict[str, Statement]] = {}
    for s in facts.statements:
        by_fact.setdefault(s.fact, {})[s.direction] = s
    other = {"forward": "reverse", "reverse": "forward"}
    if splits is not None:
        bad = [name for name in splits if name not in SPLITS or not SPLITS[name]]
        if bad:
            raise ValueError(f"splits {bad}: expected trained splits, e.g. "
                             f"{[n for n, trained in SPLITS.items() if trained]}")
    pairs = [
        (s, by_fact[s.fact][other[s.direction]])
        for s in facts.statements
        if s.trained and (splits is None or s.split in splits)
        and s.direction in other and other[s.direction] in by_fact[s.fact]
    ]
    order = {name: i for i, name in enumerate(SPLITS)}
    return sorted(pairs, key=lambda p: (order[p[0].split], p[0].fact))


def _answer_metric(model, rows, metric: str) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """``f`` of each row's (first) answer token at its last prompt position."""
    logits = model(rows.tokens)
    batch = torch.arange(len(rows), device=rows.tokens.device)
    last = logits[batch, rows.prompt_lengths - 1]
    answer = rows.tokens[batch, rows.prompt_lengths]
    if metric == "centered_logit":
        last = last - last.mean(-1, keepdim=True)
    elif metric == "logprob":
        last = last.log_softmax(-1)
    values = last[batch, answer]
    return values[0], values[1]


EXAMPLES_PER_CHUNK = 16
"""Examples whose three gradients (loss, own f, counterpart f) are held at once by :func:`_first_order_changes`."""


def _first_order_changes(model, encoded, metric: str, lr: float) -> dict[str, list[float]]:
    """Per (statement, counterpart) row pair of ``encoded``: the loss, ``-lr <grad f_own, grad L>``,
    ``-lr <grad f_rev, grad L>`` and the cosine of ``grad f_rev`` with ``-grad L``.

    The three gradients of every example come from ``torch.func``: ``vmap`` over the examples of a chunk of
    ``jacrev`` of ``(L, f_own, f_rev)`` through the hook-free plain model (:func:`revinterp.training.plain_model`,
    the model's own parameters). Equal to one autograd backward per scalar and example (tested).
    """
    from torch.func import functional_call, jacrev, vmap

    plain = plain_model(model)
    params = {name: p.detach() for name, p in plain.named_parameters() if p.requires_grad}
    tokens = encoded.tokens.view(-1, 2, encoded.tokens.shape[1])
    last = (encoded.prompt_lengths - 1).view(-1, 2)
    own_mask = encoded.answer_mask.view(-1, 2, encoded.tokens.shape[1])[:, 0, 1:].to(torch.float32)

    def scalars(weights, rows, last_positions, mask):
        logits = functional_call(plain, weights, (rows,))
        own_ce = F.cross_entropy(logits[0, :-1], rows[0, 1:], reduction="none")
        loss = (own_ce * mask).sum() / mask.sum()
        answer_logits = logits.gather(1, last_positions[:, None, None].expand(2, 1, logits.shape[-1]))[:, 0]
        if metric == "centered_logit":
            answer_logits = answer_logits - answer_logits.mean(-1, keepdim=True)
        elif metric == "logprob":
            answer_logits = answer_logits.log_softmax(-1)
        answers = rows.gather(1, (last_positions + 1)[:, None])
        f = answer_logits.gather(1, answers)[:, 0]
        return torch.stack([loss, f[0], f[1]]), loss

    grads = vmap(jacrev(scalars, has_aux=True), in_dims=(None, 0, 0, 0))
    out = {"loss": [], "own": [], "counterpart": [], "cosine": []}
    for start in range(0, len(tokens), EXAMPLES_PER_CHUNK):
        chunk = slice(start, start + EXAMPLES_PER_CHUNK)
        jacobians, loss = grads(params, tokens[chunk], last[chunk], own_mask[chunk])
        dots = sum(torch.einsum("es...,et...->est", j, j) for j in jacobians.values())  # [example, 3, 3] Gram
        along = dots[:, 2, 0]
        out["loss"] += loss.tolist()
        out["own"] += (-lr * dots[:, 1, 0]).tolist()
        out["counterpart"] += (-lr * along).tolist()
        out["cosine"] += (-(along / (dots[:, 2, 2].sqrt() * dots[:, 0, 0].sqrt()).clamp(min=1e-30))).tolist()
    return out


def _flat_grad(value: Float[Tensor, ""], params: list[Tensor]) -> Float[Tensor, " param"]:
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


@torch.no_grad()
def _after_sgd_step(model, params: list[Tensor], grad: Float[Tensor, " param"], lr: float, rows, metric: str
                    ) -> Float[Tensor, " 2"]:
    """``f`` of both rows after ``theta -> theta - lr * grad`` (weights restored afterwards)."""
    saved = [p.detach().clone() for p in params]
    offset = 0
    for p in params:
        n = p.numel()
        p.sub_(lr * grad[offset:offset + n].view_as(p))
        offset += n
    try:
        return torch.stack(_answer_metric(model, rows, metric))
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)


def _ratio_of_means(
    numerator: Float[Tensor, " n"], denominator: Float[Tensor, " n"], *, n_resamples: int = 2000,
    confidence: float = 0.95, seed: int = 0,
) -> Estimate:
    """``mean(numerator) / mean(denominator)`` with a paired percentile-bootstrap interval (as
    :func:`revinterp.stats.bootstrap_ci`, resampling the pairs together)."""
    num, den = numerator.double().cpu(), denominator.double().cpu()
    n = num.numel()
    value = (num.mean() / den.mean()).item()
    if n == 1:
        return Estimate(value, value, value, 1, confidence)
    idx = torch.randint(n, (n_resamples, n), generator=torch.Generator().manual_seed(seed))
    ratios = num[idx].mean(1) / den[idx].mean(1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(ratios, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Estimate(value, low, high, n, confidence)
