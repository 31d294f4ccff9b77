"""The sites registry, the shared input checks and the one result type (SiteEffects) of every patching method."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformer_lens.patching as tl_patching

from revinterp.analysis.attribution_patching import attribution_patch_components
from revinterp.analysis.checks import check_model_and_pairs
from revinterp.analysis.effects import SiteEffects
from revinterp.analysis.metrics import metric_values
from revinterp.analysis.patching import patch_sweeps
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.analysis.sites import (
    ATTRIBUTION_DEFAULT_COMPONENTS,
    COMPONENTS,
    SWEEP_COMPONENTS,
    Site,
    check_components,
    component_sites,
    site_shape,
)
from revinterp.data import seed_experiment
from revinterp.models import ModelConfig, build_model, config_for_data, tokenizer_for


@pytest.fixture(scope="module")
def model_and_pairs():
    """An untrained two-layer model (eval mode) with 8 forward prompt pairs of two-token subjects."""
    facts = seed_experiment(20, tokens_per_entity=2, seed=1)
    tokenizer = tokenizer_for(facts)
    config = config_for_data(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=3), facts, tokenizer)
    model = build_model(config, tokenizer, device="cpu").eval()
    return model, make_prompt_pairs(facts, "forward_seen", tokenizer, max_pairs=8)


# -- the registry ----------------------------------------------------------------------------------
def test_every_component_names_a_hook_and_a_transformer_lens_function(model_and_pairs):
    model, _ = model_and_pairs
    assert set(SWEEP_COMPONENTS) <= set(COMPONENTS) and set(ATTRIBUTION_DEFAULT_COMPONENTS) <= set(COMPONENTS)
    full_sweep_and_whole_heads = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos")
    assert full_sweep_and_whole_heads == ATTRIBUTION_DEFAULT_COMPONENTS
    for name, spec in COMPONENTS.items():
        assert spec.name == name
        assert spec.tl_function == "" or callable(getattr(tl_patching, spec.tl_function)), name
        for layer in range(model.cfg.n_layers):
            assert spec.hook_name(layer) in model.hook_dict, (name, layer)
    assert COMPONENTS["head_out"].hook_name(1) == "blocks.1.attn.hook_z"
    assert COMPONENTS["resid_post"].hook_name(0) == "blocks.0.hook_resid_post"


def test_sites_of_a_component_follow_the_result_layout(model_and_pairs):
    model, pairs = model_and_pairs
    n_pos = pairs.clean.shape[1]
    assert site_shape("head_out_by_pos", model, n_pos) == (2, n_pos, 2)
    assert site_shape("pattern", model, n_pos) == (2, 2)
    sites = component_sites("head_out_by_pos", model, n_pos)
    assert len(sites) == 2 * n_pos * 2
    assert sites[:3] == [Site("head_out_by_pos", 0, 0, 0), Site("head_out_by_pos", 0, 0, 1),
                         Site("head_out_by_pos", 0, 1, 0)]
    result = patch_sweeps(model, pairs, ("head_out_by_pos",))["head_out_by_pos"]
    assert result.sites() == sites


# The activation each site names, written out by hand: (site, TransformerLens cache key, index after the batch axis).
HAND_INDEXED = [
    (Site("resid_pre", 1, 2), ("resid_pre", 1), (2,)),
    (Site("mlp_out", 0, 1), ("mlp_out", 0), (1,)),
    (Site("head_out", 1, head=1), ("z", 1), (slice(None), 1)),
    (Site("head_out_by_pos", 1, 3, 0), ("z", 1), (3, 0)),
    (Site("v_by_pos", 0, 1, 1), ("v", 0), (1, 1)),
    (Site("pattern", 0, head=1), ("pattern", 0), (1,)),
    (Site("pattern_by_pos", 1, 3, 0), ("pattern", 1), (0, 3)),  # [batch, head, dest, src]: head, then destination
]


@pytest.mark.parametrize("site, key, index", HAND_INDEXED, ids=[s.label() for s, *_ in HAND_INDEXED])
def test_hook_name_and_index_name_the_activation_a_patch_replaces(model_and_pairs, site, key, index):
    model, pairs = model_and_pairs
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(pairs.clean)
        activation = clean_cache[site.hook_name][site.index]
        assert torch.equal(activation, clean_cache[key][(slice(None), *index)])

        # replacing exactly that activation in the corrupted run is the patch TransformerLens makes at the site
        def patch(x, hook):
            x = x.clone()
            x[site.index] = activation
            return x

        logits = model.run_with_hooks(pairs.corrupted, fwd_hooks=[(site.hook_name, patch)])
    by_hand = metric_values("logit_diff", logits[:, -1], pairs.clean_answer, pairs.corrupted_answer)
    sweep = patch_sweeps(model, pairs, (site.component,), method="transformer_lens")[site.component]
    patched = sweep.values.reshape(-1, sweep.n)[sweep.sites().index(site)]
    assert (patched - sweep.unpatched).abs().max() > 1e-4  # the site matters: the comparison is not vacuous
    torch.testing.assert_close(by_hand, patched, atol=1e-5, rtol=0)


def test_components_and_sites_are_validated(model_and_pairs):
    model, _ = model_and_pairs
    assert check_components(model, ["resid_pre", "q"]) == ("resid_pre", "q")
    with pytest.raises(ValueError, match=r"unknown component 'resid_mid'; expected one of \('resid_pre', "):
        check_components(model, ("resid_mid",))
    with pytest.raises(ValueError, match="components is empty"):
        check_components(model, ())
    with pytest.raises(ValueError, match="one name"):
        check_components(model, "resid_pre")
    with pytest.raises(ValueError, match="unknown component 'attn'"):
        Site("attn", 0, 1)
    with pytest.raises(ValueError, match="expected head to be given"):
        Site("head_out_by_pos", 0, 1)
    with pytest.raises(ValueError, match="expected pos to be None"):
        Site("head_out", 0, 1, 0)


def test_model_and_pairs_checks(model_and_pairs):
    model, pairs = model_and_pairs
    check_model_and_pairs(model, pairs, "op")
    with pytest.raises((ValueError, TypeError), match="PromptPairs"):
        check_model_and_pairs(model, pairs.clean, "op")
    one = replace(pairs, clean=pairs.clean[:1], corrupted=pairs.corrupted[:1], clean_answer=pairs.clean_answer[:1],
                  corrupted_answer=pairs.corrupted_answer[:1])
    with pytest.raises(ValueError, match=r"op: got 1 prompt pair\(s\); expected at least 2"):
        check_model_and_pairs(model, one, "op")
    check_model_and_pairs(model, one, "op", min_pairs=1)
    with pytest.raises(ValueError, match="device meta"):
        check_model_and_pairs(model, pairs.to("meta"), "op")
    long = replace(pairs, clean=pairs.clean.repeat(1, 40), corrupted=pairs.corrupted.repeat(1, 40),
                   labels=pairs.labels * 40)
    with pytest.raises(ValueError, match="n_ctx"):
        check_model_and_pairs(model, long, "op")
    outside = replace(pairs, clean_answer=torch.full_like(pairs.clean_answer, model.cfg.d_vocab))
    with pytest.raises(ValueError, match=r"pairs.clean_answer has token ids outside \[0, "):
        check_model_and_pairs(model, outside, "op")
    model.train()
    try:
        with pytest.raises(ValueError, match="op: the model is in train mode"):
            check_model_and_pairs(model, pairs, "op")
    finally:
        model.eval()


# -- one result type -------------------------------------------------------------------------------
def test_fast_transformer_lens_and_attribution_results_are_one_type(model_and_pairs):
    model, pairs = model_and_pairs
    components = ("resid_pre", "head_out", "pattern_by_pos")
    results = {
        "fast": patch_sweeps(model, pairs, components),
        "transformer_lens": patch_sweeps(model, pairs, components, method="transformer_lens"),
        "attribution": attribution_patch_components(model, pairs, components),
    }
    columns, long_columns = set(), set()
    for method, sweeps in results.items():
        for component, result in sweeps.items():
            assert type(result) is SiteEffects and result.method == method, (method, component)
            frame = result.to_frame()
            assert len(frame) == len(result.sites()) and set(frame["method"]) == {method}
            normalized = (result.values.double().mean(-1) - result.corrupted.double().mean()) / result.gap
            assert frame["normalized"].tolist() == pytest.approx(normalized.flatten().tolist(), abs=1e-9)
            long = result.to_frame(per_example=True)
            assert len(long) == result.values.numel()
            assert long["value"].sum() == pytest.approx(result.values.sum().item(), rel=1e-5)
            columns.add(tuple(frame.columns))
            long_columns.add(tuple(long.columns))
            assert result.site_labels() == results["fast"][component].site_labels()
    assert len(columns) == 1 and len(long_columns) == 1  # the same columns for every method and component
    assert {"component", "method", "direction", "layer", "pos", "pos_label", "head", "mean", "effect", "normalized",
            "ci_low", "ci_high", "n"} <= set(next(iter(columns)))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_to_transformer_lens_gives_the_same_numbers(model_and_pairs, direction):
    model, pairs = model_and_pairs
    result = patch_sweeps(model, pairs, ("head_out_by_pos",), direction=direction)["head_out_by_pos"]
    tl = result.to_transformer_lens()
    assert isinstance(tl, tl_patching.PatchingResult) and not tl.reduced
    assert tl.axis_names == ["layer", "pos", "head"] and tl.metric_names == ["logit_diff"]
    assert torch.equal(tl.baseline, result.unpatched)
    torch.testing.assert_close(tl.mean(), result.mean, atol=0, rtol=0)
    torch.testing.assert_close(tl.effect().mean(-1), result.effect, atol=0, rtol=0)
    sites = result.sites()
    assert len(tl.index_df) == len(sites)
    assert [tuple(row) for row in tl.index_df.itertuples(index=False)] == [(s.layer, s.pos, s.head) for s in sites]
    if direction == "denoising":  # TransformerLens normalizes against its baseline, the corrupted run
        torch.testing.assert_close(tl.normalized(result.clean), result.normalized_per_example, equal_nan=True)
    p = tl.permutation_pvalue()
    assert p.shape == result.mean.shape
    trivial = (result.values == result.unpatched).all(-1)  # e.g. <bos>: no change in any example
    assert bool(trivial.any()) and bool((p[trivial] == 1).all())
    assert tl.stderr().shape == result.mean.shape


def test_nested_sites_follow_the_residual_stream_and_attention():
    from revinterp.analysis.sites import nested_groups, nests

    subject = Site("resid_pre", 0, 1)
    assert nests(subject, Site("attn_out", 0, 2)) and nests(subject, Site("mlp_out", 1, 3))  # later positions
    assert nests(Site("attn_out", 0, 2), Site("mlp_out", 0, 2))  # the MLP reads the attention's write
    assert not nests(Site("mlp_out", 0, 2), Site("attn_out", 0, 2))  # ... not the other way round
    assert not nests(Site("attn_out", 0, 1), Site("mlp_out", 0, 2))  # another position needs a later attention
    assert nests(Site("attn_out", 0, 1), Site("mlp_out", 1, 2))
    assert not nests(subject, Site("resid_pre", 1, 0))  # nothing flows to earlier positions
    assert nests(Site("attn_out", 1, 2), Site("head_out_by_pos", 1, 2, 3))
    assert not nests(Site("head_out", 0, head=1), Site("mlp_out", 1, 2))  # no position: nests in nothing here
    groups = nested_groups([Site("mlp_out", 0, 0), subject, Site("head_out_by_pos", 0, 2, 1), Site("mlp_out", 0, 2)])
    assert groups == [(Site("mlp_out", 0, 0),), (subject, Site("head_out_by_pos", 0, 2, 1), Site("mlp_out", 0, 2))]
