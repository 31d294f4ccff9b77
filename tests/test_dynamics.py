"""Training dynamics over checkpoints: the final checkpoint reproduces the run's own evaluation."""

from __future__ import annotations

import math

import torch

from revinterp.analysis.dynamics import behaviour_dynamics, track
from revinterp.evaluation import evaluate
from revinterp.training import list_checkpoints, read_history


def test_track_over_checkpoints_matches_history(tiny_run_dir, tiny_run):
    def measure(model, facts):
        b = evaluate(model, facts, ["forward_seen", "reverse_held_out"])
        return {"forward accuracy": b["forward_seen"].accuracy,
                "held-out p(answer)": b["reverse_held_out"].probability}

    curves = track(tiny_run_dir, measure, device="cpu")
    assert list(curves.steps) == [s for s, _ in list_checkpoints(tiny_run_dir)]
    assert curves.values["forward accuracy"][-1] == 1.0
    assert curves.values["forward accuracy"][0] < 0.5  # the initialization knows nothing
    assert "forward accuracy" in curves.low and "held-out p(answer)" not in curves.low
    # the last checkpoint is the final model: same held-out probability as a direct evaluation
    direct = evaluate(tiny_run.model, tiny_run.facts, ["reverse_held_out"])["reverse_held_out"].probability
    assert math.isclose(curves.values["held-out p(answer)"][-1].item(), direct, rel_tol=1e-5)
    frame = curves.to_frame()
    assert len(frame) == 2 * len(curves.steps)


def test_behaviour_dynamics_reads_the_history(tiny_run_dir):
    history = read_history(tiny_run_dir)
    curves = behaviour_dynamics(tiny_run_dir, "probability")
    assert curves.steps == tuple(h["step"] for h in history)
    assert curves.values["forward_seen"][-1].item() == history[-1]["splits"]["forward_seen"]["probability"]
    assert curves.values["forward_seen"][-1] >= 0.99 > curves.values["reverse_held_out"][-1]


def test_track_of_a_loaded_run_matches_its_directory_and_keeps_its_model(tiny_run_dir, tiny_run):
    def measure(model, facts):
        return {"forward p(answer)": evaluate(model, facts, ["forward_seen"])["forward_seen"].probability}

    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    every = 3
    from_run = track(tiny_run, measure, every=every)
    from_dir = track(tiny_run_dir, measure, device="cpu", every=every)
    steps = [s for s, _ in list_checkpoints(tiny_run_dir)]
    expected = steps[::every] + ([steps[-1]] if steps[::every][-1] != steps[-1] else [])
    assert list(from_run.steps) == list(from_dir.steps) == expected
    assert torch.equal(from_run.values["forward p(answer)"], from_dir.values["forward p(answer)"])
    after = tiny_run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
