"""The bad-input corpus: every hostile or careless fact file, through ``revinterp train --facts``.

For each file of ``tests/corpus/fact_files/`` (written by its ``generate.py``) the command must exit with status 2
and a message on stderr that names the file, the line (where one applies) and the bad value, without a traceback,
and leave the filesystem as it found it: no run directory, nothing else written, the corpus file unchanged. The
few files that are valid data (a byte-order mark, old Mac line ends, names hostile to HTML, braces in entity
names) must train.
Generator options that make no data (``--relations 0`` ...) are checked the same way, and so are the size limits,
against files the test builds for a small configured limit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from revinterp.cli import main
from revinterp.data import fact_files

CORPUS = Path(__file__).resolve().parent / "corpus" / "fact_files"
LINE_1_TO_3 = r"line [123]"

# file -> patterns that must all be in the message (besides the file's name); a pattern list of None: accepted
CASES: dict[str, list[str] | None] = {
    "relation_brace.csv": [r"line 2: relation '\{foo\}' contains a format brace", r"line 3: relation '\{foo\}'"],
    "relation_positional.csv": [r"line 2: relation '\{0\}' contains a format brace"],
    "relation_subject.csv": [r"line 2: relation '\{subject\}' contains a format brace", "template placeholder"],
    "inverse_object.csv": [r"line 2: inverse '\{object\}' contains a format brace"],
    "special_relation.csv": [r"line 2: relation '<bos>'.*special token '<bos>'", "reserved token"],
    "special_entity.csv": [r"line 2: object '<eos>'.*special token '<eos>'"],
    "special_inside_word.csv": [r"line 2: object 'Ben<pad>Birch'.*contains the special token '<pad>'"],
    "special_entity.jsonl": [r"line 1: subject 'Ada <unk>'.*special token '<unk>'"],
    "whitespace_only.csv": [r"line 3: empty 'subject'"],
    "no_break_space.csv": [r"line 2: subject 'Ada\\xa0Ash' contains U\+00A0 \(NO-BREAK SPACE\)"],
    "zero_width_space.csv": [r"line 2: object 'Ben\\u200b' contains U\+200B \(ZERO WIDTH SPACE\)"],
    "control_character.csv": [r"line 2: subject 'Ada\\x1b\[31m'.*control character U\+001B"],
    "relation_with_space.csv": [r"line 2: relation 'parent of' has spaces; expected one word"],
    "long_name.csv": [r"line 2: subject 'w0 w1 .*has 65 words; expected at most 64"],
    "jsonl_list.jsonl": [r"line 1: field 'subject' is a JSON array \(\[\"Ada\", \"Ash\"\]\); expected a string"],
    "jsonl_dict.jsonl": [r"line 2: field 'relation' is a JSON object \(\{\"name\": \"parent_of\"\}\)"],
    "jsonl_number.jsonl": [r"line 1: field 'object' is a JSON number \(42\); expected a string"],
    "jsonl_null.jsonl": [r"line 1: field 'inverse' is null; expected a string"],
    "jsonl_bool.jsonl": [r"line 2: field 'object' is a JSON boolean \(true\)"],
    "jsonl_not_object.jsonl": [r"line 2: expected a JSON object.*got \[\"Cleo\""],
    "jsonl_bad_json.jsonl": [r"line 2: not valid JSON"],
    "jsonl_missing_field.jsonl": [r"line 2: missing 'inverse'"],
    "bom_header.csv": None,
    "bom_header.jsonl": None,
    "latin1.csv": [r"line 2: byte offset 34: b'\\xeb' is not UTF-8 \(in 'Zo.,parent_of,Ben,child_of'\)"],
    "utf16.csv": [r"UTF-16 text; expected UTF-8"],
    "bare_carriage_returns.csv": None,
    "empty.csv": [r"empty file; expected a header line subject,relation,object,inverse"],
    "header_only.csv": [r"0 fact\(s\); expected at least 2"],
    "one_fact.csv": [r"1 fact\(s\); expected at least 2"],
    "missing_column.csv": [r"line 1: missing column\(s\) \['inverse'\]"],
    "semicolons.csv": [r"line 1: missing column\(s\)", r"separated by ';'; expected commas"],
    "repeated_column.csv": [r"line 1: the header repeats column\(s\) \['subject'\]"],
    "unquoted_comma.csv": [r"line 2: 5 field\(s\) but the header has 4 \(a name with a comma must be quoted\)"],
    "short_row.csv": [r"line 2: 2 field\(s\) but the header has 4 \(missing \['object', 'inverse'\]\)"],
    "empty.jsonl": [r"0 fact\(s\); expected at least 2"],
    "facts.txt": [r"unknown fact file type '\.txt'; expected \.csv or \.jsonl"],
    "conflicts.csv": [  # all three at once
        r"3 problems",
        r"line 5: fact \('Dan', 'parent_of', 'Eve'\) has split 'reverse_held_out' here \(the row's "
        r"'forward_held_out', stated through the inverse\) but 'both' on line 4",
        r"line 7: fact \('Gus', 'teacher_of', 'Hal'\) has split 'both' here but 'reverse_held_out' on line 6",
        r"line 9: fact \('Ivy', 'teacher_of', 'Jo'\) has split 'reverse_held_out' here but 'forward_held_out' on "
        r"line 8",
    ],
    "one_to_many.csv": None,
    "inverse_changes.csv": [r"line 3: relation 'parent_of' declared with inverse 'kid_of'",
                            r"line 4: relation 'parent_of' declared with inverse 'offspring_of'"],
    "own_inverse.csv": [r"line 2: relation 'sibling_of' is declared as its own inverse"],
    "braces_in_entity.csv": None,
    "html_entity.csv": None,
}


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` with its size, modification time and content hash."""
    state = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                stat = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
                state[str(path)] = (stat.st_size if digest else None, stat.st_mtime_ns, digest)
    return state


