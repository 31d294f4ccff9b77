"""Effective-weight maps checked against the logits of models with the other paths removed, and on a trained run."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from revinterp.analysis.weights import effective_weights, effective_weights_over_training
from revinterp.data import seed_experiment
from revinterp.data.tokenizer import encode_words
from revinterp.models import ModelConfig, build_model, config_for_data, tokenizer_for
from revinterp.training import list_checkpoints


@pytest.fixture(scope="module")
def small_facts():
    facts = seed_experiment(12, seed=1)
    return facts, tokenizer_for(facts)


def small_model(small_facts, **overrides):
    """An untrained one-layer attention-only model (weights depend only on the seed)."""
    facts, tokenizer = small_facts
    settings = dict(n_layers=1, d_model=32, n_heads=4, attn_only=True, normalization_type=None, seed=3)
    settings.update(overrides)
    config = config_for_data(ModelConfig(**settings), facts, tokenizer)
    model = build_model(config, tokenizer, device="cpu")
    model.eval()
    return model


def prompts_and_columns(tokenizer, result, relation):
    """``<bos> x r`` for every row of the relation's block, and the token ids of its columns."""
    rows = [[tokenizer.bos_token_id, *encode_words(tokenizer, [x, relation])] for x in result.block_rows[relation]]
    return torch.tensor(rows), torch.tensor(encode_words(tokenizer, result.block_columns[relation]))


def centre(logits):
    return logits - logits.mean(-1, keepdim=True)


def zero(activation, hook):
    return torch.zeros_like(activation)


def test_direct_path_equals_the_logits_of_the_model_without_heads(small_facts):
    """No norm, attention output zeroed: logits at the subject = (W_E[x] + W_pos[1]) W_U + b_U."""
    facts, tokenizer = small_facts
    model = small_model(small_facts)
    result = effective_weights(model, facts, path="direct")
    assert set(result.blocks) == {"->", "<-"} and result.labels == ("direct",)
    with torch.no_grad():
        positional = model.W_pos[1] @ model.W_U + model.b_U
        for relation in result.blocks:
            prompts, columns = prompts_and_columns(tokenizer, result, relation)
            logits = model.run_with_hooks(prompts, fwd_hooks=[("blocks.0.hook_attn_out", zero)])[:, 1]
            expected = centre(logits - positional)[:, columns]
            torch.testing.assert_close(result.blocks[relation][0], expected, atol=1e-5, rtol=1e-5)


