"""Mitigations of the reversal curse as training-data variants.

Each adds *augmented* statements (split ``augmented``, trained) to a fact set and leaves the original
statements and their splits untouched, so the held-out questions stay exactly the same:

- ``reverse_token`` / ``reverse_entity``: reverse training (Golovneva et al. 2024, "Reverse Training
  to Nurse the Reversal Curse"). Every trained statement is also trained reversed and marked with a
  ``[rev]`` token; ``reverse_token`` reverses every token (entity names too), ``reverse_entity``
  keeps each entity's tokens in order (entity-preserving reversal).
- ``permute``: semantic-unit permutation (Guo et al. 2024, "Mitigating Reversal Curse in Large
  Language Models via Semantic-aware Permutation Training"). The units subject, relation phrase and
  object are permuted as wholes (never split), marked with ``[perm]``; the orders that end in an
  entity (RSO, ORS, ROS) are added, so the answer is always a whole entity.
- ``identity_bridge``: identity statements ``x r x`` (Identity Bridge, 2026, arXiv 2602.02470: "The
  name of Alice is Alice"). As we read its one-layer analysis, the bridge goes through the relation
  whose answers are of x's kind: ``a_i <- a_i`` and ``b_i -> b_i`` (``bridge_relation="answer"``);
  ``bridge_relation="identity"`` uses a separate ``=`` relation instead.

Scratch tokens (:func:`with_scratch_tokens`) rewrite every statement instead of adding any: ``k`` tokens
``[scratch]`` between the relation and the answer, the padding under which the inverse-permutation task becomes
learnable. Weight decay, the other mitigation studied, is a training setting
(:attr:`revinterp.training.TrainingConfig.weight_decay`); the objectives that change what is predicted are in
:mod:`revinterp.objectives`.
"""

from __future__ import annotations

from dataclasses import replace

from revinterp.data.facts import AUGMENTED, FactSet, Relation, Statement

MITIGATIONS = ("reverse_token", "reverse_entity", "permute", "identity_bridge")
REVERSE_MARKER = "[rev]"
PERMUTE_MARKER = "[perm]"
PERMUTATIONS = ("RSO", "ORS", "ROS")  # unit orders with an entity last; S R O is the original
SCRATCH = "[scratch]"


def with_scratch_tokens(facts: FactSet, k: int) -> FactSet:
    """``facts`` with ``k`` scratch tokens before the answer of every statement: each relation's template
    ``... {object}`` becomes ``... [scratch] x k {object}``. Statements, splits and candidates are unchanged; the
    prompts grow by ``k`` positions, never predicted (the answer loss reads only the answer)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} scratch tokens: expected a positive integer")
    if facts.source.get("scratch_tokens"):
        raise ValueError(f"fact set already has {facts.source['scratch_tokens']} scratch tokens per statement")
    return words_before_answer(facts, [SCRATCH] * k, scratch_tokens=k)


def words_before_answer(facts: FactSet, words: list[str], **source) -> FactSet:
    """``facts`` with ``words`` inserted before ``{object}`` in every relation's template (and ``source`` added to
    its source): the same statements and splits, longer prompts."""
    relations = {name: Relation(r.name, r.inverse, " ".join([*r.template.split()[:-1], *words, "{object}"]))
                 for name, r in facts.relations.items()}
    return replace(facts, relations=relations, source={**facts.source, **source})


def apply_mitigation(facts: FactSet, mitigation: str, *, bridge_relation: str = "answer") -> FactSet:
    """``facts`` plus the augmented statements of ``mitigation`` (one of :data:`MITIGATIONS`)."""
    if mitigation not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {mitigation!r}; expected one of {MITIGATIONS}")
    if any(s.split == AUGMENTED for s in facts.statements):
        raise ValueError(f"fact set already holds augmented statements ({facts.source.get('mitigation')})")
    relations = dict(facts.relations)
    added: list[Statement] = []

    def relation(name: str, template: str) -> str:
        relations.setdefault(name, Relation(name, None, template))
        return name

    if mitigation in ("reverse_token", "reverse_entity"):
        for s in facts.train:
            template = facts.relations[s.relation].template
            if not template.startswith("{subject}"):
                raise ValueError(f"relation {s.relation!r}: reversal needs a template that starts with the subject")
            swap = {"{subject}": "{object}", "{object}": "{subject}"}
            words = [swap.get(w, w) for w in reversed(template.split())]
            subject, obj = s.object, s.subject
            if mitigation == "reverse_token":
                subject, obj = (" ".join(reversed(name.split())) for name in (subject, obj))
            name = relation(f"{mitigation}:{s.relation}", " ".join([REVERSE_MARKER, *words]))
            added.append(Statement(subject, name, obj, s.fact, "augmented", AUGMENTED))
    elif mitigation == "permute":
        for s in facts.train:
            template = facts.relations[s.relation].template
            phrase = " ".join(w for w in template.split() if w not in ("{subject}", "{object}"))
            entity = {"S": s.subject, "O": s.object}
            for order in PERMUTATIONS:
                first, last = (u for u in order if u != "R")
                slots = {first: "{subject}", last: "{object}", "R": phrase}
                name = relation(f"permute_{order}:{s.relation}",
                                " ".join([PERMUTE_MARKER, *(slots[u] for u in order)]))
                added.append(Statement(entity[first], name, entity[last], s.fact, "augmented", AUGMENTED))
    else:
        if bridge_relation not in ("answer", "identity"):
            raise ValueError(f"bridge_relation={bridge_relation!r}: expected 'answer' or 'identity'")
        seen: set[tuple[str, str]] = set()
        for s in facts.statements:
            for entity, rel in ((s.object, s.relation), (s.subject, facts.relations[s.relation].inverse)):
                if rel is None:
                    continue
                if bridge_relation == "identity":
                    rel = relation("=", "{subject} = {object}")
                if (entity, rel) not in seen:
                    seen.add((entity, rel))
                    added.append(Statement(entity, rel, entity, s.fact, "augmented", AUGMENTED))
    source = {**facts.source, "mitigation": mitigation}
    if mitigation == "identity_bridge":
        source["bridge_relation"] = bridge_relation
    return replace(facts, relations=relations, statements=facts.statements + tuple(added), source=source)
