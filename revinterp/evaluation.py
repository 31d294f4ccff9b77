"""Behaviour per split: does the model answer trained facts, and the held-out other direction?

For each statement (prompt ``s r``, answer ``o``), its M answer candidates (every object of relation ``r``, see
:meth:`FactSet.candidates`) and its k valid answers (every answer of the question ``(s, r)``,
:meth:`FactSet.answers`: one, or several for a one-to-many relation such as a child's two parents):

- score(c) = log p(c | s r), summed over the candidate's tokens with teacher forcing (``"score": "sum"``); the
  **length-fair** score divides it by the candidate's token count (mean per-token log-probability), so that a long
  candidate is not ranked low for its length alone;
- **rank**: 1 + the number of *invalid* candidates scored above the best valid answer (the other valid answers are
  left out), so 1 .. M - k + 1; chance, with the answer exchangeable with its candidates: the position of the first
  valid one in a random order, mean (M + 1) / (k + 1) (:mod:`revinterp.chance`). NaN never wins: an invalid
  candidate scored NaN counts as above, and a best valid answer scored NaN or -inf ranks M - k + 2, never correct;
- **accuracy**: rank 1, i.e. the highest-scored candidate is a valid answer (chance k / M);
- **logprob_candidates**: log of the softmax mass of the scores on the valid answers (uniform baseline
  -ln(M / k); -ln M for one answer);
- **logprob**: log p(o) of the statement's own answer over the whole vocabulary (uniform baseline -t ln V for t
  tokens);
- **vocab_accuracy**: every token of the statement's own answer is the arg max over the whole vocabulary.

For a held-out split the same figures are also computed among the split's own answers only
(``held_out_answers``: candidates = the distinct answers of the split's statements, per relation), where chance is
high enough for zero hits to say something. ``tests`` holds one-sided tests against chance
(:func:`revinterp.chance.chance_tests`).

Per-example values are kept; accuracies come with exact binomial (Clopper-Pearson) intervals, other split means
with bootstrap intervals over examples (:mod:`revinterp.stats`); over seeds (:func:`over_seeds`) every seed's value
with their mean and Student's t interval. Only the positions that predict an answer token are unembedded, a block of
the vocabulary at a time (:func:`read_at`, :class:`VocabularyReadout`: no row of logits is ever held), and each
relation's candidate scores are held for a chunk of statements at a time, at most :data:`LOGIT_ELEMENTS` numbers,
so memory is O(chunk x candidates), never all statements at once.

:func:`evaluate` refuses a model whose weights or outputs are not finite
(:class:`revinterp.models.NonFiniteError` names the tensor): NaN compares false with everything, so such a model
would otherwise look perfect.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revinterp.chance import chance_tests
from revinterp.data import SPLITS, EncodedStatements, FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import check_finite, check_finite_output, unpack_run
from revinterp.stats import Estimate, bootstrap_ci, clopper_pearson, format_fixed, t_interval

ROWS_PER_BATCH = 4096
"""Most token rows in one forward."""
LOGIT_ELEMENTS = 1 << 22
"""Most logits (rows x positions x vocabulary) one forward may produce, and most candidate scores held at once
(16 MiB of float32); fewer rows per chunk for a large vocabulary. Under glibc's largest mmap threshold (32 MiB) a
chunk's temporaries reuse heap pages; at 64 MiB every elementwise pass over a chunk was served fresh pages and
page-faulted them in (evaluation at 8,000 pairs, trimming the heap after every chunk: 15.5 s of CPU at 64 MiB,
12.1 s at 16 MiB; measured)."""


@dataclass(frozen=True)
class CandidateRanking:
    """Per question: where the best valid answer ranks among one candidate set (see the module docstring).

    ``logprob_candidates`` is ``None`` for a score that is not a log-probability (the length-fair one).
    """

    correct: Bool[Tensor, " n"]
    rank: Int[Tensor, " n"]
    n_candidates: Int[Tensor, " n"]
    n_valid: Int[Tensor, " n"]
    logprob_candidates: Float[Tensor, " n"] | None = None

    @property
    def accuracy(self) -> Estimate:
        """Top-1 accuracy with its exact binomial (Clopper-Pearson) 95 % interval: a proportion of one run, where a
        bootstrap of all-zero hits would give an uninformative [0, 0]."""
        return clopper_pearson(int(self.correct.sum()), len(self.correct))

    @property
    def chance_accuracy(self) -> float:
        return (self.n_valid.double() / self.n_candidates.double()).mean().item()

    @property
    def chance_mean_rank(self) -> float:
        return ((self.n_candidates.double() + 1) / (self.n_valid.double() + 1)).mean().item()

    def tests(self) -> dict:
        return chance_tests(self.correct, self.rank, self.logprob_candidates, self.n_candidates, self.n_valid)

    def select(self, index: Int[Tensor, " k"]) -> CandidateRanking:
        lp = None if self.logprob_candidates is None else self.logprob_candidates[index]
        return CandidateRanking(self.correct[index], self.rank[index], self.n_candidates[index], self.n_valid[index],
                                lp)

    def metrics(self) -> dict:
        """Accuracy with its interval, mean rank, their chance levels and the one-sided tests, as plain numbers."""
        acc, tests = self.accuracy, self.tests()
        return {
            "n_candidates": int(self.n_candidates.max()),
            "accuracy": acc.mean,
            "accuracy_ci": [acc.low, acc.high],
            "chance_accuracy": self.chance_accuracy,
            "mean_rank": self.rank.double().mean().item(),
            "chance_mean_rank": self.chance_mean_rank,
            "accuracy_above_chance_p": tests["accuracy_above_chance_p"],
        }


@dataclass(frozen=True)
class SplitBehaviour:
    """Per-example behaviour on one split (see the module docstring for each quantity).

    ``correct``, ``rank``, ``logprob_candidates``, ``n_candidates`` and ``n_valid`` rank the summed score among all
    candidates; ``length_fair`` ranks the mean per-token score among them; ``held_out_answers`` (untrained splits
    only) ranks the summed score among the split's own answers.

    The statements of one question (``Kid child_of Mom`` and ``Kid child_of Dad``) share their prompt and valid
    answers, so they rank alike and are one observation: the ranking figures, their intervals and the tests are
    over distinct questions (:attr:`question_rows`; as many as statements with one answer per question).
    """

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
    n_valid: Int[Tensor, " n"]
    length_fair: CandidateRanking
    held_out_answers: CandidateRanking | None = None

    @property
    def n(self) -> int:
        return len(self.statements)

    @property
    def trained(self) -> bool:
        return SPLITS[self.split]

    @property
    def question_rows(self) -> Int[Tensor, " q"]:
        """The first statement of each distinct question ``(subject, relation)``, in statement order."""
        first: dict[tuple[str, str], int] = {}
        for i, s in enumerate(self.statements):
            first.setdefault((s.subject, s.relation), i)
        return torch.tensor(sorted(first.values()), dtype=torch.long)

    @property
    def ranking(self) -> CandidateRanking:
        """The summed score's ranking among all candidates, one row per distinct question."""
        return CandidateRanking(self.correct, self.rank, self.n_candidates, self.n_valid,
                                self.logprob_candidates).select(self.question_rows)

    @property
    def accuracy(self) -> Estimate:
        """Top-1 accuracy among the candidates with its exact binomial (Clopper-Pearson) 95 % interval."""
        return self.ranking.accuracy

    @property
    def chance_accuracy(self) -> float:
        return self.ranking.chance_accuracy

    @property
    def probability(self) -> float:
        """Mean probability of the answer over the whole vocabulary (the fitting criterion)."""
        return self.logprob.exp().mean().item()

    def metrics(self) -> dict:
        """Split means and baselines as plain numbers (the JSON of ``revinterp eval --json``)."""
        ranking, questions = self.ranking, self.question_rows
        acc, lp, lpc = ranking.accuracy, bootstrap_ci(self.logprob), bootstrap_ci(ranking.logprob_candidates)
        rank = bootstrap_ci(ranking.rank.double())
        m, k = ranking.n_candidates.double(), ranking.n_valid.double()
        out = {
            "n": self.n,
            "n_questions": len(questions),
            "trained": self.trained,
            "score": "sum",
            "accuracy": acc.mean,
            "accuracy_ci": [acc.low, acc.high],
            "accuracy_interval": "clopper_pearson",
            "chance_accuracy": ranking.chance_accuracy,
            "mean_rank": rank.mean,
            "mean_rank_ci": [rank.low, rank.high],
            "chance_mean_rank": ranking.chance_mean_rank,
            "logprob": lp.mean,
            "logprob_ci": [lp.low, lp.high],
            "uniform_logprob": -(self.answer_lengths.double() * math.log(self.vocab_size)).mean().item(),
            "logprob_candidates": lpc.mean,
            "logprob_candidates_ci": [lpc.low, lpc.high],
            "uniform_logprob_candidates": -(m / k).log().mean().item(),
            "probability": self.probability,
            "vocab_accuracy": self.vocab_correct.float().mean().item(),
            "n_candidates": int(self.n_candidates.max()),
            "max_valid_answers": int(self.n_valid.max()),
            "tests": ranking.tests(),
        }
        fair = self.length_fair.select(questions)
        out["length_fair"] = {"score": "mean_token_logprob", **fair.metrics(),
                              "rank_below_chance_p": fair.tests()["rank_below_chance_p"]}
        if self.held_out_answers is not None:
            out["held_out_answers"] = self.held_out_answers.select(questions).metrics()
        return out


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
                    n_valid=int(sb.n_valid[i]), length_fair_rank=int(sb.length_fair.rank[i]),
                    **({} if sb.held_out_answers is None else dict(
                        held_out_answers_rank=int(sb.held_out_answers.rank[i]),
                        held_out_answers_n_candidates=int(sb.held_out_answers.n_candidates[i]))),
                ))
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A table: accuracy with its 95 % interval beside chance, rank and log-probabilities; ``n`` counts distinct
        questions (the statements, with one answer per question)."""
        header = (
            f"{'split':<24}{'n':>5}  {'trained':<8}{'accuracy [95% CI]':<24}{'chance':>8}"
            f"{'rank':>8}{'logp(cand)':>12}{'-ln M':>8}{'p(answer)':>11}"
        )
        lines = [header, "-" * len(header)]
        for name, sb in self.splits.items():
            m = sb.metrics()
            acc = f"{100 * m['accuracy']:5.1f}% [{100 * m['accuracy_ci'][0]:.1f}, {100 * m['accuracy_ci'][1]:.1f}]"
            lines.append(
                f"{name:<24}{m['n_questions']:>5}  {'yes' if m['trained'] else 'no':<8}{acc:<24}"
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


@dataclass(frozen=True)
class SeedSummary(Estimate):
    """One split metric over runs with different seeds: every seed's value (``values``) and their mean with
    Student's t 95 % interval over seeds (:func:`revinterp.stats.t_interval`; a percentile bootstrap over a handful
    of seeds under-covers). With one seed, or a non-finite value, the interval is undefined (NaN; ``None`` in
    :meth:`to_dict`)."""

    values: tuple[float, ...] = ()
    method: str = "student_t_over_seeds"

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}] (t over {self.n} seeds)"

    def to_dict(self) -> dict:
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {"mean": finite(self.mean), "ci_low": finite(self.low), "ci_high": finite(self.high), "n": self.n,
                "values": [finite(v) for v in self.values], "method": self.method}


def over_seeds(behaviours: Sequence[Behaviour], metrics: Sequence[str] = ("accuracy", "mean_rank", "logprob_candidates")
               ) -> dict[str, dict[str, SeedSummary]]:
    """Split means across runs with different seeds: per split and metric, every seed's value and their mean with
    Student's t interval over seeds (:class:`SeedSummary`).

    Every run contributes one number per split and metric (its split mean), so the interval says how much the
    result moves from seed to seed, not from example to example. A metric is a key of
    :meth:`SplitBehaviour.metrics` or a dotted path into it (``"held_out_answers.accuracy"``); a split lacking it
    (``held_out_answers`` of a trained split) leaves it out.
    """
    if not behaviours:
        raise ValueError("over_seeds needs at least one run's behaviour")
    splits = [name for name in behaviours[0].splits if all(name in b.splits for b in behaviours)]
    out: dict[str, dict[str, SeedSummary]] = {}
    for split in splits:
        numbers = [b[split].metrics() for b in behaviours]
        out[split] = {}
        for metric in metrics:
            values = [_metric(m, metric) for m in numbers]
            if any(v is None for v in values):
                continue
            mean = sum(values) / len(values)
            if len(values) >= 2 and all(math.isfinite(v) for v in values):
                interval = t_interval(values)
                low, high = interval.low, interval.high
            else:
                low = high = math.nan
            out[split][metric] = SeedSummary(mean, low, high, len(values), values=tuple(values))
    return out


def _metric(numbers: dict, path: str) -> float | None:
    """``numbers[path]`` for a dotted path into a split's metrics, or None where it is absent."""
    value = numbers
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


