"""Metrics of the answer at the last position, per example.

The answers are the tokens at which the clean and corrupted answers first differ
(:func:`revinterp.analysis.prompts.make_prompt_pairs`): the answers' first tokens, or, for answers that begin alike
(descriptions that all start with "the"), the next token after their common start, which the prompt pairs feed.

- logit difference: ``logit[clean answer] - logit[corrupted answer]`` (Wang et al. 2022, IOI);
- answer log-probability: ``log softmax(logits)[clean answer]``;
- normalized: ``(m - m_corrupted) / (m_clean - m_corrupted)``, 0 for the corrupted run, 1 for the clean one.
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

METRICS = ("logit_diff", "logprob")


def logit_diff(
    logits: Float[Tensor, "batch d_vocab"], clean_answer: Int[Tensor, " batch"], corrupted_answer: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    return logits.gather(-1, clean_answer[:, None])[:, 0] - logits.gather(-1, corrupted_answer[:, None])[:, 0]


def answer_logprob(
    logits: Float[Tensor, "batch d_vocab"], clean_answer: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    return logits.log_softmax(-1).gather(-1, clean_answer[:, None])[:, 0]


def metric_values(
    name: str, logits: Float[Tensor, "batch d_vocab"], clean_answer: Int[Tensor, " batch"],
    corrupted_answer: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """The metric ``name`` (one of :data:`METRICS`) of last-position logits, per example."""
    if name == "logit_diff":
        return logit_diff(logits, clean_answer, corrupted_answer)
    if name == "logprob":
        return answer_logprob(logits, clean_answer)
    raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")


def normalize(value: Tensor, clean: Tensor, corrupted: Tensor) -> Tensor:
    """``(value - corrupted) / (clean - corrupted)``: 0 = corrupted run, 1 = clean run."""
    return (value - corrupted) / (clean - corrupted)
