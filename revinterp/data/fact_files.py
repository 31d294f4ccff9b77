"""User fact files: CSV or JSONL rows of ``subject, relation, object, inverse`` and an optional ``split``.

Each row states one fact; ``inverse`` names the inverse relation (``parent_of`` -> ``child_of``) and
must be the same on every row of a relation. Entity names may be several words (each word becomes a
token). A row stated through the inverse (``Bob, child_of, Alice``) is the same fact as
``Alice, parent_of, Bob``; exact repeats are merged. A question may have several answers (a parent with several
children, a child with two parents: one-to-many and many-to-many relations); they are detected, listed in the
fact set's ``source["many_answer_relations"]``, split together (:func:`revinterp.data.split_facts`) and all counted
as correct by the evaluation.

The optional ``split`` column fixes each fact's split instead of drawing it from a seed (to reproduce a published
split): ``both`` (trained both ways), ``reverse_held_out`` (the row as written is trained, its inverse statement
held out) or ``forward_held_out`` (the row as written is held out, its inverse trained). When any row has one,
every row must, and a question may not be both trained and held out.

A fact manifest (``facts.json`` of a run directory, :meth:`FactSet.save`) loads as it was saved, splits included,
so ``revinterp run --facts run_dir/facts.json`` retrains on exactly the same facts and splits.

CSV (header required)::

    subject,relation,object,inverse
    Alice Smith,parent_of,Bob Smith,child_of

JSONL::

    {"subject": "Alice Smith", "relation": "parent_of", "object": "Bob Smith", "inverse": "child_of"}

What a file must hold:

- UTF-8 text (a byte-order mark is accepted); other bytes are reported with their line and byte offset.
- In JSONL, every field a string (a number, list, object or ``null`` is an error, never converted).
- Names: words separated by spaces (tabs and runs of spaces count as one space; other whitespace, such as a
  no-break space, and control characters are errors, since they would silently split or join words). No word may
  contain one of the tokenizer's special tokens (``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``): the tokenizer
  matches them anywhere in the text. Other characters, ``<``, ``>`` and braces in entity names included, are data.
- Relation and inverse names: one word each, without format braces (a relation named ``{subject}`` or ``{0}``
  would read as a template placeholder).
- At most :data:`MAX_FACTS` rows and :data:`MAX_WORDS` distinct words (``max_facts`` and ``max_words`` of
  :func:`load_fact_file` change the limits): past them the file is refused as soon as the limit is crossed,
  before anything is trained or written.

Every problem the loader finds in the rows (conflicting inverses or splits included) is reported at once, each
with its line, in one :class:`FactFileError`.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from revinterp.data.facts import (
    FACT_SPLITS,
    HELD_OUT_DIRECTIONS,
    SPLITS,
    FactSet,
    Relation,
    check_relations,
    split_facts,
)
from revinterp.data.generators import SYMBOLIC_TEMPLATE, check_choice, check_count, check_fraction, check_seed
from revinterp.data.tokenizer import SPECIAL_TOKENS, word_problem

COLUMNS = ("subject", "relation", "object", "inverse")
SPLIT_COLUMN = "split"
"""The optional column that fixes a fact's split (one of :data:`revinterp.data.facts.FACT_SPLITS`)."""
_FLIPPED = {"both": "both", "reverse_held_out": "forward_held_out", "forward_held_out": "reverse_held_out"}
MAX_FACTS = 200_000
"""Most fact rows a file may hold by default. A tiny model fits a few thousand facts in minutes; 200,000 facts
(400,000 statements) already take hours to train on a CPU, and a file far past that is more likely a wrong file
than an experiment."""
MAX_WORDS = 500_000
"""Most distinct words (the model's vocabulary) by default: the embedding and unembedding grow with it
(500,000 words x d_model 128 x 2 is 128 million parameters, half a gigabyte per checkpoint)."""
MAX_NAME_WORDS = 64
"""Most words in one entity name by default (the model's context grows with the longest statement)."""
SHOWN_PROBLEMS = 20
"""Problems listed in one error; the rest are counted."""

# Whitespace other than space, tab and line ends (a no-break space, U+3000 ...) and invisible characters that
# would make two names look the same: refused rather than silently splitting or joining words.
_BARE_CR = re.compile(rb"(?<=\r)(?!\n)")
_HIDDEN = re.compile(r"[^\S \t\r\n]|[\u200b\u2060\ufeff]")


