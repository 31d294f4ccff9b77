"""User fact files: CSV or JSONL rows of ``subject, relation, object, inverse``.

Each row states one fact; ``inverse`` names the inverse relation (``parent_of`` -> ``child_of``) and
must be the same on every row of a relation. Entity names may be several words (each word becomes a
token). A row stated through the inverse (``Bob, child_of, Alice``) is the same fact as
``Alice, parent_of, Bob``; exact repeats are merged, conflicting ones are an error.

CSV (header required)::

    subject,relation,object,inverse
    Alice Smith,parent_of,Bob Smith,child_of

JSONL::

    {"subject": "Alice Smith", "relation": "parent_of", "object": "Bob Smith", "inverse": "child_of"}
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from revinterp.data.facts import FactSet, Relation, check_relations, split_facts
from revinterp.data.generators import SYMBOLIC_TEMPLATE
from revinterp.data.tokenizer import SPECIAL_TOKENS

COLUMNS = ("subject", "relation", "object", "inverse")


class FactFileError(ValueError):
    """A fact file that cannot be read as facts; the message names the file, row and value."""


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line number, row)`` pairs from a CSV or JSONL file, chosen by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise FactFileError(
                    f"{path}: missing column(s) {missing}; expected a header with {list(COLUMNS)}, "
                    f"got {reader.fieldnames}"
                )
            return [(reader.line_num, row) for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise FactFileError(f"{path}, line {line_no}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise FactFileError(f"{path}, line {line_no}: expected a JSON object, got {row!r}")
            rows.append((line_no, row))
        return rows
    raise FactFileError(f"{path}: unknown fact file type {suffix!r}; expected .csv or .jsonl")


def load_fact_file(
    path: str | Path, *, both_fraction: float = 0.7, held_out_direction: str = "random", seed: int = 0
) -> FactSet:
    """Read a fact file and split its facts as :func:`revinterp.data.split_facts` does."""
    path = Path(path)
    if not path.is_file():
        raise FactFileError(f"{path}: no such fact file")
    inverses: dict[str, str] = {}
    forward_relations: set[str] = set()  # of each relation pair, the one first used by a row
    by_question: dict[tuple[str, str], tuple[str, int]] = {}  # (subject, relation) -> (object, line)
    facts: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for line_no, row in read_rows(path):
        where = f"{path}, line {line_no}"
        values = {}
        for column in COLUMNS:
            value = row.get(column)
            if value is None:
                raise FactFileError(f"{where}: missing {column!r}; expected fields {list(COLUMNS)}")
            value = " ".join(str(value).split())
            if not value:
                raise FactFileError(f"{where}: empty {column!r}; expected a non-empty name")
            values[column] = value
        subject, relation, obj, inverse = (values[c] for c in COLUMNS)
        for column in ("relation", "inverse"):
            if " " in values[column]:
                raise FactFileError(f"{where}: {column} {values[column]!r} has spaces; expected one word")
        for column in ("subject", "object"):
            bad = [w for w in values[column].split() if w in SPECIAL_TOKENS]
            if bad:
                raise FactFileError(f"{where}: {column} {values[column]!r} uses reserved token(s) {bad}")
        if relation == inverse:
            raise FactFileError(f"{where}: relation {relation!r} is declared as its own inverse")
        if relation not in inverses:
            forward_relations.add(relation)
        for name, inv in ((relation, inverse), (inverse, relation)):
            if inverses.setdefault(name, inv) != inv:
                raise FactFileError(
                    f"{where}: relation {name!r} declared with inverse {inv!r}; "
                    f"earlier rows declare {inverses[name]!r}"
                )
        for question, answer in (((subject, relation), obj), ((obj, inverse), subject)):
            earlier = by_question.setdefault(question, (answer, line_no))
            if earlier[0] != answer:
                raise FactFileError(
                    f"{where}: ({question[0]!r}, {question[1]!r}) -> {answer!r} conflicts with "
                    f"{earlier[0]!r} (line {earlier[1]}); expected one answer per subject and relation"
                )
        if relation not in forward_relations:
            subject, relation, obj = obj, inverse, subject
        if (subject, relation, obj) in seen:
            continue
        seen.add((subject, relation, obj))
        facts.append((subject, relation, obj))
    if len(facts) < 2:
        raise FactFileError(f"{path}: {len(facts)} fact(s); expected at least 2")
    relations = check_relations(Relation(n, inv, SYMBOLIC_TEMPLATE % n) for n, inv in inverses.items())
    statements = split_facts(
        facts, relations, both_fraction=both_fraction, held_out_direction=held_out_direction, seed=seed
    )
    source = dict(
        generator="fact_file", path=str(path), both_fraction=both_fraction,
        held_out_direction=held_out_direction, seed=seed,
    )
    return FactSet(relations=relations, statements=statements, source=source)
