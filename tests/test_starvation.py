"""Starvation controls: the diagnostic flags the seed setup, not the variants, and embeddings move there."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from revinterp.analysis.starvation import starvation_report, starved_questions, token_input_counts
from revinterp.data import ATTRIBUTE, knowledge_graph, seed_experiment, with_attributes
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
