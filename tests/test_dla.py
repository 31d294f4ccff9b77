"""Direct logit attribution and the logit lens, the residual stream read through the unembedding: checked
against exact computations, and the DLA identity pinned on the trained default-architecture run."""

from __future__ import annotations

import copy

import pytest
import torch

from revinterp.analysis.dla import direct_logit_attribution
from revinterp.analysis.logit_lens import logit_lens
from revinterp.analysis.prompts import make_prompt_pairs
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


def last_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[:, -1]


# -- direct logit attribution --------------------------------------------------------------------
def test_dla_parts_and_bias_sum_to_the_logit_difference(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    dla = direct_logit_attribution(model, pairs)
    logits = last_logits(model, pairs.clean)
    batch = torch.arange(len(pairs))
    logit_diff = logits[batch, pairs.clean_answer] - logits[batch, pairs.corrupted_answer]
    assert dla.values.shape == (len(dla.labels), len(pairs))
    assert dla.labels == ("embed", "pos_embed", "L0H0", "L0H1", "L0H2", "L0H3", "L0 attn bias", "L0 mlp")
    torch.testing.assert_close(dla.values.sum(0) + dla.unembed_bias, logit_diff, atol=1e-4, rtol=0)
    torch.testing.assert_close(dla.total, logit_diff, atol=1e-4, rtol=0)
    assert logit_diff.abs().min() > 1  # a trained model: the identity is not 0 == 0
    for unit, labels in [("component", ("embed", "pos_embed", "L0 attn", "L0 mlp")), ("layer", ("embeddings", "L0"))]:
        coarse = dla.aggregate(unit)
        assert coarse.labels == labels
        torch.testing.assert_close(coarse.values.sum(0) + coarse.unembed_bias, logit_diff, atol=1e-4, rtol=0)


def test_dla_parts_match_a_hand_computation(tiny_run, tiny_pairs):
    """The MLP and one head, recomputed from a compatibility-mode copy's cache and weights."""
    model, pairs = tiny_run.model, tiny_pairs
    dla = direct_logit_attribution(model, pairs)
    compat = copy.deepcopy(model)
    compat.enable_compatibility_mode()
    with torch.no_grad():
        _, cache = compat.run_with_cache(pairs.clean)
        direction = compat.W_U[:, pairs.clean_answer] - compat.W_U[:, pairs.corrupted_answer]  # [d_model, batch]
        scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]

        def attribution(x):  # [batch, d_model] residual contribution at the last position
            x = x - x.mean(-1, keepdim=True)
            return ((x / scale) * direction.T).sum(-1)

        mlp = attribution(cache["blocks.0.hook_mlp_out"][:, -1])
        head2 = attribution(cache["blocks.0.attn.hook_z"][:, -1, 2] @ compat.blocks[0].attn.W_O[2])
    torch.testing.assert_close(dla.values[dla.labels.index("L0 mlp")], mlp, atol=1e-4, rtol=0)
    torch.testing.assert_close(dla.values[dla.labels.index("L0H2")], head2, atol=1e-4, rtol=0)


def test_dla_of_the_answer_logit(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    dla = direct_logit_attribution(model, pairs, target="answer")
    logits = last_logits(model, pairs.clean)
    centred = logits[torch.arange(len(pairs)), pairs.clean_answer] - logits.mean(-1)
    torch.testing.assert_close(dla.values.sum(0) + dla.unembed_bias, centred, atol=1e-4, rtol=0)
    torch.testing.assert_close(dla.total, centred, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides", [
    dict(normalization_type=None),
    dict(normalization_type="RMS", positional_embedding_type="rotary"),
    dict(n_layers=2, attn_only=True),
])
def test_dla_is_exact_on_other_architectures(facts_and_tokenizer, overrides):
    model, pairs = random_model(facts_and_tokenizer, **overrides)
    dla = direct_logit_attribution(model, pairs)
    logits = last_logits(model, pairs.clean)
    batch = torch.arange(len(pairs))
    logit_diff = logits[batch, pairs.clean_answer] - logits[batch, pairs.corrupted_answer]
    torch.testing.assert_close(dla.values.sum(0) + dla.unembed_bias, logit_diff, atol=1e-4, rtol=0)
    assert ("pos_embed" in dla.labels) == (overrides.get("positional_embedding_type") != "rotary")
    assert any(label.endswith("mlp") for label in dla.labels) != overrides.get("attn_only", False)


def test_dla_leaves_the_callers_model_unchanged(tiny_run, tiny_pairs):
    model = tiny_run.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits_before = last_logits(model, tiny_pairs.clean)
    direct_logit_attribution(model, tiny_pairs)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not getattr(model, "compatibility_mode", False)
    assert torch.equal(last_logits(model, tiny_pairs.clean), logits_before)