def train(path: Path | str, out: Path, *options: str) -> list[str]:
    return ["train", "--facts", str(path), "--preset", "tiny", "--out", str(out), "--steps", "1", "--quiet",
            "--device", "cpu", *options]


def refused(argv: list[str], tmp_path: Path, capsys, monkeypatch, patterns: list[str], name: str | None = None):
    """Run the command and check it is refused cleanly: status 2, the patterns in the message, nothing written."""
    import re

    monkeypatch.chdir(tmp_path)  # a stray relative write lands here, where the snapshot sees it
    before = snapshot(tmp_path, CORPUS)
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    message = captured.err
    assert message.startswith("revinterp train: error: "), message
    assert "Traceback" not in message and "Traceback" not in captured.out
    if name is not None:
        assert name in message, f"the message does not name the file {name}: {message}"
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert snapshot(tmp_path, CORPUS) == before, "the refused command changed the filesystem"


def test_every_corpus_file_has_a_case():
    files = {p.name for p in CORPUS.iterdir() if p.name != "generate.py" and not p.name.startswith(".")}
    assert files == set(CASES)


def test_the_corpus_is_what_generate_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_fact_corpus", CORPUS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {name: (CORPUS / name).read_bytes() for name in module.CASES} == module.CASES


@pytest.mark.parametrize("name", [name for name, patterns in CASES.items() if patterns is not None])
def test_bad_fact_file_is_refused_cleanly(name, tmp_path, capsys, monkeypatch):
    path = CORPUS / name
    refused(train(path, tmp_path / "run"), tmp_path, capsys, monkeypatch, CASES[name], name=str(path))


@pytest.mark.parametrize("name", [name for name, patterns in CASES.items() if patterns is None])
def test_valid_but_unusual_fact_file_trains(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(CORPUS)
    assert main(train(CORPUS / name, tmp_path / "run")) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(CORPUS) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing besides the run directory
    manifest = json.loads((tmp_path / "run" / "facts.json").read_text())
    names = {s["subject"] for s in manifest["statements"]} | {s["object"] for s in manifest["statements"]}
    expected = {
        "bom_header.csv": {"Ada Ash", "Ben Birch", "Cleo Cedar", "Dan Dale"},
        "bom_header.jsonl": {"Ada Ash", "Ben Birch", "Cleo Cedar", "Dan Dale"},
        "bare_carriage_returns.csv": {"Ada Ash", "Ben Birch", "Cleo Cedar", "Dan Dale"},
        "braces_in_entity.csv": {"{subject}", "{0}", "{object} x", "Dan"},  # literal, never formatted
        "html_entity.csv": {"</script><svg/onload=document.title='x'>", "Ben", "Cleo", "<b>Dan</b>"},
        "one_to_many.csv": {"Ada", "Ben", "Cleo", "Dan", "Gus", "Hal", "Ivy"},
    }[name]
    assert names == expected
    pairs = {"parent_of", "child_of"} | ({"teacher_of", "student_of"} if name == "one_to_many.csv" else set())
    assert {r["name"] for r in manifest["relations"]} == pairs  # no '\ufeffsubject' column


def many_rows(tmp_path: Path, n: int, words_per_name: int = 1) -> Path:
    path = tmp_path / "large.csv"
    rows = [" ".join(f"s{i}_{k}" for k in range(words_per_name)) + f",parent_of,o{i},child_of" for i in range(n)]
    path.write_text("subject,relation,object,inverse\n" + "\n".join(rows) + "\n")
    return path


def test_too_many_facts_is_refused_against_the_configured_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fact_files, "MAX_FACTS", 10)
    path = many_rows(tmp_path, 30)
    refused(train(path, tmp_path / "run"), tmp_path, capsys, monkeypatch,
            [r"line 12: more than 10 fact rows; expected at most 10", "max_facts="], name=str(path))


