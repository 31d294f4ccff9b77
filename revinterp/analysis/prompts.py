"""Clean/corrupted prompt pairs for causal interventions on relational facts.

For a statement ``s r o`` of a split, the *clean* prompt is ``<bos> s r`` with answer ``o``; the
*corrupted* prompt swaps in the subject ``s'`` of another statement of the same split, relation and
token length, with its answer ``o'``. Clean and corrupted prompts therefore differ only at the
subject's positions, and every position lines up (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", use the same clean/corrupted design with noise instead of a swap; Zhang & Nanda
2024, "Towards Best Practices of Activation Patching", recommend the swap).

Metrics read the logits at the last position and compare the two answers at their *first differing token*. For
single-token answers, or answers whose first tokens differ, that is the answer's first token and the prompt ends
at the relation. When the answers begin alike (descriptions that all start with "the"), both prompts are followed
by the answers' common first tokens (teacher forcing, the same tokens in both, so positions still line up) and the
metric compares the next token, where the answers part: ``<bos> s r the`` -> ``tall`` against
``<bos> s' r the`` -> ``old``. :attr:`PromptPairs.answer_offset` says how many answer tokens are fed.

A corruption whose answer is also a valid answer of the clean prompt (a one-to-many relation: two children of one
parent), or whose prompt also has the clean answer, is never used: the logit difference of two valid answers
says nothing about recall.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Int
from torch import Tensor

from revinterp.data import FactSet, Statement, encode_statements
from revinterp.data.bulk import cyclic_gc_paused
from revinterp.data.tokenizer import encode_words


@dataclass(frozen=True)
class PromptPairs:
    """Aligned clean and corrupted prompts with the tokens at which their answers first differ.

    ``labels`` names each position for plots (e.g. ``["<bos>", "subject", "->"]``). ``answer_offset`` is the number
    of answer tokens fed after the relation (their common first tokens; 0 when the answers differ at their first
    token). ``left_out`` counts the candidate pairs :func:`make_prompt_pairs` did not use, by reason.
    """

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    clean_answer: Int[Tensor, " batch"]
    corrupted_answer: Int[Tensor, " batch"]
    labels: tuple[str, ...]
    statements: tuple[Statement, ...] = ()
    corrupted_statements: tuple[Statement, ...] = ()
    split: str | None = None
    answer_offset: int = 0
    left_out: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(
                f"clean prompts have shape {tuple(self.clean.shape)} but corrupted prompts "
                f"{tuple(self.corrupted.shape)}; expected the same number of prompts of the same length"
            )
        n = self.clean.shape[0]
        if n < 1 or self.clean_answer.shape != (n,) or self.corrupted_answer.shape != (n,):
            raise ValueError(f"expected one clean and one corrupted answer per prompt ({n} prompts)")
        if len(self.labels) != self.clean.shape[1]:
            raise ValueError(f"{len(self.labels)} position labels for prompts of length {self.clean.shape[1]}")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def answer_position(self) -> int:
        return self.clean.shape[1] - 1

    def to(self, device) -> PromptPairs:
        return replace(self, clean=self.clean.to(device), corrupted=self.corrupted.to(device),
                       clean_answer=self.clean_answer.to(device), corrupted_answer=self.corrupted_answer.to(device))

    def select(self, indices: Sequence[int]) -> PromptPairs:
        """The pairs at ``indices``, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.clean.device)
        pick = (lambda seq: tuple(seq[i] for i in index.tolist()) if seq else ())
        return replace(self, clean=self.clean[index], corrupted=self.corrupted[index],
                       clean_answer=self.clean_answer[index], corrupted_answer=self.corrupted_answer[index],
                       statements=pick(self.statements), corrupted_statements=pick(self.corrupted_statements))

    def halves(self, seed: int = 0) -> tuple[PromptPairs, PromptPairs]:
        """Two disjoint random halves (the first one larger when the count is odd): one to choose on, the other
        to measure what was chosen, so that no selection is evaluated on the pairs it was made on."""
        if len(self) < 4:
            raise ValueError(f"{len(self)} prompt pairs cannot be halved; expected at least 4 (2 per half)")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        first = (len(self) + 1) // 2
        return self.select(sorted(order[:first])), self.select(sorted(order[first:]))

    @classmethod
    def from_prompts(
        cls,
        tokenizer,
        clean: Sequence[str],
        corrupted: Sequence[str],
        clean_answers: Sequence[str],
        corrupted_answers: Sequence[str],
    ) -> PromptPairs:
        """Pairs from text, e.g. ``clean=["a17 ->"]``, ``clean_answers=["b3"]``; every prompt must
        have the same number of tokens (no padding or truncation)."""
        if not (len(clean) == len(corrupted) == len(clean_answers) == len(corrupted_answers)):
            raise ValueError(
                f"got {len(clean)} clean prompts, {len(corrupted)} corrupted prompts, {len(clean_answers)} "
                f"clean answers and {len(corrupted_answers)} corrupted answers; expected equal counts"
            )
        if not clean:
            raise ValueError("no prompts: expected at least one clean prompt, one corrupted prompt and their answers")
        for kind, texts in (("clean prompt", clean), ("corrupted prompt", corrupted), ("clean answer", clean_answers),
                            ("corrupted answer", corrupted_answers)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"{kind} {i} is {text!r}, a {type(text).__name__}; expected a string of words")
                if kind.endswith("answer") and not text.split():
                    raise ValueError(f"{kind} {i} is {text!r}; expected at least one word")
        rows = [[tokenizer.bos_token_id, *encode_words(tokenizer, p.split())] for p in [*clean, *corrupted]]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            bad = [(p, len(r)) for p, r in zip([*clean, *corrupted], rows) if len(r) != len(rows[0])]
            raise ValueError(
                f"prompts have different token lengths: {rows and len(rows[0])} for {clean[0]!r} but {bad[:3]}; "
                "expected every prompt to have the same length (positions must line up)"
            )
        tokens = torch.tensor(rows)
        first = lambda answers: torch.tensor([encode_words(tokenizer, a.split())[0] for a in answers])  # noqa: E731
        labels = tuple(tokenizer.convert_ids_to_tokens(rows[0]))
        return cls(tokens[: len(clean)], tokens[len(clean):], first(clean_answers), first(corrupted_answers), labels)