# -- logit lens ----------------------------------------------------------------------------------
def test_logit_lens_final_row_is_the_models_output_and_first_row_the_embeddings(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    lens = logit_lens(model, pairs)
    assert lens.labels == ("L0 resid_pre", "final")
    logits = last_logits(model, pairs.clean)
    batch = torch.arange(len(pairs))
    answer_logit = logits[batch, pairs.clean_answer]
    torch.testing.assert_close(lens.logprob[-1], logits.log_softmax(-1)[batch, pairs.clean_answer], atol=1e-5, rtol=0)
    assert torch.equal(lens.rank[-1], 1 + (logits > answer_logit[:, None]).sum(-1))
    with torch.no_grad():  # row 0: token + position embedding only, through ln_final and the unembedding
        embedded = model.W_E[pairs.clean[:, -1]] + model.W_pos[pairs.clean.shape[1] - 1]
        early = model.unembed(model.ln_final(embedded[:, None]))[:, 0].log_softmax(-1)
    torch.testing.assert_close(lens.logprob[0], early[batch, pairs.clean_answer], atol=1e-5, rtol=0)
    # token input gives the same answer
    same = logit_lens(model, pairs.clean, pairs.clean_answer)
    torch.testing.assert_close(same.logprob, lens.logprob)


def test_dla_sums_to_the_logit_difference_on_the_default_run(default_run):
    """Two layers, trained: the parts plus the unembedding bias are the logit difference (measured max |residual|
    7e-6 on 42 forward_seen pairs), and the last layer's attention writes most of it."""
    model = default_run.model
    pairs = make_prompt_pairs(default_run.facts, "forward_seen", default_run.tokenizer)
    dla = direct_logit_attribution(model, pairs)
    logits = last_logits(model, pairs.clean)
    batch = torch.arange(len(pairs))
    logit_diff = logits[batch, pairs.clean_answer] - logits[batch, pairs.corrupted_answer]
    assert logit_diff.abs().min() > 1
    assert dla.residual.abs().max().item() < 1e-4
    torch.testing.assert_close(dla.values.sum(0) + dla.unembed_bias, logit_diff, atol=1e-4, rtol=0)
    components = dla.aggregate("component")
    assert components.labels == ("embed", "pos_embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp")
    assert components.residual.abs().max().item() < 1e-4
    assert components.mean().argmax().item() == components.labels.index("L1 attn")


# -- frames, plots and bad input -------------------------------------------------------------------
def test_results_have_frames_plots_and_summaries(tiny_run, tiny_pairs):
    import plotly.graph_objects as go

    model, pairs = tiny_run.model, tiny_pairs
    dla = direct_logit_attribution(model, pairs)
    lens = logit_lens(model, pairs)
    assert len(dla.to_frame()) == dla.values.numel()
    assert len(lens.to_frame()) == lens.logprob.numel()
    for result in [dla, lens]:
        assert isinstance(result.plot(), go.Figure)
        assert isinstance(result.summary(), str) and result.summary()


def test_bad_input_raises_clear_errors(tiny_run, tiny_pairs):
    model, pairs = tiny_run.model, tiny_pairs
    training = copy.deepcopy(model).train()
    for call in (direct_logit_attribution, logit_lens):
        with pytest.raises(ValueError, match="eval mode"):
            call(training, pairs)
    with pytest.raises(ValueError, match="target='loss'"):
        direct_logit_attribution(model, pairs, target="loss")
    with pytest.raises(ValueError, match="no answers"):
        logit_lens(model, pairs.clean)
    with pytest.raises((ValueError, TypeError), match="PromptPairs"):  # the runtime type check may come first
        direct_logit_attribution(model, pairs.clean)


@pytest.mark.parametrize("target", ["logit_diff", "answer"])
def test_dla_in_chunks_equals_one_chunk(tiny_run, tiny_pairs, monkeypatch, target):
    """Chunks of 3 prompts (a tiny LOGIT_ELEMENTS) give the one-chunk attribution to 1e-6 relative (a matrix
    product over fewer rows rounds differently)."""
    import revinterp.analysis.dla as dla

    whole = direct_logit_attribution(tiny_run.model, tiny_pairs, target=target)
    monkeypatch.setattr(dla, "LOGIT_ELEMENTS", 3 * tiny_pairs.clean.shape[1] * tiny_run.model.cfg.d_vocab)
    chunked = direct_logit_attribution(tiny_run.model, tiny_pairs, target=target)
    assert len(tiny_pairs) > 3 and chunked.labels == whole.labels
    for name in ("values", "total", "unembed_bias"):
        expected = getattr(whole, name)
        assert (getattr(chunked, name) - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max()), name