class FactFileError(ValueError):
    """A fact file that cannot be read as facts; the message names the file, line and value."""


class _Problems:
    """The problems found so far in one file, each with its line."""

    def __init__(self, path: Path):
        self.path = path
        self.found: list[tuple[int, str]] = []

    def add(self, line_no: int, message: str) -> None:
        self.found.append((line_no, message))

    def fatal(self, line_no: int | None, message: str) -> FactFileError:
        """The error to raise now: ``message`` after every problem found before it."""
        if line_no is not None:
            self.add(line_no, message)
            return self.error()
        return FactFileError(f"{self.path}: {message}" + "".join(self.lines()))

    def lines(self) -> list[str]:
        shown = [f"\n  line {n}: {m}" for n, m in sorted(self.found, key=lambda p: p[0])[:SHOWN_PROBLEMS]]
        if len(self.found) > SHOWN_PROBLEMS:
            shown.append(f"\n  ... and {len(self.found) - SHOWN_PROBLEMS} more")
        return shown

    def error(self) -> FactFileError:
        if len(self.found) == 1:
            (line_no, message), = self.found
            return FactFileError(f"{self.path}, line {line_no}: {message}")
        return FactFileError(f"{self.path}: {len(self.found)} problems:" + "".join(self.lines()))


def _decoded_lines(path: Path, problems: _Problems, bad_lines: set[int], progress: bool) -> Iterator[str]:
    """The file's lines as text (line ends kept), reading it as UTF-8 one line at a time.

    A line that is not UTF-8 is recorded as a problem (with its byte offset) and in ``bad_lines``, and yielded
    with the bad bytes replaced, so the rest of the file is still checked.
    """
    from tqdm.auto import tqdm

    try:
        f = path.open("rb")
    except OSError as e:
        raise FactFileError(f"{path}: cannot read the fact file ({e.strerror})") from None
    size = path.stat().st_size
    with f, tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", disable=not progress,
                 leave=False) as bar:
        offset, pending, line_no = 0, 0, 0
        for chunk in f:
            pending += len(chunk)
            if pending > 1 << 20:
                bar.update(pending)
                pending = 0
            # lines end in '\n', '\r\n' or a bare '\r' (old Mac files), as in Python's universal newlines
            for raw in _BARE_CR.split(chunk) if b"\r" in chunk else (chunk,):
                if raw:
                    line_no += 1
                    yield _decode(raw, line_no, offset, problems, bad_lines)
                    offset += len(raw)
        bar.update(pending)


def _decode(raw: bytes, line_no: int, offset: int, problems: _Problems, bad_lines: set[int]) -> str:
    """Line ``line_no`` (which starts at byte ``offset``) as text; a line that is not UTF-8 is recorded as a problem
    and in ``bad_lines``, and returned with the bad bytes replaced."""
    if line_no == 1:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise problems.fatal(None, "the file is UTF-16 text; expected UTF-8 (save it as UTF-8)")
        body = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as spreadsheets write
        start = offset + len(raw) - len(body)
    else:
        body, start = raw, offset
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_lines.add(line_no)
        text = body.decode("utf-8", errors="replace")
        problems.add(line_no, f"byte offset {start + e.start}: {body[e.start:e.end]!r} is not UTF-8 (in "
                              f"{_short(text.rstrip())}); expected a UTF-8 text file (save it as UTF-8)")
    return text


def _csv_rows(path: Path, problems: _Problems, bad_lines: set[int], progress: bool):
    """``(line number, row)`` pairs of a CSV file; a row is a dict of the header's columns."""
    line_no = 0

    def lines():
        nonlocal line_no
        for text in _decoded_lines(path, problems, bad_lines, progress):
            line_no += 1
            yield text

    reader = csv.reader(lines())
    header = None
    end = 0  # the last line of the previous row
    try:
        for fields in reader:
            first, end = end + 1, line_no
            if header is None:
                if not any(f.strip() for f in fields):
                    continue
                header = [f.strip() for f in fields]
                repeated = sorted({c for c in header if c and header.count(c) > 1})
                if repeated:
                    raise problems.fatal(first, f"the header repeats column(s) {repeated}")
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    hint = ""
                    if len(header) == 1 and (sep := next((s for s in ";\t|" if s in header[0]), None)):
                        hint = f" (the header looks separated by {sep!r}; expected commas)"
                    raise problems.fatal(
                        first, f"missing column(s) {missing}; expected a header with {list(COLUMNS)}, "
                               f"got {header}{hint}"
                    )
                continue
            if not fields:
                continue  # a blank line
            if any(n in bad_lines for n in range(first, end + 1)):
                continue  # reported as not UTF-8
            if len(fields) != len(header):
                lacking = [c for c in COLUMNS if header.index(c) >= len(fields)]
                detail = f"missing {lacking}" if lacking else "a name with a comma must be quoted"
                problems.add(first, f"{len(fields)} field(s) but the header has {len(header)} ({detail}); "
                                    f"expected one value per column {header}")
                continue
            yield first, dict(zip(header, fields))
    except csv.Error as e:
        raise problems.fatal(line_no, f"not valid CSV ({e})") from None
    if header is None:
        raise problems.fatal(None, f"empty file; expected a header line {','.join(COLUMNS)} and rows of facts")


