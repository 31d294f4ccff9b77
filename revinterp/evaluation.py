"""Behaviour per split: does the model answer trained facts, and the held-out other direction?

For each statement (prompt ``s r``, answer ``o``) and its M answer candidates (every object of
relation ``r``, see :meth:`FactSet.candidates`):

- score(c) = log p(c | s r), summed over the candidate's tokens with teacher forcing;
- **accuracy**: the answer has the highest score among the M candidates (chance 1/M);
- **rank**: 1 + the number of candidates scored above the answer (chance (M + 1) / 2); NaN never wins: a
  candidate scored NaN counts as above the answer, and an answer scored NaN or -inf ranks below every
  candidate, itself included (M + 1), so it is never correct;
- **logprob_candidates**: log softmax of the scores at the answer (uniform baseline -ln M);
- **logprob**: log p(answer) over the whole vocabulary (uniform baseline -k ln V for k tokens);
- **vocab_accuracy**: every answer token is the arg max over the whole vocabulary.

Per-example values are kept; accuracies come with exact binomial (Clopper-Pearson) intervals, other split means
with bootstrap intervals (:mod:`revinterp.stats`).

:func:`evaluate` refuses a model whose weights or outputs are not finite
(:class:`revinterp.models.NonFiniteError` names the tensor): NaN compares false with everything, so such a model
would otherwise look perfect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revinterp.data import SPLITS, EncodedStatements, FactSet, Statement, encode_statements
from revinterp.models import check_finite, check_finite_output, unpack_run
from revinterp.stats import Estimate, bootstrap_ci, clopper_pearson, format_fixed

ROWS_PER_BATCH = 4096


@dataclass(frozen=True)
class SplitBehaviour:
    """Per-example behaviour on one split (see the module docstring for each quantity)."""

    split: str
    statements: tuple[Statement, ...]
    correct: Bool[Tensor, " n"]
    rank: Int[Tensor, " n"]
    logprob: Float[Tensor, " n"]
    logprob_candidates: Float[Tensor, " n"]
    vocab_correct: Bool[Tensor, " n"]
    n_candidates: Int[Tensor, " n"]
    answer_lengths: Int[Tensor, " n"]
    vocab_size: int

    @property
    def n(self) -> int:
        return len(self.statements)

    @property
    def trained(self) -> bool:
        return SPLITS[self.split]

    @property
    def accuracy(self) -> Estimate:
        """Top-1 accuracy among the candidates with its exact binomial (Clopper-Pearson) 95 % interval: a
        proportion of one run, where a bootstrap of all-zero hits would give an uninformative [0, 0]."""
        return clopper_pearson(int(self.correct.sum()), self.n)

    @property
    def chance_accuracy(self) -> float:
        return (1.0 / self.n_candidates.double()).mean().item()

    @property
    def probability(self) -> float:
        """Mean probability of the answer over the whole vocabulary (the fitting criterion)."""
        return self.logprob.exp().mean().item()

    def metrics(self) -> dict:
        """Split means and baselines as plain numbers (the JSON of ``revinterp eval --json``)."""
        acc, lp, lpc = self.accuracy, bootstrap_ci(self.logprob), bootstrap_ci(self.logprob_candidates)
        rank = bootstrap_ci(self.rank.double())
        m = self.n_candidates.double()
        return {
            "n": self.n,
            "trained": self.trained,
            "accuracy": acc.mean,
            "accuracy_ci": [acc.low, acc.high],
            "accuracy_interval": "clopper_pearson",
            "chance_accuracy": self.chance_accuracy,
            "mean_rank": rank.mean,
            "mean_rank_ci": [rank.low, rank.high],
            "chance_mean_rank": ((m + 1) / 2).mean().item(),
            "logprob": lp.mean,
            "logprob_ci": [lp.low, lp.high],
            "uniform_logprob": -(self.answer_lengths.double() * math.log(self.vocab_size)).mean().item(),
            "logprob_candidates": lpc.mean,
            "logprob_candidates_ci": [lpc.low, lpc.high],
            "uniform_logprob_candidates": -m.log().mean().item(),
            "probability": self.probability,
            "vocab_accuracy": self.vocab_correct.float().mean().item(),
            "n_candidates": int(self.n_candidates.max()),
        }


@dataclass(frozen=True)
class Behaviour:
    """Behaviour on every split of a fact set.

    Example:
        >>> behaviour = evaluate(run.model, run.facts)               # doctest: +SKIP
        >>> print(behaviour.summary())                               # doctest: +SKIP
    """

    splits: dict[str, SplitBehaviour]

    def __getitem__(self, split: str) -> SplitBehaviour:
        return self.splits[split]

    def to_dict(self) -> dict:
        return {"splits": {name: sb.metrics() for name, sb in self.splits.items()}}

    def to_frame(self):
        """One row per statement: split, subject, relation, object and every per-example value."""
        import pandas as pd

        rows = []
        for name, sb in self.splits.items():
            for i, s in enumerate(sb.statements):
                rows.append(dict(
                    split=name, subject=s.subject, relation=s.relation, object=s.object, fact=s.fact,
                    correct=bool(sb.correct[i]), rank=int(sb.rank[i]), logprob=float(sb.logprob[i]),
                    logprob_candidates=float(sb.logprob_candidates[i]),
                    vocab_correct=bool(sb.vocab_correct[i]), n_candidates=int(sb.n_candidates[i]),
                ))
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A table: accuracy with its 95 % interval beside chance, rank and log-probabilities."""
        header = (
            f"{'split':<24}{'n':>5}  {'trained':<8}{'accuracy [95% CI]':<24}{'chance':>8}"
            f"{'rank':>8}{'logp(cand)':>12}{'-ln M':>8}{'p(answer)':>11}"
        )
        lines = [header, "-" * len(header)]
        for name, sb in self.splits.items():
            m = sb.metrics()
            acc = f"{100 * m['accuracy']:5.1f}% [{100 * m['accuracy_ci'][0]:.1f}, {100 * m['accuracy_ci'][1]:.1f}]"
            lines.append(
                f"{name:<24}{m['n']:>5}  {'yes' if m['trained'] else 'no':<8}{acc:<24}"
                f"{100 * m['chance_accuracy']:>7.1f}%{m['mean_rank']:>8.1f}"
                f"{format_fixed(m['logprob_candidates']):>12}{format_fixed(m['uniform_logprob_candidates']):>8}"
                f"{m['probability']:>11.3f}"
            )
        return "\n".join(lines)

    def plot(self):
        """Plotly bar chart: accuracy per split with 95 % intervals, chance marked per split."""
        import plotly.graph_objects as go

        names = list(self.splits)
        metrics = [self.splits[n].metrics() for n in names]
        acc = [m["accuracy"] for m in metrics]
        fig = go.Figure()
        fig.add_bar(
            x=names, y=acc, name="accuracy",
            error_y=dict(
                type="data", symmetric=False,
                array=[m["accuracy_ci"][1] - a for m, a in zip(metrics, acc)],
                arrayminus=[a - m["accuracy_ci"][0] for m, a in zip(metrics, acc)],
            ),
        )
        fig.add_scatter(x=names, y=[m["chance_accuracy"] for m in metrics], mode="markers",
                        marker=dict(symbol="line-ew-open", size=30), name="chance (1/M)")
        fig.update_layout(yaxis=dict(title="accuracy among candidates", range=[0, 1.05]),
                          title="Behaviour per split (exact binomial 95% intervals)")
        return fig


