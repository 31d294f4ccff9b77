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
    ("subject,relation,object,inverse,split\na,r,b,q,both\nb,q,a,r,reverse_held_out\n",
     r"split 'forward_held_out' here \(the row's 'reverse_held_out', stated through the inverse\) but 'both' on "
     r"line 2"),
    ("subject,relation,object,inverse,split\na,r,b,q,both\nc,r,d,q,\n", "no split, while line 2"),
    ("subject,relation,object,inverse,split\na,r,b,q,both\nc,r,d,q,half\n", "split 'half'; expected one of"),
    ("subject,relation,object,inverse,split\na,r,b,q,both\na,r,c,q,forward_held_out\n",
     r"line 3: question \('a', 'r'\) is held out here \(answer 'c'\) but trained on line 2 \(answer 'b'\)"),
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


def test_relations_refuse_format_braces_and_special_tokens():
    from revinterp.data import Relation

    for name in ("{subject}", "{0}", "{foo}", "a}b"):
        with pytest.raises(ValueError, match=r"relation name .* contains a format brace; expected one word"):
            Relation(name, None, "{subject} r {object}")
    with pytest.raises(ValueError, match=r"inverse '<bos>' of relation 'r' is the special token '<bos>'"):
        Relation("r", "<bos>", "{subject} r {object}")
    for template, message in [
        ("{subject} is {0} of {object}", r"the word '\{0\}' with a format brace"),
        ("{subject}'s parent {object}", r"'\{subject\}' as a word 0 times"),
        ("{subject} {subject} r {object}", r"'\{subject\}' as a word 2 times"),
        ("{subject} r {object} .", r"does not end in '\{object\}'"),
        ("{subject} x<eos> {object}", "contains the special token '<eos>'"),
    ]:
        with pytest.raises(ValueError, match=message):
            Relation("r", None, template)
    # the subject is put in word for word: braces in an entity name are never read as placeholders
    r = Relation("r", None, "{subject} is the r of {object}")
    assert r.prompt_words("{object} {0}") == ["{object}", "{0}", "is", "the", "r", "of"]


def test_tokenizer_refuses_words_that_hold_a_special_token():
    from revinterp.data import build_tokenizer
    from revinterp.data.tokenizer import word_problem

    with pytest.raises(ValueError, match=r"'a<bos>b' contains the special token '<bos>'"):
        build_tokenizer(["a", "a<bos>b"])
    assert word_problem("</script><svg/onload=alert(1)>") is None  # data; the report escapes it
    assert word_problem("a\tb") == "contains the whitespace character U+0009"


