"""Synthetic fact sets: the seed experiment of Zhu et al. (2024) and its variants.

- :func:`seed_experiment`: two disjoint entity alphabets A and B, N random pairs ``A_i -> B_i``
  with reverse ``B_i <- A_i``; 70 % of the pairs trained both ways, the rest one way. Options give
  multi-token entities (k-tuples over each alphabet, as the seed code builds them), several named
  relations with their inverses, and natural-language templates.
- :func:`chain_experiment`: ``x -> y``, ``y -> z`` and the composed ``x ~> z`` with a held-out
  fraction of the composed facts (transitivity).

Controls for *embedding starvation* (in the seed setup the subject of a held-out question never
appears as an input in training, so its embedding gets no gradient): :func:`with_attributes` gives
every entity a second, unrelated trained fact; :func:`knowledge_graph` draws facts among one pool of
entities so every entity takes part in several; ``seed_experiment(shared_tokens=True)`` builds
multi-token entities from one shared token pool.
"""

from __future__ import annotations

import itertools
import random

from revinterp.data.facts import (
    ATTRIBUTE,
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
    shared_tokens: bool = False,
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
        shared_tokens: draw A and B entities from one token pool ``t0, t1, ..`` instead of two
            disjoint alphabets, so with ``tokens_per_entity > 1`` every token is trained in many
            entities (a starvation control).
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
    if shared_tokens:
        names = entity_names("t", 2 * n_pairs, tokens_per_entity, alphabet_size, rng)
        a_names, b_names = names[:n_pairs], names[n_pairs:]
    else:
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
        alphabet_size=alphabet_size, n_relations=n_relations, template=template, shared_tokens=shared_tokens,
        seed=seed,
    )
    return FactSet(relations=relations, statements=statements, source=source)


def knowledge_graph(
    n_entities: int = 200,
    *,
    n_relations: int = 3,
    facts_per_entity: int | float = 3,
    both_fraction: float = 0.7,
    held_out_direction: str = "random",
    template: str = "symbolic",
    seed: int = 0,
) -> FactSet:
    """A random knowledge graph over one pool of entities ``e0 .. e{n-1}``.

    Each of the ``n_relations`` named relations (with its inverse) is a random partial one-to-one map
    between distinct entities, so every question ``(subject, relation)`` has one answer in both
    directions; on average an entity takes part in ``facts_per_entity`` facts, as subject or object,
    and so appears as an input of trained statements. Facts are split as in the seed experiment.
    """
    if n_entities < 4:
        raise ValueError(f"n_entities={n_entities}: expected at least 4")
    per_relation = round(n_entities * facts_per_entity / (2 * n_relations))
    if not 1 <= per_relation <= n_entities:
        raise ValueError(
            f"facts_per_entity={facts_per_entity} with {n_relations} relation(s) gives {per_relation} facts per "
            f"relation; expected 1 to n_entities={n_entities}"
        )
    rng = random.Random(seed)
    entities = [f"e{i}" for i in range(n_entities)]
    pairs = [relation_pair(i, n_relations, template) for i in range(n_relations)]
    relations = check_relations(r for pair in pairs for r in pair)
    facts = []
    for forward, _ in pairs:
        subjects = rng.sample(entities, per_relation)
        for _ in range(1000):  # rejection sampling: a fact relates two distinct entities
            objects = rng.sample(entities, per_relation)
            if all(s != o for s, o in zip(subjects, objects)):
                break
        else:
            raise ValueError("could not draw facts between distinct entities; use more entities")
        facts += [(s, forward.name, o) for s, o in zip(subjects, objects)]
    statements = split_facts(
        facts, relations, both_fraction=both_fraction, held_out_direction=held_out_direction,
        seed=rng.randrange(2**31),
    )
    source = dict(
        generator="knowledge_graph", n_entities=n_entities, n_relations=n_relations,
        facts_per_entity=facts_per_entity, both_fraction=both_fraction, held_out_direction=held_out_direction,
        template=template, seed=seed,
    )
    return FactSet(relations=relations, statements=statements, source=source)


def with_attributes(facts: FactSet, *, n_values: int = 20, relation: str = "lives_in", seed: int = 0) -> FactSet:
    """``facts`` plus one unrelated, trained attribute fact per entity: ``e lives_in c_k``.

    The values ``c0 .. c{n_values-1}`` are shared (many entities live in one city), the attribute
    relation has no inverse, and its statements form the ``attribute`` split. Every entity is then
    the subject of a trained statement, so its input embedding is trained.
    """
    if n_values < 1:
        raise ValueError(f"n_values={n_values}: expected at least 1")
    if relation in facts.relations:
        raise ValueError(f"relation {relation!r} is already in the fact set")
    rng = random.Random(seed)
    entities = sorted({s.subject for s in facts.statements} | {s.object for s in facts.statements})
    first_fact = 1 + max(s.fact for s in facts.statements)
    added = tuple(
        Statement(e, relation, f"c{rng.randrange(n_values)}", first_fact + k, "attribute", ATTRIBUTE)
        for k, e in enumerate(entities)
    )
    relations = {**facts.relations, relation: Relation(relation, None, SYMBOLIC_TEMPLATE % relation)}
    source = {**facts.source, "attributes": dict(relation=relation, n_values=n_values, seed=seed)}
    return FactSet(relations=relations, statements=facts.statements + added, source=source)


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