def over_seeds(behaviours: Sequence[Behaviour], metrics: Sequence[str] = ("accuracy", "mean_rank", "logprob_candidates")
               ) -> dict[str, dict[str, Estimate]]:
    """Split means across runs with different seeds, each with a bootstrap interval over seeds.

    Every run contributes one number per split and metric (its split mean), so the interval says how
    much the result moves from seed to seed, not from example to example.
    """
    if not behaviours:
        raise ValueError("over_seeds needs at least one run's behaviour")
    splits = [name for name in behaviours[0].splits if all(name in b.splits for b in behaviours)]
    return {
        split: {m: bootstrap_ci([b[split].metrics()[m] for b in behaviours]) for m in metrics}
        for split in splits
    }


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def answer_scores(model, encoded: EncodedStatements, *, check: bool = False
                  ) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """Log p(answer) summed over the answer tokens, and whether every answer token is the arg max.

    The answer token at position ``p`` is scored with the logits at ``p - 1``. A token whose log-probability is
    not finite is never the arg max. With ``check``, non-finite logits raise
    :class:`~revinterp.models.NonFiniteError`.
    """
    logprob, greedy = [], []
    device = model_device(model)
    for start in range(0, len(encoded), ROWS_PER_BATCH):
        chunk = encoded.select(torch.arange(start, min(start + ROWS_PER_BATCH, len(encoded))))
        tokens = chunk.tokens.to(device)
        logits = model(tokens)
        if check:
            check_finite_output(logits, "logits")
        logp = logits.log_softmax(-1)[:, :-1]
        target = tokens[:, 1:]
        token_logp = logp.gather(-1, target[..., None])[..., 0]
        mask = chunk.answer_mask.to(device)[:, 1:]
        logprob.append(torch.where(mask, token_logp, 0.0).sum(-1).cpu())
        top = (logp.argmax(-1) == target) & torch.isfinite(token_logp)
        greedy.append((top | ~mask).all(-1).cpu())
    return torch.cat(logprob), torch.cat(greedy)


