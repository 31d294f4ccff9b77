"""The lexical-overlap diagnostic: exact counts on a celebrity-like fact set whose shared surnames are planted."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from revinterp.analysis.overlap import lexical_overlap, shared_tokens
from revinterp.data import Statement, celebrity_like
from revinterp.evaluation import Behaviour, evaluate
from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for
from revinterp.stats import clopper_pearson


@pytest.fixture(scope="module", params=["mother_father", "parent"])
def celebrity_behaviour(request):
    """An untrained tiny model's behaviour on a celebrity-like set with mother/father relations, or with
    parent_of/child_of (two answers per child, two per parent); the counts do not depend on training."""
    facts = celebrity_like(6, children_per_parent=2, shared_surname_fraction=0.5, relations=request.param, seed=0)
    tokenizer = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tokenizer), tokenizer, device="cpu").eval()
    return facts, evaluate(model, facts, tokenizer=tokenizer)


def test_shared_tokens():
    s = Statement("Tom Ann Smith", "has_father", "Ann Bo Smith", 0, "forward", "forward_held_out")
    assert shared_tokens(s) == ("Ann", "Smith")
    assert shared_tokens(replace(s, object="Cy Jones")) == ()
    assert shared_tokens(replace(s, object="Cy Jones"), ["Cy Jones", "Tom Lee"]) == ("Tom",)  # any valid answer


def test_overlap_counts_the_planted_shared_surnames_exactly(celebrity_behaviour):
    facts, behaviour = celebrity_behaviour
    shared_children = set(facts.source["shared_surname_children"])
    assert len(shared_children) == 6  # half of the 12 children carry their father's surname
    father = {}  # the generator writes each child's facts mother first, father second
    for s in facts.statements:
        if s.direction == "forward" and s.fact % 2 == 1:
            assert s.relation in ("father_of", "parent_of")
            father.setdefault(s.object, set()).add(s.subject)
    held_out = {(s.subject, s.relation): s for name in behaviour.splits if not behaviour[name].trained
                for s in behaviour[name].statements}  # one entry per question
    # a question has overlap exactly when it relates a shared-surname child and its father, in either direction
    expected = [q for q, s in held_out.items()
                if any(c in shared_children and p in father.get(c, ()) for answer in facts.answers(*q)
                       for c, p in ((s.subject, answer), (answer, s.subject)))]
    overlap = lexical_overlap(behaviour)
    assert overlap.n == len(held_out) > 0 and overlap.n_overlap == len(expected) > 0
    assert sorted((s.subject, s.relation) for s, shared in zip(overlap.statements, overlap.shared) if shared) \
        == sorted(expected)
    for s, shared in zip(overlap.statements, overlap.shared):
        if shared:  # the shared token is the child's surname, whichever side the child is on
            child = s.subject if s.subject in shared_children else next(a for a in facts.answers(s.subject, s.relation)
                                                                        if a in shared_children)
            assert shared == (child.split()[-1],)
    assert overlap.fraction == clopper_pearson(len(expected), len(held_out))


def test_overlap_accuracy_with_and_without_on_planted_hits(celebrity_behaviour):
    from scipy.stats import fisher_exact

    _, behaviour = celebrity_behaviour
    planted = {}
    for name, sb in behaviour.splits.items():  # plant: a question is answered exactly when it has overlap
        answers = {}
        for s in sb.statements:
            answers.setdefault((s.subject, s.relation), []).append(s.object)
        hits = torch.tensor([bool(shared_tokens(s, answers[s.subject, s.relation])) for s in sb.statements])
        planted[name] = replace(sb, correct=hits)
    overlap = lexical_overlap(Behaviour(planted))
    k, n = overlap.n_overlap, overlap.n
    assert overlap.accuracy(True) == clopper_pearson(k, k)
    assert overlap.accuracy(False) == clopper_pearson(0, n - k)
    assert overlap.shortcut_p == pytest.approx(fisher_exact([[k, 0], [0, n - k]], alternative="greater").pvalue)
    numbers = overlap.to_numbers()
    json.dumps(numbers, allow_nan=False)  # plain JSON
    assert numbers["n_overlap"] == k and numbers["accuracy_with_overlap"]["accuracy"] == 1.0
    assert numbers["accuracy_without_overlap"] == {"accuracy": 0.0, "ci": [0.0, clopper_pearson(0, n - k).high],
                                                   "n": n - k}
    assert len(numbers["questions"]) == k and all(q["correct"] for q in numbers["questions"])
    assert f"{k} of {n} held-out questions" in overlap.summary()


def test_overlap_refuses_trained_or_missing_splits(celebrity_behaviour):
    _, behaviour = celebrity_behaviour
    trained = next(name for name, sb in behaviour.splits.items() if sb.trained)
    with pytest.raises(ValueError, match=f"split '{trained}' is trained; expected a held-out split"):
        lexical_overlap(behaviour, [trained])
    with pytest.raises(ValueError, match="split 'reverse_held_out' is not in the behaviour"):
        lexical_overlap(Behaviour({trained: behaviour[trained]}), ["reverse_held_out"])
    with pytest.raises(ValueError, match="no held-out split in the behaviour"):
        lexical_overlap(Behaviour({trained: behaviour[trained]}))
