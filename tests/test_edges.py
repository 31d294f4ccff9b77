"""Edge-level patching: equal to TransformerLens's direct path patching where that runs, equal to hand-written hook
interventions for the MLP and logits receivers, all edges together give back the whole effect, attribution is the
mask derivative, and impossible edges are refused."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching

from revinterp.analysis.edges import (
    Edge,
    Node,
    _Graph,
    all_edges,
    edge_sweep,
    gpt2_bridge,
    masked_logits,
    sender_writes,
)
from revinterp.analysis.metrics import logit_diff
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, ModelConfig, build_model, config_for_data, tokenizer_for


def _random_model(**overrides):
    """An untrained 2-layer model over the seed vocabulary (random weights give every edge some effect)."""
    facts = seed_experiment(24, seed=1)
    tok = tokenizer_for(facts)
    config = config_for_data(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=3, **overrides), facts,
                             tok)
    model = build_model(config, tok, "cpu")
    model.eval()
    return model, facts, tok


@pytest.fixture(scope="module")
def random_model():
    return _random_model()


@pytest.fixture(scope="module")
def random_pairs(random_model):
    model, facts, tok = random_model
    return make_prompt_pairs(facts, "forward_seen", tok)


def test_unmasked_graph_forward_is_the_model(tiny_run):
    pairs = make_prompt_pairs(tiny_run.facts, "forward_seen", tiny_run.tokenizer)
    with torch.no_grad():
        logits, writes, resid = _Graph(tiny_run.model).record(pairs.clean)
        reference, cache = tiny_run.model.run_with_cache(pairs.clean)
    assert torch.equal(logits, reference[:, -1])
    assert torch.allclose(resid[-1], cache["blocks.0.hook_resid_post"], atol=1e-5)
    # the writes sum to the final residual up to the attention output bias
    bias = tiny_run.model.blocks[0].attn.original_component.o.original_component.bias
    assert torch.allclose(writes.sum(2) + bias, resid[-1], atol=1e-4)


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_exact_edges_equal_transformer_lens_direct_path(random_model, random_pairs, component):
    """TransformerLens's own get_act_patch_direct_path, on a GPT-2 bridge holding the same weights."""
    model, _, _ = random_model
    pairs = random_pairs
    bridge = gpt2_bridge(model)
    assert torch.allclose(bridge(pairs.clean)[:, -1], model(pairs.clean)[:, -1], atol=1e-4)
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(pairs.clean)
        _, corrupted_cache = bridge.run_with_cache(pairs.corrupted)

        def metric(logits):
            return logit_diff(logits[:, -1], pairs.clean_answer, pairs.corrupted_answer).mean()

        largest = 0.0
        for src_head in range(model.cfg.n_heads):
            theirs = tl_patching.get_act_patch_direct_path(
                bridge, pairs.corrupted, clean_cache, corrupted_cache, metric, 0, src_head, component, verbose=False)
            edges = [Edge(Node("head", 0, src_head), Node(component, 1, h)) for h in range(model.cfg.n_heads)]
            result = edge_sweep(model, pairs, edges)
            ours = result.values.mean(-1)
            assert torch.allclose(ours, theirs[1], atol=1e-5), (src_head, ours, theirs[1])
            largest = max(largest, result.effect.abs().max().item())
    assert largest > 1e-4  # the edges do something: agreeing on zeros would prove nothing


def _hooked(model, pairs, edge: Edge, hook_name: str):
    """The reference intervention: the sender's clean-minus-corrupted write added to ``hook_name`` (the input of the
    receiver alone) at the edge's position, in the corrupted run."""
    clean, corrupted = sender_writes(model, pairs.clean), sender_writes(model, pairs.corrupted)
    s = _Graph(model).sender_index[edge.sender]
    delta = clean[:, :, s] - corrupted[:, :, s]

    def add(activation, hook):
        activation = activation.clone()
        activation[:, edge.pos] += delta[:, edge.pos]
        return activation

    with torch.no_grad():
        logits = model.run_with_hooks(pairs.corrupted, fwd_hooks=[(hook_name, add)])
    return logit_diff(logits[:, -1], pairs.clean_answer, pairs.corrupted_answer)


@pytest.fixture(scope="module", params=["causal", "bidirectional"])
def any_attention(request, random_model, random_pairs):
    """The random model and its pairs, and a bidirectional one (an MLM-U model's attention) on the same pairs."""
    if request.param == "causal":
        return random_model[0], random_pairs
    model, _, _ = _random_model(attention_dir="bidirectional")
    assert not torch.allclose(model(random_pairs.clean), random_model[0](random_pairs.clean))  # it attends ahead
    return model, random_pairs


def test_unmasked_graph_forward_is_the_model_with_either_attention(any_attention):
    model, pairs = any_attention
    with torch.no_grad():
        logits, _, _ = _Graph(model).record(pairs.clean)
        assert torch.allclose(logits, model(pairs.clean)[:, -1], atol=1e-5)