def answer_rank(scores: Float[Tensor, "n m"], answer_index: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """1 + the number of candidates scored above the answer, where NaN never wins.

    A candidate scored NaN (or +inf) counts as above the answer; an answer scored NaN or -inf (or +inf) is above
    nothing and below every candidate, itself included, so its rank is M + 1 and it is never correct.
    """
    answer = scores.gather(1, answer_index[:, None])
    beats = (scores > answer) | torch.isnan(scores) | ~torch.isfinite(answer)
    itself = torch.zeros_like(beats).scatter_(1, answer_index[:, None], True)
    beats = beats & ~(itself & torch.isfinite(answer))
    return 1 + beats.sum(-1)


def candidate_scores(
    model, facts: FactSet, statements: Sequence[Statement], tokenizer, *, check: bool = False
) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """Per statement: log softmax over its candidates at the answer, the answer's rank, and M.

    Every candidate ``c`` is scored as log p(c | prompt) with teacher forcing; when all candidates
    are single tokens this is one forward of the prompt, else one row per (statement, candidate).
    Ranks are NaN-safe (:func:`answer_rank`); with ``check``, non-finite scores raise
    :class:`~revinterp.models.NonFiniteError`.
    """
    n = len(statements)
    logprob_candidates = torch.empty(n)
    rank = torch.empty(n, dtype=torch.long)
    n_candidates = torch.empty(n, dtype=torch.long)
    device = model_device(model)
    by_relation: dict[str, list[int]] = {}
    for i, s in enumerate(statements):
        by_relation.setdefault(s.relation, []).append(i)
    for relation, rows in by_relation.items():
        candidates = facts.candidates(relation)
        cand_ids = [tokenizer.convert_tokens_to_ids(c.split()) for c in candidates]
        answer_index = torch.tensor([candidates.index(statements[i].object) for i in rows])
        if all(len(c) == 1 for c in cand_ids):
            prompts = encode_statements(facts, [statements[i] for i in rows], tokenizer)
            ids = torch.tensor([c[0] for c in cand_ids], device=device)
            scores = []
            for start in range(0, len(rows), ROWS_PER_BATCH):
                chunk = prompts.select(torch.arange(start, min(start + ROWS_PER_BATCH, len(rows))))
                last = (chunk.prompt_lengths - 1).to(device)
                logits = model(chunk.tokens.to(device))
                if check:
                    check_finite_output(logits, "logits")
                logp = logits[torch.arange(len(chunk), device=device), last].log_softmax(-1)
                scores.append(logp[:, ids].cpu())
            scores = torch.cat(scores)
        else:
            scores = torch.cat([
                multi_token_candidate_scores(model, facts, statements[i], candidates, tokenizer, check=check)[None]
                for i in rows
            ])
        if check:
            check_finite_output(scores, f"candidate scores of relation {relation!r}")
        answer_score = scores.gather(1, answer_index[:, None])[:, 0]
        idx = torch.tensor(rows)
        logprob_candidates[idx] = answer_score - scores.logsumexp(-1)
        rank[idx] = answer_rank(scores, answer_index)
        n_candidates[idx] = len(candidates)
    return logprob_candidates, rank, n_candidates


def multi_token_candidate_scores(model, facts, statement, candidates, tokenizer, *, check: bool = False
                                 ) -> Float[Tensor, " m"]:
    """log p(c | prompt of ``statement``) for every candidate ``c``, one row per candidate."""
    rows = [Statement(statement.subject, statement.relation, c, -1, statement.direction, statement.split)
            for c in candidates]
    encoded = encode_statements(facts, rows, tokenizer)
    return answer_scores(model, encoded, check=check)[0]


@torch.no_grad()
def evaluate(model, facts: FactSet | None = None, splits: Sequence[str] | None = None, *, tokenizer=None
             ) -> Behaviour:
    """Behaviour of ``model`` on each split of ``facts`` (default: every non-empty split).

    Takes ``evaluate(run)`` for a :class:`~revinterp.models.LoadedRun` or ``evaluate(model, facts)``. The model is
    put in eval mode for the call and returned to its previous mode. Weights or outputs that are not finite raise
    :class:`~revinterp.models.NonFiniteError` naming the tensor (never a result).
    """
    model, facts, tokenizer = unpack_run(model, facts, tokenizer)
    splits = list(splits) if splits is not None else facts.split_names
    check_finite(model)
    was_training = model.training
    model.eval()
    try:
        result = {}
        for name in splits:
            statements = facts.split(name)
            if not statements:
                raise ValueError(f"split {name!r} is empty in this fact set; non-empty: {facts.split_names}")
            encoded = encode_statements(facts, statements, tokenizer)
            logprob, vocab_correct = answer_scores(model, encoded, check=True)
            check_finite_output(logprob, f"log p(answer) on split {name!r}")
            logprob_candidates, rank, n_candidates = candidate_scores(model, facts, statements, tokenizer, check=True)
            check_finite_output(logprob_candidates, f"log p(answer among candidates) on split {name!r}")
            result[name] = SplitBehaviour(
                split=name, statements=statements, correct=(rank == 1) & torch.isfinite(logprob_candidates),
                rank=rank, logprob=logprob,
                logprob_candidates=logprob_candidates, vocab_correct=vocab_correct,
                n_candidates=n_candidates, answer_lengths=encoded.answer_lengths,
                vocab_size=len(tokenizer),
            )
        return Behaviour(result)
    finally:
        model.train(was_training)
