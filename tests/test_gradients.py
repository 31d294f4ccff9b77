"""The gradient view: first-order changes against real SGD steps, an analytic identity, and the tiny run."""

from __future__ import annotations

import copy

import pytest
import torch

from revinterp.analysis.gradients import gradient_step_effects, gradient_step_effects_over_training
from revinterp.data import encode_statements
from revinterp.training import batch_loss, list_checkpoints


def test_first_order_change_matches_a_small_sgd_step_in_float64(tiny_run):
    """``-lr <grad f, grad L>`` is the change of ``f`` after ``theta - lr grad L`` up to O(lr^2)."""
    effects = gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["forward_only", "reverse_only"], lr=1e-3,
                                    actual=True, dtype=torch.float64)
    scale = effects.own_change.abs().max()
    assert scale > 0
    torch.testing.assert_close(effects.actual_own_change, effects.own_change, rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(effects.actual_counterpart_change, effects.counterpart_change, rtol=0,
                               atol=1e-3 * scale)
    # In float32 at the training learning rate the first-order numbers still describe the step well.
    effects32 = gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["forward_only"], actual=True)
    torch.testing.assert_close(effects32.actual_own_change, effects32.own_change, rtol=0.05,
                               atol=0.02 * effects32.own_change.abs().max())
    assert next(tiny_run.model.parameters()).dtype == torch.float32


def test_own_logprob_change_is_lr_times_the_squared_gradient_norm(tiny_run):
    """For a single-token answer ``log p(own answer) = -L``, so its first-order change is ``lr |grad L|^2``."""
    lr = 0.05
    effects = gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["forward_seen"], lr=lr, metric="logprob")
    model = copy.deepcopy(tiny_run.model)
    for k in (0, 3, len(effects.statements) - 1):
        encoded = encode_statements(tiny_run.facts, [effects.statements[k]], tiny_run.tokenizer)
        model.zero_grad(set_to_none=True)
        loss = batch_loss(model, encoded, "answer")
        loss.backward()
        squared_norm = sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None)
        assert effects.loss[k].item() == pytest.approx(loss.item(), rel=1e-5)
        assert effects.own_change[k].item() == pytest.approx(lr * squared_norm.item(), rel=1e-4)


def test_forward_steps_barely_move_the_held_out_reverse_logit(tiny_run):
    effects = gradient_step_effects(tiny_run.model, tiny_run.facts)
    assert effects.splits == ["forward_seen", "reverse_seen", "forward_only", "reverse_only"]
    assert {c.split for s, c in zip(effects.statements, effects.counterparts) if s.split == "forward_only"} == {
        "reverse_held_out"}
    for s, c in zip(effects.statements, effects.counterparts):
        assert (s.fact, s.subject, s.object) == (c.fact, c.object, c.subject)
    own = effects.estimate("forward_only", "own_change")
    assert own.low > 0
    ratio = effects.ratio("forward_only")
    assert ratio.low > -0.2 and ratio.high < 0.2
    assert abs(effects.estimate("forward_only").mean) < 0.2 * own.mean
    assert effects.estimate("forward_only", "cosine").high < 0.2


def test_the_callers_model_and_its_gradients_are_untouched(tiny_run):
    model = tiny_run.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_step_effects(model, tiny_run.facts, splits=["reverse_only"], actual=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_over_training_frames_plots_and_summaries(tiny_run_dir):
    steps = [step for step, _ in list_checkpoints(tiny_run_dir)]
    dynamics = gradient_step_effects_over_training(tiny_run_dir, checkpoints=[steps[0], steps[-1]],
                                                   splits=["forward_only", "forward_seen"], device="cpu")
    assert dynamics.steps == (0, steps[-1])
    first, last = dynamics.results
    assert first.statements == last.statements and first.step == 0
    assert not torch.equal(first.own_change, last.own_change)
    frame = dynamics.to_frame()
    assert len(frame) == 2 * len(first.statements)
    assert {"step", "split", "counterpart_split", "own_change", "counterpart_change", "cosine"} <= set(frame.columns)
    assert "forward_only" in dynamics.summary() and len(dynamics.ratios("forward_only")) == 2
    assert len(dynamics.plot().data) == 2 * 4
    fig = last.plot()
    assert [t.type for t in fig.data] == ["bar", "bar", "bar"]
    assert "ratio" in last.summary()
    assert len(last.to_frame()) == len(last.statements)


def test_bad_inputs_raise_clear_errors(tiny_run):
    with pytest.raises(ValueError, match="reverse_held_out"):
        gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["reverse_held_out"])
    with pytest.raises(ValueError, match="metric='probability'"):
        gradient_step_effects(tiny_run.model, tiny_run.facts, metric="probability")
    with pytest.raises(ValueError, match="lr=0.0"):
        gradient_step_effects(tiny_run.model, tiny_run.facts, lr=0.0)
    effects = gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["forward_only"])
    with pytest.raises(ValueError, match="actual=True"):
        effects.estimate("forward_only", "actual_own_change")
    with pytest.raises(ValueError, match="no checkpoint at steps \\[7777\\]"):
        gradient_step_effects_over_training(tiny_run.path, checkpoints=[7777])


