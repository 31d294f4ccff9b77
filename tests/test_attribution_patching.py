"""Attribution patching, checked against exact patching, and the agreement measures it is judged by."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from revinterp.analysis.agreement import attribution_agreement
from revinterp.analysis.attribution_patching import _forward_backward as forward_backward
from revinterp.analysis.attribution_patching import attribution_patch, attribution_patch_components
from revinterp.analysis.metrics import metric_values
from revinterp.analysis.patching import patch_sweep
from revinterp.analysis.prompts import PromptPairs, make_prompt_pairs
from revinterp.analysis.sites import ATTRIBUTION_DEFAULT_COMPONENTS, COMPONENTS
from revinterp.data import seed_experiment
from revinterp.models import ModelConfig, build_model, config_for_data, tokenizer_for


@pytest.fixture(scope="session")
def tiny_pairs(tiny_run):
    return make_prompt_pairs(tiny_run.facts, "forward_seen", tiny_run.tokenizer)


@pytest.fixture(scope="session")
def facts_and_tokenizer():
    facts = seed_experiment(40, seed=1)
    return facts, tokenizer_for(facts)


def random_model(facts_and_tokenizer, **overrides):
    """An untrained model (weights only depend on the seed) with its prompt pairs."""
    facts, tokenizer = facts_and_tokenizer
    config = config_for_data(ModelConfig(d_model=32, n_heads=4, d_mlp=64, seed=3, **overrides), facts, tokenizer)
    model = build_model(config, tokenizer, device="cpu")
    model.eval()
    return model, make_prompt_pairs(facts, "forward_seen", tokenizer, max_pairs=16)


def subset(pairs: PromptPairs, n: int) -> PromptPairs:
    return PromptPairs(pairs.clean[:n], pairs.corrupted[:n], pairs.clean_answer[:n], pairs.corrupted_answer[:n],
                       pairs.labels)


def exact_patch(model, pairs, component, *, metric="logit_diff", direction="denoising"):
    """Reference activation patching: one forward per site with ``run_with_hooks``, [*site, batch]."""
    source, base = (pairs.clean, pairs.corrupted) if direction == "denoising" else (pairs.corrupted, pairs.clean)
    n_layers, n_pos, n_heads = model.cfg.n_layers, pairs.clean.shape[1], model.cfg.n_heads
    shape = {"head_out": (n_layers, n_heads), "head_out_by_pos": (n_layers, n_pos, n_heads)}.get(
        component, (n_layers, n_pos))
    names = [COMPONENTS[component].hook_name(layer) for layer in range(n_layers)]
    out = torch.empty(*shape, len(pairs))
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=names)
        for site in itertools.product(*map(range, shape)):
            if component == "head_out":
                index = (slice(None), slice(None), site[1])
            elif component == "head_out_by_pos":
                index = (slice(None), site[1], site[2])
            else:
                index = (slice(None), site[1])
            src = cache[names[site[0]]]

            def patch(x, hook, index=index, src=src):
                x = x.clone()
                x[index] = src[index]
                return x

            logits = model.run_with_hooks(base, fwd_hooks=[(names[site[0]], patch)])
            out[site] = metric_values(metric, logits[:, -1], pairs.clean_answer, pairs.corrupted_answer)
    return out


# -- attribution patching ------------------------------------------------------------------------
def test_every_gradient_is_captured_and_parameters_are_untouched(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    names = sorted({COMPONENTS[c].hook_name(0) for c in ATTRIBUTION_DEFAULT_COMPONENTS})

    def score(resid):  # _forward_backward passes the last block's output
        logits = model.unembed(model.ln_final(resid))[:, -1]
        return metric_values("logit_diff", logits, pairs.clean_answer, pairs.corrupted_answer)

    acts, grads = forward_backward(model, pairs.corrupted, names, score)
    for name in names:
        assert grads[name] is not None and grads[name].shape == acts[name].shape, name
        assert grads[name].abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_patching_is_exact_where_the_metric_is_linear(facts_and_tokenizer, direction):
    """Without normalization, the logit difference is linear in what the last layer writes last."""
    attn_model, attn_pairs = random_model(facts_and_tokenizer, n_layers=1, normalization_type=None, attn_only=True)
    for component in ("attn_out", "head_out", "head_out_by_pos"):
        estimate = attribution_patch(attn_model, attn_pairs, component, direction=direction)
        exact = exact_patch(attn_model, attn_pairs, component, direction=direction)
        assert estimate.values.shape == exact.shape
        assert (exact - estimate.unpatched).abs().max() > 1e-2  # something changes
        torch.testing.assert_close(estimate.values, exact, atol=1e-4, rtol=1e-4)
    # resid_pre feeds the attention pattern: not linear, so the estimate must differ somewhere
    estimate = attribution_patch(attn_model, attn_pairs, "resid_pre", direction=direction)
    assert (estimate.values - exact_patch(attn_model, attn_pairs, "resid_pre", direction=direction)).abs().max() > 1e-3

    mlp_model, mlp_pairs = random_model(facts_and_tokenizer, n_layers=2, normalization_type=None)
    estimate = attribution_patch(mlp_model, mlp_pairs, "mlp_out", direction=direction)
    exact = exact_patch(mlp_model, mlp_pairs, "mlp_out", direction=direction)
    torch.testing.assert_close(estimate.values[1], exact[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_attribution_patching_of_values_patterns_and_the_last_residual_is_exact_where_linear(facts_and_tokenizer,
                                                                                          direction):
    """One attention-only layer without normalization: the logit difference is linear in each head's values, in its
    attention pattern (z = pattern @ v) and in the final residual stream, so the estimate equals exact patching
    (TransformerLens's own sweeps). Queries and keys pass through the softmax: only their layout is checked."""
    model, pairs = random_model(facts_and_tokenizer, n_layers=1, normalization_type=None, attn_only=True)
    estimates = attribution_patch_components(model, pairs, ("v", "v_by_pos", "pattern", "pattern_by_pos",
                                                            "resid_post", "q", "k_by_pos"), direction=direction)
    for component, estimate in estimates.items():
        exact = patch_sweep(model, pairs, component, direction=direction, method="transformer_lens", progress=False)
        assert estimate.axes == exact.axes and estimate.values.shape == exact.values.shape, component
        assert estimate.site_labels() == exact.site_labels(), component
        if component not in ("q", "k_by_pos"):
            assert (exact.values - estimate.unpatched).abs().max() > 5e-4, component  # something changes
            torch.testing.assert_close(estimate.values, exact.values, atol=1e-5, rtol=1e-4, msg=component)


def test_attribution_patching_is_per_example(tiny_run, tiny_pairs):
    full = attribution_patch(tiny_run.model, tiny_pairs, "head_out_by_pos", metric="logprob")
    part = attribution_patch(tiny_run.model, subset(tiny_pairs, 3), "head_out_by_pos", metric="logprob")
    torch.testing.assert_close(part.values, full.values[..., :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.corrupted, full.corrupted[:3])


def test_attribution_patching_agrees_with_exact_patching_on_a_trained_model(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    estimates = attribution_patch_components(model, pairs)
    components = ATTRIBUTION_DEFAULT_COMPONENTS
    assert set(estimates) == set(components)
    exact = {c: exact_patch(model, pairs, c) for c in components}
    for component, result in estimates.items():
        assert result.values.shape == exact[component].shape
        torch.testing.assert_close(result.corrupted, exact["resid_pre"][0, 0])  # the <bos> patch changes nothing
        torch.testing.assert_close(result.clean, exact["resid_pre"][0, 1], atol=1e-4, rtol=0)  # swapping the subject
    estimate = torch.cat([estimates[c].effect.flatten() for c in components])
    reference = torch.cat([(exact[c] - estimates[c].unpatched).mean(-1).flatten() for c in components])
    labels = [label for c in components for label in estimates[c].site_labels()]
    agreement = attribution_agreement(estimate, reference, labels=labels, k=5)
    # Measured on this fixture: Spearman 0.993 over 11 non-trivial sites, top-5 recall 1.0, slope 0.40:
    # it ranks well and underestimates every effect (the subject swap's response saturates).
    assert agreement.n_sites + agreement.n_trivial == len(labels)
    assert agreement.spearman > 0.9
    assert agreement.top_k_recall >= 0.8
    assert 0.25 < agreement.slope < 0.75
    assert all(site in labels for site, *_ in agreement.disagreements)
    by_component = estimates["head_out"].agreement_with(exact["head_out"], k=2)
    assert by_component.top_k_recall == 1.0


# -- agreement -----------------------------------------------------------------------------------
def test_agreement_on_known_values():
    exact = torch.tensor([[0.0, 4.0, -1.0], [2.0, 0.0, 8.0]])
    agreement = attribution_agreement(0.5 * exact + 0.1 * (exact != 0), exact, k=2)
    assert agreement.n_trivial == 2 and agreement.n_sites == 4
    assert agreement.spearman == pytest.approx(1.0) and agreement.top_k_recall == 1.0
    assert agreement.slope == pytest.approx(0.5) and agreement.intercept == pytest.approx(0.1)

    exact = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    estimate = torch.tensor([2.0, 1.0, 3.0, 5.0, 4.0])
    agreement = attribution_agreement(estimate, exact, labels=list("abcde"), k=2)
    d2 = 1 + 1 + 0 + 1 + 1  # squared rank differences; no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert agreement.spearman == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert agreement.top_k_recall == 1.0
    assert {site for site, *_ in agreement.disagreements} <= set("abcde")
    frame = agreement.to_frame()
    assert list(frame["site"]) == list("abcde") and list(frame["exact"]) == exact.tolist()
    assert frame["residual"].tolist() == pytest.approx(
        (estimate - agreement.intercept - agreement.slope * exact).tolist())
    assert [trace.name for trace in agreement.plot().data][0] == "sites"

    ties = attribution_agreement(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert ties.spearman == pytest.approx(0.8660254)  # ranks (1.5, 1.5, 3) against (1, 2, 3)


# -- results and bad input -----------------------------------------------------------------------
def test_results_have_frames_plots_and_summaries(tiny_run, tiny_pairs):
    import plotly.graph_objects as go

    model, pairs = tiny_run.model, tiny_pairs
    n = len(pairs)
    patching = attribution_patch_components(model, pairs, ("resid_pre", "head_out", "head_out_by_pos"))
    for result in patching.values():
        frame = result.to_frame(per_example=True)
        assert len(frame) == result.values.numel()
        assert frame["value"].sum() == pytest.approx(result.values.sum().item(), rel=1e-4)
        assert len(result.site_labels()) == result.values[..., 0].numel()
        assert len(result.to_frame()) == result.values[..., 0].numel()
    assert patching["head_out_by_pos"].values.shape == (1, 3, 4, n)
    assert patching["head_out"].axes == ("layer", "head")
    for result in patching.values():
        assert isinstance(result.plot(), go.Figure)
        assert isinstance(result.summary(), str) and result.summary()


def test_bad_input_raises_clear_errors(tiny_run, tiny_pairs, facts_and_tokenizer):
    model, pairs = tiny_run.model, tiny_pairs
    training = copy.deepcopy(model).train()
    with pytest.raises(ValueError, match="eval mode"):
        attribution_patch(training, pairs, "resid_pre")
    with pytest.raises(ValueError, match="unknown component 'attn_pattern'"):
        attribution_patch(model, pairs, "attn_pattern")
    with pytest.raises(ValueError, match="metric='accuracy'"):
        attribution_patch(model, pairs, "resid_pre", metric="accuracy")
    with pytest.raises(ValueError, match="direction='forward'"):
        attribution_patch(model, pairs, "resid_pre", direction="forward")
    with pytest.raises((ValueError, TypeError), match="PromptPairs"):  # the runtime type check may come first
        attribution_patch(model, pairs.clean, "resid_pre")
    attn_only, attn_pairs = random_model(facts_and_tokenizer, n_layers=1, attn_only=True)
    with pytest.raises(ValueError, match="attention-only"):
        attribution_patch(attn_only, attn_pairs, "mlp_out")
    assert "mlp_out" not in attribution_patch_components(attn_only, attn_pairs)
    with pytest.raises((ValueError, TypeError)):  # the runtime shape check may come first
        attribution_agreement(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="expected"):
        attribution_patch(model, pairs, "head_out").agreement_with(torch.zeros(1, 3, len(pairs)))


def test_the_forward_stops_at_the_final_norm_with_the_models_residual(tiny_run, tiny_pairs):
    from revinterp.analysis.attribution_patching import residual_before_final_norm

    model = tiny_run.model
    with torch.no_grad():
        logits, cache = model.run_with_cache(tiny_pairs.clean)
        residual = residual_before_final_norm(model, tiny_pairs.clean)
        assert torch.equal(residual, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
        assert torch.equal(model.unembed(model.ln_final(residual)), logits)


def test_attribution_in_chunks_equals_one_chunk(tiny_run, tiny_pairs, monkeypatch):
    import revinterp.analysis.attribution_patching as ap

    whole = ap.attribution_patch_components(tiny_run.model, tiny_pairs)
    monkeypatch.setattr(ap, "PAIRS_PER_CHUNK", 3)
    chunked = ap.attribution_patch_components(tiny_run.model, tiny_pairs)
    assert len(tiny_pairs) > 3
    for component, effects in whole.items():
        for name in ("values", "clean", "corrupted"):
            expected = getattr(effects, name)
            got = getattr(chunked[component], name)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max()), (component, name)
