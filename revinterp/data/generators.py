"""Synthetic fact sets: the seed experiment of Zhu et al. (2024) and its variants.

- :func:`seed_experiment`: two disjoint entity alphabets A and B, N random pairs ``A_i -> B_i``
  with reverse ``B_i <- A_i``; 70 % of the pairs trained both ways, the rest one way. Options give
  multi-token entities (k-tuples over each alphabet, as the seed code builds them), several named
  relations with their inverses, and natural-language templates.
- :func:`chain_experiment`: ``x -> y``, ``y -> z`` and the composed ``x ~> z`` with a held-out
  fraction of the composed facts (transitivity).

Shapes of real fact sets (issue 18), with readable multi-word names:

- :func:`celebrity_like`: families of a mother, a father and several children, as in the celebrity child-parent
  pairs of Berglund et al. (2023), "The Reversal Curse": one-to-many relations (a parent's children, a child's two
  parents) and a set fraction of children who carry their father's surname (a lexical shortcut,
  :mod:`revinterp.analysis.overlap`);
- :func:`description_like`: ``name described_as the ...`` facts whose answers are descriptions of several words
  that all start with one word, as in the fictitious "name is description" facts of the same paper.

Controls for *embedding starvation*, which has two sides. In the seed setup the subject of a held-out
question never appears as an input in training, so its embedding gets no gradient (input side), and its
answer is never a training target, so its unembedding is only ever pushed down (answer side).
:func:`with_attributes` gives every entity a second, unrelated trained fact with the entity as subject
(feeds the input side); :func:`with_answer_feeding` trains every entity as the answer of an unrelated
fact (feeds the answer side); :func:`starvation_cell` builds the four cells of the 2x2 design from
either or both; :func:`knowledge_graph` draws facts among one pool of entities so every entity takes
part in several (both sides fed); ``seed_experiment(shared_tokens=True)`` builds multi-token entities
from one shared token pool.
"""

from __future__ import annotations

import itertools
import math
import numbers
import random

from revinterp.data.bulk import cyclic_gc_paused
from revinterp.data.facts import (
    ATTRIBUTE,
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    CHAIN_FIRST_HOP,
    CHAIN_SECOND_HOP,
    HELD_OUT_DIRECTIONS,
    RELATION_NAME,
    FactSet,
    Relation,
    Statement,
    check_relations,
    relation_name_problem,
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


def check_count(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a whole number in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r}: expected a whole number, got a {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        span = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
        raise ValueError(f"{name}={value}: expected {span}")


def check_fraction(name: str, value) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r}: expected a fraction in [0, 1], got a {type(value).__name__}")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value}: expected a fraction in [0, 1]")


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {choices}")


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed={seed!r}: expected a whole number, got a {type(seed).__name__}")


def relation_pair(index: int, n_relations: int, style: str) -> tuple[Relation, Relation]:
    """The ``index``-th forward relation and its inverse.

    With a single symbolic relation this is the seed's ``->`` / ``<-``; otherwise the named
    relations of :data:`NAMED_RELATIONS`, written as one relation token (``symbolic``) or as an
    English phrase (``natural``).
    """
    check_choice("template", style, TEMPLATE_STYLES)
    check_count("n_relations", n_relations, 1, len(NAMED_RELATIONS))
    check_count("index", index, 0, n_relations - 1)
    if style == "symbolic" and n_relations == 1:
        return (
            Relation("->", "<-", SYMBOLIC_TEMPLATE % "->"),
            Relation("<-", "->", SYMBOLIC_TEMPLATE % "<-"),
        )
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
    check_count("n", n, 0)
    check_count("tokens_per_entity", tokens_per_entity, 1)
    check_count("alphabet_size", alphabet_size, 1)
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