def test_a_loaded_run_gives_the_same_effects_as_its_model_and_facts(tiny_run):
    from_run = gradient_step_effects(tiny_run, splits=["forward_only"])
    from_model = gradient_step_effects(tiny_run.model, tiny_run.facts, splits=["forward_only"],
                                       tokenizer=tiny_run.tokenizer)
    assert from_run.statements == from_model.statements
    assert torch.equal(from_run.own_change, from_model.own_change)
    assert torch.equal(from_run.counterpart_change, from_model.counterpart_change)


def test_over_training_of_a_loaded_run_matches_its_directory_and_leaves_its_model(tiny_run, tiny_run_dir):
    steps = [step for step, _ in list_checkpoints(tiny_run_dir)]
    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    kwargs = dict(checkpoints=[steps[1], steps[-1]], splits=["forward_only"])
    from_run = gradient_step_effects_over_training(tiny_run, **kwargs)
    from_dir = gradient_step_effects_over_training(tiny_run_dir, device="cpu", **kwargs)
    assert from_run.steps == from_dir.steps == (steps[1], steps[-1])
    for a, b in zip(from_run.results, from_dir.results, strict=True):
        assert torch.equal(a.own_change, b.own_change) and torch.equal(a.counterpart_change, b.counterpart_change)
    # The last checkpoint is the final model: the same numbers as on the run's own model.
    final = gradient_step_effects(tiny_run, splits=["forward_only"])
    assert torch.equal(from_run.results[-1].own_change, final.own_change)
    after = tiny_run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_run.model.parameters())


@pytest.mark.parametrize("metric", ["logit", "logprob"])
def test_batched_gradients_equal_the_per_example_autograd_loop(tiny_run, metric):
    """The vmap/jacrev changes against one autograd backward per scalar and example (the definition)."""
    from revinterp.analysis.gradients import _answer_metric, _flat_grad, counterpart_pairs

    model, facts = tiny_run.model, tiny_run.facts
    effects = gradient_step_effects(model, facts, splits=["forward_only", "reverse_seen"], lr=0.01, metric=metric)
    pairs = counterpart_pairs(facts, ["forward_only", "reverse_seen"])
    encoded = encode_statements(facts, [s for pair in pairs for s in pair], tiny_run.tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    own, counterpart, cosine, losses = [], [], [], []
    for k in range(len(pairs)):
        rows = encoded.select(torch.tensor([2 * k, 2 * k + 1]))
        loss = batch_loss(model, rows.select(torch.tensor([0])), "answer")
        f_own, f_counterpart = _answer_metric(model, rows, metric)
        g_loss, g_own, g_rev = (_flat_grad(v, params) for v in (loss, f_own, f_counterpart))
        losses.append(loss.item())
        own.append(-0.01 * torch.dot(g_own, g_loss).item())
        counterpart.append(-0.01 * torch.dot(g_rev, g_loss).item())
        cosine.append(-(torch.dot(g_rev, g_loss) / (g_rev.norm() * g_loss.norm())).item())
    for got, expected in ((effects.loss, losses), (effects.own_change, own),
                          (effects.counterpart_change, counterpart), (effects.cosine, cosine)):
        expected = torch.tensor(expected, dtype=torch.float64)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9 + 1e-5 * expected.abs().max().item())
    assert all(p.grad is None for p in model.parameters())