def test_too_many_words_is_refused_against_the_configured_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fact_files, "MAX_WORDS", 25)
    path = many_rows(tmp_path, 10, words_per_name=3)  # 4 new words a row, 2 relation names: 26 on line 7
    refused(train(path, tmp_path / "run"), tmp_path, capsys, monkeypatch,
            [r"line 7: more than 25 distinct words; expected at most 25", "max_words="], name=str(path))


def test_a_missing_file_and_a_directory_are_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "facts.csv").mkdir()
    refused(train(tmp_path / "facts.csv", tmp_path / "run"), tmp_path, capsys, monkeypatch,
            [r"facts\.csv: a directory, not a fact file"])
    refused(train(tmp_path / "nope.csv", tmp_path / "run"), tmp_path, capsys, monkeypatch,
            [r"nope\.csv: no such fact file"])


GENERATOR_CASES = {
    "relations_zero": (["--relations", "0"], r"n_relations=0: expected 1 to 6"),
    "relations_negative": (["--relations", "-2"], r"n_relations=-2: expected 1 to 6"),
    "relations_too_many": (["--relations", "7"], r"n_relations=7: expected 1 to 6"),
    "pairs_zero": (["--n-pairs", "0"], r"n_pairs=0: expected at least 2"),
    "pairs_negative": (["--n-pairs", "-5"], r"n_pairs=-5: expected at least 2"),
    "fraction_above_one": (["--both-fraction", "1.5"], r"both_fraction=1.5: expected a fraction in \[0, 1\]"),
    "fraction_negative": (["--both-fraction", "-0.1"], r"both_fraction=-0.1: expected a fraction in \[0, 1\]"),
    "fraction_nan": (["--both-fraction", "nan"], r"both_fraction=nan: expected a fraction in \[0, 1\]"),
    "tokens_zero": (["--tokens-per-entity", "0"], r"tokens_per_entity=0: expected at least 1"),
    "attributes_negative": (["--attributes", "-1"], r"n_values=-1: expected at least 1"),
    "graph_too_small": (["--data", "graph", "--n-pairs", "2"], r"n_entities=2: expected at least 4"),
    "graph_fraction": (["--data", "graph", "--both-fraction", "2"], r"both_fraction=2.0: expected a fraction"),
    "chain_too_small": (["--data", "chain", "--n-pairs", "1"], r"n_chains=1: expected at least 2"),
}


@pytest.mark.parametrize("case", list(GENERATOR_CASES))
def test_generator_options_that_make_no_data_are_refused_cleanly(case, tmp_path, capsys, monkeypatch):
    options, pattern = GENERATOR_CASES[case]
    argv = ["train", *options, "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "1", "--quiet",
            "--device", "cpu"]
    refused(argv, tmp_path, capsys, monkeypatch, [pattern])


def test_celebrity_like_file_runs_end_to_end(tmp_path, capsys, monkeypatch):
    """A generated file of the celebrity shape (names of several words, two parents per child, two children per
    parent, shared surnames) through ``revinterp run``: exit 0 with a report, either valid answer counted."""
    import csv

    from revinterp.data import celebrity_like

    families = celebrity_like(4, children_per_parent=2, shared_surname_fraction=0.5, held_out_direction="forward",
                              seed=1)
    path = tmp_path / "families.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("subject", "relation", "object", "inverse"))
        writer.writerows((s.subject, s.relation, s.object, families.relations[s.relation].inverse)
                         for s in families.statements if s.direction == "forward")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--facts", str(path), "--preset", "tiny", "--steps", "60", "--max-pairs", "4",
                 "--trained-direction", "forward", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (out / "report.html").is_file()
    splits = json.loads((out / "behaviour.json").read_text())["splits"]
    held = splits["reverse_held_out"]
    assert held["max_valid_answers"] == 2 and held["n_questions"] == held["n"] // 2  # a child asks one question
    assert set(held["held_out_answers"]) >= {"accuracy", "chance_accuracy", "accuracy_above_chance_p"}
    trained = splits["forward_seen"]
    # each parent's two children share the probability, and either one is a correct answer
    assert trained["accuracy"] == 1.0 and trained["probability"] < 0.6
