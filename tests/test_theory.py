"""The theory module: bilinear model (closed forms, asymmetry, exponent vs d) and effective weights."""

from __future__ import annotations

import math

import pytest
import torch

from revinterp.theory import (
    bilinear_loss_and_gradient,
    effective_weights_gradient,
    example_gradient,
    exponent_vs_dimension,
    reverse_logit_change,
    train_bilinear,
    train_effective_weights,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are small: extra threads only add synchronisation (tens of seconds on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_setup(d: int = 24, m: int = 9, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.randn(m, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    theta = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return candidates, theta


# --------------------------------------------------------------------------- bilinear: closed forms


def test_example_gradient_matches_autograd():
    candidates, theta = _random_setup()
    x, y = candidates[2], candidates[5]
    theta_ = theta.clone().requires_grad_(True)
    loss = -torch.log_softmax(candidates @ (theta_.T @ x), dim=0)[5]
    (auto,) = torch.autograd.grad(loss, theta_)
    closed = example_gradient(x, y, theta, candidates)
    assert torch.allclose(closed, auto, atol=1e-12)
    assert closed.abs().max() > 1e-3  # not trivially zero


def test_batch_gradient_matches_autograd():
    candidates, theta = _random_setup(d=16, m=8, seed=1)
    theta = theta * 0.3
    inputs = candidates[[0, 1, 2, 5, 6]]
    targets = torch.tensor([4, 5, 7, 1, 0])
    theta_ = theta.clone().requires_grad_(True)
    log_p = torch.log_softmax(inputs @ theta_ @ candidates.T, dim=-1)
    auto_loss = -log_p[torch.arange(5), targets].mean()
    (auto,) = torch.autograd.grad(auto_loss, theta_)
    loss, grad = bilinear_loss_and_gradient(theta, inputs, targets, candidates)
    assert torch.allclose(loss, auto_loss.detach(), atol=1e-12)
    assert torch.allclose(grad, auto, atol=1e-12)


@pytest.mark.parametrize("d", [8, 64, 512])
def test_reverse_logit_change_matches_one_autograd_step(d):
    candidates, theta = _random_setup(d=d, m=12, seed=d)
    theta = theta * 0.5
    x, y, lr = candidates[0], candidates[7], 0.7
    theta_ = theta.clone().requires_grad_(True)
    loss = -torch.log_softmax(candidates @ (theta_.T @ x), dim=0)[7]
    (grad,) = torch.autograd.grad(loss, theta_)
    stepped = theta - lr * grad
    actual_forward = x @ stepped @ y - x @ theta @ y
    actual_reverse = y @ stepped @ x - y @ theta @ x
    change = reverse_logit_change(x, y, theta, candidates, lr)
    assert torch.allclose(change.forward, actual_forward, atol=1e-6, rtol=0)
    assert torch.allclose(change.reverse, actual_reverse, atol=1e-6, rtol=0)
    assert change.forward > 0.1 * lr  # the forward logit rises by about lr |x|^2 |y - ȳ|^2
    if d == 512:
        assert abs(change.reverse) < 0.02 * change.forward  # O(1/d) against O(1)


def test_reverse_logit_change_is_zero_for_orthogonal_embeddings():
    eye = torch.eye(6, dtype=torch.float64)
    theta = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    change = reverse_logit_change(eye[0], eye[1], theta, eye, lr=2.0)
    assert change.reverse.item() == 0.0
    assert change.forward.item() > 0.5


def test_kernel_form_training_equals_gradient_descent_on_theta():
    run = train_bilinear(6, 32, 5, 20.0, held_out=2, seed=3)
    vocabulary = torch.cat([run.x, run.y])
    inputs = torch.cat([run.x, run.y[2:]])
    targets = torch.cat([torch.arange(6) + 6, torch.arange(2, 6)])
    theta = torch.zeros(32, 32, dtype=torch.float64)
    losses = []
    for t in range(6):  # losses at t = 0..5, five steps
        loss, grad = bilinear_loss_and_gradient(theta, inputs, targets, vocabulary)
        losses.append(loss)
        if t < 5:
            theta = theta - 20.0 * grad
    assert torch.allclose(run.theta, theta, atol=1e-10)
    assert torch.allclose(run.train_loss, torch.stack(losses), atol=1e-12)


# --------------------------------------------------------------------------- bilinear: the reversal curse


def test_bilinear_reproduces_the_asymmetry():
    run = train_bilinear(10, 64, 200, 38.0, held_out=1, seed=0)
    assert run.train_loss[0].item() == pytest.approx(math.log(20))
    assert run.reverse_loss[0].item() == pytest.approx(math.log(20))
    assert run.loss_ratio < 0.01
    # the held-out pair's own forward example is learned ...
    assert run.held_out_forward_loss[-1] / run.held_out_forward_loss[0] < 0.01
    assert run.forward_logit[-1] > 5.0
    # ... its reverse is not
    assert run.reverse_loss_ratio > 0.9
    assert abs(run.reverse_logit[-1]) < 0.1 * run.forward_logit[-1]
    assert run.exponent.isnan()[0] and abs(run.final_exponent) < 0.1
    assert run.bound_holds(run.max_exponent) and not run.bound_holds(run.max_exponent - 0.01)


def test_bilinear_is_deterministic_given_the_seed():
    a, b = train_bilinear(5, 16, 20, 10.0, seed=4), train_bilinear(5, 16, 20, 10.0, seed=4)
    c = train_bilinear(5, 16, 20, 10.0, seed=5)
    assert torch.equal(a.reverse_loss, b.reverse_loss) and torch.equal(a.theta, b.theta)
    assert not torch.equal(a.reverse_loss, c.reverse_loss)


def test_measured_exponent_shrinks_with_dimension():
    sweep = exponent_vs_dimension([16, 256], n_pairs=10, steps=200, seeds=(0, 1, 2))
    assert sweep.final_exponent.shape == (2, 3)
    assert (sweep.loss_ratio < 0.01).all()  # both dimensions fit the training set
    small_d, large_d = sweep.mean_abs_exponent.tolist()
    assert large_d < 0.03
    assert small_d > 4 * large_d
    assert sweep.scaling_slope() < -0.5
    assert (sweep.max_exponent[1] < 0.05).all()  # the bound holds with a small ε at d = 256
    frame = sweep.to_frame()
    assert len(frame) == 6 and set(frame["d"]) == {16, 256}
    assert "d=256" in sweep.summary()


def test_bilinear_run_frame_plot_summary():
    run = train_bilinear(4, 16, 10, 10.0)
    frame = run.to_frame()
    assert len(frame) == 11 and frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[0]
    assert len(run.plot().data) == 3
    assert "d=16" in run.summary()


def test_bilinear_rejects_bad_arguments():
    with pytest.raises(ValueError, match="held_out=0"):
        train_bilinear(4, 8, 1, 1.0, held_out=0)
    with pytest.raises(ValueError, match="held_out=4"):
        train_bilinear(4, 8, 1, 1.0, held_out=4)


# --------------------------------------------------------------------------- effective weights


def test_effective_weights_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    statements = torch.tensor([[0, 5, 2], [1, 5, 3], [2, 6, 0], [0, 6, 1]])
    weights_ = weights.clone().requires_grad_(True)
    s, r, o = statements.unbind(-1)
    auto_loss = -torch.log_softmax(weights_[s] + weights_[r], dim=-1)[torch.arange(4), o].mean()
    (auto,) = torch.autograd.grad(auto_loss, weights_)
    loss, grad = effective_weights_gradient(weights, statements)
    assert torch.allclose(loss, auto_loss.detach(), atol=1e-12)
    assert torch.allclose(grad, auto, atol=1e-12)
    assert (grad[[3, 4]] == 0).all()  # tokens 3 and 4 are in no prompt


def test_held_out_reverse_entries_keep_their_initial_values_exactly():
    run = train_effective_weights(50, 200, 100.0, both_fraction=0.7, seed=0)
    n = 50
    assert len(run.both_pairs) == 35 and len(run.held_out_statements) == 15
    assert len(run.train_statements) == 2 * 35 + 15
    trained = {tuple(s) for s in run.train_statements.tolist()}
    assert not trained & {tuple(s) for s in run.held_out_statements.tolist()}

    hs, _, ho = run.held_out_statements.unbind(-1)
    assert torch.equal(run.final_weights[hs, ho], run.initial_weights[hs, ho])
    assert torch.equal(run.final_weights[hs], run.initial_weights[hs])  # the whole row is starved
    assert (run.held_out_max_change == 0).all()
    assert run.initial_weights[hs, ho].abs().min() > 0  # a random init, so "unchanged" is not "zero"

    assert run.forward_entry[-1] - run.forward_entry[0] > 5.0
    assert run.seen_reverse_entry[-1] - run.seen_reverse_entry[0] > 5.0
    assert run.baseline_entry[-1] < run.baseline_entry[0]
    assert run.train_probability[-1] > 0.99
    assert run.held_out_probability[-1] < 1.0 / n  # below chance: the answer is only ever pushed down
    frame = run.to_frame()
    assert len(frame) == 201 and frame["held_out_max_change"].max() == 0
    assert len(run.plot().data) == 4 and "held-out" in run.summary()


def test_trained_subject_rows_move_held_out_entries_only_down():
    run = train_effective_weights(50, 200, 100.0, seed=0, second_relation=True)
    assert run.tokens[-1] == "~" and len(run.train_statements) == 2 * 35 + 15 + 2 * 50
    hs, _, ho = run.held_out_statements.unbind(-1)
    change = run.final_weights[hs, ho] - run.initial_weights[hs, ho]
    assert (change < 0).all()  # every row is trained now, yet no held-out entry rises
    assert (run.held_out_entry.diff() <= 0).all()
    assert run.forward_entry[-1] - run.forward_entry[0] > 5.0
    assert run.train_probability[-1] > 0.95
    assert run.held_out_probability[-1] < 1.0 / 50


def test_effective_weights_deterministic_and_validated():
    a = train_effective_weights(10, 5, 10.0, seed=1)
    b = train_effective_weights(10, 5, 10.0, seed=1)
    assert torch.equal(a.final_weights, b.final_weights)
    assert torch.equal(a.held_out_statements, b.held_out_statements)
    with pytest.raises(ValueError, match="both_fraction"):
        train_effective_weights(3, 1, 1.0, both_fraction=0.9)
