"""Relational facts, the statements that express them, and the named splits.

A *fact* relates two entities, ``A_i parent_of B_i``. It is expressed by two *statements*: the
forward one (``A_i parent_of B_i``) and the reverse one through the inverse relation
(``B_i child_of A_i``). A model reads a statement's prompt (subject and relation) and must
produce its answer (the object). Which statements are trained and which are held out is the
*split* each statement belongs to; splits are addressed by name (see :data:`SPLITS`).

The split machinery follows the seed experiment of Zhu et al. (2024), "Towards a Theoretical
Understanding of the 'Reversal Curse' via Training Dynamics": a fraction of the facts is trained in
both directions, and for every other fact one direction is trained and the other held out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from revinterp.data.tokenizer import word_problem
from revinterp.io import write_json

MANIFEST_VERSION = 1

# Split names. Each statement belongs to exactly one of them.
FORWARD_SEEN = "forward_seen"  # forward statement of a fact trained both ways
REVERSE_SEEN = "reverse_seen"  # reverse statement of a fact trained both ways
FORWARD_ONLY = "forward_only"  # forward statement trained, its reverse held out
REVERSE_HELD_OUT = "reverse_held_out"  # reverse statement held out, its forward trained
REVERSE_ONLY = "reverse_only"  # reverse statement trained, its forward held out
FORWARD_HELD_OUT = "forward_held_out"  # forward statement held out, its reverse trained
CHAIN_FIRST_HOP = "chain_first_hop"  # x -> y
CHAIN_SECOND_HOP = "chain_second_hop"  # y -> z
CHAIN_COMPOSED_SEEN = "chain_composed_seen"  # x ~> z, trained
CHAIN_COMPOSED_HELD_OUT = "chain_composed_held_out"  # x ~> z, held out
AUGMENTED = "augmented"  # extra trained statements of a mitigation (revinterp.data.mitigations)
ATTRIBUTE = "attribute"  # an unrelated trained fact about an entity (starvation control)

SPLITS: dict[str, bool] = {
    # name: trained?
    FORWARD_SEEN: True,
    REVERSE_SEEN: True,
    FORWARD_ONLY: True,
    REVERSE_HELD_OUT: False,
    REVERSE_ONLY: True,
    FORWARD_HELD_OUT: False,
    CHAIN_FIRST_HOP: True,
    CHAIN_SECOND_HOP: True,
    CHAIN_COMPOSED_SEEN: True,
    CHAIN_COMPOSED_HELD_OUT: False,
    AUGMENTED: True,
    ATTRIBUTE: True,
}
"""Every split name, mapped to whether its statements are in the training data."""

HELD_OUT_DIRECTIONS = ("random", "forward", "reverse")
"""Which direction of a one-way fact is trained: chosen at random per fact (the seed), always the
forward one (reverse held out), or always the reverse one (forward held out)."""


@dataclass(frozen=True)
class Relation:
    """A named relation, its inverse, and how a statement with it reads.

    ``template`` holds ``{subject}`` and ``{object}``, each once and as a word of its own; the object
    must come last, since the model answers by continuing the prompt. ``inverse`` is the name of the
    inverse relation, or ``None`` for a relation that has none (the composed relation of the chain
    data). Names and template words must be single tokens without format braces (see
    :data:`RELATION_NAME`); the subject is put into the template word for word, never through
    ``str.format``.
    """

    name: str
    inverse: str | None
    template: str

    def __post_init__(self):
        for role, value in (("relation name", self.name), ("inverse", self.inverse)):
            if role == "inverse" and value is None:
                continue
            problem = relation_name_problem(value)
            if problem:
                of = "" if role == "relation name" else f" of relation {self.name!r}"
                raise ValueError(f"{role} {value!r}{of} {problem}; expected {RELATION_NAME}")
        problem = template_problem(self.template)
        if problem:
            raise ValueError(
                f"template {self.template!r} of relation {self.name!r} {problem}; expected words separated by "
                "spaces with '{subject}' once as a word of its own and '{object}' as the very last word"
            )

    def prompt_words(self, subject: str) -> list[str]:
        """The words of the prompt for ``subject``, up to (not including) the object.

        The subject is put in word for word, never formatted, so braces in it stay as they are.
        """
        words = self.template.split()[:-1]  # the last word is '{object}' (checked when built)
        return [part for w in words for part in (subject.split() if w == "{subject}" else [w])]


RELATION_NAME = "one word without braces, whitespace, control characters or the tokenizer's special tokens"


def relation_name_problem(name) -> str | None:
    """Why ``name`` cannot name a relation, or ``None`` when it can (see :data:`RELATION_NAME`).

    A relation name is a word of the symbolic template (``{subject} NAME {object}``), so it must be one token, and it
    may not hold format braces: ``{subject}`` or ``{0}`` as a relation name would be read as a placeholder.
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if any(c.isspace() for c in name):
        return "has spaces"
    if "{" in name or "}" in name:
        return "contains a format brace"
    return word_problem(name)


