"""Interventions side by side on seen and held-out reverse prompts: the reverse path is absent on held-out facts
and present on seen ones, in the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from revinterp.analysis.effects import SiteEffects
from revinterp.analysis.interventions import INTERVENTION_METHODS, compare_splits, excludes_zero
from revinterp.analysis.sites import SWEEP_COMPONENTS
from revinterp.data import REVERSE_HELD_OUT, REVERSE_SEEN, seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
    """Tiny model on 100 pairs, every one-way fact trained forward: 30 held-out reverse questions."""
    facts = seed_experiment(100, held_out_direction="forward", seed=0)
    run_dir = Path(tmp_path_factory.mktemp("reverse")) / "run"
    assert train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, progress=False, device="cpu").fitted
    return load_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def interventions(reverse_run):
    return compare_splits(reverse_run.model, reverse_run.facts)


def test_held_out_reverse_effects_are_equivalent_to_zero_where_seen_ones_are_not(interventions):
    r = interventions
    seen = r.total[REVERSE_SEEN]
    assert excludes_zero(seen) and seen.low > 10  # swapping the subject moves the seen answer by many logits
    held = r.equivalence(REVERSE_HELD_OUT, REVERSE_SEEN)  # ... and the held-out one by less than 5 % of that
    assert held.verdict == "equivalent to zero" and held.n == 30 and held.margin == pytest.approx(0.05 * seen.mean)
    assert held.p_equivalence < 0.01  # not a borderline pass
    assert r.equivalence(REVERSE_SEEN, REVERSE_SEEN).verdict == "different from zero"
    for method in ("patching", "attribution"):  # every distinguishable seen site is downstream of the subject
        assert r.n_groups(REVERSE_SEEN, method) < len(r.distinguishable(REVERSE_SEEN, method)), method
        assert r.n_holm(REVERSE_SEEN, method) <= r.n_tested(REVERSE_SEEN, method)
    for method in INTERVENTION_METHODS:
        assert r.distinguishable(REVERSE_SEEN, method), method
        # no site carries more than 5 % of the seen effect on held-out prompts
        assert max(abs(e.estimate.mean) for e in r.effects[REVERSE_HELD_OUT][method]) < 0.05 * seen.mean, method


def test_effects_are_the_per_pair_changes_of_the_sweeps(interventions):
    r = interventions
    for split in r.splits:
        sweeps = r.patching[split]
        assert set(sweeps) == set(SWEEP_COMPONENTS) == set(r.attribution[split])
        assert all(isinstance(x, SiteEffects) for x in (*sweeps.values(), *r.attribution[split].values()))
        by_site = {e.site: e for e in r.effects[split]["patching"]}
        assert len(by_site) == sum(s.values[..., 0].numel() for s in sweeps.values())
        # the subject's residual stream entering layer 0 is the whole clean input: its effect is the total effect
        first = by_site["resid_pre L0 @subject"].estimate
        assert first.mean == pytest.approx(r.total[split].mean, abs=1e-5)
        # positions before the subject never change: trivial, exactly zero
        bos = by_site["resid_pre L0 @<bos>"]
        assert bos.trivial and bos.estimate.mean == 0.0 and not bos.distinguishable
        resid = sweeps["resid_pre"]
        change = (resid.values - resid.corrupted)[0, 2].double().mean().item()
        assert by_site["resid_pre L0 @<-"].estimate.mean == pytest.approx(change, abs=1e-9)
        # direct logit attribution: the parts plus the unembedding bias are the clean logit difference
        dla = r.dla[split]
        parts = sum(e.estimate.mean for e in r.effects[split]["dla"])
        assert parts + dla.unembed_bias.double().mean().item() == pytest.approx(
            dla.total.double().mean().item(), abs=1e-4)


def test_frame_summary_and_plot(interventions):
    r = interventions
    frame = r.to_frame()
    n_sites = sum(len(r.effects[s][m]) for s in r.splits for m in INTERVENTION_METHODS)
    assert len(frame) == n_sites + len(r.splits)
    total = frame[(frame.split == REVERSE_HELD_OUT) & (frame.method == "total")].iloc[0]
    assert total["mean"] == pytest.approx(r.total[REVERSE_HELD_OUT].mean) and not total.distinguishable
    text = r.summary()
    assert f"{REVERSE_HELD_OUT} ({r.n_pairs[REVERSE_HELD_OUT]} pairs)" in text and "indistinguishable" in text
    fig = r.plot()
    assert [bar.name for bar in fig.data] == list(r.splits)
    assert fig.data[0].x[0].startswith("total")


def test_bad_input_is_refused(reverse_run, interventions):
    with pytest.raises(KeyError, match="'forward_seen' was not compared"):
        interventions.distinguishable("forward_seen")
    with pytest.raises(ValueError, match="method='probe'"):
        interventions.largest(REVERSE_SEEN, "probe")
    with pytest.raises(ValueError, match="splits is empty"):
        compare_splits(reverse_run.model, reverse_run.facts, ())
    with pytest.raises(KeyError, match="unknown split 'no_such_split'"):
        compare_splits(reverse_run.model, reverse_run.facts, ("no_such_split",))
    model = reverse_run.model
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            compare_splits(model, reverse_run.facts)
    finally:
        model.eval()


def test_a_run_is_the_model_with_its_facts(reverse_run):
    by_run = compare_splits(reverse_run, splits=(REVERSE_SEEN,), components=("resid_pre",), n_resamples=200)
    by_model = compare_splits(reverse_run.model, reverse_run.facts, (REVERSE_SEEN,), components=("resid_pre",),
                              n_resamples=200)
    assert by_run.total == by_model.total and by_run.effects == by_model.effects
    with pytest.raises(ValueError, match="a LoadedRun and facts"):
        compare_splits(reverse_run, reverse_run.facts)