def _jsonl_rows(path: Path, problems: _Problems, bad_lines: set[int], progress: bool):
    """``(line number, row)`` pairs of a JSONL file; string fields only."""
    for line_no, line in enumerate(_decoded_lines(path, problems, bad_lines, progress), start=1):
        if not line.strip() or line_no in bad_lines:
            continue
        try:
            row = json.loads(line.strip())
        except json.JSONDecodeError as e:
            problems.add(line_no, f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(row, dict):
            problems.add(line_no, f"expected a JSON object with fields {list(COLUMNS)}, got {_short(row)}")
            continue
        wrong = [c for c in (*COLUMNS, SPLIT_COLUMN) if c in row and not isinstance(row[c], str)]
        if wrong:
            for c in wrong:
                kind = "null" if row[c] is None else f"a JSON {_json_type(row[c])} ({_short(row[c])})"
                problems.add(line_no, f"field {c!r} is {kind}; expected a string")
            continue
        yield line_no, row


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", int: "number", float: "number"}.get(type(value), type(value).__name__)


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_rows(path: Path, problems: _Problems | None = None, *, progress: bool = False):
    """``(line number, row)`` pairs from a CSV or JSONL file, chosen by its suffix (rows are read lazily)."""
    problems = problems or _Problems(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path, problems, set(), progress)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path, problems, set(), progress)
    raise FactFileError(f"{path}: unknown fact file type {suffix!r}; expected .csv or .jsonl")


def _name_problem(column: str, raw: str, value: str) -> str | None:
    """Why the normalized ``value`` (read as ``raw``) of ``column`` cannot be used, or ``None``."""
    hidden = _HIDDEN.search(raw)
    if hidden:
        c = hidden.group()
        name = unicodedata.name(c, "unnamed")
        return (f"{column} {raw!r} contains U+{ord(c):04X} ({name}); expected words separated by plain spaces, "
                "without invisible characters")
    if column in ("relation", "inverse"):
        if " " in value:
            return f"{column} {value!r} has spaces; expected one word"
        if "{" in value or "}" in value:
            return (f"{column} {value!r} contains a format brace; expected a relation name without '{{' or '}}' "
                    "(it would read as a template placeholder)")
    return None


def _check_questions_split_alike(facts, fact_splits, fact_lines, inverses, problems: _Problems) -> None:
    """Record a problem for every fact whose split trains a question that an earlier fact holds out, or the
    reverse: a held-out question must have every answer held out (a trained one would count as a correct reply)."""
    first: dict[tuple[str, str], tuple[bool, int, str]] = {}  # question -> (trained, line, answer)
    for (subject, relation, obj), name, line_no in zip(facts, fact_splits, fact_lines):
        for question, answer, split in (((subject, relation), obj, FACT_SPLITS[name][0]),
                                        ((obj, inverses[relation]), subject, FACT_SPLITS[name][1])):
            trained, (was_trained, line, earlier) = SPLITS[split], first.setdefault(
                question, (SPLITS[split], line_no, answer))
            if trained != was_trained:
                problems.add(line_no, f"question ({question[0]!r}, {question[1]!r}) is {_state(trained)} here (answer "
                                      f"{answer!r}) but {_state(was_trained)} on line {line} (answer {earlier!r}); "
                                      "expected every answer of a held-out question held out")


def _state(trained: bool) -> str:
    return "trained" if trained else "held out"


DEFAULT_BOTH_FRACTION, DEFAULT_HELD_OUT_DIRECTION = 0.7, "random"
"""How :func:`load_fact_file` draws the splits of a file that does not fix them."""


