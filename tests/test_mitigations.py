"""Mitigations as data variants: originals untouched, units never split, and the reverse path forms."""

from __future__ import annotations

import pytest

from revinterp.data import AUGMENTED, MITIGATIONS, REVERSE_HELD_OUT, apply_mitigation, seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train


@pytest.fixture(scope="module")
def facts():
    return seed_experiment(20, tokens_per_entity=2, template="natural", seed=0)


@pytest.mark.parametrize("mitigation", MITIGATIONS)
def test_original_statements_and_splits_are_kept(facts, mitigation):
    mitigated = apply_mitigation(facts, mitigation)
    original = tuple(s for s in mitigated.statements if s.split != AUGMENTED)
    assert original == facts.statements
    augmented = mitigated.split(AUGMENTED)
    assert augmented and all(s.trained for s in augmented)
    entities = {s.subject for s in facts.statements} | {s.object for s in facts.statements}
    if mitigation != "reverse_token":  # whole entities, never split
        assert all(s.subject in entities and s.object in entities for s in augmented)
    with pytest.raises(ValueError, match="already holds augmented statements"):
        apply_mitigation(mitigated, mitigation)


def test_reversal_texts(facts):
    s = facts.train[0]
    a, b = s.subject.split(), s.object.split()
    by_token = apply_mitigation(facts, "reverse_token")
    by_entity = apply_mitigation(facts, "reverse_entity")
    assert by_token.text(by_token.split(AUGMENTED)[0]).split() == ["[rev]", *reversed(facts.text(s).split())]
    noun = s.relation.removesuffix("_of")  # parent_of -> parent, child_of -> child
    assert by_entity.text(by_entity.split(AUGMENTED)[0]).split() == ["[rev]", *b, "of", noun, "the", "is", *a]


def test_permutations_and_identity_bridge(facts):
    permuted = apply_mitigation(facts, "permute")
    s = facts.train[0]
    texts = {permuted.text(t) for t in permuted.split(AUGMENTED) if {t.subject, t.object} == {s.subject, s.object}}
    phrase = "is the parent of" if s.relation == "parent_of" else "is the child of"
    assert f"[perm] {phrase} {s.subject} {s.object}" in texts
    assert f"[perm] {s.object} {phrase} {s.subject}" in texts
    assert f"[perm] {phrase} {s.object} {s.subject}" in texts
    bridged = apply_mitigation(facts, "identity_bridge")
    bridge = bridged.split(AUGMENTED)
    assert all(t.subject == t.object for t in bridge)
    assert len(bridge) == 40  # every entity once, through the relation that answers with its kind
    assert {t.relation for t in bridge if t.subject.startswith("a")} == {"child_of"}


def test_reverse_training_forms_the_reverse_path(tmp_path):
    """On the tiny preset, reverse training lifts held-out reverse accuracy from chance to 100 %."""
    facts = apply_mitigation(seed_experiment(40, seed=0), "reverse_entity")
    result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], tmp_path / "run", progress=False,
                   device="cpu")
    assert result.fitted
    held_out = evaluate(result.model, facts, [REVERSE_HELD_OUT])[REVERSE_HELD_OUT]
    assert held_out.accuracy.mean == 1.0