def test_direct_path_with_prompt_scales_is_the_embeddings_share_through_the_final_layernorm(small_facts):
    """LayerNorm model with W_O = b_O = 0: logits at the subject = LN(W_E[x] + W_pos[1]) W_U + b_U, and the map with
    ``scale="prompts"`` is the embedding's share, ((W_E[x] - mean) / scale_x * w) W_U, centred."""
    facts, tokenizer = small_facts
    model = small_model(small_facts, normalization_type="LN")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.0.attn.o.weight"].zero_()
    state["blocks.0.attn.o.bias"].zero_()
    torch.nn.init.normal_(state["ln_final.weight"], 1.0, 0.3)  # a non-trivial LayerNorm to fold
    torch.nn.init.normal_(state["ln_final.bias"], 0.0, 0.3)
    model.load_state_dict(state)
    result = effective_weights(model, facts, path="direct", scale="prompts")
    w, b, eps = state["ln_final.weight"], state["ln_final.bias"], model.cfg.eps
    with torch.no_grad():
        for relation in result.blocks:
            prompts, columns = prompts_and_columns(tokenizer, result, relation)
            embed, pos = model.W_E[prompts[:, 1]], model.W_pos[1]
            resid = embed + pos
            scale = ((resid - resid.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + eps).sqrt()
            full = ((resid - resid.mean(-1, keepdim=True)) / scale * w + b) @ model.W_U + model.b_U
            torch.testing.assert_close(model(prompts)[:, 1], full, atol=1e-4, rtol=1e-4)
            embedding_share = ((embed - embed.mean(-1, keepdim=True)) / scale * w) @ model.W_U
            expected = centre(embedding_share)[:, columns]
            torch.testing.assert_close(result.blocks[relation][0], expected, atol=1e-4, rtol=1e-4)
    unscaled = effective_weights(model, facts, path="direct")
    assert not torch.allclose(unscaled.blocks["->"], result.blocks["->"])


@pytest.mark.parametrize("head", [0, 2])
def test_ov_path_equals_the_logits_with_the_head_forced_onto_the_subject(small_facts, head):
    """One layer, no norm, head ``h`` attending only to the subject and the other heads zeroed: logits at the last
    position = direct path of the relation token + ((W_E[x] + W_pos[1]) W_V + b_V) W_O W_U + b_O W_U + b_U."""
    facts, tokenizer = small_facts
    model = small_model(small_facts)
    result = effective_weights(model, facts, path="ov")
    assert result.labels == ("L0H0", "L0H1", "L0H2", "L0H3")
    others = [h for h in range(model.cfg.n_heads) if h != head]

    def force_onto_subject(pattern, hook):
        pattern = pattern.clone()
        pattern[:, head, -1, :] = 0.0
        pattern[:, head, -1, 1] = 1.0
        return pattern

    def zero_other_heads(z, hook):
        z = z.clone()
        z[:, :, others] = 0.0
        return z

    hooks = [("blocks.0.attn.hook_pattern", force_onto_subject), ("blocks.0.attn.hook_z", zero_other_heads)]
    W_V, W_O, b_V, b_O = model.W_V[0, head], model.W_O[0, head], model.b_V[0, head], model.b_O[0]
    with torch.no_grad():
        for relation in result.blocks:
            prompts, columns = prompts_and_columns(tokenizer, result, relation)
            logits = model.run_with_hooks(prompts, fwd_hooks=hooks)[:, -1]
            relation_direct = (model.W_E[prompts[0, 2]] + model.W_pos[2]) @ model.W_U
            rest = ((model.W_pos[1] @ W_V + b_V) @ W_O + b_O) @ model.W_U + model.b_U
            expected = centre(logits - relation_direct - rest)[:, columns]
            torch.testing.assert_close(result.blocks[relation][head], expected, atol=1e-5, rtol=1e-5)
            # The recorded attention is the head's real attention from the last position to the subject.
            _, cache = model.run_with_cache(prompts)
            rows = [k for k, s in enumerate(result.statements) if s.relation == relation]
            subjects = list(result.block_rows[relation])
            order = [subjects.index(result.statements[k].subject) for k in rows]
            pattern = cache["blocks.0.attn.hook_pattern"][:, head, -1, 1]
            torch.testing.assert_close(result.attention[head, rows], pattern[order])
    # Without normalization the prompt scale is the attention weight alone.
    scaled = effective_weights(model, facts, path="ov", scale="prompts", heads=[(0, head)])
    for relation, block in scaled.blocks.items():
        prompts, _ = prompts_and_columns(tokenizer, scaled, relation)
        with torch.no_grad():
            _, cache = model.run_with_cache(prompts)
        weight = cache["blocks.0.attn.hook_pattern"][:, head, -1, 1]
        torch.testing.assert_close(block[0], result.blocks[relation][head] * weight[:, None], atol=1e-6, rtol=1e-5)


def test_end_to_end_map_is_the_models_logits_and_entries_and_baselines_add_up(tiny_run):
    run = tiny_run
    result = effective_weights(run.model, run.facts, path="end_to_end")
    assert len(result.statements) == len(run.facts.statements)
    with torch.no_grad():
        for relation, block in result.blocks.items():
            prompts, columns = prompts_and_columns(run.tokenizer, result, relation)
            expected = centre(run.model(prompts)[:, -1])[:, columns]
            torch.testing.assert_close(block[0], expected, atol=1e-5, rtol=1e-5)
    for k in (0, 5, len(result.statements) - 1):
        s = result.statements[k]
        rows, cols = list(result.block_rows[s.relation]), list(result.block_columns[s.relation])
        row = result.blocks[s.relation][0, rows.index(s.subject)]
        assert result.entry[0, k] == row[cols.index(s.object)]
        others = [cols.index(t.object) for t in result.statements if t.relation == s.relation and t.split == s.split
                  and t.object != s.object]
        torch.testing.assert_close(result.split_baseline[0, k], row[others].mean())
        torch.testing.assert_close(result.row_baseline[0, k], row[[c for c in range(len(cols))
                                                                   if cols[c] != s.object]].mean())


def test_trained_entries_stand_out_and_held_out_reverse_entries_do_not(tiny_run):
    """On the fitted tiny run the forward entries exceed their baseline by many logits, and the held-out reverse
    entry does not stand out from the other held-out answers of its row."""
    result = effective_weights(tiny_run.model, tiny_run.facts, path="end_to_end")
    for split in ("forward_seen", "forward_only", "reverse_seen", "reverse_only"):
        assert result.estimate(split).low > 5.0, split
    held_out = result.estimate("reverse_held_out")
    forward = result.estimate("forward_only")
    assert abs(held_out.mean) < 0.1 * forward.mean
    assert held_out.low < 0.0 < held_out.high
    assert result.asymmetry().low > 5.0
    # Against every other answer of the row, the held-out answer sits below: it is never trained as an answer.
    assert result.estimate("reverse_held_out", baseline="row").mean < 0.0
    # In the OV maps of the one-layer model the same asymmetry holds for every head.
    ov = effective_weights(tiny_run.model, tiny_run.facts, path="ov")
    for head in ov.labels:
        assert ov.asymmetry(head).low > 0.0
        assert abs(ov.estimate("reverse_held_out", head).mean) < 0.1 * ov.estimate("forward_only", head).mean


def test_the_callers_model_is_left_unchanged(tiny_run):
    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    for path in ("direct", "ov"):
        effective_weights(tiny_run.model, tiny_run.facts, path=path, scale="prompts")
    after = tiny_run.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not getattr(tiny_run.model, "compatibility_mode", False)


def test_over_training_forward_effects_grow_from_nothing(tiny_run_dir):
    steps = [step for step, _ in list_checkpoints(tiny_run_dir)]
    dynamics = effective_weights_over_training(tiny_run_dir, path="end_to_end", checkpoints=[steps[0], steps[-1]],
                                               device="cpu")
    assert dynamics.steps == (0, steps[-1])
    first, last = dynamics.results
    assert abs(first.estimate("forward_only").mean) < 1.0
    assert last.estimate("forward_only").low > 5.0
    change = dynamics.change_from_initial()
    assert change.shape == (2, len(first.statements)) and torch.all(change[0] == 0)
    frame = dynamics.to_frame()
    assert sorted(frame["step"].unique()) == [0, steps[-1]]
    assert "reverse_held_out" in dynamics.summary()
    assert len(dynamics.plot().data) == 2 * len(first.splits)


def test_frames_plots_and_summaries(tiny_run):
    result = effective_weights(tiny_run.model, tiny_run.facts, path="ov", heads=[(0, 1), (0, 3)])
    frame = result.to_frame()
    assert len(frame) == 2 * len(result.statements)
    assert {"component", "split", "entry", "effect_split", "effect_row", "attention"} <= set(frame.columns)
    assert frame["component"].unique().tolist() == ["L0H1", "L0H3"]
    fig = result.plot("L0H3", relation="<-")
    assert [t.type for t in fig.data] == ["heatmap", "bar"]
    assert list(fig.data[1].x) == result.splits
    assert len(fig.data[0].z) == len(result.block_rows["<-"])
    text = result.summary()
    assert "L0H1" in text and "asymmetry" in text and "reverse_held_out" in text


def test_bad_inputs_raise_clear_errors(tiny_run):
    model, facts = tiny_run.model, tiny_run.facts
    with pytest.raises(ValueError, match="path='qk'"):
        effective_weights(model, facts, path="qk")
    with pytest.raises(ValueError, match="scale='prompts' applies"):
        effective_weights(model, facts, path="end_to_end", scale="prompts")
    with pytest.raises(ValueError, match="head \\(3, 0\\)"):
        effective_weights(model, facts, path="ov", heads=[(3, 0)])
    with pytest.raises(ValueError, match="unknown splits"):
        effective_weights(model, facts, splits=["reverse_heldout"])
    with pytest.raises(ValueError, match="single-token"):
        effective_weights(model, seed_experiment(6, tokens_per_entity=2), path="end_to_end")
    result = effective_weights(model, facts, path="direct", splits=["forward_only"])
    with pytest.raises(KeyError, match="reverse_held_out"):
        result.estimate("reverse_held_out")
    with pytest.raises(ValueError, match="baseline='column'"):
        result.effect("column")


class CountAutogradOutputs(TorchFunctionMode):
    """Counts the tensors with a ``grad_fn`` that torch operations produce while active (an autograd graph)."""

    def __init__(self):
        super().__init__()
        self.with_graph = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.with_graph += sum(isinstance(t, torch.Tensor) and t.grad_fn is not None for t in tree_leaves(out))
        return out


@pytest.mark.parametrize("path, scale", [("direct", "prompts"), ("ov", "prompts"), ("end_to_end", "none")])
def test_effective_weights_build_no_autograd_graph(small_facts, path, scale):
    """Every map is read without autograd: no operation inside yields a tensor with a grad_fn (with autograd on,
    the same call produces hundreds), and no returned tensor requires grad."""
    facts, _ = small_facts
    model = small_model(small_facts, normalization_type="LN")
    assert all(p.requires_grad for p in model.parameters())
    with CountAutogradOutputs() as counter:
        result = effective_weights(model, facts, path=path, scale=scale)
    assert counter.with_graph == 0
    tensors = [result.entry, result.row_baseline, result.split_baseline, *result.blocks.values()]
    tensors += [result.attention] if result.attention is not None else []
    assert all(t.grad_fn is None and not t.requires_grad for t in tensors)
    assert torch.is_grad_enabled()  # restored after the call
    # The check can fail: the same model run with autograd on produces graphs.
    with CountAutogradOutputs() as counter:
        model(torch.tensor([[0, 1, 2]]))
    assert counter.with_graph > 0


def test_a_loaded_run_gives_the_same_maps_as_its_model_and_facts(tiny_run):
    from_run = effective_weights(tiny_run, path="ov", heads=[(0, 2)])
    from_model = effective_weights(tiny_run.model, tiny_run.facts, path="ov", heads=[(0, 2)],
                                   tokenizer=tiny_run.tokenizer)
    assert from_run.statements == from_model.statements
    assert torch.equal(from_run.entry, from_model.entry) and torch.equal(from_run.attention, from_model.attention)
    with pytest.raises(ValueError, match="got a LoadedRun and facts"):
        effective_weights(tiny_run, tiny_run.facts)


def test_over_training_of_a_loaded_run_matches_its_directory_and_leaves_its_model(tiny_run, tiny_run_dir):
    steps = [step for step, _ in list_checkpoints(tiny_run_dir)]
    chosen = [steps[0], steps[len(steps) // 2]]
    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    from_run = effective_weights_over_training(tiny_run, path="end_to_end", checkpoints=chosen)
    from_dir = effective_weights_over_training(tiny_run_dir, path="end_to_end", checkpoints=chosen, device="cpu")
    assert from_run.steps == from_dir.steps == tuple(chosen)
    for a, b in zip(from_run.results, from_dir.results, strict=True):
        assert a.step == b.step and torch.equal(a.entry, b.entry) and torch.equal(a.split_baseline, b.split_baseline)
    assert not torch.equal(from_run.results[0].entry, from_run.results[1].entry)
    after = tiny_run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="no checkpoint at steps \\[7777\\]"):
        effective_weights_over_training(tiny_run, checkpoints=[7777])