def template_problem(template) -> str | None:
    """Why ``template`` cannot be a relation's template, or ``None`` when it can."""
    if not isinstance(template, str):
        return f"is a {type(template).__name__}, not a string"
    words = template.split()
    if words.count("{subject}") != 1:
        return f"has '{{subject}}' as a word {words.count('{subject}')} times"
    if not words or words[-1] != "{object}" or words.count("{object}") != 1:
        return "does not end in '{object}' (once, as a word of its own)"
    for w in words:
        if w in ("{subject}", "{object}"):
            continue
        if "{" in w or "}" in w:
            return f"has the word {w!r} with a format brace"
        problem = word_problem(w)
        if problem:
            return f"has the word {w!r}, which {problem}"
    return None


@dataclass(frozen=True)
class Statement:
    """One trainable or held-out sentence: ``subject relation object``.

    ``fact`` indexes the fact the statement expresses (both directions of a fact share it);
    ``direction`` is ``"forward"``, ``"reverse"``, ``"composed"`` (chain data) or ``"augmented"``
    (a mitigation's extra statement) or ``"attribute"`` (a starvation control's unrelated fact).
    """

    subject: str
    relation: str
    object: str
    fact: int
    direction: str
    split: str

    @property
    def trained(self) -> bool:
        return SPLITS[self.split]