def position_labels(clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"], tokenizer,
                    answer_offset: int = 0) -> tuple[str, ...]:
    """Names of the prompt positions: ``<bos>``, ``subject`` (``subject[k]`` for several tokens) where clean and
    corrupted prompts differ, the word itself where every prompt has the same one, else ``relation``; the last
    ``answer_offset`` positions (fed answer tokens) are the word where every prompt has the same one, else
    ``answer[k]``."""
    differs = (clean != corrupted).any(0).tolist()
    n_subject = sum(differs)
    first_answer = clean.shape[1] - answer_offset
    labels, k = [], 0
    for p in range(clean.shape[1]):
        if differs[p]:
            labels.append("subject" if n_subject == 1 else f"subject[{k}]")
            k += 1
        elif (clean[:, p] == clean[0, p]).all():
            labels.append(tokenizer.convert_ids_to_tokens(int(clean[0, p])))
        else:
            labels.append(f"answer[{p - first_answer}]" if p >= first_answer else "relation")
    return tuple(labels)


def prompt_length_counts(facts: FactSet, split: str, tokenizer) -> dict[int, int]:
    """How many statements of ``split`` have each prompt length (in tokens, ``<bos>`` included)."""
    encoded = encode_statements(facts, facts.split(split), tokenizer)
    return dict(sorted(Counter(int(n) for n in encoded.prompt_lengths).items()))