def test_mlp_and_logits_edges_equal_hook_interventions(any_attention):
    model, pairs = any_attention
    subject, answer = 1, pairs.answer_position
    cases = [
        (Edge(Node("head", 0, 1), Node("mlp", 1), answer), "blocks.1.ln2.hook_in"),
        (Edge(Node("embed"), Node("mlp", 0), subject), "blocks.0.ln2.hook_in"),
        (Edge(Node("mlp", 0), Node("logits"), answer), "ln_final.hook_in"),
        (Edge(Node("head", 1, 0), Node("logits"), answer), "ln_final.hook_in"),
    ]
    result = edge_sweep(model, pairs, [e for e, _ in cases])
    for i, (edge, hook_name) in enumerate(cases):
        reference = _hooked(model, pairs, edge, hook_name)
        assert torch.allclose(result.values[i], reference, atol=1e-4), edge.label()
        assert (result.values[i] - result.corrupted).abs().max() > 1e-4, edge.label()


def test_all_edges_together_give_back_the_total_effect(any_attention):
    model, pairs = any_attention
    edges = all_edges(model, pairs.clean.shape[1])
    clean_writes = sender_writes(model, pairs.clean)
    restored = masked_logits(model, pairs.corrupted, clean_writes, edges)
    assert torch.allclose(restored, model(pairs.clean)[:, -1], atol=1e-4)
    # the other way round: the clean run with every edge reading the corrupted writes is the corrupted run
    corrupted_writes = sender_writes(model, pairs.corrupted)
    ablated = masked_logits(model, pairs.clean, corrupted_writes, edges)
    assert torch.allclose(ablated, model(pairs.corrupted)[:, -1], atol=1e-4)
    # and one edge alone moves it (the test can fail)
    top = edge_sweep(model, pairs, direction="noising").top(1)[0][0]
    one = masked_logits(model, pairs.clean, corrupted_writes, [top])
    assert not torch.allclose(one, model(pairs.clean)[:, -1], atol=1e-3)


def test_attribution_is_the_mask_derivative(random_model, random_pairs):
    model, _, _ = random_model
    pairs = random_pairs
    edges = edge_sweep(model, pairs).top(6)
    chosen = [e for e, _ in edges]
    attribution = edge_sweep(model, pairs, chosen, method="attribution")
    clean_writes = sender_writes(model, pairs.clean)
    eps = 1e-3
    for i, e in enumerate(chosen):
        nudged = masked_logits(model, pairs.corrupted, clean_writes, [e], value=eps)
        derivative = (logit_diff(nudged, pairs.clean_answer, pairs.corrupted_answer) - attribution.corrupted) / eps
        assert torch.allclose(attribution.values[i] - attribution.corrupted, derivative, rtol=0.05, atol=0.02), e


def test_result_frame_summary_plot(random_model, random_pairs):
    model, _, _ = random_model
    result = edge_sweep(model, random_pairs)
    frame = result.to_frame()
    assert len(frame) == len(result.edges) and {"sender", "receiver", "pos", "ci_low", "ci_high"} <= set(frame)
    assert (frame.ci_low <= frame.normalized + 1e-9).all() and (frame.normalized <= frame.ci_high + 1e-9).all()
    assert "path patching" in result.summary()
    fig = result.plot(k=8)
    assert len(fig.data) >= 9  # 8 edges and the nodes
    # noising: the clean run patched with corrupted writes
    noising = edge_sweep(model, random_pairs, result.edges[:5], direction="noising")
    assert torch.equal(noising.clean, result.clean)


def test_bad_edges_are_refused(random_model, random_pairs):
    model, _, _ = random_model
    with pytest.raises(ValueError, match="reads before the sender writes"):
        Edge(Node("head", 1, 0), Node("q", 0, 0))
    with pytest.raises(ValueError, match="reads before the sender writes"):
        Edge(Node("mlp", 0), Node("v", 0, 1))
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        edge_sweep(model, random_pairs, [Edge(Node("head", 0, 0), Node("q", 5, 0))])
    with pytest.raises(ValueError, match="head 7 does not exist"):
        edge_sweep(model, random_pairs, [Edge(Node("head", 0, 7), Node("logits"))])
    with pytest.raises(ValueError, match="mlp expects a layer"):
        Node("mlp")
    attn_only, facts, tok = _random_model(attn_only=True)
    pairs = make_prompt_pairs(facts, "forward_seen", tok)
    with pytest.raises(ValueError, match="attention-only"):
        edge_sweep(attn_only, pairs, [Edge(Node("mlp", 0), Node("logits"))])
    assert all(e.receiver.kind != "mlp" and e.sender.kind != "mlp" for e in all_edges(attn_only, 3))
    with pytest.raises(ValueError, match="no GPT-2 equivalent"):
        gpt2_bridge(attn_only)


def test_default_preset_edges_cover_the_graph():
    cfg = MODEL_PRESETS["default"]
    assert cfg.n_layers == 2  # the count below is for the default preset's shape
    model, _, _ = _random_model()
    edges = all_edges(model, 3)
    assert len(set(edges)) == len(edges)
    assert {e.receiver.kind for e in edges} == {"q", "k", "v", "mlp", "logits"}