@dataclass(frozen=True)
class FactSet:
    """A whole data set: relations, statements with their splits, and how it was made.

    Deterministic from ``source`` (generator name, parameters and seed) for generated sets. Saved
    as a JSON manifest beside a trained model (:meth:`save`, :meth:`load`).

    Example:
        >>> from revinterp.data import seed_experiment
        >>> facts = seed_experiment(n_pairs=20, seed=0)
        >>> len(facts.split("forward_seen")) + len(facts.split("forward_only")) > 0
        True
    """

    relations: dict[str, Relation]
    statements: tuple[Statement, ...]
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        for s in self.statements:
            if s.split not in SPLITS:
                raise ValueError(f"statement {s}: unknown split {s.split!r}; expected one of {list(SPLITS)}")
            if s.relation not in self.relations:
                raise ValueError(f"statement {s}: relation {s.relation!r} is not declared")

    # -- addressing -------------------------------------------------------------------------
    @property
    def split_names(self) -> list[str]:
        """The splits that hold at least one statement, in :data:`SPLITS` order."""
        present = {s.split for s in self.statements}
        return [name for name in SPLITS if name in present]

    def split(self, name: str) -> tuple[Statement, ...]:
        """The statements of split ``name``; ``"train"`` and ``"held_out"`` give the unions."""
        if name == "train":
            return tuple(s for s in self.statements if s.trained)
        if name == "held_out":
            return tuple(s for s in self.statements if not s.trained)
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected 'train', 'held_out' or one of {list(SPLITS)}")
        return tuple(s for s in self.statements if s.split == name)

    @property
    def train(self) -> tuple[Statement, ...]:
        return self.split("train")

    def candidates(self, relation: str) -> list[str]:
        """The answer candidates for a question through ``relation``: every entity that is the
        object of some statement with that relation, trained or not (the M of chance = 1/M)."""
        return sorted({s.object for s in self.statements if s.relation == relation})

    def answers(self, subject: str, relation: str) -> tuple[str, ...]:
        """Every valid answer of the question ``(subject, relation)``, sorted: the objects of all its statements,
        trained or not. One for a one-to-one relation; several for one-to-many ones (a parent's children, a
        child's two parents)."""
        return self._answers.get((subject, relation), ())

    @cached_property
    def _answers(self) -> dict[tuple[str, str], tuple[str, ...]]:
        by_question: dict[tuple[str, str], set[str]] = {}
        for s in self.statements:
            by_question.setdefault((s.subject, s.relation), set()).add(s.object)
        return {q: tuple(sorted(objects)) for q, objects in by_question.items()}

    @property
    def many_answer_relations(self) -> list[str]:
        """The relations with at least one question that has several valid answers (detected, sorted)."""
        return sorted({relation for (_, relation), objects in self._answers.items() if len(objects) > 1})

    def prompt_words(self, statement: Statement) -> list[str]:
        return self.relations[statement.relation].prompt_words(statement.subject)

    def text(self, statement: Statement) -> str:
        """The whole statement as text, e.g. ``"a17 -> b3"``."""
        return " ".join([*self.prompt_words(statement), *statement.object.split()])

    def vocabulary(self) -> list[str]:
        """Every word the statements use, sorted (entity tokens, relation and template words): the words of every
        distinct subject and object, and of the templates of the relations in use (the words of :meth:`text`)."""
        entities = {s.subject for s in self.statements} | {s.object for s in self.statements}
        words = {word for entity in entities for word in entity.split()}
        for relation in {s.relation for s in self.statements}:
            words.update(w for w in self.relations[relation].template.split()[:-1] if w != "{subject}")
        return sorted(words)

    # -- persistence ------------------------------------------------------------------------
    def to_manifest(self) -> dict:
        return {
            "manifest_version": MANIFEST_VERSION,
            "source": self.source,
            "relations": [asdict(r) for r in self.relations.values()],
            "statements": [asdict(s) for s in self.statements],
        }

    @classmethod
    def from_manifest(cls, manifest: dict) -> FactSet:
        version = manifest.get("manifest_version")
        if version != MANIFEST_VERSION:
            raise ValueError(f"fact manifest version {version!r}: expected {MANIFEST_VERSION}")
        relations = {r["name"]: Relation(**r) for r in manifest["relations"]}
        statements = tuple(Statement(**s) for s in manifest["statements"])
        return cls(relations=relations, statements=statements, source=manifest.get("source", {}))

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.to_manifest())

    @classmethod
    def load(cls, path: str | Path) -> FactSet:
        """Read a manifest written by :meth:`save`, checked field by field (a ``ValueError`` names the file, the
        field and what was expected)."""
        path = Path(path)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"fact manifest {path}: not valid JSON ({e})") from None
        except OSError as e:
            raise ValueError(f"fact manifest {path}: unreadable ({e})") from None
        check_manifest(path, manifest)
        try:
            return cls.from_manifest(manifest)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"fact manifest {path}: {e}") from None


MANIFEST_RELATION_FIELDS = {"name": (str,), "inverse": (str, type(None)), "template": (str,)}
MANIFEST_STATEMENT_FIELDS = {"subject": (str,), "relation": (str,), "object": (str,), "fact": (int,),
                             "direction": (str,), "split": (str,)}


