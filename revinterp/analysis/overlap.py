"""Lexical overlap: held-out questions whose subject shares a token with its answer.

A held-out reverse question ``Tom Smith child_of ?`` whose answer is ``Mary Smith`` can be answered above chance
without any reverse recall: the shared token ``Smith`` points at the answers that hold it. In a published list of
celebrity child-parent pairs 1,042 of 1,513 pairs share a surname, and held-out reverse accuracy reached 7.7 %
against a chance of 0.07 % (issue 18). This diagnostic says, per held-out question, which tokens its subject
shares with its answers (the tokenizer is word-level: one word, one token), what fraction of the held-out questions
has such overlap, and the held-out accuracy with and without overlap, each with its exact binomial
(Clopper-Pearson) 95 % interval. A one-sided Fisher exact test (Fisher 1935, the 2x2 table overlap x correct)
says whether the questions with overlap are answered more often than those without: the lexical shortcut.

A question with several valid answers (a child's two parents) is counted once, with the tokens its subject shares
with any of them: a child who carries the father's surname can reach either parent through it, and its two
statements rank alike (:attr:`revinterp.evaluation.SplitBehaviour.question_rows`).

Example:
    >>> from revinterp.analysis.overlap import lexical_overlap
    >>> overlap = lexical_overlap(evaluate(run))            # doctest: +SKIP
    >>> print(overlap.summary())                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from revinterp.data import SPLITS, Statement
from revinterp.stats import Estimate, clopper_pearson


def shared_tokens(statement: Statement, answers: Sequence[str] | None = None) -> tuple[str, ...]:
    """The tokens (words) of the statement's subject that its answer, or any of ``answers``, also holds, in the
    subject's order, once each.

    Example:
        >>> shared_tokens(Statement("Tom Smith", "child_of", "Mary Smith", 0, "reverse", "reverse_held_out"))
        ('Smith',)
    """
    words = {w for answer in (answers if answers is not None else [statement.object]) for w in answer.split()}
    return tuple(dict.fromkeys(w for w in statement.subject.split() if w in words))


@dataclass(frozen=True)
class LexicalOverlap:
    """Per held-out question: the tokens its subject shares with its answers, and whether the model answered it.

    ``statements`` holds one statement per question (its first), ``answers`` every answer of the question in its
    split; ``correct`` is the behaviour's top-1 hit among all candidates (any valid answer,
    :mod:`revinterp.evaluation`).
    """

    splits: tuple[str, ...]
    statements: tuple[Statement, ...]
    answers: tuple[tuple[str, ...], ...]
    shared: tuple[tuple[str, ...], ...]
    correct: Bool[Tensor, " n"]

    @property
    def n(self) -> int:
        return len(self.statements)

    @property
    def has_overlap(self) -> Bool[Tensor, " n"]:
        return torch.tensor([bool(s) for s in self.shared], dtype=torch.bool)

    @property
    def n_overlap(self) -> int:
        return int(self.has_overlap.sum())

    @property
    def fraction(self) -> Estimate:
        """The fraction of held-out questions with overlap, with its Clopper-Pearson 95 % interval."""
        return clopper_pearson(self.n_overlap, self.n)

    def accuracy(self, overlap: bool) -> Estimate | None:
        """Held-out accuracy of the questions with (``overlap=True``) or without overlap, Clopper-Pearson; ``None``
        when there is no such question."""
        group = self.has_overlap == overlap
        n = int(group.sum())
        return clopper_pearson(int((self.correct & group).sum()), n) if n else None

    @property
    def shortcut_p(self) -> float | None:
        """One-sided Fisher exact p-value that questions with overlap are answered more often than those without;
        ``None`` when one of the two groups is empty."""
        from scipy.stats import fisher_exact

        with_, without = self.has_overlap, ~self.has_overlap
        if not with_.any() or not without.any():
            return None
        table = [[int((self.correct & with_).sum()), int((~self.correct & with_).sum())],
                 [int((self.correct & without).sum()), int((~self.correct & without).sum())]]
        return float(fisher_exact(table, alternative="greater").pvalue)

    def to_numbers(self) -> dict:
        """Plain JSON (no NaN): the counts, the fraction and both accuracies with their intervals, the test, and
        every question with overlap (split, subject, relation, answer, shared tokens, correct)."""

        def estimate(e: Estimate | None) -> dict | None:
            return None if e is None else {"accuracy": e.mean, "ci": [e.low, e.high], "n": e.n}

        fraction = self.fraction
        return {
            "splits": list(self.splits),
            "n_questions": self.n,
            "n_overlap": self.n_overlap,
            "overlap_fraction": fraction.mean,
            "overlap_fraction_ci": [fraction.low, fraction.high],
            "accuracy_with_overlap": estimate(self.accuracy(True)),
            "accuracy_without_overlap": estimate(self.accuracy(False)),
            "interval": "clopper_pearson",
            "shortcut_p": self.shortcut_p,
            "shortcut_test": "fisher_exact_one_sided",
            "questions": [
                {"split": s.split, "subject": s.subject, "relation": s.relation, "answers": list(answers),
                 "shared": list(shared), "correct": bool(c)}
                for s, answers, shared, c in zip(self.statements, self.answers, self.shared, self.correct.tolist())
                if shared
            ],
        }

    def summary(self) -> str:
        """Three lines: how many held-out questions share a token with their answers, and accuracy with and
        without."""

        def line(label: str, e: Estimate | None) -> str:
            if e is None:
                return f"  {label}: no such question"
            hits = round(e.mean * e.n)
            return f"  {label}: {hits}/{e.n} = {100 * e.mean:.1f}% [{100 * e.low:.1f}, {100 * e.high:.1f}]"

        f = self.fraction
        p = self.shortcut_p
        lines = [
            f"Lexical overlap in {', '.join(self.splits)}: {self.n_overlap} of {self.n} held-out questions "
            f"({100 * f.mean:.1f}% [{100 * f.low:.1f}, {100 * f.high:.1f}]) share a token with their answers",
            line("accuracy with overlap", self.accuracy(True)),
            line("accuracy without overlap", self.accuracy(False)),
        ]
        if p is not None:
            lines.append(f"  with > without (one-sided Fisher exact): p = {p:.3g}")
        return "\n".join(lines)


def lexical_overlap(behaviour, splits: Sequence[str] | None = None) -> LexicalOverlap:
    """The lexical-overlap diagnostic of the held-out questions of ``behaviour``.

    Args:
        behaviour: a :class:`~revinterp.evaluation.Behaviour` (:func:`~revinterp.evaluation.evaluate`).
        splits: the held-out (untrained) splits to read; default every untrained split of ``behaviour``.

    Raises:
        ValueError: a split that is trained or not in ``behaviour``, or no held-out question at all.
    """
    names = [n for n in behaviour.splits if not SPLITS[n]] if splits is None else list(splits)
    for name in names:
        if name not in behaviour.splits:
            raise ValueError(f"split {name!r} is not in the behaviour; evaluated: {list(behaviour.splits)}")
        if SPLITS[name]:
            raise ValueError(f"split {name!r} is trained; expected a held-out split "
                             f"({[n for n in SPLITS if not SPLITS[n]]})")
    if not names:
        raise ValueError(f"no held-out split in the behaviour (evaluated: {list(behaviour.splits)}); expected at "
                         "least one untrained split")
    statements, answers, correct = [], [], []
    for name in names:
        sb = behaviour[name]
        by_question: dict[tuple[str, str], list[str]] = {}
        for s in sb.statements:
            by_question.setdefault((s.subject, s.relation), []).append(s.object)
        rows = sb.question_rows.tolist()
        statements += [sb.statements[i] for i in rows]
        answers += [tuple(by_question[sb.statements[i].subject, sb.statements[i].relation]) for i in rows]
        correct.append(sb.correct.bool().cpu()[rows])
    shared = tuple(shared_tokens(s, a) for s, a in zip(statements, answers))
    return LexicalOverlap(tuple(names), tuple(statements), tuple(answers), shared, torch.cat(correct))
