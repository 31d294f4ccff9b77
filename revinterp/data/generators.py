"""Synthetic fact sets: the seed experiment of Zhu et al. (2024) and its variants.

- :func:`seed_experiment`: two disjoint entity alphabets A and B, N random pairs ``A_i -> B_i``
  with reverse ``B_i <- A_i``; 70 % of the pairs trained both ways, the rest one way. Options give
  multi-token entities (k-tuples over each alphabet, as the seed code builds them), several named
  relations with their inverses, and natural-language templates.
- :func:`chain_experiment`: ``x -> y``, ``y -> z`` and the composed ``x ~> z`` with a held-out
  fraction of the composed facts (transitivity).
"""

from __future__ import annotations

import itertools
import random

from revinterp.data.facts import (
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    CHAIN_FIRST_HOP,
    CHAIN_SECOND_HOP,
    FactSet,
    Relation,
    Statement,
    check_relations,
    split_facts,
)

SYMBOLIC_TEMPLATE = "{subject} %s {object}"

# (forward name, inverse name, forward phrase, inverse phrase) for named relations.
NAMED_RELATIONS = (
    ("parent_of", "child_of", "is the parent of", "is the child of"),
    ("teacher_of", "student_of", "is the teacher of", "is the student of"),
    ("employer_of", "employee_of", "is the employer of", "is the employee of"),
    ("owner_of", "owned_by", "is the owner of", "is owned by"),
    ("author_of", "written_by", "is the author of", "was written by"),
    ("mentor_of", "mentee_of", "is the mentor of", "is the mentee of"),
)
TEMPLATE_STYLES = ("symbolic", "natural")


def relation_pair(index: int, n_relations: int, style: str) -> tuple[Relation, Relation]:
    """The ``index``-th forward relation and its inverse.

    With a single symbolic relation this is the seed's ``->`` / ``<-``; otherwise the named
    relations of :data:`NAMED_RELATIONS`, written as one relation token (``symbolic``) or as an
    English phrase (``natural``).
    """
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"template style {style!r}: expected one of {TEMPLATE_STYLES}")
    if style == "symbolic" and n_relations == 1:
        return (
            Relation("->", "<-", SYMBOLIC_TEMPLATE % "->"),
            Relation("<-", "->", SYMBOLIC_TEMPLATE % "<-"),
        )
    if not 1 <= n_relations <= len(NAMED_RELATIONS):
        raise ValueError(f"n_relations={n_relations}: expected 1 to {len(NAMED_RELATIONS)}")
    fwd, inv, fwd_phrase, inv_phrase = NAMED_RELATIONS[index]
    if style == "symbolic":
        fwd_phrase, inv_phrase = fwd, inv
    return (
        Relation(fwd, inv, "{subject} %s {object}" % fwd_phrase),
        Relation(inv, fwd, "{subject} %s {object}" % inv_phrase),
    )


def entity_names(prefix: str, n: int, tokens_per_entity: int, alphabet_size: int, rng: random.Random):
    """``n`` distinct entities, each ``tokens_per_entity`` tokens drawn from an alphabet of
    ``alphabet_size`` tokens ``{prefix}0 .. {prefix}{alphabet_size-1}`` (tokens are shared across
    entities when ``tokens_per_entity > 1``, as in the seed code)."""
    if alphabet_size**tokens_per_entity < n:
        raise ValueError(
            f"{n} entities of {tokens_per_entity} tokens need an alphabet with at least "
            f"{n} distinct tuples; alphabet_size={alphabet_size} gives {alphabet_size**tokens_per_entity}"
        )
    alphabet = [f"{prefix}{i}" for i in range(alphabet_size)]
    if tokens_per_entity == 1:
        return rng.sample(alphabet, n)
    if alphabet_size**tokens_per_entity <= 1_000_000:
        tuples = rng.sample(list(itertools.product(alphabet, repeat=tokens_per_entity)), n)
    else:  # too many tuples to list: draw until n distinct ones
        seen: set[tuple[str, ...]] = set()
        tuples = []
        while len(tuples) < n:
            t = tuple(rng.choice(alphabet) for _ in range(tokens_per_entity))
            if t not in seen:
                seen.add(t)
                tuples.append(t)
    return [" ".join(t) for t in tuples]