def check_manifest(path: Path, manifest) -> None:
    """Check the shape of a fact manifest (as :meth:`FactSet.to_manifest` writes it) before it is used."""
    where = f"fact manifest {path}"
    if not isinstance(manifest, dict):
        raise ValueError(f"{where}: holds a JSON {type(manifest).__name__}; expected an object with "
                         "manifest_version, source, relations and statements")
    version = manifest.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise ValueError(f"{where}: manifest_version {version!r}; expected {MANIFEST_VERSION}")
    if not isinstance(manifest.get("source", {}), dict):
        raise ValueError(f"{where}: field 'source' is {type(manifest['source']).__name__}; expected an object")
    for key, item_fields in (("relations", MANIFEST_RELATION_FIELDS), ("statements", MANIFEST_STATEMENT_FIELDS)):
        items = manifest.get(key)
        if not isinstance(items, list) or not items:
            got = "missing" if items is None else f"{type(items).__name__} {items!r}"[:80]
            raise ValueError(f"{where}: field {key!r} is {got}; expected a non-empty list of objects")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"{where}: {key}[{i}] is {type(item).__name__}; expected an object with "
                                 f"fields {list(item_fields)}")
            missing = [f for f in item_fields if f not in item]
            unknown = sorted(set(item) - set(item_fields))
            if missing or unknown:
                what = (f"lacks {missing}" if missing else "") + (" and " if missing and unknown else "") + \
                       (f"has unknown fields {unknown}" if unknown else "")
                raise ValueError(f"{where}: {key}[{i}] {what}; expected exactly the fields {list(item_fields)}")
            for name, types in item_fields.items():
                value = item[name]
                if not isinstance(value, types) or isinstance(value, bool):
                    expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                    raise ValueError(f"{where}: {key}[{i}].{name} is {value!r}; expected {expected}")
            if key == "statements":
                for name in ("subject", "object"):
                    if not item[name].split():
                        raise ValueError(f"{where}: {key}[{i}].{name} is {item[name]!r}; expected an entity name")
                if item["split"] not in SPLITS:
                    raise ValueError(f"{where}: {key}[{i}].split is {item['split']!r}; expected one of "
                                     f"{list(SPLITS)}")


FACT_SPLITS: dict[str, tuple[str, str]] = {
    "both": (FORWARD_SEEN, REVERSE_SEEN),
    "reverse_held_out": (FORWARD_ONLY, REVERSE_HELD_OUT),
    "forward_held_out": (FORWARD_HELD_OUT, REVERSE_ONLY),
}
"""How one fact is split, by name: ``(forward statement's split, reverse statement's split)``; the names of a fact
file's ``split`` column."""


def split_facts(
    facts: Sequence[tuple[str, str, str]],
    relations: dict[str, Relation],
    *,
    both_fraction: float = 0.7,
    held_out_direction: str = "random",
    seed: int = 0,
    fact_splits: Sequence[str] | None = None,
) -> tuple[Statement, ...]:
    """Turn facts ``(subject, relation, object)`` into forward and reverse statements with splits.

    A random ``both_fraction`` of the facts is trained in both directions; for every other fact one
    direction is trained and the other held out, as ``held_out_direction`` says (see
    :data:`HELD_OUT_DIRECTIONS`). Facts whose relation has no inverse are an error.

    Facts that share a question (one subject and relation with several answers, such as a parent's children, or one
    object and inverse, such as a child's two parents) are split together as one group, so that a held-out question
    never has a trained answer (which would count as a correct reply without any reverse recall). The fraction and
    the random choices are then per group; with one answer per question every group is one fact, as in the seed.

    ``fact_splits`` gives each fact's split by name (:data:`FACT_SPLITS`; a published split), and then
    ``both_fraction``, ``held_out_direction`` and ``seed`` are not used; a question both trained and held out
    is an error naming it.
    """
    if not 0.0 <= both_fraction <= 1.0:
        raise ValueError(f"both_fraction={both_fraction}: expected a fraction in [0, 1]")
    if held_out_direction not in HELD_OUT_DIRECTIONS:
        raise ValueError(f"held_out_direction={held_out_direction!r}: expected one of {HELD_OUT_DIRECTIONS}")
    for i, (subject, relation, obj) in enumerate(facts):
        if relations[relation].inverse is None:
            raise ValueError(f"fact {i} ({subject!r}, {relation!r}, {obj!r}): relation has no inverse")
    if fact_splits is None:
        fact_splits = _drawn_fact_splits(facts, relations, both_fraction, held_out_direction, seed)
    elif len(fact_splits) != len(facts):
        raise ValueError(f"{len(fact_splits)} fact splits for {len(facts)} facts; expected one per fact")
    statements = []
    for i, ((subject, relation, obj), name) in enumerate(zip(facts, fact_splits)):
        if name not in FACT_SPLITS:
            raise ValueError(f"fact {i} ({subject!r}, {relation!r}, {obj!r}): split {name!r}; expected one of "
                             f"{list(FACT_SPLITS)}")
        forward_split, reverse_split = FACT_SPLITS[name]
        statements.append(Statement(subject, relation, obj, i, "forward", forward_split))
        statements.append(Statement(obj, relations[relation].inverse, subject, i, "reverse", reverse_split))
    mixed = mixed_questions(statements)
    if mixed:
        shown = ", ".join(f"({s!r}, {r!r})" for s, r in mixed[:5]) + (" ..." if len(mixed) > 5 else "")
        raise ValueError(f"{len(mixed)} question(s) have both trained and held-out answers: {shown}; expected every "
                         "answer of a held-out question held out (a trained answer would count as a correct reply)")
    return tuple(statements)