@cyclic_gc_paused()
def make_prompt_pairs(
    facts: FactSet,
    split: str,
    tokenizer,
    *,
    max_pairs: int | None = None,
    prompt_length: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
) -> PromptPairs:
    """Clean/corrupted pairs for every statement of ``split`` (or a random ``max_pairs`` of them).

    Statements are grouped by relation and prompt length; within a group each statement is paired
    with another one by a random cyclic shift, so every subject is corrupted by a different subject
    of the same split (when the shifted partner's answer is also valid for the clean prompt, or the other way
    round, the next one in the shifted order that is not). A pair is compared at the first token where the two
    answers differ (see the module docstring), after their common first tokens. Left out, and counted in
    :attr:`PromptPairs.left_out`:

    - ``answer_also_valid``: every partner's answer is a valid answer of the clean prompt, or the clean answer one
      of the partner's prompt (:meth:`FactSet.answers`; siblings share their parents);
    - ``no_differing_token``: one answer is the other, or its start;
    - ``other_length``: all pairs need one input length (prompt plus fed answer tokens) for positions to line up,
      so the pairs of the most common length are kept (of those within ``max_length``);
    - ``too_long``: the input would be longer than ``max_length`` tokens (the model's context, ``n_ctx``).

    A statement that is the only one of its relation and length in the split has no partner. Patching needs
    aligned positions, so all pairs have one prompt length: when the split's prompts have several lengths
    (multi-word names of different lengths, relation phrases of different lengths), choose one with
    ``prompt_length`` (:func:`prompt_length_counts` gives the counts); without it such a split is an error,
    never a silent subset.

    Raises:
        ValueError: fewer than two statements; prompts of several lengths and no ``prompt_length``; no
            two statements of one relation at the chosen length; no usable pair (with the counts of each
            reason).
    """
    statements = facts.split(split)
    if len(statements) < 2:
        raise ValueError(f"split {split!r} has {len(statements)} statement(s); expected at least 2 for prompt pairs")
    encoded = encode_statements(facts, statements, tokenizer)
    prompt_lengths, answer_lengths = encoded.prompt_lengths.tolist(), encoded.answer_lengths.tolist()
    counts = Counter(prompt_lengths)
    if prompt_length is None and len(counts) > 1:
        raise ValueError(
            f"split {split!r}: prompts have several lengths (tokens: statements) {dict(sorted(counts.items()))}; "
            "clean and corrupted prompts must align, so pass prompt_length= one of them to use its statements"
        )
    length = prompt_length if prompt_length is not None else next(iter(counts))
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(statements):
        if prompt_lengths[i] == length:
            groups.setdefault(s.relation, []).append(i)
    pairable = [rows for rows in groups.values() if len(rows) >= 2]
    if not pairable:
        raise ValueError(
            f"split {split!r}: no two statements share a relation and the prompt length {length} "
            f"(lengths: {dict(sorted(counts.items()))}); expected at least one such pair to corrupt a subject"
        )
    def also_valid(i: int, j: int) -> bool:
        si, sj = statements[i], statements[j]
        return sj.object in facts.answers(si.subject, si.relation) or si.object in facts.answers(sj.subject,
                                                                                                   sj.relation)

    rng = random.Random(seed)
    candidates, left_out = [], Counter()
    for rows in pairable:
        order = rows[:]
        rng.shuffle(order)
        shift = rng.randrange(1, len(order))
        for k, i in enumerate(order):
            # the partner a cyclic shift gives, or the next one after it whose answer is not valid for i's prompt
            partners = (order[(k + shift + t) % len(order)] for t in range(len(order)))
            j = next((j for j in partners if j != i and not also_valid(i, j)), None)
            if j is None:
                left_out["answer_also_valid"] += 1
            else:
                candidates.append((i, j))
    answers = [row[length:length + n] for row, n in zip(encoded.tokens.tolist(), answer_lengths)]
    by_offset: dict[int, list[tuple[int, int]]] = {}
    for i, j in candidates:
        offset = common_prefix_length(answers[i], answers[j])
        if offset == min(len(answers[i]), len(answers[j])):
            left_out["no_differing_token"] += 1
        elif max_length is not None and length + offset > max_length:
            left_out["too_long"] += 1
        else:
            by_offset.setdefault(offset, []).append((i, j))
    if not by_offset:
        raise ValueError(f"split {split!r}: no usable prompt pair among {len(candidates)} candidates (left out: "
                         f"{dict(left_out)}); expected two statements whose answers differ at some token and are "
                         "not valid answers of each other's prompt")
    offset = max(by_offset, key=lambda k: (len(by_offset[k]), -k))
    keep = by_offset[offset]
    left_out["other_length"] = sum(len(v) for k, v in by_offset.items() if k != offset)
    if max_pairs is not None and len(keep) > max_pairs:
        keep = sorted(rng.sample(keep, max_pairs))
    ci = torch.tensor([i for i, _ in keep])
    cj = torch.tensor([j for _, j in keep])
    fed = encoded.tokens[ci, length:length + offset]  # the common first answer tokens, the same in both
    clean = torch.cat([encoded.tokens[ci, :length], fed], dim=1)
    corrupted = torch.cat([encoded.tokens[cj, :length], fed], dim=1)
    return PromptPairs(
        clean=clean, corrupted=corrupted, clean_answer=torch.tensor([answers[i][offset] for i, _ in keep]),
        corrupted_answer=torch.tensor([answers[j][offset] for _, j in keep]),
        labels=position_labels(clean, corrupted, tokenizer, offset), statements=tuple(statements[i] for i, _ in keep),
        corrupted_statements=tuple(statements[j] for _, j in keep), split=split, answer_offset=offset,
        left_out={reason: n for reason, n in sorted(left_out.items()) if n},
    )


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first tokens the token sequences ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