@cyclic_gc_paused()
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
    check_count("n_pairs", n_pairs, 2)
    check_fraction("both_fraction", both_fraction)
    check_choice("held_out_direction", held_out_direction, HELD_OUT_DIRECTIONS)
    check_count("tokens_per_entity", tokens_per_entity, 1)
    if alphabet_size is not None:
        check_count("alphabet_size", alphabet_size, 1)
    check_count("n_relations", n_relations, 1, len(NAMED_RELATIONS))
    check_choice("template", template, TEMPLATE_STYLES)
    check_seed(seed)
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

    It is the natural variant of the "both fed" cell of the starvation design (:func:`starvation_cell`):
    most entities are the subject of some trained statement (input side fed) and the object of another
    (answer side fed), without any added unrelated statement; a random graph can still leave an entity
    in one held-out fact only, so check with :mod:`revinterp.analysis.starvation`.
    """
    check_count("n_entities", n_entities, 4)
    check_count("n_relations", n_relations, 1, len(NAMED_RELATIONS))
    if isinstance(facts_per_entity, bool) or not isinstance(facts_per_entity, numbers.Real) or not (
        math.isfinite(facts_per_entity) and facts_per_entity > 0
    ):
        raise ValueError(f"facts_per_entity={facts_per_entity!r}: expected a positive number")
    check_fraction("both_fraction", both_fraction)
    check_choice("held_out_direction", held_out_direction, HELD_OUT_DIRECTIONS)
    check_choice("template", template, TEMPLATE_STYLES)
    check_seed(seed)
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


def check_new_relation(facts: FactSet, relation: str) -> None:
    """Raise a ValueError unless ``relation`` is a valid relation name that ``facts`` does not use yet."""
    problem = relation_name_problem(relation)
    if problem:
        raise ValueError(f"relation={relation!r} {problem}; expected {RELATION_NAME}")
    if relation in facts.relations:
        raise ValueError(f"relation {relation!r} is already in the fact set")


def fact_entities(facts: FactSet) -> list[str]:
    """Every entity that is the subject or object of a statement, sorted."""
    return sorted({s.subject for s in facts.statements} | {s.object for s in facts.statements})


def add_attribute_statements(
    facts: FactSet, relation: str, pairs: list[tuple[str, str]], source_key: str, params: dict
) -> FactSet:
    """``facts`` plus trained statements ``subject relation object`` for ``pairs``, in the ``attribute``
    split, through a new relation without inverse; ``params`` are recorded under ``source[source_key]``."""
    check_new_relation(facts, relation)
    first_fact = 1 + max(s.fact for s in facts.statements)
    added = tuple(
        Statement(subject, relation, obj, first_fact + k, "attribute", ATTRIBUTE)
        for k, (subject, obj) in enumerate(pairs)
    )
    relations = {**facts.relations, relation: Relation(relation, None, SYMBOLIC_TEMPLATE % relation)}
    source = {**facts.source, source_key: params}
    return FactSet(relations=relations, statements=facts.statements + added, source=source)


def with_attributes(facts: FactSet, *, n_values: int = 20, relation: str = "lives_in", seed: int = 0) -> FactSet:
    """``facts`` plus one unrelated, trained attribute fact per entity: ``e lives_in c_k``.

    The values ``c0 .. c{n_values-1}`` are shared (many entities live in one city), the attribute
    relation has no inverse, and its statements form the ``attribute`` split. Every entity is then
    the subject of a trained statement, so its input embedding is trained (the input side of
    embedding starvation is fed; the answer side is not: no existing entity becomes a target).
    """
    check_count("n_values", n_values, 1)
    check_seed(seed)
    check_new_relation(facts, relation)
    rng = random.Random(seed)
    pairs = [(e, f"c{rng.randrange(n_values)}") for e in fact_entities(facts)]
    return add_attribute_statements(facts, relation, pairs, "attributes",
                                    dict(relation=relation, n_values=n_values, seed=seed))


def with_answer_feeding(
    facts: FactSet, *, relation: str = "has_member", prefix: str = "h", entities=None, seed: int = 0
) -> FactSet:
    """``facts`` plus one unrelated, trained fact per entity with the entity as its *answer*: ``h_k has_member e``.

    Every entity is then a training target, so its unembedding is pulled up at least once (the answer side
    of embedding starvation is fed; the input side is not: every added subject is a new entity). Each added
    subject ``{prefix}0 ..`` belongs to one statement (assigned in a random order): a shared subject would
    make a question with many answers, which can never be fitted (its answer probability is at most one
    over the number of members), so training would never stop at fit. The statements form the
    ``attribute`` split, through a new relation without inverse. ``entities`` (default: every entity of
    ``facts``) are the ones fed.
    """
    check_seed(seed)
    check_new_relation(facts, relation)
    known = fact_entities(facts)
    entities = known if entities is None else sorted(set(entities))
    unknown = sorted(set(entities) - set(known))
    if unknown:
        raise ValueError(f"entities {unknown[:3]} are not entities of the fact set")
    holders = [f"{prefix}{k}" for k in range(len(entities))]
    vocabulary = set(facts.vocabulary())
    clash = [h for h in holders if h in vocabulary]
    if clash or any(relation_name_problem(h) for h in holders[:1]):
        raise ValueError(f"prefix={prefix!r}: the new subjects {clash[:3] or holders[:1]} are already words of the "
                         "fact set or not valid words; expected a prefix that makes fresh entity names")
    random.Random(seed).shuffle(holders)
    return add_attribute_statements(facts, relation, list(zip(holders, entities)), "answer_feeding",
                                    dict(relation=relation, prefix=prefix, seed=seed))


STARVATION_CELLS: dict[str, tuple[bool, bool]] = {
    "none": (False, False),
    "subject": (True, False),
    "answer": (False, True),
    "both": (True, True),
}
"""The cells of the 2x2 starvation design by name: ``(feed_subject, feed_answer)``."""


def leaking_statements(facts: FactSet) -> tuple[Statement, ...]:
    """Added (``attribute``) statements that relate the two entities of a held-out statement, in either
    order: they would teach the held-out fact, or its other direction, outright. Empty for every cell of
    :func:`starvation_cell`."""
    held_out = {frozenset((s.subject, s.object)) for s in facts.split("held_out")}
    return tuple(s for s in facts.split(ATTRIBUTE) if frozenset((s.subject, s.object)) in held_out)


def starvation_cell(
    facts: FactSet, *, feed_subject: bool, feed_answer: bool, n_values: int = 8, seed: int = 0
) -> FactSet:
    """One cell of the 2x2 embedding-starvation design, built from ``facts`` (e.g. the seed experiment).

    - ``feed_subject``: every entity (so every held-out question's subject) is the subject of an unrelated
      trained fact ``e lives_in c_k`` with ``n_values`` shared values (:func:`with_attributes`);
    - ``feed_answer``: every entity (so every held-out answer) is the answer of an unrelated trained fact
      ``h_k has_member e`` with a fresh subject (:func:`with_answer_feeding`).

    Both kinds of added statements are in the trained ``attribute`` split; the held-out statements are the
    same as in ``facts`` and stay held out, and no added statement relates the two entities of a held-out
    statement (checked). Both feedings feed the entities of ``facts`` only: the ``c_k`` get no ``has_member``
    fact, and the ``h_k`` no ``lives_in`` one. With neither flag the cell is
    ``facts`` itself (its source records the cell). :func:`knowledge_graph` is the natural variant of the
    "both fed" cell: there every entity is subject and object of some relational fact.

    Example:
        >>> from revinterp.data import seed_experiment, starvation_cell
        >>> cell = starvation_cell(seed_experiment(20, held_out_direction="forward"), feed_subject=False,
        ...                        feed_answer=True)
        >>> sorted({s.relation for s in cell.split("attribute")})
        ['has_member']
    """
    for name, flag in (("feed_subject", feed_subject), ("feed_answer", feed_answer)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}={flag!r}: expected True or False")
    check_count("n_values", n_values, 1)
    check_seed(seed)
    entities = fact_entities(facts)
    out = facts
    if feed_subject:
        clash = sorted({f"c{k}" for k in range(n_values)} & set(facts.vocabulary()))
        if clash:
            raise ValueError(f"the lives_in values {clash[:3]} are already words of the fact set")
        out = with_attributes(out, n_values=n_values, seed=seed)
    if feed_answer:  # the entities of ``facts`` only: the lives_in values c_k are not fed as answers
        out = with_answer_feeding(out, entities=entities, seed=seed + 1)
    leaks = leaking_statements(out)
    if leaks:  # cannot happen with fresh names; kept as the invariant's guard
        raise ValueError(f"added statements relate the entities of a held-out statement: {leaks[:3]}")
    cell = next(name for name, flags in STARVATION_CELLS.items() if flags == (feed_subject, feed_answer))
    source = {**out.source, "starvation_cell": dict(cell=cell, feed_subject=feed_subject, feed_answer=feed_answer,
                                                     n_values=n_values, seed=seed)}
    return FactSet(relations=out.relations, statements=out.statements, source=source)


def chain_experiment(
    n_chains: int = 200, *, composed_held_out_fraction: float = 0.3, seed: int = 0
) -> FactSet:
    """Transitivity data: ``x_i -> y_i``, ``y_i -> z_i`` and ``x_i ~> z_i``, with a random
    ``composed_held_out_fraction`` of the composed facts held out (Zhu et al. 2024, section 5)."""
    check_count("n_chains", n_chains, 2)
    check_fraction("composed_held_out_fraction", composed_held_out_fraction)
    check_seed(seed)
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


GIVEN_NAMES = {
    "female": ("Ada", "Alma", "Bette", "Clara", "Dora", "Edith", "Elsa", "Flora", "Greta", "Hazel", "Ida", "Irene",
               "June", "Lena", "Lydia", "Mabel", "Maud", "Nell", "Nora", "Olive", "Pearl", "Rosa", "Ruth", "Stella",
               "Thea", "Vera", "Viola", "Wanda", "Yara", "Zelda", "Agnes", "Beryl"),
    "male": ("Abel", "Amos", "Boris", "Cyril", "Dean", "Emil", "Felix", "Gus", "Hugo", "Ivan", "Jasper", "Karl",
             "Leon", "Milo", "Ned", "Otto", "Percy", "Quinn", "Rex", "Silas", "Theo", "Ugo", "Victor", "Walt",
             "Xavier", "Yuri", "Zane", "Arlo", "Bruno", "Cecil", "Dexter", "Ezra"),
}
"""Given names by gender (disjoint from :data:`SURNAMES`, so a child and a parent share a token only through a
surname)."""
SURNAMES = ("Abbott", "Baker", "Carver", "Dalton", "Ellis", "Fairley", "Garrett", "Hale", "Ingram", "Jarvis",
            "Keller", "Lowry", "Marsh", "Nolan", "Oakley", "Pryor", "Quigley", "Rowe", "Sutton", "Thorne", "Upton",
            "Vance", "Whitlock", "Yates", "Ashby", "Brennan", "Crowley", "Drummond", "Everett", "Fenwick", "Gallo",
            "Hargrove", "Ives", "Jennings", "Kimball", "Lang", "Mercer", "Norwood", "Osborne", "Pike", "Radley",
            "Sloane", "Tillman", "Vickers", "Winslow", "York", "Ziegler", "Boone")
PARENT_RELATIONS = {
    "parent": (("parent_of", "child_of"),),
    "mother_father": (("mother_of", "has_mother"), ("father_of", "has_father")),
}
"""The relations of :func:`celebrity_like` by name: ``parent`` relates each parent to each child through
``parent_of`` (several children) and its inverse ``child_of`` (two parents: a many-to-many relation);
``mother_father`` labels the parent, ``mother_of`` / ``father_of`` (several children, one-to-many) with inverses
``has_mother`` / ``has_father`` (one answer)."""
DESCRIPTION_WORDS = (
    "first", "last", "quiet", "famous", "young", "old", "lonely", "brave", "secret", "silent", "golden", "hidden",
    "composer", "director", "painter", "sailor", "author", "keeper", "founder", "dancer", "pilot", "baker",
    "of", "from", "behind", "beyond", "harbour", "archive", "lighthouse", "opera", "valley", "museum", "orchard",
    "river", "tower", "island", "garden", "library", "bridge", "forest",
)
"""The words descriptions of :func:`description_like` are drawn from (after their first word)."""


class _PersonNames:
    """Distinct full names ``Given Surname``; a name already taken gets a middle given name (``Given Middle
    Surname``), so the pool grows from 32 x 48 to 32 x 32 x 48 names per gender."""

    def __init__(self, rng: random.Random):
        self.rng, self.taken = rng, set()

    def draw(self, gender: str, surname: str, avoid: set[str] = frozenset()) -> str:
        given = [g for g in GIVEN_NAMES[gender] if g not in avoid]
        for middle in (False, True):
            for _ in range(200):
                words = [self.rng.choice(given), *([self.rng.choice(given)] if middle else []), surname]
                name = " ".join(words)
                if name not in self.taken and len(set(words)) == len(words):
                    self.taken.add(name)
                    return name
        raise ValueError(f"no free name with the surname {surname!r} is left; use fewer families")


def celebrity_like(
    n_families: int = 40,
    *,
    children_per_parent: int = 2,
    shared_surname_fraction: float = 0.7,
    relations: str = "parent",
    both_fraction: float = 0.7,
    held_out_direction: str = "random",
    seed: int = 0,
) -> FactSet:
    """Child-parent facts shaped like the celebrity pairs of Berglund et al. (2023): multi-word names, two parents
    per child, several children per parent, and children who share their father's surname.

    Each family is a mother and a father with different surnames and ``children_per_parent`` children. A random
    ``round(shared_surname_fraction * n_children)`` of the children carry the father's surname; the others a
    surname neither parent has. A child's given names differ from its parents', and given names and surnames are
    disjoint, so a child and a parent share a token exactly when the child carries the father's surname (recorded,
    sorted, in ``source["shared_surname_children"]``). Every person is in one family.

    Facts relate each parent to each child, through :data:`PARENT_RELATIONS` ``[relations]``, and are split as
    :func:`revinterp.data.split_facts` does (the facts of one family share questions, so they are split together:
    no held-out question has a trained answer).

    Args:
        n_families: number of families (2 facts per child).
        children_per_parent: children of each couple (the answers of ``parent_of``, ``mother_of``, ``father_of``).
        shared_surname_fraction: fraction of the children who carry their father's surname.
        relations: ``"parent"`` or ``"mother_father"`` (:data:`PARENT_RELATIONS`).
        both_fraction: as :func:`revinterp.data.split_facts` (per family).
        held_out_direction: as :func:`revinterp.data.split_facts`.
        seed: every random choice follows from it.

    Example:
        >>> facts = celebrity_like(3, children_per_parent=2, seed=0)
        >>> child = next(s for s in facts.statements if s.relation == "child_of")
        >>> len(facts.answers(child.subject, "child_of"))     # a mother and a father
        2
    """
    check_count("n_families", n_families, 1)
    check_count("children_per_parent", children_per_parent, 1)
    check_fraction("shared_surname_fraction", shared_surname_fraction)
    check_choice("relations", relations, tuple(PARENT_RELATIONS))
    check_fraction("both_fraction", both_fraction)
    check_choice("held_out_direction", held_out_direction, HELD_OUT_DIRECTIONS)
    check_seed(seed)
    rng = random.Random(seed)
    names = _PersonNames(rng)
    n_children = n_families * children_per_parent
    shared = set(rng.sample(range(n_children), round(shared_surname_fraction * n_children)))
    (mother_rel, mother_inv), (father_rel, father_inv) = (PARENT_RELATIONS[relations] * 2)[:2]
    facts, shared_children = [], []
    for f in range(n_families):
        mother_surname, father_surname = rng.sample(SURNAMES, 2)
        mother, father = names.draw("female", mother_surname), names.draw("male", father_surname)
        parent_given = set(mother.split()[:-1]) | set(father.split()[:-1])
        for c in range(children_per_parent):
            if f * children_per_parent + c in shared:
                surname = father_surname
            else:
                surname = rng.choice([s for s in SURNAMES if s not in (mother_surname, father_surname)])
            child = names.draw(rng.choice(("female", "male")), surname, avoid=parent_given)
            if surname == father_surname:
                shared_children.append(child)
            facts += [(mother, mother_rel, child), (father, father_rel, child)]
    pairs = {mother_rel: mother_inv, father_rel: father_inv}
    declared = check_relations(
        r for fwd, inv in pairs.items() for r in (Relation(fwd, inv, SYMBOLIC_TEMPLATE % fwd),
                                                  Relation(inv, fwd, SYMBOLIC_TEMPLATE % inv))
    )
    statements = split_facts(facts, declared, both_fraction=both_fraction, held_out_direction=held_out_direction,
                             seed=rng.randrange(2**31))
    source = dict(
        generator="celebrity_like", n_families=n_families, children_per_parent=children_per_parent,
        shared_surname_fraction=shared_surname_fraction, relations=relations, both_fraction=both_fraction,
        held_out_direction=held_out_direction, seed=seed, shared_surname_children=sorted(shared_children),
    )
    return FactSet(relations=declared, statements=statements, source=source)


def description_like(
    n_names: int = 40,
    *,
    min_words: int = 3,
    max_words: int = 8,
    first_word: str = "the",
    both_fraction: float = 0.7,
    held_out_direction: str = "random",
    seed: int = 0,
) -> FactSet:
    """``name described_as description`` facts (inverse ``describes``) whose answers are descriptions of
    ``min_words`` to ``max_words`` words that all start with ``first_word``, like the fictitious "name is
    description" facts of Berglund et al. (2023), where every description starts with "the".

    Names are distinct ``Given Surname`` pairs; descriptions are distinct, their words after the first drawn from
    :data:`DESCRIPTION_WORDS`, and none is the start of another (so two answers always differ at some token).
    Facts are split as :func:`revinterp.data.split_facts` does.

    Example:
        >>> facts = description_like(4, seed=0)
        >>> {s.object.split()[0] for s in facts.statements if s.relation == "described_as"}
        {'the'}
    """
    check_count("n_names", n_names, 2)
    check_count("min_words", min_words, 2)
    check_count("max_words", max_words, min_words)
    problem = relation_name_problem(first_word)
    if problem or first_word in DESCRIPTION_WORDS:
        raise ValueError(f"first_word={first_word!r} {problem or 'is one of the description words'}; expected one "
                         "word without braces or spaces that is not in DESCRIPTION_WORDS")
    check_fraction("both_fraction", both_fraction)
    check_choice("held_out_direction", held_out_direction, HELD_OUT_DIRECTIONS)
    check_seed(seed)
    rng = random.Random(seed)
    people = _PersonNames(rng)
    names = [people.draw(rng.choice(("female", "male")), rng.choice(SURNAMES)) for _ in range(n_names)]
    descriptions: list[str] = []
    for _ in range(1000 * n_names):
        if len(descriptions) == n_names:
            break
        words = [first_word, *rng.choices(DESCRIPTION_WORDS, k=rng.randint(min_words, max_words) - 1)]
        text = " ".join(words)
        if not any(d == text or d.startswith(text + " ") or text.startswith(d + " ") for d in descriptions):
            descriptions.append(text)
    else:
        raise ValueError(f"could not draw {n_names} distinct descriptions of {min_words} to {max_words} words; "
                         "allow longer descriptions")
    declared = check_relations([Relation("described_as", "describes", SYMBOLIC_TEMPLATE % "described_as"),
                                Relation("describes", "described_as", SYMBOLIC_TEMPLATE % "describes")])
    facts = [(name, "described_as", d) for name, d in zip(names, descriptions)]
    statements = split_facts(facts, declared, both_fraction=both_fraction, held_out_direction=held_out_direction,
                             seed=rng.randrange(2**31))
    source = dict(generator="description_like", n_names=n_names, min_words=min_words, max_words=max_words,
                  first_word=first_word, both_fraction=both_fraction, held_out_direction=held_out_direction,
                  seed=seed)
    return FactSet(relations=declared, statements=statements, source=source)