def mixed_questions(statements: Iterable[Statement]) -> list[tuple[str, str]]:
    """The questions ``(subject, relation)`` that have both a trained and a held-out statement, sorted."""
    trained: dict[tuple[str, str], set[bool]] = {}
    for s in statements:
        trained.setdefault((s.subject, s.relation), set()).add(s.trained)
    return sorted(q for q, flags in trained.items() if len(flags) == 2)


def _drawn_fact_splits(facts, relations, both_fraction: float, held_out_direction: str, seed: int) -> list[str]:
    """Each fact's split name, drawn per group of facts that share a question (see :func:`split_facts`)."""
    groups = question_groups(facts, relations)
    rng = random.Random(seed)
    order = list(range(len(groups)))
    rng.shuffle(order)
    both = set(order[: round(len(groups) * both_fraction)])
    names = [""] * len(facts)
    for g, members in enumerate(groups):
        if g in both:
            name = "both"
        else:
            reverse_trained = {"random": rng.random() < 0.5, "forward": False, "reverse": True}[held_out_direction]
            name = "forward_held_out" if reverse_trained else "reverse_held_out"
        for i in members:
            names[i] = name
    return names


def question_groups(facts: Sequence[tuple[str, str, str]], relations: dict[str, Relation]) -> list[list[int]]:
    """The facts (by index) grouped by shared questions: two facts are in one group when they share a subject and
    relation, or an object and inverse (transitively). Groups are ordered by their first fact."""
    parent = list(range(len(facts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (subject, relation, obj) in enumerate(facts):
        for question in ((subject, relation), (obj, relations[relation].inverse)):
            j = first.setdefault(question, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(facts)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda members: members[0])


def check_relations(relations: Iterable[Relation]) -> dict[str, Relation]:
    """Index relations by name, checking that every declared inverse exists and points back."""
    by_name: dict[str, Relation] = {}
    for r in relations:
        if r.name in by_name and by_name[r.name] != r:
            raise ValueError(f"relation {r.name!r} declared twice with different definitions")
        by_name[r.name] = r
    for r in by_name.values():
        if r.inverse is None:
            continue
        inv = by_name.get(r.inverse)
        if inv is None:
            raise ValueError(f"relation {r.name!r}: its inverse {r.inverse!r} is not declared")
        if inv.inverse != r.name:
            raise ValueError(
                f"relation {r.name!r} has inverse {r.inverse!r}, whose inverse is {inv.inverse!r}: "
                f"expected {r.name!r}"
            )
    return by_name