@pytest.mark.parametrize("make, message", [
    (lambda: seed_experiment(10, n_relations=0), r"n_relations=0: expected 1 to 6"),
    (lambda: seed_experiment(10, n_relations=-1), r"n_relations=-1: expected 1 to 6"),
    (lambda: seed_experiment(1), r"n_pairs=1: expected at least 2"),
    (lambda: seed_experiment(10, both_fraction=1.01), r"both_fraction=1.01: expected a fraction in \[0, 1\]"),
    (lambda: seed_experiment(10, both_fraction=float("nan")), r"both_fraction=nan"),
    (lambda: seed_experiment(10, held_out_direction="up"), r"held_out_direction='up': expected one of"),
    (lambda: seed_experiment(10, template="poetic"), r"template='poetic': expected one of"),
    (lambda: seed_experiment(10, alphabet_size=0), r"alphabet_size=0: expected at least 1"),
    (lambda: seed_experiment(10, tokens_per_entity=-1), r"tokens_per_entity=-1: expected at least 1"),
    (lambda: chain_experiment(10, composed_held_out_fraction=-0.5), r"composed_held_out_fraction=-0.5"),
    (lambda: chain_experiment(True), r"n_chains=True: expected a whole number, got a bool"),
])
def test_generators_refuse_impossible_options_before_any_work(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_generator_option_checks_name_wrong_types():
    # (under pytest, jaxtyping's import hook refuses a wrong type at the call already; without it these checks do)
    from revinterp.data.generators import check_count, check_fraction, check_seed

    for check, args, message in [
        (check_count, ("n_pairs", 2.5, 2), r"n_pairs=2.5: expected a whole number, got a float"),
        (check_count, ("n_pairs", True, 2), r"n_pairs=True: expected a whole number, got a bool"),
        (check_count, ("n_relations", 7, 1, 6), r"n_relations=7: expected 1 to 6"),
        (check_fraction, ("both_fraction", "0.5"), r"both_fraction='0.5': expected a fraction in \[0, 1\], got a str"),
        (check_fraction, ("both_fraction", float("inf")), r"both_fraction=inf: expected a fraction in \[0, 1\]"),
        (check_seed, (1.5,), r"seed=1.5: expected a whole number, got a float"),
    ]:
        with pytest.raises(ValueError, match=message):
            check(*args)


def test_knowledge_graph_and_attributes_refuse_impossible_options():
    from revinterp.data import knowledge_graph, with_attributes

    with pytest.raises(ValueError, match=r"n_relations=0: expected 1 to 6"):
        knowledge_graph(20, n_relations=0)
    with pytest.raises(ValueError, match=r"facts_per_entity=0: expected a positive number"):
        knowledge_graph(20, facts_per_entity=0)
    with pytest.raises(ValueError, match=r"relation='\{subject\}' contains a format brace"):
        with_attributes(seed_experiment(4), relation="{subject}")
    with pytest.raises(ValueError, match=r"relation='<unk>' is the special token"):
        with_attributes(seed_experiment(4), relation="<unk>")


def test_prompt_pairs_from_no_prompts_is_an_error():
    from revinterp.analysis.prompts import PromptPairs
    from revinterp.data import build_tokenizer

    tokenizer = build_tokenizer(["a", "b", "->"])
    with pytest.raises(ValueError, match="no prompts: expected at least one"):
        PromptPairs.from_prompts(tokenizer, [], [], [], [])
    with pytest.raises(ValueError, match="clean answer 0 is ''; expected at least one word"):
        PromptPairs.from_prompts(tokenizer, ["a ->"], ["b ->"], [""], ["a"])
    pairs = PromptPairs.from_prompts(tokenizer, ["a ->"], ["b ->"], ["b"], ["a"])
    assert len(pairs) == 1


HEADER = "subject,relation,object,inverse\n"


def test_fact_file_reports_every_problem_at_once(tmp_path):
    rows = "".join(f"a{i},r,b{i},q,both\nb{i},q,a{i},r,forward_held_out\n" for i in range(30))  # 30 conflicts
    with pytest.raises(FactFileError, match=r"30 problems:\n  line 3: .*\n  line 5: ") as error:
        load_fact_file(write(tmp_path, "f.csv", "subject,relation,object,inverse,split\n" + rows))
    assert str(error.value).count("expected one split per fact") == 20 and "... and 10 more" in str(error.value)
    assert ("line 3: fact ('a0', 'r', 'b0') has split 'reverse_held_out' here (the row's 'forward_held_out', stated "
            "through the inverse) but 'both' on line 2") in str(error.value)
    mixed = HEADER + "a,{x},b,q\n,r,c,q\nd,r,e,q\nd,r,f,s\n"
    with pytest.raises(FactFileError) as error:
        load_fact_file(write(tmp_path, "g.csv", mixed))
    assert [line.split(":")[0] for line in str(error.value).splitlines()[1:]] == ["  line 2", "  line 3", "  line 5"]


def test_fact_file_limits_are_keywords(tmp_path):
    path = write(tmp_path, "f.csv", HEADER + "".join(f"a{i} x,r,b{i},q\n" for i in range(6)))
    assert len(load_fact_file(path).statements) == 12
    with pytest.raises(FactFileError, match=r"f\.csv, line 5: more than 3 fact rows; expected at most 3"):
        load_fact_file(path, max_facts=3)
    with pytest.raises(FactFileError, match=r"line 4: more than 8 distinct words; expected at most 8"):
        load_fact_file(path, max_words=8)
    with pytest.raises(FactFileError, match=r"line 2: subject 'a0 x' has 2 words; expected at most 1"):
        load_fact_file(path, max_name_words=1)
    with pytest.raises(ValueError, match=r"max_facts=0: expected at least 2"):
        load_fact_file(path, max_facts=0)
    with pytest.raises(ValueError, match=r"both_fraction=2.0: expected a fraction"):
        load_fact_file(path, both_fraction=2.0)


def test_fact_file_progress_bar(tmp_path, capsys):
    path = write(tmp_path, "f.csv", HEADER + "a,r,b,q\nc,r,d,q\n")
    assert load_fact_file(path, progress=True) == load_fact_file(path)
    assert "reading f.csv" in capsys.readouterr().err
    load_fact_file(path)
    assert capsys.readouterr().err == ""


def test_fact_file_csv_dialect_details(tmp_path):
    # spaces after the header's commas, CRLF line ends, a quoted name with a comma and one with a line break
    text = ('subject, relation , object,inverse\r\n"Ash, Ada",r,b,q\r\n"Cleo\r\nCedar",r,d,q\r\n'
            "e,r,\t f  g ,q\r\n")
    facts = load_fact_file(write(tmp_path, "f.csv", text))
    assert {s.subject for s in facts.statements if s.direction == "forward"} == {"Ash, Ada", "Cleo Cedar", "e"}
    assert "f g" in {s.object for s in facts.statements}
    # the line of a row is its first line, also after a row that spans two
    with pytest.raises(FactFileError, match=r"line 4: relation '\{r\}'"):
        load_fact_file(write(tmp_path, "g.csv", HEADER + 'a,r,"b\nc",q\nd,{r},e,q\nf,r,g,q\n'))


def test_fact_file_encodings(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + (HEADER + "a,r,b,q\nc,r,d,q\n").encode())
    assert len(load_fact_file(bom).statements) == 4
    latin = tmp_path / "latin.jsonl"
    good = b'{"subject": "a", "relation": "r", "object": "b", "inverse": "q"}\n'
    latin.write_bytes(good + b'{"subject": "Zo\xeb", "relation": "r", "object": "c", "inverse": "q"}\n')
    with pytest.raises(FactFileError, match=rf"latin\.jsonl, line 2: byte offset {len(good) + 15}: b'\\xeb' is not "
                                            "UTF-8"):
        load_fact_file(latin)
    # a JSON string may hold U+2028 (a line separator to str.splitlines): still one line
    sep = '{"subject": "a\u2028b", "relation": "r", "object": "b", "inverse": "q"}\n'
    with pytest.raises(FactFileError, match=r"line 1: subject 'a\\u2028b' contains U\+2028 \(LINE SEPARATOR\)"):
        load_fact_file(write(tmp_path, "sep.jsonl", sep + good.decode()))


def test_fact_file_line_ends(tmp_path):
    rows = HEADER + "a,r,b,q\nc,r,d,q\ne,r,f,q\n"
    for name, end in (("lf.csv", "\n"), ("crlf.csv", "\r\n"), ("cr.csv", "\r")):
        text = rows.replace("\n", end)
        path = tmp_path / name
        path.write_bytes(text.encode())
        assert len(load_fact_file(path).statements) == 6, name
    # lines (and byte offsets) are counted the same way with any line end
    path = tmp_path / "cr_latin.csv"
    path.write_bytes((HEADER + "a,r,b,q\r").replace("\n", "\r").encode() + b"c\xe9,r,d,q\r")
    with pytest.raises(FactFileError, match=r"cr_latin\.csv, line 3: byte offset 41: b'\\xe9' is not UTF-8"):
        load_fact_file(path)


def test_cli_feed_option_builds_the_starvation_cells():
    from revinterp.cli import build_parser, make_facts

    for feed in ("none", "subject", "answer", "both"):
        args = build_parser().parse_args(["train", "--n-pairs", "20", "--trained-direction", "forward", "--feed", feed])
        facts = make_facts(args)
        relations = {s.relation for s in facts.statements if s.split == "attribute"}
        assert relations == {"subject": {"lives_in"}, "answer": {"has_member"}, "both": {"lives_in", "has_member"},
                             "none": set()}[feed]
        assert len(facts.split("held_out")) == 6


def test_fact_file_split_column_fixes_each_facts_split(tmp_path):
    rows = ("subject,relation,object,inverse,split\n"
            "Ada Ash,parent_of,Ben Ash,child_of,both\n"
            "Cleo Cole,parent_of,Dan Dale,child_of,reverse_held_out\n"
            "Eve Eng,child_of,Fay Fox,parent_of,reverse_held_out\n"  # as written trained: Fay parent_of Eve held out
            "Gus Gray,parent_of,Hal Hunt,child_of,forward_held_out\n")
    path = write(tmp_path, "split.csv", rows)
    with pytest.raises(FactFileError, match=r"split.csv: its 'split' column fixes every fact's split, so "
                                            r"both_fraction=0.0 would be ignored; expected the defaults"):
        load_fact_file(path, both_fraction=0.0)
    facts = load_fact_file(path, seed=123)  # the seed also seeds training: accepted, and unused for the splits
    split_of = {(s.subject, s.relation, s.object): s.split for s in facts.statements}
    assert split_of[("Ada Ash", "parent_of", "Ben Ash")] == FORWARD_SEEN
    assert split_of[("Ben Ash", "child_of", "Ada Ash")] == REVERSE_SEEN
    assert split_of[("Dan Dale", "child_of", "Cleo Cole")] == REVERSE_HELD_OUT
    assert split_of[("Eve Eng", "child_of", "Fay Fox")] == REVERSE_ONLY
    assert split_of[("Fay Fox", "parent_of", "Eve Eng")] == FORWARD_HELD_OUT
    assert split_of[("Gus Gray", "parent_of", "Hal Hunt")] == FORWARD_HELD_OUT
    assert facts.source["split"] == "file" and "seed" not in facts.source


def test_fact_manifest_loads_as_a_fact_file(tmp_path):
    facts = seed_experiment(20, seed=4)
    facts.save(tmp_path / "facts.json")
    assert load_fact_file(tmp_path / "facts.json", seed=99).statements == facts.statements
    with pytest.raises(FactFileError, match=r"a fact manifest fixes every statement's split, so "
                                            r"held_out_direction='forward' would be ignored"):
        load_fact_file(tmp_path / "facts.json", held_out_direction="forward")
    (tmp_path / "bad.json").write_text('{"manifest_version": 1}')
    with pytest.raises(FactFileError, match=r"bad.json: field 'relations' is missing.*fact manifest"):
        load_fact_file(tmp_path / "bad.json")


def test_shared_questions_are_split_together(tmp_path):
    # two families: every child has two parents, every parent two children; one fact per row
    rows = HEADER + "".join(f"{p}{f},parent_of,{c}{f},child_of\n" for f in range(30) for p in "mf" for c in "xy")
    facts = load_fact_file(write(tmp_path, "families.csv", rows), both_fraction=0.5, seed=1)
    assert facts.source["many_answer_relations"] == ["child_of", "parent_of"]
    assert facts.answers("x3", "child_of") == ("f3", "m3") and facts.answers("m3", "parent_of") == ("x3", "y3")
    assert {s.split for s in facts.statements} >= {FORWARD_SEEN, REVERSE_HELD_OUT, FORWARD_HELD_OUT}
    for question_statements in statements_by_question(facts).values():
        assert len({s.trained for s in question_statements}) == 1  # no held-out question has a trained answer
    families = {}
    for s in facts.statements:
        families.setdefault(s.subject[1:], set()).add(s.split)
    assert all(len(splits) == 2 for splits in families.values())  # a family is split as one (both, or one way)


def statements_by_question(facts):
    by_question = {}
    for s in facts.statements:
        by_question.setdefault((s.subject, s.relation), []).append(s)
    return by_question


def test_descriptions_that_all_start_alike_give_prompt_pairs_that_patching_runs_on():
    import torch

    from revinterp.analysis.patching import patch_sweep
    from revinterp.analysis.prompts import make_prompt_pairs
    from revinterp.data import description_like
    from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for

    facts = description_like(12, first_word="the", seed=0)
    assert all(s.object.split()[0] == "the" for s in facts.split("forward_seen"))
    tok = tokenizer_for(facts)
    pairs = make_prompt_pairs(facts, "forward_seen", tok)
    # the answers part after their common first word: 'the' is fed, the next tokens are compared
    assert pairs.answer_offset == 1 and pairs.labels[-1] == "the" and len(pairs) >= 2
    assert (pairs.clean_answer != pairs.corrupted_answer).all()
    for s, c, answer, corrupted in zip(pairs.statements, pairs.corrupted_statements, pairs.clean_answer.tolist(),
                                       pairs.corrupted_answer.tolist()):
        assert tok.convert_ids_to_tokens(answer) == s.object.split()[1]
        assert tok.convert_ids_to_tokens(corrupted) == c.object.split()[1]
    torch.manual_seed(0)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tok), tok, device="cpu").eval()
    effects = patch_sweep(model, pairs, "resid_pre")
    with torch.no_grad():
        logits = model(pairs.clean)[:, -1]
    direct = (logits.gather(1, pairs.clean_answer[:, None])[:, 0]
              - logits.gather(1, pairs.corrupted_answer[:, None])[:, 0])
    assert torch.allclose(effects.clean, direct, atol=1e-5)  # the clean baseline is the first differing token's
    reference = patch_sweep(model, pairs, "resid_pre", method="transformer_lens")
    assert torch.allclose(effects.values, reference.values, atol=1e-5)