def seed_experiment(
    n_pairs: int = 200,
    *,
    both_fraction: float = 0.7,
    held_out_direction: str = "random",
    tokens_per_entity: int = 1,
    alphabet_size: int | None = None,
    n_relations: int = 1,
    template: str = "symbolic",
    seed: int = 0,
) -> FactSet:
    """The reversal-curse data of Zhu et al. (2024): pairs ``A_i -> B_i`` / ``B_i <- A_i``.

    Args:
        n_pairs: number of facts (pairs); the seed uses 200 single-token pairs.
        both_fraction: fraction of pairs trained in both directions (seed: 0.7).
        held_out_direction: ``"random"`` (seed), ``"forward"`` (forward trained, reverse held out)
            or ``"reverse"``.
        tokens_per_entity: k tokens per entity (k-tuples over the alphabet).
        alphabet_size: tokens per alphabet; default ``n_pairs`` for k = 1, else the smallest size
            whose k-tuples cover ``2 * n_pairs``.
        n_relations: relations the pairs are spread over (round robin); 1 gives ``->`` / ``<-``.
        template: ``"symbolic"`` (relation token) or ``"natural"`` (English phrase).
        seed: every random choice follows from it.
    """
    if n_pairs < 2:
        raise ValueError(f"n_pairs={n_pairs}: expected at least 2")
    if tokens_per_entity < 1:
        raise ValueError(f"tokens_per_entity={tokens_per_entity}: expected at least 1")
    if alphabet_size is None:
        alphabet_size = n_pairs
        if tokens_per_entity > 1:
            alphabet_size = 2
            while alphabet_size**tokens_per_entity < 2 * n_pairs:
                alphabet_size += 1
    rng = random.Random(seed)
    a_names = entity_names("a", n_pairs, tokens_per_entity, alphabet_size, rng)
    b_names = entity_names("b", n_pairs, tokens_per_entity, alphabet_size, rng)
    pairs = [relation_pair(i, n_relations, template) for i in range(n_relations)]
    relations = check_relations(r for pair in pairs for r in pair)
    facts = [(a, pairs[i % n_relations][0].name, b) for i, (a, b) in enumerate(zip(a_names, b_names))]
    statements = split_facts(
        facts, relations, both_fraction=both_fraction, held_out_direction=held_out_direction,
        seed=rng.randrange(2**31),
    )
    source = dict(
        generator="seed_experiment", n_pairs=n_pairs, both_fraction=both_fraction,
        held_out_direction=held_out_direction, tokens_per_entity=tokens_per_entity,
        alphabet_size=alphabet_size, n_relations=n_relations, template=template, seed=seed,
    )
    return FactSet(relations=relations, statements=statements, source=source)


def chain_experiment(
    n_chains: int = 200, *, composed_held_out_fraction: float = 0.3, seed: int = 0
) -> FactSet:
    """Transitivity data: ``x_i -> y_i``, ``y_i -> z_i`` and ``x_i ~> z_i``, with a random
    ``composed_held_out_fraction`` of the composed facts held out (Zhu et al. 2024, section 5)."""
    if n_chains < 2:
        raise ValueError(f"n_chains={n_chains}: expected at least 2")
    if not 0.0 <= composed_held_out_fraction <= 1.0:
        raise ValueError(f"composed_held_out_fraction={composed_held_out_fraction}: expected a fraction in [0, 1]")
    rng = random.Random(seed)
    xs, ys, zs = (rng.sample([f"{p}{i}" for i in range(n_chains)], n_chains) for p in "xyz")
    relations = check_relations([
        Relation("->", None, SYMBOLIC_TEMPLATE % "->"),
        Relation("~>", None, SYMBOLIC_TEMPLATE % "~>"),
    ])
    held_out = set(rng.sample(range(n_chains), round(n_chains * composed_held_out_fraction)))
    statements = []
    for i, (x, y, z) in enumerate(zip(xs, ys, zs)):
        statements.append(Statement(x, "->", y, i, "forward", CHAIN_FIRST_HOP))
        statements.append(Statement(y, "->", z, i, "forward", CHAIN_SECOND_HOP))
        split = CHAIN_COMPOSED_HELD_OUT if i in held_out else CHAIN_COMPOSED_SEEN
        statements.append(Statement(x, "~>", z, i, "composed", split))
    source = dict(
        generator="chain_experiment", n_chains=n_chains,
        composed_held_out_fraction=composed_held_out_fraction, seed=seed,
    )
    return FactSet(relations=relations, statements=tuple(statements), source=source)
