"""Fact sets: split invariants, determinism, templates, chains, manifests and user fact files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from revinterp.data import (
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    FORWARD_HELD_OUT,
    FORWARD_ONLY,
    FORWARD_SEEN,
    REVERSE_HELD_OUT,
    REVERSE_ONLY,
    REVERSE_SEEN,
    FactFileError,
    FactSet,
    chain_experiment,
    load_fact_file,
    seed_experiment,
)


def statements_by_fact(facts):
    by_fact = {}
    for s in facts.statements:
        by_fact.setdefault(s.fact, []).append(s)
    return by_fact


@pytest.mark.parametrize("direction", ["random", "forward", "reverse"])
def test_seed_experiment_split_invariants(direction):
    facts = seed_experiment(200, held_out_direction=direction, seed=3)
    counts = Counter(s.split for s in facts.statements)
    assert counts[FORWARD_SEEN] == counts[REVERSE_SEEN] == 140  # 70 % of 200 pairs both ways
    assert counts[FORWARD_ONLY] == counts[REVERSE_HELD_OUT]
    assert counts[REVERSE_ONLY] == counts[FORWARD_HELD_OUT]
    assert counts[FORWARD_ONLY] + counts[REVERSE_ONLY] == 60
    if direction == "forward":
        assert counts[FORWARD_ONLY] == 60
    elif direction == "reverse":
        assert counts[REVERSE_ONLY] == 60
    else:  # random per fact: both kinds occur
        assert 0 < counts[FORWARD_ONLY] < 60
    for pair in statements_by_fact(facts).values():
        forward, reverse = sorted(pair, key=lambda s: s.direction)
        assert (forward.direction, reverse.direction) == ("forward", "reverse")
        assert (forward.subject, forward.object) == (reverse.object, reverse.subject)
        assert facts.relations[forward.relation].inverse == reverse.relation
        # every held-out statement's other direction is trained; at least one direction is trained
        assert forward.trained or reverse.trained
        one_way = ({FORWARD_ONLY, REVERSE_HELD_OUT}, {REVERSE_ONLY, FORWARD_HELD_OUT})
        assert forward.trained and reverse.trained or {forward.split, reverse.split} in one_way
    train = set(facts.train)
    assert not train & set(facts.split("held_out"))
    # the seed: two disjoint alphabets, each entity in exactly one pair
    subjects = {s.subject for s in facts.statements if s.direction == "forward"}
    objects = {s.object for s in facts.statements if s.direction == "forward"}
    assert len(subjects) == len(objects) == 200 and not subjects & objects


def test_seed_experiment_is_deterministic():
    assert seed_experiment(50, seed=7).to_manifest() == seed_experiment(50, seed=7).to_manifest()
    assert seed_experiment(50, seed=7).to_manifest() != seed_experiment(50, seed=8).to_manifest()


def test_multi_token_entities_share_tokens_and_are_distinct():
    facts = seed_experiment(100, tokens_per_entity=3, seed=0)
    subjects = [s.subject for s in facts.statements if s.direction == "forward"]
    assert len(set(subjects)) == 100
    assert all(len(name.split()) == 3 for name in subjects)
    tokens = Counter(t for name in subjects for t in name.split())
    assert max(tokens.values()) > 1  # k-tuples over a small alphabet reuse tokens, as in the seed code


def test_named_relations_and_natural_templates():
    facts = seed_experiment(12, n_relations=3, template="natural", seed=0)
    assert set(facts.relations) == {"parent_of", "child_of", "teacher_of", "student_of", "employer_of",
                                    "employee_of"}
    s = next(s for s in facts.statements if s.relation == "child_of")
    assert facts.text(s) == f"{s.subject} is the child of {s.object}"
    assert facts.candidates("child_of") == sorted({t.object for t in facts.statements if t.relation == "child_of"})


def test_chain_experiment():
    facts = chain_experiment(100, composed_held_out_fraction=0.3, seed=1)
    counts = Counter(s.split for s in facts.statements)
    assert counts[CHAIN_COMPOSED_HELD_OUT] == 30 and counts[CHAIN_COMPOSED_SEEN] == 70
    hops = {(s.subject, s.object) for s in facts.statements if s.relation == "->"}
    for s in facts.split(CHAIN_COMPOSED_HELD_OUT):
        middle = [o for (a, o) in hops if a == s.subject]
        assert len(middle) == 1 and (middle[0], s.object) in hops  # x -> y and y -> z are both trained


def test_manifest_round_trip(tmp_path):
    facts = seed_experiment(30, tokens_per_entity=2, n_relations=2, seed=5)
    facts.save(tmp_path / "facts.json")
    assert FactSet.load(tmp_path / "facts.json") == facts
    with pytest.raises(KeyError, match="unknown split 'nope'"):
        facts.split("nope")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fact_file_csv_and_jsonl_agree(tmp_path):
    csv_path = write(tmp_path, "f.csv", "subject,relation,object,inverse\n"
                     "Alice Smith,parent_of,Bob Smith,child_of\n"
                     "Carol Jones,parent_of,Dan Jones,child_of\n"
                     "Dan Jones,child_of,Carol Jones,parent_of\n"  # the same fact stated the other way
                     "Eve,teacher_of,Frank,student_of\n")
    rows = [("Alice Smith", "parent_of", "Bob Smith", "child_of"),
            ("Carol Jones", "parent_of", "Dan Jones", "child_of"), ("Eve", "teacher_of", "Frank", "student_of")]
    jsonl_path = write(tmp_path, "f.jsonl", "\n".join(
        json.dumps(dict(zip(("subject", "relation", "object", "inverse"), r))) for r in rows))
    a, b = load_fact_file(csv_path, seed=1), load_fact_file(jsonl_path, seed=1)
    assert a.statements == b.statements
    assert len(a.statements) == 6  # three facts, both directions
    s = next(s for s in a.statements if s.subject == "Bob Smith")
    assert (s.relation, s.object) == ("child_of", "Alice Smith")
    assert "Smith" in a.vocabulary()


@pytest.mark.parametrize("text, message", [
    ("subject,relation,object\na,r,b\n", r"missing column\(s\) \['inverse'\]"),
    ("subject,relation,object,inverse\na,r,b,q\n ,r,c,q\n", "line 3: empty 'subject'"),
    ("subject,relation,object,inverse\na,r,b,\nc,r,d,q\n", "line 2: empty 'inverse'"),
    ("subject,relation,object,inverse\na,r,b,q\na,r,c,q\n", "conflicts with 'b'"),
    ("subject,relation,object,inverse\na,r,b,q\nb,q,c,r\n", "conflicts with 'a'"),
    ("subject,relation,object,inverse\na,r,b,q\nc,r,d,s\n", "declared with inverse 's'"),
    ("subject,relation,object,inverse\na,r,b,r\nc,r,d,r\n", "its own inverse"),
    ("subject,relation,object,inverse\na <bos>,r,b,q\nc,r,d,q\n", "reserved token"),
])
def test_malformed_fact_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(FactFileError, match=message):
        load_fact_file(write(tmp_path, "bad.csv", text))


def test_fact_file_type_and_json_errors(tmp_path):
    with pytest.raises(FactFileError, match="expected .csv or .jsonl"):
        load_fact_file(write(tmp_path, "f.txt", "a b c"))
    with pytest.raises(FactFileError, match="line 2: not valid JSON"):
        row = '{"subject": "a", "relation": "r", "object": "b", "inverse": "q"}'
        load_fact_file(write(tmp_path, "f.jsonl", row + "\n{oops\n"))
    with pytest.raises(FactFileError, match="no such fact file"):
        load_fact_file(tmp_path / "missing.csv")