def test_celebrity_like_families():
    from revinterp.data import celebrity_like

    facts = celebrity_like(10, children_per_parent=3, shared_surname_fraction=0.4, seed=2)
    assert facts.to_manifest() == celebrity_like(10, children_per_parent=3, shared_surname_fraction=0.4,
                                                 seed=2).to_manifest()
    forward = [s for s in facts.statements if s.direction == "forward"]
    children = {s.object for s in forward}
    parents = {s.subject for s in forward}
    assert len(children) == 30 and len(parents) == 20 and not children & parents
    assert all(len(facts.answers(c, "child_of")) == 2 for c in children)  # two parents per child
    assert all(len(facts.answers(p, "parent_of")) == 3 for p in parents)  # three children per parent
    assert all(len(name.split()) >= 2 for name in children | parents)  # names of several words
    shared = facts.source["shared_surname_children"]
    assert len(shared) == 12  # 40 % of 30, exactly
    for c in children:  # a child shares a token with exactly one parent (the father) iff it carries his surname
        sharing = [p for p in facts.answers(c, "child_of") if set(p.split()) & set(c.split())]
        assert len(sharing) == (c in shared)
    labelled = celebrity_like(4, relations="mother_father", seed=2)
    assert set(labelled.relations) == {"mother_of", "has_mother", "father_of", "has_father"}
    assert labelled.many_answer_relations == ["father_of", "mother_of"]
    with pytest.raises(ValueError, match=r"relations='aunt': expected one of \('parent', 'mother_father'\)"):
        celebrity_like(4, relations="aunt")


