"""Training objectives beside next-token answer loss: the cures that change what the model predicts.

The reversal curse follows from *which tokens are predicted*: with next-token answer loss the source entity of
``a_i -> b_i`` is never a target given ``b_i``. Three objectives make it one (``TrainingConfig.objective``,
``revinterp train --objective``):

- ``mlm_u``: MLM-U (Kitouni et al. 2024, "The Factorization Curse"). Per sequence a masking rate ``r ~ U(0, 1)``;
  every token but ``<bos>`` is replaced by ``[mask]`` with probability ``r`` (at least one per sequence) and
  predicted at its own position, with **bidirectional** attention (TransformerLens's ``attention_dir=
  "bidirectional"``, :attr:`revinterp.models.ModelConfig.attention_dir`; padding is masked out as keys).
- ``masked_causal``: a decoder-only masked objective (Coda-Forno, Wang & Chaudhry 2026, "The Illusion of Latent
  Generalization": reversal needs a signal that makes the source entity a prediction target). Per sequence one
  entity, subject or object with probability 1/2 each, is replaced by one ``[mask]`` and its tokens are appended
  and predicted next-token after the rest, under **causal** attention: ``a -> b`` gives ``[mask] -> b a`` or
  ``a -> [mask] b``.
- ``blank_infilling``: autoregressive blank infilling (Lv et al. 2023, BICO, after GLM, Du et al. 2022): the entity
  is replaced by ``[blank]``, then ``[sep]`` and the entity generated after it: ``[blank] -> b [sep] a``. Part A
  (up to ``[sep]``) attends bidirectionally, part B causally to part A and its own prefix (a 4-D attention mask on
  a bidirectional model).

Every objective asks a question the same way, in training and in evaluation: the prompt ``s r`` followed by the
query suffix (:data:`QUERY_SUFFIX`: ``[mask]``, or ``[blank] [sep]``), read at the last position, where the
masked entity is predicted. :class:`QueryModel` gives next-token logits through that query (logits at ``i``
predict token ``i + 1`` from the query of tokens ``0..i``), so :func:`revinterp.evaluation.evaluate` and the
training's periodic evaluation score these models unchanged; :func:`query_facts` rewrites the relation templates
to end their prompts with the suffix, for the analyses that read a prompt's last position (patching, storage,
:func:`revinterp.analysis.entries.entry_sharing`). A multi-token answer is scored token by token, each as its own
masked query (a pseudo-likelihood, not the objective's joint infilling); single-token entities are exact.

Scratch tokens between the relation and the answer are a data variant
(:func:`revinterp.data.mitigations.with_scratch_tokens`), trained with any objective.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revinterp.data import EncodedStatements, FactSet, Statement, build_tokenizer
from revinterp.data.mitigations import words_before_answer
from revinterp.data.tokenizer import encode_words

OBJECTIVES = ("next_token", "mlm_u", "masked_causal", "blank_infilling")
MASK, BLANK, SEP = "[mask]", "[blank]", "[sep]"
ATTENTION = {"next_token": "causal", "mlm_u": "bidirectional", "masked_causal": "causal",
             "blank_infilling": "bidirectional"}
"""The attention each objective trains and queries with."""
QUERY_SUFFIX: dict[str, tuple[str, ...]] = {"next_token": (), "mlm_u": (MASK,), "masked_causal": (MASK,),
                                           "blank_infilling": (BLANK, SEP)}
"""What follows a prompt to ask for the masked entity (also the words each objective adds to the vocabulary)."""
EXTRA_POSITIONS = {"next_token": 0, "mlm_u": 1, "masked_causal": 1, "blank_infilling": 2}
"""Positions an objective's sequences need beyond the longest statement (the mask token, the separator)."""
IGNORE = -100
"""Target of a position without a loss (``F.cross_entropy``'s ``ignore_index``)."""

__all__ = ["ATTENTION", "BLANK", "MASK", "OBJECTIVES", "QUERY_SUFFIX", "SEP", "ObjectiveBatch", "QueryModel",
           "check_objective", "objective_batch", "objective_loss", "objective_model_config", "objective_tokenizer",
           "query_facts", "query_model"]


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: expected one of {OBJECTIVES}")


def objective_tokenizer(facts: FactSet, objective: str):
    """The word-level tokenizer of ``facts`` plus the objective's query words (none for ``next_token``, so its
    vocabulary is that of :func:`revinterp.models.tokenizer_for`)."""
    check_objective(objective)
    words = facts.vocabulary()
    return build_tokenizer([*words, *(w for w in QUERY_SUFFIX[objective] if w not in words)])


def objective_model_config(config, objective: str):
    """``config`` (sized by :func:`revinterp.models.config_for_data`) with the objective's attention and context.

    A ``bidirectional`` config with a causal objective is refused: next-token targets would be visible."""
    check_objective(objective)
    if config.attention_dir != "causal" and config.attention_dir != ATTENTION[objective]:
        raise ValueError(f"attention_dir={config.attention_dir!r} with objective {objective!r}: expected "
                         f"{ATTENTION[objective]!r} attention (a causal objective's targets would be visible)")
    return replace(config, attention_dir=ATTENTION[objective], n_ctx=config.n_ctx + EXTRA_POSITIONS[objective])


@dataclass(frozen=True)
class ObjectiveBatch:
    """One training batch of an objective: the input tokens, what the logits at each position must predict
    (:data:`IGNORE` where nothing), and the attention mask (``True`` = blocked, TransformerLens's 4-D boolean mask;
    None = the model's own causal mask)."""

    tokens: Int[Tensor, "n seq"]
    targets: Int[Tensor, "n seq"]
    attention: Bool[Tensor, "n 1 seq seq"] | None