FREE_HEAP_LIMIT = 256 << 20
"""Free bytes the C heap may hold between chunks before :func:`release_free_heap` hands them back."""


@functools.cache
def _glibc():
    """The process's C library when it is glibc with ``mallinfo2`` and ``malloc_trim`` (2.33 and later), else None."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype, libc.malloc_trim.argtypes = MallInfo2, [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def release_free_heap(limit: int = FREE_HEAP_LIMIT) -> None:
    """Hand the C heap's free pages back to the operating system once it holds more than ``limit`` free bytes
    (glibc's ``mallinfo2`` and ``malloc_trim(0)``; nothing elsewhere).

    Scoring chunk after chunk allocates tensors of several MB whose sizes alternate (logits, their log-softmax, the
    candidate columns); glibc serves those from the heap, which fragments: at 100,000 pairs one split's evaluation
    reached 8.5 GiB of RSS with no trim inside it, and kept 2.1 GiB after it returned with none at all. Trimming
    after every chunk bounds that but page-faults the trimmed pages back in (a fifth more CPU at 8,000 pairs), so
    the heap is trimmed only when its free bytes pass ``limit``.
    """
    libc = _glibc()
    if libc is not None and libc.mallinfo2().fordblks > limit:
        libc.malloc_trim(0)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def chunk_rows(width: int, vocab_size: int | None, limit: int | None = None) -> int:
    """Rows per forward: at most ``limit`` (default :data:`ROWS_PER_BATCH`) and, given the vocabulary size, at most
    :data:`LOGIT_ELEMENTS` logits of ``width`` positions (at least one row)."""
    limit = ROWS_PER_BATCH if limit is None else limit
    if limit < 1:
        raise ValueError(f"chunk of {limit} rows: expected at least 1")
    if vocab_size is None:
        return limit
    return max(1, min(limit, LOGIT_ELEMENTS // max(1, width * vocab_size)))


def unembedding_module(model) -> torch.nn.Module | None:
    """The module that maps the final residual stream (after the final norm) to logits: a bridge's ``unembed``, a
    plain ``NativeModel``'s ``head`` (:func:`revinterp.training.plain_model`); None for any other model."""
    for name in ("unembed", "head"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


VOCABULARY_BLOCK = 1 << 18
"""Logits :class:`VocabularyReadout` computes at once (1 MiB of float32, within a core's L2 cache): every pass over
a block (its maximum, exp, sum and the gathers) reads cache, where a whole row of a 200,000-word vocabulary would
be read from memory once per pass."""
READOUT_ROWS = 256
"""Most rows of one block: the matrix product ``rows x d_model @ d_model x columns`` keeps a tall shape."""
EXP_FLOOR = -87.0
"""Logits more than this below their block's maximum are raised to it before ``exp``: ``exp`` of a number under
-87 is a float32 denormal (or 0), which torch's vectorized ``exp`` computes 10-40x slower than a normal number
(measured: 10 ms against 0.26 ms for 256K values at -95), and such a term next to the maximum's ``exp(0) = 1``
changes the sum by less than ``vocabulary x exp(-87) < 1e-32``, below float32's and float64's resolution."""


@dataclass(frozen=True)
class VocabularyReading:
    """What a question needs of the logits at an answer position, without holding a row of them."""

    logsumexp: Float[Tensor, " k"]
    argmax: Int[Tensor, " k"]
    target_logit: Float[Tensor, " k"] | None
    column_logits: Float[Tensor, "k m"] | None


class VocabularyReadout:
    """Reads the vocabulary's logits a block at a time: per row, ``logsumexp`` (the log-softmax's normalizer),
    the arg max, the logit of one target per row and the logits of shared columns, never holding a row of logits.

    ``features`` are the final residual rows and the logits ``features @ weight.T + bias`` (``weight``
    ``[vocabulary, d_model]``, ``nn.Linear``'s layout), or, with ``weight=None``, the logits themselves (a model
    whose unembedding is not known). Blocks of :data:`READOUT_ROWS` rows x (:data:`VOCABULARY_BLOCK` / rows)
    columns; the normalizer is the running ``logaddexp`` of the blocks' ``m + log sum exp(z - m)``; the arg max
    keeps the first maximum as ``argmax`` does; a NaN logit makes the normalizer NaN. No gradient flows (the blocks
    are worked on in place); :class:`revinterp.analysis.fast_patching.AnswerReadout` is the differentiable one.
    """

    def __init__(self, weight: Float[Tensor, "vocab d_model"] | None, bias: Float[Tensor, " vocab"] | None = None):
        self.weight, self.bias = weight, bias

    @classmethod
    def of(cls, model) -> VocabularyReadout | None:
        """The readout of a bridge's or plain ``NativeModel``'s linear unembedding; None where it is not a plain
        ``nn.Linear``, carries hooks of its own (a caller's hook on ``unembed.hook_out`` must see the logits), or
        the model caps its logits."""
        module = unembedding_module(model)
        linear = getattr(module, "original_component", module)
        cap = getattr(getattr(model, "cfg", model), "output_logits_soft_cap", 0) or 0
        if not isinstance(linear, torch.nn.Linear) or cap > 0 or any(
                m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
            return None
        return cls(linear.weight, linear.bias)

    def logits(self, features: Float[Tensor, "k d"], start: int, stop: int) -> Float[Tensor, "k columns"]:
        if self.weight is None:
            return features[:, start:stop].clone()  # the blocks are worked on in place
        bias = None if self.bias is None else self.bias[start:stop]
        return torch.nn.functional.linear(features, self.weight[start:stop], bias)

    @torch.no_grad()
    def read(self, features: Float[Tensor, "k d"], *, targets: Int[Tensor, " k"] | None = None,
             columns: Int[Tensor, " m"] | None = None, check: bool = False) -> VocabularyReading:
        """The :class:`VocabularyReading` of every row; with ``check``, a non-finite logit raises
        :class:`~revinterp.models.NonFiniteError`."""
        k, device, dtype = len(features), features.device, features.dtype
        vocab = features.shape[1] if self.weight is None else self.weight.shape[0]
        lse = torch.full((k,), -math.inf, device=device, dtype=dtype)
        best = torch.full((k,), -math.inf, device=device, dtype=dtype)
        argmax = torch.zeros(k, dtype=torch.long, device=device)
        target_logit = None if targets is None else torch.full((k,), math.nan, device=device, dtype=dtype)
        if columns is not None:
            order = columns.argsort()
            sorted_columns = columns[order]
            sorted_logits = torch.empty(k, len(columns), device=device, dtype=dtype)
        for r0 in range(0, k, READOUT_ROWS):
            rows = slice(r0, r0 + READOUT_ROWS)
            x = features[rows]
            step = max(1, VOCABULARY_BLOCK // len(x))
            for c0 in range(0, vocab, step):
                c1 = min(vocab, c0 + step)
                z = self.logits(x, c0, c1)
                if targets is not None:
                    inside = ((targets[rows] >= c0) & (targets[rows] < c1)).nonzero()[:, 0]
                    if len(inside):
                        target_logit[r0 + inside] = z[inside, targets[rows][inside] - c0]
                if columns is not None:
                    a, b = torch.searchsorted(sorted_columns, torch.tensor([c0, c1], device=device)).tolist()
                    if b > a:
                        sorted_logits[rows, a:b] = z[:, sorted_columns[a:b] - c0]
                top = z.amax(-1)  # NaN where the block holds one
                if check and not (bool(torch.isfinite(top).all()) and bool(torch.isfinite(z.amin(-1)).all())):
                    check_finite_output(z, "logits")
                raised = (top > best[rows]).nonzero()[:, 0]  # strictly: the first maximum is kept, as argmax does
                if len(raised):
                    best[r0 + raised] = top[raised]
                    argmax[r0 + raised] = z[raised].argmax(-1) + c0
                lse[rows] = torch.logaddexp(lse[rows], logsumexp_rows(z, top, overwrite=True))
        column_logits = None
        if columns is not None:
            column_logits = sorted_logits if bool((order[1:] > order[:-1]).all()) else sorted_logits[:, order.argsort()]
        return VocabularyReading(lse, argmax, target_logit, column_logits)


class _ReachedUnembedding(Exception):
    """Raised by the pre-hook that stops a forward at the unembedding's input, carrying the requested rows."""

    def __init__(self, features: Tensor):
        super().__init__("reached the unembedding")
        self.features = features


def read_at(model, tokens: Int[Tensor, "n seq"], rows: Int[Tensor, " k"], positions: Int[Tensor, " k"], *,
            readout: VocabularyReadout | None = None, targets: Int[Tensor, " k"] | None = None,
            columns: Int[Tensor, " m"] | None = None, check: bool = False) -> VocabularyReading:
    """The :class:`VocabularyReading` of ``model(tokens)[rows, positions]`` with only those positions read.

    The unembedding (``d_model x vocabulary`` per position) is nearly all of a small model's forward at a large
    vocabulary, and a question needs it at its answer positions only: given ``readout``
    (:meth:`VocabularyReadout.of`), a pre-hook on the unembedding takes the requested rows of its input and stops
    the forward, and the readout reads the vocabulary from them a block at a time. Without one the model runs in
    full and its logits are read.
    """
    if readout is None:
        return VocabularyReadout(None).read(model(tokens)[rows, positions], targets=targets, columns=columns,
                                            check=check)

    def stop(_, args):
        raise _ReachedUnembedding(args[0][rows, positions])

    handle = unembedding_module(model).register_forward_pre_hook(stop)
    try:
        model(tokens)
    except _ReachedUnembedding as reached:
        return readout.read(reached.features, targets=targets, columns=columns, check=check)
    finally:
        handle.remove()
    raise RuntimeError("the forward did not reach the unembedding; expected a model whose output is its logits")


def answer_scores(model, encoded: EncodedStatements, *, check: bool = False, rows: int | None = None,
                  vocab_size: int | None = None) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """Log p(answer) summed over the answer tokens, and whether every answer token is the arg max.

    The answer token at position ``p`` is scored with the logits at ``p - 1``. A token whose log-probability is
    not finite is never the arg max. With ``check``, non-finite logits raise
    :class:`~revinterp.models.NonFiniteError`. Rows go through the model in chunks (:func:`chunk_rows`: at most
    ``rows`` each; bounded in logits given ``vocab_size`` where the model runs in full).
    """
    return teacher_forced_scores(model, encoded.tokens, encoded.answer_mask, check=check, rows=rows,
                                 vocab_size=vocab_size)


def teacher_forced_scores(model, tokens: Int[Tensor, "n seq"], answer_mask: Bool[Tensor, "n seq"], *,
                          check: bool = False, rows: int | None = None, vocab_size: int | None = None, bar=None
                          ) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """:func:`answer_scores` of token rows and the mask of their answer positions; only the positions that predict
    an answer token are read (:func:`read_at`)."""
    logprob, greedy = [], []
    device = model_device(model)
    readout = VocabularyReadout.of(model)
    predicts_answer = answer_mask[:, 1:]  # position p predicts the token at p + 1
    step = chunk_rows(tokens.shape[1], None if readout is not None else vocab_size, rows)
    for start in range(0, len(tokens), step):
        chunk = tokens[start:start + step].to(device)
        row, pos = predicts_answer[start:start + step].to(device).nonzero(as_tuple=True)
        target = chunk[row, pos + 1]
        reading = read_at(model, chunk, row, pos, readout=readout, targets=target, check=check)
        token_logp = reading.target_logit - reading.logsumexp
        logprob.append(torch.zeros(len(chunk), dtype=token_logp.dtype, device=device).index_add_(0, row, token_logp)
                       .cpu())
        missed = ~((reading.argmax == target) & torch.isfinite(token_logp))
        greedy.append((torch.zeros(len(chunk), dtype=torch.long, device=device).index_add_(0, row, missed.long())
                       == 0).cpu())
        release_free_heap()
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(logprob), torch.cat(greedy)


def logsumexp_rows(x: Float[Tensor, "n m"], top: Float[Tensor, " n"] | None = None, *, overwrite: bool = False
                   ) -> Float[Tensor, " n"]:
    """``torch.logsumexp(x, -1)`` at the cost of one ``exp`` per value: ``top + log sum exp(x - top)`` with ``top``
    the row's maximum (given, or ``amax``) and every ``x - top`` under :data:`EXP_FLOOR` raised to it (the slow
    path of ``exp`` is never taken; the sum moves by less than its resolution). Rows whose maximum is not finite
    (all ``-inf``, an ``inf``, a NaN) are torch's own. ``overwrite`` works in ``x``'s memory."""
    top = x.amax(-1) if top is None else top
    finite = torch.isfinite(top)
    shifted = x.sub_(top[:, None]) if overwrite and bool(finite.all()) else x - torch.where(finite, top, 0.0)[:, None]
    out = shifted.clamp_(min=EXP_FLOOR).exp_().sum(-1).log_().add_(torch.where(finite, top, 0.0))
    if not bool(finite.all()):
        rows = (~finite).nonzero()[:, 0]
        out[rows] = x[rows].logsumexp(-1)  # x is intact: it is overwritten only where every row is finite
    return out


def rank_among(scores: Float[Tensor, "n m"], valid: Bool[Tensor, "n m"]) -> CandidateRanking:
    """Rank of the best valid answer among the invalid candidates, hit, and log of the valid answers' softmax mass.

    ``rank = 1 + #{invalid c : score(c) > max over valid v of score(v), or score(c) is NaN}``; a best valid score
    that is NaN or -inf (or +inf) ranks ``M - k + 2``, below every candidate, and is never a hit.
    """
    n_valid = valid.sum(-1, dtype=torch.int32).long()
    if bool((n_valid < 1).any()):
        raise ValueError("a question without a valid answer among its candidates; expected at least one")
    # a NaN makes the sum NaN (so may inf - inf): only then the elementwise check (candidate scores are finite)
    nan = torch.isnan(scores) if bool(torch.isnan(scores.sum())) else None
    has_nan = nan is not None and bool(nan.any())
    valid_scores = torch.where(valid, scores, -math.inf)
    top_valid = valid_scores.amax(-1)  # NaN where a valid score is NaN
    best = valid_scores.masked_fill(nan, -math.inf).amax(-1) if has_nan else top_valid
    finite = torch.isfinite(best)
    beats = scores > best[:, None]  # never a valid candidate: best is their maximum (when none is NaN)
    if has_nan:
        beats = (beats | nan) & ~valid
    rank = torch.where(finite, 1 + beats.sum(-1, dtype=torch.int32).long(), scores.shape[1] - n_valid + 2)
    # one valid answer (the usual question): the log of its mass is its own score
    valid_mass = top_valid.clone()
    several = (n_valid > 1).nonzero()[:, 0]
    if len(several):
        valid_mass[several] = logsumexp_rows(valid_scores[several], top_valid[several])
    logprob = valid_mass - logsumexp_rows(scores)
    n_candidates = torch.full_like(n_valid, scores.shape[1])
    return CandidateRanking(rank == 1, rank, n_candidates, n_valid, logprob)


def answer_rank(scores: Float[Tensor, "n m"], answer_index: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
    """The rank of one answer per row among its candidates (:func:`rank_among` with one valid answer): NaN never
    wins, and an answer scored NaN or -inf ranks M + 1."""
    valid = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, answer_index[:, None], True)
    return rank_among(scores, valid).rank


@dataclass(frozen=True)
class _RelationGroup:
    """The statements of one split through one relation, and what scoring them takes."""

    relation: str
    rows: list[int]
    candidates: list[str]
    candidate_ids: list[list[int]]

    @property
    def single_token(self) -> bool:
        return all(len(c) == 1 for c in self.candidate_ids)

    @property
    def forward_rows(self) -> int:
        return len(self.rows) if self.single_token else len(self.rows) * len(self.candidates)


def relation_groups(facts: FactSet, statements: Sequence[Statement], tokenizer) -> list[_RelationGroup]:
    by_relation: dict[str, list[int]] = {}
    for i, s in enumerate(statements):
        by_relation.setdefault(s.relation, []).append(i)
    groups = []
    for relation, rows in by_relation.items():
        candidates = facts.candidates(relation)
        groups.append(_RelationGroup(relation, rows, candidates,
                                     [encode_words(tokenizer, c.split()) for c in candidates]))
    return groups


def candidate_score_matrix(model, facts: FactSet, statements: Sequence[Statement], group: _RelationGroup, tokenizer,
                           *, check: bool = False, rows: int | None = None, bar=None) -> Float[Tensor, "n m"]:
    """log p(c | prompt) of every candidate ``c`` of ``group`` for each of its statements, with teacher forcing.

    All candidates single tokens: one forward of each prompt. Otherwise one row per (statement, candidate), built
    and scored a chunk at a time (:func:`chunk_rows`); every row is padded to one width, so chunking does not
    change a row's input.
    """
    device = model_device(model)
    prompts = encode_statements(facts, [statements[i] for i in group.rows], tokenizer)
    readout = VocabularyReadout.of(model)
    vocab_size = None if readout is not None else len(tokenizer)  # the readout holds no row of logits
    if group.single_token:
        ids = torch.tensor([c[0] for c in group.candidate_ids], device=device)
        step = chunk_rows(prompts.tokens.shape[1], vocab_size, rows)
        scores = []
        for start in range(0, len(prompts), step):
            chunk = prompts.tokens[start:start + step].to(device)
            last = (prompts.prompt_lengths[start:start + step] - 1).to(device)
            reading = read_at(model, chunk, torch.arange(len(chunk), device=device), last, readout=readout,
                              columns=ids, check=check)
            scores.append(reading.column_logits.sub_(reading.logsumexp[:, None]).cpu())
            if bar is not None:
                bar.update(len(chunk))
        return scores[0] if len(scores) == 1 else torch.cat(scores)
    n, m = len(group.rows), len(group.candidates)
    pad = tokenizer.pad_token_id
    prompt_len = prompts.prompt_lengths
    cand_len = torch.tensor([len(c) for c in group.candidate_ids])
    cand_tokens = torch.full((m, int(cand_len.max())), pad, dtype=torch.long)
    for j, c in enumerate(group.candidate_ids):
        cand_tokens[j, :len(c)] = torch.tensor(c)
    prompt_tokens = prompts.tokens
    width = int(prompt_len.max() + cand_len.max())
    pos = torch.arange(width)
    step = chunk_rows(width, vocab_size, rows)
    scores = []
    for start in range(0, n * m, step):
        flat = torch.arange(start, min(start + step, n * m))
        i, j = flat // m, flat % m
        offset = pos[None] - prompt_len[i, None]
        in_prompt = offset < 0
        in_answer = ~in_prompt & (offset < cand_len[j, None])
        from_prompt = prompt_tokens[i].gather(1, pos.clamp(max=prompt_tokens.shape[1] - 1).expand(len(flat), -1))
        from_answer = cand_tokens[j].gather(1, offset.clamp(0, cand_tokens.shape[1] - 1))
        tokens = torch.where(in_prompt, from_prompt, torch.where(in_answer, from_answer, pad))
        scores.append(teacher_forced_scores(model, tokens, in_answer, check=check, rows=len(flat),
                                            vocab_size=len(tokenizer), bar=bar)[0])
    return torch.cat(scores).reshape(n, m)


@torch.no_grad()
def evaluate(model, facts: FactSet | None = None, splits: Sequence[str] | None = None, *, tokenizer=None,
             rows: int | None = None, progress: bool = False) -> Behaviour:
    """Behaviour of ``model`` on each split of ``facts`` (default: every non-empty split).

    Takes ``evaluate(run)`` for a :class:`~revinterp.models.LoadedRun` or ``evaluate(model, facts)``. The model is
    put in eval mode for the call and returned to its previous mode. Weights or outputs that are not finite raise
    :class:`~revinterp.models.NonFiniteError` naming the tensor (never a result). ``rows`` caps the rows of one
    forward (:func:`chunk_rows`; the results do not depend on it beyond float rounding); ``progress`` shows a bar
    over the rows scored.
    """
    from tqdm.auto import tqdm

    model, facts, tokenizer = unpack_run(model, facts, tokenizer)
    splits = list(splits) if splits is not None else facts.split_names
    check_finite(model)
    plan = {}
    for name in splits:
        statements = facts.split(name)
        if not statements:
            raise ValueError(f"split {name!r} is empty in this fact set; non-empty: {facts.split_names}")
        plan[name] = (statements, relation_groups(facts, statements, tokenizer))
    total = sum(len(st) + sum(g.forward_rows for g in groups) for st, groups in plan.values())
    was_training = model.training
    model.eval()
    try:
        result = {}
        with tqdm(total=total, unit="row", desc="evaluating", disable=not progress, leave=False) as bar:
            for name, (statements, groups) in plan.items():
                encoded = encode_statements(facts, statements, tokenizer)
                logprob, vocab_correct = teacher_forced_scores(model, encoded.tokens, encoded.answer_mask,
                                                               check=True, rows=rows, vocab_size=len(tokenizer),
                                                               bar=bar)
                check_finite_output(logprob, f"log p(answer) on split {name!r}")
                result[name] = split_behaviour(model, facts, name, statements, groups, tokenizer, logprob,
                                               vocab_correct, encoded.answer_lengths, rows=rows, bar=bar)
        return Behaviour(result)
    finally:
        model.train(was_training)


def candidate_rankings(model, facts: FactSet, statements: Sequence[Statement], tokenizer, *,
                       held_out_answers: bool = False, check: bool = False, rows: int | None = None, bar=None,
                       groups: list[_RelationGroup] | None = None) -> dict[str, CandidateRanking]:
    """Rank every statement among its relation's candidates: ``"sum"`` (summed log-probability, with
    ``logprob_candidates``), ``"length_fair"`` (mean per-token log-probability) and, with ``held_out_answers``,
    ``"held_out_answers"`` (summed score among the answers of ``statements`` only, per relation)."""
    groups = relation_groups(facts, statements, tokenizer) if groups is None else groups
    parts: dict[str, list[CandidateRanking]] = {"sum": [], "length_fair": [], "held_out_answers": []}
    order = []
    for group in groups:
        column = {c: j for j, c in enumerate(group.candidates)}
        lengths = torch.tensor([len(c) for c in group.candidate_ids], dtype=torch.float32)
        own = {statements[i].object for i in group.rows}
        keep = torch.tensor([c in own for c in group.candidates])
        # statements a chunk at a time: the score matrix holds at most LOGIT_ELEMENTS numbers, O(chunk x candidates)
        per_chunk = max(1, LOGIT_ELEMENTS // len(group.candidates))
        for start in range(0, len(group.rows), per_chunk):
            part = replace(group, rows=group.rows[start:start + per_chunk])
            scores = candidate_score_matrix(model, facts, statements, part, tokenizer, check=check, rows=rows,
                                            bar=bar)
            if check:
                check_finite_output(scores, f"candidate scores of relation {group.relation!r}")
            valid = torch.zeros(scores.shape, dtype=torch.bool)
            cells = [(k, column[answer]) for k, i in enumerate(part.rows)
                     for answer in facts.answers(statements[i].subject, group.relation)]
            valid[[k for k, _ in cells], [j for _, j in cells]] = True
            total = rank_among(scores, valid)
            parts["sum"].append(total)
            # single-token candidates: the mean per-token score is the sum itself, and so is its ranking
            fair = total if group.single_token else rank_among(scores / lengths.to(scores.dtype), valid)
            parts["length_fair"].append(CandidateRanking(fair.correct, fair.rank, fair.n_candidates, fair.n_valid))
            if held_out_answers:
                parts["held_out_answers"].append(rank_among(scores[:, keep], valid[:, keep]))
            del scores, valid
            release_free_heap()
        order += group.rows
    back = torch.empty(len(statements), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(statements))

    def joined(rankings: list[CandidateRanking]) -> CandidateRanking:
        cat = lambda field: torch.cat([getattr(r, field) for r in rankings])[back]  # noqa: E731
        lp = None if rankings[0].logprob_candidates is None else cat("logprob_candidates")
        return CandidateRanking(cat("correct"), cat("rank"), cat("n_candidates"), cat("n_valid"), lp)

    return {name: joined(rankings) for name, rankings in parts.items() if rankings}


def candidate_scores(model, facts: FactSet, statements: Sequence[Statement], tokenizer, *, check: bool = False
                     ) -> tuple[Float[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """Per statement: log of the valid answers' softmax mass among the candidates, the rank, and M (the summed
    score of :func:`candidate_rankings`)."""
    ranking = candidate_rankings(model, facts, statements, tokenizer, check=check)["sum"]
    return ranking.logprob_candidates, ranking.rank, ranking.n_candidates


def split_behaviour(model, facts, name, statements, groups, tokenizer, logprob, vocab_correct, answer_lengths, *,
                    rows, bar) -> SplitBehaviour:
    """Rank every statement of one split among all candidates (summed and length-fair scores) and, for an
    untrained split, among the split's own answers."""
    trained = SPLITS[name]
    rankings = candidate_rankings(model, facts, statements, tokenizer, held_out_answers=not trained, check=True,
                                  rows=rows, bar=bar, groups=groups)
    total = rankings["sum"]
    check_finite_output(total.logprob_candidates, f"log p(answer among candidates) on split {name!r}")
    return SplitBehaviour(
        split=name, statements=statements, correct=total.correct, rank=total.rank, logprob=logprob,
        logprob_candidates=total.logprob_candidates, vocab_correct=vocab_correct, n_candidates=total.n_candidates,
        answer_lengths=answer_lengths, vocab_size=len(tokenizer), n_valid=total.n_valid,
        length_fair=rankings["length_fair"], held_out_answers=rankings.get("held_out_answers"),
    )
