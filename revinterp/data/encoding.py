"""Statements as token tensors: ``<bos> prompt answer <pad>...``, one row per statement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from revinterp.data.bulk import cyclic_gc_paused
from revinterp.data.facts import FactSet, Statement
from revinterp.data.tokenizer import encode_words


@dataclass(frozen=True)
class EncodedStatements:
    """Token rows for statements, right-padded (causal attention never sees the padding).

    Row ``i`` is ``tokens[i, :prompt_lengths[i] + answer_lengths[i]]``; its answer tokens are at
    positions ``prompt_lengths[i] ..``, predicted from the logits one position earlier.
    """

    tokens: Int[Tensor, "n seq"]
    prompt_lengths: Int[Tensor, " n"]
    answer_lengths: Int[Tensor, " n"]
    statements: tuple[Statement, ...]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def answer_mask(self) -> Bool[Tensor, "n seq"]:
        """True at the positions that hold answer tokens."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        start = self.prompt_lengths[:, None]
        return (pos >= start) & (pos < start + self.answer_lengths[:, None])

    def to(self, device) -> EncodedStatements:
        return EncodedStatements(
            self.tokens.to(device), self.prompt_lengths.to(device), self.answer_lengths.to(device),
            self.statements,
        )

    def select(self, index: Int[Tensor, " k"]) -> EncodedStatements:
        rows = index.tolist()
        return EncodedStatements(
            self.tokens[index], self.prompt_lengths[index], self.answer_lengths[index],
            tuple(self.statements[i] for i in rows),
        )


@cyclic_gc_paused()
def encode_statements(facts: FactSet, statements: Sequence[Statement], tokenizer) -> EncodedStatements:
    """Tokenize ``statements`` of ``facts``; an unknown word raises
    :class:`~revinterp.data.tokenizer.UnknownWordError` naming it."""
    if not statements:
        raise ValueError("no statements to encode")
    rows, prompt_lengths, answer_lengths = [], [], []
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id  # attribute lookups of a HF tokenizer are slow
    for s in statements:
        prompt = [bos, *encode_words(tokenizer, facts.prompt_words(s))]
        answer = encode_words(tokenizer, s.object.split())
        rows.append(prompt + answer)
        prompt_lengths.append(len(prompt))
        answer_lengths.append(len(answer))
    width = max(map(len, rows))
    tokens = torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)
    return EncodedStatements(
        tokens, torch.tensor(prompt_lengths), torch.tensor(answer_lengths), tuple(statements)
    )
