"""Activation patching: the fast path against TransformerLens, invariants, errors, localization, and pins of the
headline findings on the trained default-architecture run."""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import partial

import pytest
import torch

from revinterp.analysis.effects import SiteEffects
from revinterp.analysis.fast_patching import _TailForward
from revinterp.analysis.localize import localize
from revinterp.analysis.metrics import logit_diff
from revinterp.analysis.patching import joint_patch, patch_sweep, patch_sweeps
from revinterp.analysis.prompts import PromptPairs, make_prompt_pairs, prompt_length_counts
from revinterp.analysis.sites import COMPONENTS, Site
from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, ModelConfig, build_model, config_for_data, tokenizer_for
from revinterp.stats import bootstrap_ci
from revinterp.training import TRAINING_PRESETS, train

TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-9  # float64 models: results agree to float32 rounding
BASE = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=3)
VARIANTS = {
    "ln": replace(BASE, n_layers=3),  # a middle block: rows recomputed from cached neighbours
    "rotary_rms": replace(BASE, normalization_type="RMS", positional_embedding_type="rotary"),
    "attn_only_lnpre": replace(BASE, attn_only=True, normalization_type="LNPre"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@pytest.fixture(scope="session")
def two_token_facts():
    # two-token subjects: prompts "<bos> s0 s1 ->", so patches start at position 1 or 2
    facts = seed_experiment(30, tokens_per_entity=2, seed=1)
    return facts, tokenizer_for(facts)


@pytest.fixture(scope="session")
def random_models(two_token_facts):
    """Untrained models (eval mode) of each variant, with 10 prompt pairs on the model's device."""
    facts, tok = two_token_facts
    out = {}
    for name, config in VARIANTS.items():
        model = build_model(config_for_data(config, facts, tok), tok).eval()
        pairs = make_prompt_pairs(facts, "forward_seen", tok, max_pairs=10).to(device_of(model))
        out[name] = (model, pairs)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny trained run (1 layer, d_model 64) and its forward_seen prompt pairs."""
    facts = seed_experiment(40, seed=0)
    result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], tmp_path_factory.mktemp("run"),
                   progress=False)
    pairs = make_prompt_pairs(facts, "forward_seen", tokenizer_for(facts)).to(device_of(result.model))
    return result.model, pairs


def stage_hook(stage: str, layer: int) -> str:
    """The bridge's hook of a fast-path stage (written here, independently of the sites registry)."""
    in_attention = stage in ("q", "k", "v", "z", "pattern")
    return f"blocks.{layer}.attn.hook_{stage}" if in_attention else f"blocks.{layer}.hook_{stage}"


def components_for(model) -> tuple[str, ...]:
    return tuple(c for c in COMPONENTS if not (model.cfg.attn_only and c == "mlp_out"))


# -- the fast path equals TransformerLens's get_act_patch_* ----------------------------------------
@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_equals_transformer_lens(random_models, variant, direction):
    model, pairs = random_models[variant]
    components = components_for(model)
    reference = patch_sweeps(model, pairs, components, direction=direction, method="transformer_lens")
    fast = patch_sweeps(model, pairs, components, direction=direction)
    every_site = patch_sweeps(model, pairs, components, direction=direction, skip_trivial=False)
    for c in components:
        ref = reference[c]
        assert fast[c].values.shape == ref.values.shape, c
        assert (fast[c].values - ref.values).abs().max().item() <= TOLERANCE, c
        assert (every_site[c].values - ref.values).abs().max().item() <= TOLERANCE, c
        # the comparison is not vacuous: some site moves the metric away from the unpatched run
        assert (ref.values - ref.unpatched).abs().max().item() > 1e-3, c
    assert_same_ends(fast[components[0]], reference[components[0]])


def assert_same_ends(fast, reference) -> None:
    """The clean and corrupted metrics of two sweeps to 1e-6 (relative): the fast path reads the metric from the
    answer columns of the unembedding (AnswerReadout), which rounds differently from the full unembedding."""
    for end in ("clean", "corrupted"):
        got, expected = getattr(fast, end), getattr(reference, end)
        assert (got - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max().item()), end


def test_fast_path_equals_transformer_lens_on_trained_model_with_logprob(trained):
    model, pairs = trained
    components = ("resid_pre", "attn_out", "mlp_out", "head_out_by_pos", "k", "pattern_by_pos")
    for direction in ("denoising", "noising"):
        reference = patch_sweeps(model, pairs, components, direction=direction, metric="logprob",
                                 method="transformer_lens")
        fast = patch_sweeps(model, pairs, components, direction=direction, metric="logprob")
        for c in components:
            assert (fast[c].values - reference[c].values).abs().max().item() <= TOLERANCE, (direction, c)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_records_the_bridges_activations(random_models, variant):
    # the fast path records both runs with its own arithmetic; it must be the bridge's, activation for activation
    model, pairs = random_models[variant]
    with torch.no_grad():
        tail = _TailForward(model, pairs.corrupted, pairs.clean)
        logits, cache = model.run_with_cache(pairs.clean)
    assert (model.unembed(tail.source_final[:, None])[:, 0] - logits[:, -1]).abs().max().item() <= TOLERANCE
    stages = [s for s in tail.source if not (model.cfg.attn_only and s in ("mlp_out", "resid_mid"))]
    for stage in stages:
        for layer in range(model.cfg.n_layers):
            assert (tail.source[stage][layer] - cache[stage_hook(stage, layer)]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("columns", [None, 7])
def test_answer_readout_equals_the_full_unembedding(random_models, columns):
    """Two answer columns for the logit difference, a chunked normalizer for the log-probability (chunks of 7
    columns here): equal to the metric of the full unembedding to 1e-6."""
    from revinterp.analysis.fast_patching import AnswerReadout
    from revinterp.analysis.metrics import metric_values

    model, pairs = random_models["ln"]
    with torch.no_grad():
        final = _TailForward(model, pairs.corrupted, pairs.clean).source_final
        logits = model.unembed(final[:, None])[:, 0]
        readout = AnswerReadout(model, columns=columns)
        for metric in ("logit_diff", "logprob"):
            expected = metric_values(metric, logits, pairs.clean_answer, pairs.corrupted_answer)
            got = readout(metric, final, pairs.clean_answer, pairs.corrupted_answer)
            assert (got - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max().item()), metric


def test_chunked_fast_path_equals_one_chunk(random_models):
    model, pairs = random_models["ln"]
    whole = patch_sweeps(model, pairs, ("resid_pre", "head_out", "v_by_pos"))
    chunked = patch_sweeps(model, pairs, ("resid_pre", "head_out", "v_by_pos"), batch_size=3)
    for c in whole:
        assert (whole[c].values - chunked[c].values).abs().max().item() <= TOLERANCE


# -- invariants ----------------------------------------------------------------------------------
def same_prompts(pairs: PromptPairs, tokens: torch.Tensor) -> PromptPairs:
    """``pairs`` with both runs on ``tokens`` (answers kept, so the metric is unchanged)."""
    return replace(pairs, clean=tokens, corrupted=tokens)


@pytest.mark.parametrize("variant", ["ln", "rotary_rms"])
def test_self_patching_gives_normalized_one_and_zero(random_models, variant):
    model, pairs = random_models[variant]
    components = components_for(model)
    real = patch_sweep(model, pairs, "resid_pre")
    clean_mean, corrupted_mean = real.clean.mean(), real.corrupted.mean()
    assert abs(clean_mean - corrupted_mean) > 1e-2  # the normalization is well defined
    for tokens, expected in ((pairs.clean, 1.0), (pairs.corrupted, 0.0)):
        # recompute every site (skip_trivial=False): the tail forward must reproduce the unpatched run
        results = patch_sweeps(model, same_prompts(pairs, tokens), components, skip_trivial=False)
        unpatched = real.clean if expected == 1.0 else real.corrupted
        for c, result in results.items():
            assert (result.values - unpatched).abs().max().item() <= TOLERANCE, c
            normalized = (result.values.mean(-1) - corrupted_mean) / (clean_mean - corrupted_mean)
            assert torch.allclose(normalized, torch.full_like(normalized, expected), atol=1e-5), c


def test_known_sites(trained):
    model, pairs = trained
    last, answer = model.cfg.n_layers - 1, pairs.answer_position
    subject = pairs.labels.index("subject")
    for direction, restored in (("denoising", 1.0), ("noising", 0.0)):
        resid_pre = patch_sweep(model, pairs, "resid_pre", direction=direction)
        resid_post = patch_sweep(model, pairs, "resid_post", direction=direction)
        unpatched = resid_pre.normalized_unpatched
        # the prompts differ only in the subject: its embedding carries the whole difference
        assert resid_pre.normalized[0, subject].item() == pytest.approx(restored, abs=1e-6)
        assert resid_pre.normalized[0, 0].item() == unpatched  # <bos>: identical activations
        # the final residual at the answer position fixes the logits
        assert resid_post.normalized[last, answer].item() == pytest.approx(restored, abs=1e-6)
        assert resid_post.normalized[last, :answer].tolist() == [unpatched] * answer  # cannot reach the answer


def test_joint_patch_of_one_site_equals_the_sweep(random_models):
    model, pairs = random_models["ln"]
    for component in ("resid_post", "mlp_out", "head_out", "q_by_pos", "pattern", "pattern_by_pos"):
        for direction in ("denoising", "noising"):
            result = patch_sweep(model, pairs, component, direction=direction)
            values = result.values.reshape(-1, result.n)
            for s, site in list(enumerate(result.sites()))[1::3]:  # a third of the sites, every layer
                single = joint_patch(model, pairs, [site], direction=direction)
                assert (single - values[s]).abs().max().item() <= TOLERANCE, (component, site)


def test_all_heads_at_a_position_equal_the_attention_output(random_models):
    model, pairs = random_models["ln"]
    attn = patch_sweep(model, pairs, "attn_out")
    for layer in range(model.cfg.n_layers):
        for pos in range(pairs.answer_position + 1):
            heads = [Site("head_out_by_pos", layer, pos, h) for h in range(model.cfg.n_heads)]
            joint = joint_patch(model, pairs, heads)
            assert (joint - attn.values[layer, pos]).abs().max().item() <= TOLERANCE


# -- the result object ---------------------------------------------------------------------------
def test_result_statistics_frame_plot_summary(trained):
    model, pairs = trained
    result = patch_sweep(model, pairs, "head_out_by_pos")
    n_layers, n_pos, n_heads = model.cfg.n_layers, pairs.clean.shape[1], model.cfg.n_heads
    assert isinstance(result, SiteEffects) and result.method == "fast"
    assert result.values.shape == (n_layers, n_pos, n_heads, len(pairs))
    assert result.axes == ("layer", "pos", "head") and result.labels == pairs.labels
    expected = (result.values.mean(-1) - result.corrupted.mean()) / (result.clean.mean() - result.corrupted.mean())
    assert torch.allclose(result.normalized, expected)
    low, high = result.ci()
    assert low.shape == result.mean.shape
    assert bool((low <= result.normalized.double() + 1e-9).all() and (result.normalized.double() <= high + 1e-9).all())
    assert bool((high > low).any())  # some site varies over examples
    # a site that is exactly the unpatched run has the degenerate interval [0, 0] (denoising) or [1, 1] (noising)
    bos = result.normalized[0, 0, 0].item()
    assert bos == 0.0 and low[0, 0, 0].item() == 0.0 and high[0, 0, 0].item() == 0.0
    noising = patch_sweep(model, pairs, "head_out_by_pos", direction="noising")
    n_low, n_high = noising.ci()
    assert noising.normalized[0, 0, 0].item() == 1.0 and n_low[0, 0, 0].item() == n_high[0, 0, 0].item() == 1.0
    # the ratio bootstrap draws the resamples of revinterp.stats.bootstrap_ci: same interval when the gap is 1 - 0
    fixed = replace(result, clean=torch.ones_like(result.clean), corrupted=torch.zeros_like(result.corrupted))
    site = result.top(1)[0][0]
    index = result.sites().index(site)
    reference = bootstrap_ci(result.values.reshape(-1, result.n)[index])
    assert fixed.estimates()[index].low == pytest.approx(reference.low, abs=1e-9)
    assert fixed.estimates()[index].high == pytest.approx(reference.high, abs=1e-9)
    raw = result.estimates(normalized=False)[0]
    assert raw.mean == pytest.approx(result.corrupted.double().mean().item(), abs=1e-6)
    frame = result.to_frame()
    assert len(frame) == n_layers * n_pos * n_heads
    assert {"layer", "pos", "pos_label", "head", "mean", "normalized", "ci_low", "ci_high"} <= set(frame.columns)
    top_site, top_value = result.top(1)[0]
    row = frame[(frame["layer"] == top_site.layer) & (frame["pos"] == top_site.pos) & (frame["head"] == top_site.head)]
    assert row.normalized.item() == pytest.approx(top_value, abs=1e-6)
    assert len(result.to_frame(per_example=True)) == n_layers * n_pos * n_heads * len(pairs)
    fig = result.plot()
    assert len(fig.data) == n_heads and list(fig.data[0].x) == [f"{p}: {lab}" for p, lab in enumerate(pairs.labels)]
    assert top_site.label(pairs.labels) in result.summary()


# -- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs_raise(random_models):
    model, pairs = random_models["ln"]
    with pytest.raises(ValueError, match="unknown component 'resid_mid'"):
        patch_sweep(model, pairs, "resid_mid")
    with pytest.raises(ValueError, match="direction='sideways'"):
        patch_sweep(model, pairs, "resid_pre", direction="sideways")
    with pytest.raises(ValueError, match="method='slow'"):
        patch_sweep(model, pairs, "resid_pre", method="slow")
    with pytest.raises(ValueError, match="metric='accuracy'"):
        patch_sweep(model, pairs, "resid_pre", metric="accuracy")
    one = PromptPairs(pairs.clean[:1], pairs.corrupted[:1], pairs.clean_answer[:1], pairs.corrupted_answer[:1],
                      pairs.labels)
    with pytest.raises(ValueError, match="1 prompt pair"):
        patch_sweep(model, one, "resid_pre")
    with pytest.raises(ValueError, match="device meta"):
        patch_sweep(model, pairs.to("meta"), "resid_pre")
    model.train()
    try:
        with pytest.raises(ValueError, match="train mode"):
            patch_sweep(model, pairs, "resid_pre")
        with pytest.raises(ValueError, match="train mode"):
            localize(model, pairs)
    finally:
        model.eval()
    attn_only, attn_only_pairs = random_models["attn_only_lnpre"]
    with pytest.raises(ValueError, match="attention-only"):
        patch_sweep(attn_only, attn_only_pairs, "mlp_out")
    with pytest.raises(ValueError, match="target=1.5"):
        localize(model, pairs, target=1.5)


# -- localization --------------------------------------------------------------------------------
def restore_by_hand(model, pairs: PromptPairs, sites) -> float:
    """Independent joint denoising patch: hooks written here, normalized by hand."""
    hook_names = {
        "attn_out": "blocks.{}.hook_attn_out", "mlp_out": "blocks.{}.hook_mlp_out",
        "head_out_by_pos": "blocks.{}.attn.hook_z",
    }
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(pairs.clean)
        corrupted_logits = model(pairs.corrupted)

        def restore(act, hook, name, pos, head):
            act = act.clone()
            if head is None:
                act[:, pos] = cache[name][:, pos]
            else:
                act[:, pos, head] = cache[name][:, pos, head]
            return act

        hooks = []
        for s in sites:
            name = hook_names[s.component].format(s.layer)
            hooks.append((name, partial(restore, name=name, pos=s.pos, head=s.head)))
        patched = model.run_with_hooks(pairs.corrupted, fwd_hooks=hooks)
    ld = lambda logits: logit_diff(logits[:, -1], pairs.clean_answer, pairs.corrupted_answer).mean()  # noqa: E731
    return ((ld(patched) - ld(corrupted_logits)) / (ld(clean_logits) - ld(corrupted_logits))).item()


def test_localize_recovers_the_target_with_the_sites_it_names(trained):
    model, pairs = trained
    target = 0.8
    # without attn_out (in one layer, attn_out at the answer alone is the whole path) several sites are needed
    # chosen and measured on the same pairs, so that each step's joint patch can be checked by hand
    loc = localize(model, pairs, target=target, components=("mlp_out", "head_out_by_pos"), held_out=False)
    assert loc.reached and loc.recovered >= target and len(loc.chosen) >= 2
    assert restore_by_hand(model, pairs, loc.chosen) == pytest.approx(loc.recovered, abs=1e-5)
    # greedy: one site fewer does not reach the target, and the curve is what joint patches measure
    assert all(value < target for value in loc.curve[:-1].tolist())
    for k in range(1, len(loc.chosen) + 1):
        assert restore_by_hand(model, pairs, loc.chosen[:k]) == pytest.approx(loc.curve[k - 1].item(), abs=1e-5)
    # chosen in order of their own effect, which is sorted, with intervals around it
    assert torch.all(loc.effects[:-1] >= loc.effects[1:])
    ranks = [loc.sites.index(s) for s in loc.chosen]
    assert ranks == sorted(ranks)
    assert torch.all(loc.effects_low <= loc.effects + 1e-9) and torch.all(loc.effects <= loc.effects_high + 1e-9)
    # the ranking's effects are the single-site sweep's
    mlp = patch_sweep(model, pairs, "mlp_out")
    site = Site("mlp_out", 0, pairs.answer_position)
    assert loc.effects[loc.sites.index(site)].item() == pytest.approx(mlp.normalized[0, -1].item(), abs=1e-6)
    frame = loc.to_frame()
    assert frame.chosen.sum() == len(loc.chosen) and len(frame) == len(loc.sites)
    ci = loc.recovered_ci()
    assert ci.mean == pytest.approx(loc.recovered, abs=1e-9) and ci.low < ci.mean < ci.high
    assert "reached" in loc.summary()
    fig = loc.plot()
    assert len(fig.data) == 1 and list(fig.data[0].y) == pytest.approx(loc.curve.tolist())  # one bar per step


def test_localize_chooses_on_one_half_and_measures_on_the_other(trained):
    model, pairs = trained
    discovery, evaluation = pairs.halves(seed=3)
    assert not set(discovery.statements) & set(evaluation.statements)
    assert len(discovery) + len(evaluation) == len(pairs)
    loc = localize(model, pairs, target=0.8, components=("mlp_out", "head_out_by_pos"), seed=3)
    assert loc.held_out and loc.n_discovery == len(discovery)
    assert restore_by_hand(model, evaluation, loc.chosen) == pytest.approx(loc.recovered, abs=1e-5)
    assert restore_by_hand(model, discovery, loc.chosen) == pytest.approx(loc.curve[-1].item(), abs=1e-5)
    assert f"chosen on {len(discovery)} prompt pairs, measured on {len(evaluation)} others" in loc.summary()
    # a gap far below the reference gap is not normalized: no recovered fraction, n/a with the reason
    tiny_gap = localize(model, pairs, target=0.8, reference_gap=100 * loc.gap)
    assert tiny_gap.recovered is None and tiny_gap.recovered_ci() is None and not tiny_gap.reached
    assert "n/a (gap" in tiny_gap.summary() and "too small to normalize" in tiny_gap.summary()
    with pytest.raises(ValueError, match="expected at least 4"):
        localize(model, pairs.select([0, 1, 2]), target=0.8)


def test_localize_default_components_and_the_whole_attention_output(trained):
    model, pairs = trained
    loc = localize(model, pairs, target=0.99, held_out=False)
    # in one layer the attention output at the answer position carries the whole subject: exactly the clean run
    assert loc.chosen == (Site("attn_out", 0, pairs.answer_position),)
    assert loc.recovered == pytest.approx(1.0, abs=1e-6)
    assert restore_by_hand(model, pairs, loc.chosen) == pytest.approx(1.0, abs=1e-6)
    assert not any(s.component == "head_out_by_pos" and s.pos == pairs.answer_position for s in loc.chosen)
    ci = loc.recovered_ci()
    # 1e-6: the sweep's clean and corrupted metrics come from the answer columns (AnswerReadout), the restored run's
    # from the full unembedding, which round differently
    assert ci.low == pytest.approx(1.0, abs=1e-6) and ci.high == pytest.approx(1.0, abs=1e-6)
    fig = loc.plot()  # a single chosen site: one trace with one point, on a categorical axis
    assert len(fig.data) == 1 and len(fig.data[0].y) == 1 and fig.layout.xaxis.type == "category"


def test_prompt_pairs_of_several_lengths_need_a_chosen_length():
    """Relation phrases of different lengths give prompts of different lengths: an error naming them unless one
    length is chosen; then every pair has that length and uses only its statements."""
    facts = seed_experiment(60, n_relations=6, template="natural", seed=0)
    tokenizer = tokenizer_for(facts)
    counts = prompt_length_counts(facts, "reverse_seen", tokenizer)
    assert len(counts) > 1 and sum(counts.values()) == len(facts.split("reverse_seen"))
    with pytest.raises(ValueError, match=r"several lengths .*pass prompt_length="):
        make_prompt_pairs(facts, "reverse_seen", tokenizer)
    for length in counts:
        pairs = make_prompt_pairs(facts, "reverse_seen", tokenizer, prompt_length=length)
        assert pairs.clean.shape[1] == pairs.corrupted.shape[1] == length
        assert len(pairs) <= counts[length]
        assert all(len(facts.prompt_words(s)) + 1 == length for s in pairs.statements)
        assert all(a.relation == b.relation for a, b in zip(pairs.statements, pairs.corrupted_statements))
    with pytest.raises(ValueError, match="prompt length 99"):
        make_prompt_pairs(facts, "reverse_seen", tokenizer, prompt_length=99)


# -- the trained default-architecture run (2 layers, d_model 128) ---------------------------------
@pytest.fixture(scope="module")
def default_pairs(default_run):
    return make_prompt_pairs(default_run.facts, "forward_seen", default_run.tokenizer)


@pytest.fixture(scope="module")
def default_model_float64(default_run):
    """The trained default-architecture model in float64: the fast path and TransformerLens then agree to the
    float32 rounding of their results, where in float32 their different summation orders differ by a few ulp of
    logit differences near 15 (1.1e-5 on one CPU), which says nothing about the algorithm."""
    return copy.deepcopy(default_run.model).to(torch.float64)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_fast_path_equals_transformer_lens_on_the_default_run(default_model_float64, default_pairs, direction):
    """Every component, on a trained two-layer model (in float64): a middle block whose later positions are
    recomputed from cached keys and values, and a last block that computes the answer only."""
    model, pairs = default_model_float64, default_pairs
    reference = patch_sweeps(model, pairs, tuple(COMPONENTS), direction=direction, method="transformer_lens")
    fast = patch_sweeps(model, pairs, tuple(COMPONENTS), direction=direction)
    for c in COMPONENTS:
        assert fast[c].values.shape == reference[c].values.shape, c
        assert (fast[c].values - reference[c].values).abs().max().item() <= FLOAT64_TOLERANCE, c
        assert (reference[c].values - reference[c].unpatched).abs().max().item() > 0.1, c  # not vacuous
    assert_same_ends(fast["resid_pre"], reference["resid_pre"])


def test_localize_on_the_default_run_restores_one_site_chosen_on_the_other_half(default_run, default_pairs):
    """The forward fact of a trained model is carried by one site: the top site of the discovery half's ranking
    recovers the target on the other half. Which site that is depends on the trained weights, and those differ
    between CPUs (float32 kernels round differently, and 200 steps of training amplify it): `attn_out L1 @->` on
    one machine, `attn_out L0 @subject` on another (0.837 [0.792, 0.876], 21 pairs), so only what holds for any
    fitted model is asserted. The BOS position is the same in the clean and corrupted runs under causal
    attention, so its sites have no effect at all."""
    model, pairs = default_run.model, default_pairs
    loc = localize(model, pairs, target=0.8)
    assert len(loc.chosen) == 1 and loc.chosen[0] == loc.sites[0]
    assert loc.chosen[0].pos in (pairs.answer_position - 1, pairs.answer_position)  # the subject or the relation
    assert loc.curve[0].item() == pytest.approx(loc.effects[0].item(), abs=1e-5)  # one site: joint = own effect
    at_bos = [rank for rank, site in enumerate(loc.sites) if site.pos == 0]
    assert at_bos and all(loc.effects[rank].item() == 0.0 for rank in at_bos)
    assert loc.reached and loc.recovered >= loc.target
    assert loc.recovered_ci().low > 0.7
    discovery, evaluation = pairs.halves(0)  # chosen on one half, measured on the other
    assert (loc.n_discovery, loc.n_evaluation) == (len(discovery), len(evaluation))
    assert restore_by_hand(model, evaluation, loc.chosen) == pytest.approx(loc.recovered, abs=1e-5)