def _refuse_split_options(path: Path, why: str, both_fraction: float, held_out_direction: str) -> None:
    """A split drawn by the options would be silently ignored where the file fixes the splits: refuse options other
    than the defaults (``revinterp run --both-fraction`` / ``--trained-direction`` with such a file)."""
    given = [f"{name}={value!r}" for name, value, default in (
        ("both_fraction", both_fraction, DEFAULT_BOTH_FRACTION),
        ("held_out_direction", held_out_direction, DEFAULT_HELD_OUT_DIRECTION)) if value != default]
    if given:
        raise FactFileError(f"{path}: {why}, so {' and '.join(given)} would be ignored; expected the defaults "
                            f"(both_fraction={DEFAULT_BOTH_FRACTION}, held_out_direction="
                            f"{DEFAULT_HELD_OUT_DIRECTION!r}) with this file")


def load_fact_file(
    path: str | Path,
    *,
    both_fraction: float = DEFAULT_BOTH_FRACTION,
    held_out_direction: str = DEFAULT_HELD_OUT_DIRECTION,
    seed: int = 0,
    max_facts: int | None = None,
    max_words: int | None = None,
    max_name_words: int | None = None,
    progress: bool = False,
) -> FactSet:
    """Read a fact file and split its facts as :func:`revinterp.data.split_facts` does (or as its ``split`` column
    says).

    Args:
        path: a ``.csv`` or ``.jsonl`` file (see the module docstring for what it must hold), or a fact manifest
            (``.json``, as a run directory's ``facts.json``), returned as saved (the other arguments unused).
        both_fraction: as :func:`revinterp.data.split_facts` (unused with a ``split`` column).
        held_out_direction: as :func:`revinterp.data.split_facts` (unused with a ``split`` column).
        seed: as :func:`revinterp.data.split_facts` (unused with a ``split`` column).
        max_facts: most rows (default :data:`MAX_FACTS`); a file with more is refused when its row
            ``max_facts + 1`` is read.
        max_words: most distinct words of entity and relation names (default :data:`MAX_WORDS`).
        max_name_words: most words in one entity name (default :data:`MAX_NAME_WORDS`).
        progress: show a progress bar (bytes read) while the file loads.

    Raises:
        FactFileError: naming the file and, for each problem, its line and value; every problem in the rows is
            reported at once.
    """
    path = Path(path)
    check_fraction("both_fraction", both_fraction)
    check_choice("held_out_direction", held_out_direction, HELD_OUT_DIRECTIONS)
    check_seed(seed)
    max_facts = MAX_FACTS if max_facts is None else max_facts
    max_words = MAX_WORDS if max_words is None else max_words
    max_name_words = MAX_NAME_WORDS if max_name_words is None else max_name_words
    check_count("max_facts", max_facts, 2)
    check_count("max_words", max_words, 2)
    check_count("max_name_words", max_name_words, 1)
    if not path.is_file():
        raise FactFileError(f"{path}: {'a directory, not a fact file' if path.is_dir() else 'no such fact file'}")
    if path.suffix.lower() == ".json":
        _refuse_split_options(path, "a fact manifest fixes every statement's split", both_fraction,
                              held_out_direction)
        try:
            return FactSet.load(path)
        except ValueError as e:
            raise FactFileError(f"{e} (a .json fact file is a fact manifest, as a run directory's facts.json)"
                                ) from None
    problems = _Problems(path)
    inverses: dict[str, str] = {}
    forward_relations: set[str] = set()  # of each relation pair, the one first used by a row
    facts: list[tuple[str, str, str]] = []
    fact_index: dict[tuple[str, str, str], int] = {}
    fact_lines: list[int] = []
    fact_splits: list[str | None] = []  # each fact's split column, oriented as the fact (None: no column)
    words: set[str] = set()  # every word checked so far
    n_rows = 0
    for line_no, row in read_rows(path, problems, progress=progress):
        n_rows += 1
        if n_rows > max_facts:
            raise problems.fatal(
                line_no, f"more than {max_facts:,} fact rows; expected at most {max_facts:,} (a larger file takes "
                         "too long to train; to load it anyway pass max_facts= to load_fact_file)"
            )
        values, bad = {}, []
        for column in COLUMNS:
            raw = row.get(column)
            if raw is None:
                bad.append(f"missing {column!r}; expected fields {list(COLUMNS)}")
                continue
            value = " ".join(raw.split())
            if not value:
                bad.append(f"empty {column!r}; expected a non-empty name")
                continue
            problem = _name_problem(column, raw, value)
            if problem is None and column in ("subject", "object") and len(value.split()) > max_name_words:
                problem = (f"{column} {_short(value)} has {len(value.split())} words; expected at most "
                           f"{max_name_words} (max_name_words= of load_fact_file)")
            if problem is None:
                for w in value.split():
                    if w not in words:
                        if wp := word_problem(w):
                            problem = (f"{column} {value!r}: the word {w!r} {wp}; expected words without the "
                                       f"reserved token(s) {list(SPECIAL_TOKENS)} or control characters")
                            break
                        words.add(w)
                if len(words) > max_words:
                    raise problems.fatal(
                        line_no, f"more than {max_words:,} distinct words; expected at most {max_words:,} (the "
                                 "model's vocabulary; to load it anyway pass max_words= to load_fact_file)"
                    )
            if problem:
                bad.append(problem)
            else:
                values[column] = value
        split = row.get(SPLIT_COLUMN)
        split = " ".join(split.split()) or None if split is not None else None
        if split is not None and split not in FACT_SPLITS:
            bad.append(f"split {split!r}; expected one of {list(FACT_SPLITS)} (or no split column)")
        if not bad and values["relation"] == values["inverse"]:
            bad.append(f"relation {values['relation']!r} is declared as its own inverse; expected a different "
                       "inverse name")
        if bad:
            for message in bad:
                problems.add(line_no, message)
            continue
        subject, relation, obj, inverse = (values[c] for c in COLUMNS)
        clash = next(((name, inv) for name, inv in ((relation, inverse), (inverse, relation))
                      if inverses.get(name, inv) != inv), None)
        if clash:
            name, inv = clash
            problems.add(line_no, f"relation {name!r} declared with inverse {inv!r}; earlier rows declare "
                                  f"{inverses[name]!r}")
            continue
        if relation not in inverses:
            forward_relations.add(relation)
        inverses[relation], inverses[inverse] = inverse, relation
        as_written = split
        if relation not in forward_relations:
            subject, relation, obj = obj, inverse, subject
            split = None if split is None else _FLIPPED[split]
        fact = (subject, relation, obj)
        if fact in fact_index:
            earlier = fact_index[fact]
            if fact_splits[earlier] != split:
                read = f" (the row's {as_written!r}, stated through the inverse)" if as_written != split else ""
                problems.add(line_no, f"fact ({subject!r}, {relation!r}, {obj!r}) has split {split!r} here{read} but "
                                      f"{fact_splits[earlier]!r} on line {fact_lines[earlier]}; expected one split per "
                                      "fact")
            continue
        fact_index[fact] = len(facts)
        facts.append(fact)
        fact_lines.append(line_no)
        fact_splits.append(split)
    given = [s is not None for s in fact_splits]
    if any(given) and not all(given):
        first = fact_lines[given.index(True)]
        for line_no, has in zip(fact_lines, given):
            if not has:
                problems.add(line_no, f"no split, while line {first} and others give one; expected a split on every "
                                      f"row (one of {list(FACT_SPLITS)}) or on none")
    elif all(given):
        _check_questions_split_alike(facts, fact_splits, fact_lines, inverses, problems)
    if problems.found:
        raise problems.error()
    if len(facts) < 2:
        raise FactFileError(f"{path}: {len(facts)} fact(s); expected at least 2")
    relations = check_relations(Relation(n, inv, SYMBOLIC_TEMPLATE % n) for n, inv in inverses.items())
    explicit = all(given)
    if explicit:
        _refuse_split_options(path, f"its {SPLIT_COLUMN!r} column fixes every fact's split", both_fraction,
                              held_out_direction)
    try:
        statements = split_facts(
            facts, relations, both_fraction=both_fraction, held_out_direction=held_out_direction, seed=seed,
            fact_splits=fact_splits if explicit else None,
        )
    except ValueError as e:
        raise FactFileError(f"{path}: {e}") from None
    source = dict(generator="fact_file", path=str(path))
    if explicit:
        source["split"] = "file"
    else:
        source.update(both_fraction=both_fraction, held_out_direction=held_out_direction, seed=seed)
    source["many_answer_relations"] = FactSet(relations=relations, statements=statements).many_answer_relations
    return FactSet(relations=relations, statements=statements, source=source)
