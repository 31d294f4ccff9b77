"""Starvation controls: the diagnostic flags the seed setup, not the variants, and embeddings move there."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from revinterp.analysis.starvation import (
    answer_starved_questions,
    starvation_report,
    starved_questions,
    token_input_counts,
)
from revinterp.data import (
    ATTRIBUTE,
    STARVATION_CELLS,
    knowledge_graph,
    leaking_statements,
    seed_experiment,
    starvation_cell,
    with_answer_feeding,
    with_attributes,
)
from revinterp.data.generators import fact_entities
from revinterp.models import MODEL_PRESETS, tokenizer_for
from revinterp.training import TRAINING_PRESETS, train


def check_split_invariants(facts):
    """Every fact: one forward and one reverse statement, at least one of them trained."""
    by_fact = {}
    for s in facts.statements:
        if s.split != ATTRIBUTE:
            by_fact.setdefault(s.fact, []).append(s)
    for pair in by_fact.values():
        assert sorted(s.direction for s in pair) == ["forward", "reverse"]
        assert any(s.trained for s in pair)
        forward, reverse = sorted(pair, key=lambda s: s.direction)
        assert (forward.subject, forward.object) == (reverse.object, reverse.subject)
    questions = Counter((s.subject, s.relation) for s in facts.statements)
    assert max(questions.values()) == 1  # one answer per question


def test_seed_setup_starves_every_held_out_subject():
    facts = seed_experiment(50, seed=0)
    tok = tokenizer_for(facts)
    assert set(starved_questions(facts, tok)) == set(facts.split("held_out"))


@pytest.mark.parametrize("make", [
    lambda: with_attributes(seed_experiment(50, seed=0)),
    lambda: knowledge_graph(60, n_relations=3, facts_per_entity=4, seed=0),
    lambda: seed_experiment(50, tokens_per_entity=2, shared_tokens=True, seed=0),
])
def test_variants_keep_split_invariants_and_feed_every_subject(make):
    facts = make()
    check_split_invariants(facts)
    tok = tokenizer_for(facts)
    held_out_subjects = {s.subject for s in facts.split("held_out")}
    assert held_out_subjects
    if facts.source.get("generator") != "knowledge_graph":  # attribute and shared-token variants: none starved
        assert starved_questions(facts, tok) == ()
    else:  # a random graph can leave an entity in one held-out fact only; most are fed
        assert len(starved_questions(facts, tok)) < 0.25 * len(facts.split("held_out"))
    counts = token_input_counts(facts, tok)
    assert counts.sum() > 0


def test_attribute_variant_moves_held_out_subject_embeddings(tmp_path, tiny_run_dir):
    facts = with_attributes(seed_experiment(40, seed=0), n_values=8)
    run_dir = tmp_path / "attr"
    train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, progress=False, device="cpu")
    fed = starvation_report(run_dir, device="cpu").role_means()
    starved = starvation_report(tiny_run_dir, device="cpu").role_means()
    # seed setup: the held-out subjects' embeddings get no gradient, only weight decay moves them
    assert starved["held_out_subject"]["embed_gradient"] == 0.0
    assert starved["held_out_subject"]["embed_shift"] < 0.1 * starved["trained_subject"]["embed_shift"]
    # with an attribute fact per entity they are trained like any other subject
    assert fed["held_out_subject"]["embed_gradient"] > 0.0
    assert fed["held_out_subject"]["embed_shift"] > 0.5 * fed["trained_subject"]["embed_shift"]


def test_a_loaded_run_gives_the_same_report_as_its_directory_and_keeps_its_model(tiny_run, tiny_run_dir):
    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    from_run = starvation_report(tiny_run)
    from_dir = starvation_report(tiny_run_dir, device="cpu")
    assert from_run.entities == from_dir.entities and from_run.starved == from_dir.starved
    for name in ("input_count", "embed_shift", "unembed_shift", "embed_gradient", "unembed_gradient"):
        assert torch.equal(getattr(from_run, name), getattr(from_dir, name)), name
    after = tiny_run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_run.model.parameters())


# -- the 2x2 design: input side and answer side ----------------------------------------------------------------------

def forward_seed(n=40):
    return seed_experiment(n, held_out_direction="forward", seed=0)


@pytest.mark.parametrize("cell", list(STARVATION_CELLS))
def test_every_cell_keeps_the_split_invariants_and_the_held_out_questions(cell):
    base = forward_seed(50)
    feed_subject, feed_answer = STARVATION_CELLS[cell]
    facts = starvation_cell(base, feed_subject=feed_subject, feed_answer=feed_answer)
    check_split_invariants(facts)
    assert facts.split("held_out") == base.split("held_out")  # same questions, still held out
    assert set(base.statements) <= set(facts.statements)
    added = facts.split(ATTRIBUTE)
    assert all(s.trained for s in added)
    assert len(added) == len(fact_entities(base)) * (feed_subject + feed_answer)
    assert leaking_statements(facts) == ()
    for s in facts.split("held_out"):  # no added statement pairs a_i with b_i, in either order
        assert not any({a.subject, a.object} == {s.subject, s.object} for a in added)
    assert facts.candidates("<-") == base.candidates("<-")  # the held-out questions' candidates are unchanged
    assert facts.source["starvation_cell"]["cell"] == cell
    tok = tokenizer_for(facts)
    held_out = set(facts.split("held_out"))
    assert set(starved_questions(facts, tok)) == (set() if feed_subject else held_out)
    assert set(answer_starved_questions(facts, tok)) == (set() if feed_answer else held_out)


def test_seed_setup_starves_every_held_out_answer_and_the_sequence_loss_does_not():
    facts = seed_experiment(50, seed=0)  # random held-out direction: both kinds of held-out questions
    tok = tokenizer_for(facts)
    assert set(answer_starved_questions(facts, tok)) == set(facts.split("held_out"))
    # with the loss on every token the subject a_i of 'a_i -> b_i' is itself a target (predicted from <bos>)
    forward = forward_seed(50)
    assert answer_starved_questions(forward, tokenizer_for(forward), loss="sequence") == ()


def test_the_subject_fed_cell_is_with_attributes_and_leaking_statements_are_found():
    base = forward_seed(30)
    assert starvation_cell(base, feed_subject=True, feed_answer=False, n_values=8, seed=3).statements == \
        with_attributes(base, n_values=8, seed=3).statements
    assert starvation_cell(base, feed_subject=False, feed_answer=False).statements == base.statements
    held = base.split("held_out")[0]
    from revinterp.data.generators import add_attribute_statements

    leaky = add_attribute_statements(base, "knows", [(held.object, held.subject)], "leak", {})
    assert len(leaking_statements(leaky)) == 1


def test_starvation_cell_refuses_clashing_names():
    base = forward_seed(10)
    with pytest.raises(ValueError, match="prefix"):
        with_answer_feeding(base, prefix="a")  # 'a0' is already an entity
    with pytest.raises(ValueError, match="already"):
        starvation_cell(with_attributes(base), feed_subject=True, feed_answer=False)


def test_answer_fed_run_pulls_held_out_answers_up_the_seed_run_only_pushes_them(tmp_path):
    reports = {}
    for cell in ("none", "answer"):
        feed_subject, feed_answer = STARVATION_CELLS[cell]
        facts = starvation_cell(forward_seed(), feed_subject=feed_subject, feed_answer=feed_answer)
        result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], tmp_path / cell, progress=False,
                       device="cpu")
        assert result.fitted
        reports[cell] = starvation_report(tmp_path / cell, device="cpu")
    seed, fed = reports["none"], reports["answer"]
    n = len(seed.held_out)
    assert n > 0 and len(seed.answer_starved) == n and len(seed.input_starved) == n
    assert len(fed.answer_starved) == 0 and len(fed.input_starved) == n
    s, f = seed.role_means(), fed.role_means()
    # seed: the held-out answers are never targets, so their unembeddings get only the push (pull exactly 0)
    assert s["held_out_answer"]["target_count"] == 0 and s["held_out_answer"]["unembed_pull"] == 0.0
    assert s["held_out_answer"]["unembed_push"] > 0.0
    assert s["trained_answer"]["unembed_pull"] > 0.0
    # answer-fed: every held-out answer is pulled up as a target, on the scale of a trained answer's pull
    frame = fed.question_frame()
    assert (frame["answer_targets"] >= 1).all() and (frame["answer_unembed_pull"] > 0).all()
    assert f["held_out_answer"]["unembed_pull"] > 0.3 * f["trained_answer"]["unembed_pull"]
    # the input side is untouched by answer feeding: the held-out subjects still get no gradient
    assert f["held_out_subject"]["embed_gradient"] == 0.0
    assert {"input_starved", "answer_starved", "answer_unembed_pull"} <= set(frame.columns)
    assert "answer side" in fed.summary() and {"target_count", "unembed_pull"} <= set(fed.to_frame().columns)
    assert len(fed.plot().data) == 4