def _parts(facts: FactSet, s: Statement) -> tuple[list[str], list[str], list[str], list[str]]:
    """A statement's words as ``(before the subject, subject, between, object)`` (the object ends every template)."""
    words = facts.relations[s.relation].template.split()[:-1]
    at = words.index("{subject}")
    return words[:at], s.subject.split(), words[at + 1:], s.object.split()


def objective_batch(facts: FactSet, batch: EncodedStatements, objective: str, tokenizer,
                    rng: random.Random) -> ObjectiveBatch:
    """The sequences, targets and attention mask of ``objective`` for the statements of ``batch`` (module
    docstring); ``rng`` draws the masks. Rows are right-padded; padding is never a target."""
    if objective == "next_token":
        raise ValueError("next_token is the answer or sequence loss of revinterp.training.batch_loss; expected one "
                         f"of {OBJECTIVES[1:]}")
    check_objective(objective)
    rows, target_rows, part_a = [], [], []
    for s in batch.statements:
        before, subject, between, obj = _parts(facts, s)
        if objective == "mlm_u":
            words = [*before, *subject, *between, *obj]
            rate = rng.random()
            masked = [rng.random() < rate for _ in words]
            if not any(masked):
                masked[rng.randrange(len(words))] = True
            rows.append([MASK if m else w for w, m in zip(words, masked)])
            target_rows.append([w if m else None for w, m in zip(words, masked)])  # predicted in place
            continue
        hole = [MASK] if objective == "masked_causal" else [BLANK]
        tail = [] if objective == "masked_causal" else [SEP]
        if rng.random() < 0.5:  # the source entity becomes the target
            context, entity = [*before, *hole, *between, *obj, *tail], subject
        else:
            context, entity = [*before, *subject, *between, *hole, *tail], obj
        rows.append([*context, *entity])
        # next-token targets: the logits at the position before each entity token predict it
        target_rows.append([None] * (len(context) - 1) + entity + [None])
        part_a.append(len(context))  # <bos> + context: positions 0 .. len(context) (the [sep]) form part A
    pad = tokenizer.pad_token_id
    width = 1 + max(map(len, rows))
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (words, wanted) in enumerate(zip(rows, target_rows)):
        tokens[i, :1 + len(words)] = torch.tensor([tokenizer.bos_token_id, *encode_words(tokenizer, words)])
        for p, w in enumerate(wanted):
            if w is not None:
                targets[i, 1 + p] = encode_words(tokenizer, [w])[0]
    attention = None
    if ATTENTION[objective] == "bidirectional":
        key_pad = (tokens == pad)[:, None, None, :]  # [n, 1, 1, seq]
        attention = key_pad.expand(-1, 1, width, -1).clone()
        if objective == "blank_infilling":
            pos = torch.arange(width)
            ends = torch.tensor(part_a)[:, None, None, None]  # the [sep] position of each row
            causal = pos[None, None, None, :] <= pos[None, None, :, None]
            in_a = (pos[None, None, :, None] <= ends) & (pos[None, None, None, :] <= ends)
            attention |= ~(causal | in_a)
    return ObjectiveBatch(tokens.to(batch.tokens.device), targets.to(batch.tokens.device),
                          None if attention is None else attention.to(batch.tokens.device))


def objective_loss(model, facts: FactSet, batch: EncodedStatements, objective: str, tokenizer,
                   rng: random.Random) -> Float[Tensor, ""]:
    """Mean cross-entropy over the target tokens of :func:`objective_batch`."""
    b = objective_batch(facts, batch, objective, tokenizer, rng)
    logits = model(b.tokens) if b.attention is None else model(b.tokens, attention_mask=b.attention)
    return F.cross_entropy(logits.flatten(0, 1), b.targets.flatten(), ignore_index=IGNORE)


class QueryModel(torch.nn.Module):
    """Next-token logits of a model trained with a masked objective, through its query.

    ``forward(tokens)[:, i]`` is the model's output at the last position of ``tokens[:, :i + 1]`` followed by the
    query suffix (:data:`QUERY_SUFFIX`): one forward per position (the prompts here are a few tokens). With it,
    teacher-forced scoring (:func:`revinterp.evaluation.evaluate`) asks each answer token as the objective does,
    and the answer is never visible to a bidirectional model.
    """

    def __init__(self, model, objective: str, tokenizer=None):
        super().__init__()
        check_objective(objective)
        self.model, self.objective = model, objective
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.suffix = encode_words(self.tokenizer, QUERY_SUFFIX[objective])
        self.train(model.training)  # a new Module is in train mode; take the model's, which evaluate() restores

    def forward(self, tokens: Int[Tensor, "n seq"]) -> Float[Tensor, "n seq vocab"]:
        suffix = torch.tensor(self.suffix, device=tokens.device).expand(len(tokens), -1)
        return torch.stack([self.model(torch.cat([tokens[:, :i + 1], suffix], 1))[:, -1]
                            for i in range(tokens.shape[1])], 1)


def query_model(model, objective: str, tokenizer=None):
    """``model`` itself for ``next_token``, else its :class:`QueryModel`."""
    check_objective(objective)
    return model if objective == "next_token" else QueryModel(model, objective, tokenizer)


def query_facts(facts: FactSet, objective: str) -> FactSet:
    """``facts`` with every relation's prompt ending in the objective's query suffix (``{subject} <- [mask]
    {object}``): the same statements, splits and candidates, for analyses that read a prompt's last position.
    Never score answers through it on a bidirectional model (the answer would be visible): use
    :class:`QueryModel` for that."""
    check_objective(objective)
    suffix = QUERY_SUFFIX[objective]
    if not suffix:
        return facts
    return words_before_answer(facts, list(suffix), query=objective)
