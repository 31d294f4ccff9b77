"""Subspace interchange on reverse prompts: on the trained default run a subspace at the subject, fitted on half of the
seen pairs, moves the answer to the source's on the other half, far above the norm-matched placebo and a random
subspace; fitted and evaluated pairs are disjoint; the numbers are plain JSON."""

from __future__ import annotations

import copy
import json

import pytest

from revinterp.analysis.interchange import INTERVENTIONS, subspace_interchange
from revinterp.data import REVERSE_HELD_OUT, REVERSE_SEEN


@pytest.fixture(scope="module")
def mean_difference(default_run):
    return subspace_interchange(default_run, layer=1, rank=8, method="mean_difference")


def _disjoint(result, facts):
    fitted = set(result.fit_statements)
    for name, pairs in result.pairs.items():
        used = {s for pair in pairs for s in pair}
        assert not used & fitted, name
        assert all(base != source and base.object != source.object for base, source in pairs)
    assert {s for pair in result.pairs["seen"] for s in pair} | fitted == set(facts.split(REVERSE_SEEN))
    assert {s for pair in result.pairs["held_out"] for s in pair} == set(facts.split(REVERSE_HELD_OUT))


def test_mean_difference_subspace_moves_seen_answers_far_above_its_controls(mean_difference, default_run):
    r = mean_difference
    _disjoint(r, default_run.facts)
    assert r.hook_name == "blocks.1.hook_resid_pre" and r.position_label == "subject" and r.position == 1
    # Measured on the default run (21 fit pairs, 21 seen interchanges, chance 1/60): subspace 21/21, placebo 0/21,
    # random 0/21, no intervention 0/21.
    moved = r.interchange_accuracy("seen")
    assert moved >= 0.8
    for control in ("placebo", "random", "none"):
        assert r.interchange_accuracy("seen", control) <= 0.2
        assert moved - r.interchange_accuracy("seen", control) >= 0.6
    frame = r.to_frame()
    row = frame[(frame.set == "seen") & (frame.intervention == "placebo")].iloc[0]
    assert row.ci_high < frame[(frame.set == "seen") & (frame.intervention == "subspace")].iloc[0].ci_low
    # Held-out prompts: the model answers none of them, so nothing is "kept"; the measures are there all the same.
    assert len(frame) == 2 * len(INTERVENTIONS)
    assert frame[frame.set == "held_out"].n.unique().tolist() == [len(default_run.facts.split(REVERSE_HELD_OUT))]


def test_das_subspace_also_moves_seen_answers(default_run):
    r = subspace_interchange(default_run, layer=1, rank=8, method="das", das_epochs=20)
    _disjoint(r, default_run.facts)
    # Measured: 20/21 with 30 epochs; placebo and random 0/21.
    assert r.interchange_accuracy("seen") >= 0.7
    assert max(r.interchange_accuracy("seen", c) for c in ("placebo", "random")) <= 0.2


def test_numbers_summary_and_plot(mean_difference):
    r = mean_difference
    numbers = r.to_numbers()
    json.dumps(numbers, allow_nan=False)
    seen = numbers["sets"]["seen"]
    assert seen["interventions"]["subspace"]["interchange_accuracy"] == pytest.approx(r.interchange_accuracy("seen"))
    assert len(seen["pairs"]) == len(r.pairs["seen"]) and not set(numbers["fit_pairs"]) & {
        p["base"] for p in seen["pairs"]}
    assert "placebo" in r.summary() and "rank 8/128" in r.summary()
    assert len(r.plot().data) == len(INTERVENTIONS)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(method="pca"), "method='pca'"),
    (dict(split_test=REVERSE_SEEN), "share statements"),
    (dict(split_fit="forward_seen"), "forward statements"),
    (dict(layer=3), "no blocks.3"),
    (dict(rank=64), "rank=64"),
    (dict(position="middle"), "position='middle'"),
    (dict(n_sources=99), "n_sources=99"),
])
def test_bad_arguments_are_refused(tiny_run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        subspace_interchange(tiny_run, **{"layer": 0, **kwargs})


def test_model_in_train_mode_is_refused(tiny_run):
    with pytest.raises(ValueError, match="eval mode"):
        subspace_interchange(copy.deepcopy(tiny_run.model).train(), tiny_run.facts, tokenizer=tiny_run.tokenizer,
                             layer=0)
