"""The label-embedding probe on planted signals: it decodes unseen classes of a linear signal, stays at chance on
noise and shuffled labels, returns the regularised optimum, and scores ties as misses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from revinterp.analysis.probing import answer_ranks, fit_identity_probe, normalize_targets, top1_correct


# == the fitting routine ==========================================================================
def planted_signal(n_classes=200, code_dim=16, d_features=48, noise=0.3, seed=0):
    """One example per class: features = code @ R + noise, for a fixed random linear map R (codes centred and
    unit-norm, as the analysis prepares its targets)."""
    gen = torch.Generator().manual_seed(seed)
    codes = normalize_targets(torch.randn(n_classes, code_dim, generator=gen))
    mixing = torch.randn(code_dim, d_features, generator=gen)
    features = codes @ mixing + noise * torch.randn(n_classes, d_features, generator=gen)
    return codes, features


def test_probe_decodes_unseen_classes_of_a_planted_linear_signal():
    codes, x = planted_signal()
    train, test = torch.arange(120), torch.arange(120, 200)
    probe = fit_identity_probe(x[train], train, codes)
    # Test classes were never in the probe's softmax; decoded among all 200 (chance 0.005).
    assert (probe.predict(x[test], codes) == test).float().mean().item() >= 0.95
    assert (probe.predict(x[train], codes) == train).float().mean().item() == 1.0


def test_probe_on_shuffled_labels_is_at_chance_on_unseen_classes():
    codes, x = planted_signal()
    train, test = torch.arange(120), torch.arange(120, 200)
    shuffled = train[torch.randperm(120, generator=torch.Generator().manual_seed(1))]
    probe = fit_identity_probe(x[train], shuffled, codes)
    # 80 test rows, chance 1/200: more than 4 hits would mean the control learned the real map.
    assert (probe.predict(x[test], codes) == test).float().mean().item() <= 0.05


def test_probe_on_pure_noise_is_at_chance():
    gen = torch.Generator().manual_seed(2)
    codes, x = normalize_targets(torch.randn(200, 16, generator=gen)), torch.randn(200, 48, generator=gen)
    probe = fit_identity_probe(x[:120], torch.arange(120), codes)
    assert (probe.predict(x[120:], codes) == torch.arange(120, 200)).float().mean().item() <= 0.05


def test_fit_is_the_regularised_optimum():
    codes, x = planted_signal(n_classes=60, noise=1.0)
    labels, weight_decay = torch.arange(40), 0.3
    probe = fit_identity_probe(x[:40], labels, codes, weight_decay=weight_decay)
    # Recompute the objective from its definition and check its gradient vanishes at the returned W.
    z = (x[:40].double() - x[:40].double().mean(0)) / probe.scale
    w = probe.weight.clone().requires_grad_(True)
    t = codes.double()[:40]
    loss = F.cross_entropy(z @ w @ t.T, labels) + 0.5 * weight_decay * w.pow(2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.norm().item() <= 1e-5 * max(probe.weight.norm().item(), 1.0)
    assert probe.scale == pytest.approx((x[:40].double() - x[:40].double().mean(0)).pow(2).mean().sqrt().item())


def test_a_warm_start_reaches_the_same_optimum():
    """A fold's fit started from the probe of all examples (as the cross-validation does) ends at the weights of a
    fit from zero: the objective is strictly convex; a start of the wrong shape is refused by name."""
    codes, x = planted_signal(n_classes=60, noise=1.0)
    everything = fit_identity_probe(x[:40], torch.arange(40), codes, weight_decay=0.3)
    fold = torch.arange(8, 40)
    cold = fit_identity_probe(x[fold], fold, codes, weight_decay=0.3)
    warm = fit_identity_probe(x[fold], fold, codes, weight_decay=0.3, init=everything.weight)
    assert not torch.allclose(everything.weight, cold.weight, atol=1e-3)  # the start is not already the answer
    # each stops where L-BFGS's gradient is under 1e-9 per entry, so within |g| / weight_decay of the optimum (about
    # 1e-7 over 768 entries): 1e-6 apart at most
    torch.testing.assert_close(warm.weight, cold.weight, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"init of shape \(3, 16\); expected \(48, 16\)"):
        fit_identity_probe(x[fold], fold, codes, init=torch.zeros(3, 16))


def test_classes_absent_from_the_labels_do_not_change_the_fit():
    codes, x = planted_signal(n_classes=60)
    with_unseen = fit_identity_probe(x[:40], torch.arange(40), codes)
    seen_only = fit_identity_probe(x[:40], torch.arange(40), codes[:40])
    torch.testing.assert_close(with_unseen.weight, seen_only.weight, rtol=1e-6, atol=1e-8)


def test_constant_features_score_every_candidate_zero():
    codes = torch.randn(10, 4)
    probe = fit_identity_probe(torch.ones(6, 8), torch.arange(6), codes)
    assert torch.equal(probe.scores(torch.ones(3, 8), codes), torch.zeros(3, 10))


# == scoring ======================================================================================
def test_top1_needs_a_strict_win_and_ranks_split_ties():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0],    # answer 0 wins outright
                           [1.0, 2.0, 2.0, 0.0],    # answer 1 tied with 2 at the top
                           [0.0, 0.0, 0.0, 0.0],    # constant: every candidate tied
                           [5.0, 1.0, 2.0, 4.0]])   # answer 2 below two others, above one
    answers = torch.tensor([0, 1, 3, 2])
    assert top1_correct(scores, answers).tolist() == [True, False, False, False]
    assert answer_ranks(scores, answers).tolist() == [1.0, 1.5, 2.5, 3.0]
    # Leading site axes broadcast: the same answers at every site.
    stacked = torch.stack([scores, -scores])
    assert top1_correct(stacked, answers).shape == (2, 4)
    assert answer_ranks(stacked, answers)[1].tolist() == [4.0, 3.5, 2.5, 2.0]
    # Uniform guessing: random scores give a mean rank near (m + 1) / 2.
    gen = torch.Generator().manual_seed(0)
    random_scores = torch.randn(4000, 9, generator=gen)
    ranks = answer_ranks(random_scores, torch.randint(9, (4000,), generator=gen))
    assert ranks.mean().item() == pytest.approx(5.0, abs=0.15)


def test_normalized_targets_are_centred_and_unit_norm():
    vectors = torch.randn(30, 8, generator=torch.Generator().manual_seed(3)) + 5.0
    targets = normalize_targets(vectors)
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(30))
    centred = vectors - vectors.mean(0)
    torch.testing.assert_close(targets, centred / centred.norm(dim=-1, keepdim=True))