def test_prompt_pairs_never_corrupt_with_a_valid_answer_and_respect_the_context():
    from revinterp.analysis.prompts import make_prompt_pairs
    from revinterp.data import celebrity_like, description_like
    from revinterp.models import tokenizer_for

    facts = celebrity_like(10, children_per_parent=2, seed=0)
    tok = tokenizer_for(facts)
    for split in ("forward_seen", "reverse_seen"):
        lengths = Counter(len(facts.prompt_words(s)) + 1 for s in facts.split(split))
        pairs = make_prompt_pairs(facts, split, tok, prompt_length=max(lengths, key=lengths.get))
        assert len(pairs) >= 4
        for s, c in zip(pairs.statements, pairs.corrupted_statements):
            assert c.object not in facts.answers(s.subject, s.relation)  # siblings' parents are never the swap
            assert s.object not in facts.answers(c.subject, c.relation)
    descriptions = description_like(12, seed=0)
    tok = tokenizer_for(descriptions)
    fitting = make_prompt_pairs(descriptions, "forward_seen", tok, max_length=5)  # <bos> Given Surname rel 'the'
    assert fitting.clean.shape[1] == 5 and fitting.answer_offset == 1
    with pytest.raises(ValueError, match=r"no usable prompt pair among \d+ candidates \(left out: \{'too_long': \d+"):
        make_prompt_pairs(descriptions, "forward_seen", tok, max_length=4)


def test_word_problem_of_every_kind_of_character():
    """Printable words take the fast path; whitespace of every kind and control characters are named, and
    non-printable characters that are neither (a format character, a private-use one) are word characters."""
    from revinterp.data.tokenizer import word_problem

    expected = {
        "a17": None, "Zo\u00eb": None, "na\u00efve\u2192b": None, "\U0001f600": None, "e\u0301": None,
        "x\u200dy": None, "\ue000": None,
        "a b": "contains the whitespace character U+0020", "a\u00a0b": "contains the whitespace character U+00A0",
        "a\u2028b": "contains the whitespace character U+2028", "a\u3000b": "contains the whitespace character U+3000",
        "a\u0085b": "contains the whitespace character U+0085", "tab\t": "contains the whitespace character U+0009",
        "a\x1fb": "contains the whitespace character U+001F", "a\x7fb": "contains the control character U+007F",
        "a\x00b": "contains the control character U+0000",
    }
    for word, problem in expected.items():
        assert word_problem(word) == problem, ascii(word)


def test_vocabulary_is_every_word_of_every_statement_text():
    """The vocabulary from distinct entities and templates equals the words of every statement's text."""
    from revinterp.data import chain_experiment, knowledge_graph

    for facts in (seed_experiment(30, tokens_per_entity=2, seed=1),
                  seed_experiment(40, n_relations=3, template="natural", seed=2), chain_experiment(10, seed=0),
                  knowledge_graph(20, seed=0)):
        assert facts.vocabulary() == sorted({w for s in facts.statements for w in facts.text(s).split()})


def test_cyclic_gc_paused_restores_the_collector_nested_and_on_errors():
    import gc

    from revinterp.data.bulk import cyclic_gc_paused

    @cyclic_gc_paused()
    def inner():
        assert not gc.isenabled()

    @cyclic_gc_paused()
    def outer():
        inner()
        assert not gc.isenabled()  # the inner use ended, the outer one still holds
        raise RuntimeError("boom")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="boom"):
        outer()
    assert gc.isenabled()
    gc.disable()
    try:
        inner()
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
