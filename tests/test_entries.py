"""The shared-versus-distinct test of forward and reverse entries on planted models: one that stores one direction
per fact and reads it both ways ("shared"), one with two independent entries ("distinct"); and a real mitigated run
end to end."""

from __future__ import annotations

import pytest
import torch

from revinterp.analysis.entries import entry_sharing, head_read_keys, head_writes
from revinterp.data import seed_experiment
from revinterp.data.tokenizer import encode_words
from revinterp.models import ModelConfig, build_model, config_for_data, tokenizer_for


def _planted(shared: bool, keys: bool = True):
    """Attention-only, one layer, one head, no norm, one-hot embeddings and unembeddings, uniform attention (W_Q = 0).
    Value direction k stores fact k. Shared: both a_k and b_k map to direction k, which W_O writes as u(b_k) + u(a_k).
    Distinct: a_k maps to direction k (written as u(b_k)), b_k to direction 64 + k (written as u(a_k)). The keys
    (``keys``; they leave the uniform attention as it is) follow the values: W_K = W_V."""
    facts = seed_experiment(40, seed=2, held_out_direction="forward")
    tok = tokenizer_for(facts)
    config = config_for_data(ModelConfig(n_layers=1, d_model=128, n_heads=1, attn_only=True,
                                         normalization_type=None), facts, tok)
    model = build_model(config, tok, "cpu")
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    vocab = len(tok)
    assert vocab <= 128
    state["embed.weight"][:, :vocab] = torch.eye(vocab)
    state["unembed.weight"][:, :vocab] = torch.eye(vocab)
    w_v, w_o = torch.zeros(128, 128), torch.zeros(128, 128)  # [in, d_head], [d_head, out]
    for s in facts.statements:
        if s.direction != "forward":
            continue
        k = s.fact
        a, b = encode_words(tok, [s.subject])[0], encode_words(tok, [s.object])[0]
        if shared:
            w_v[a, k] = w_v[b, k] = 1.0
            w_o[k, a] = w_o[k, b] = 30.0
        else:
            w_v[a, k], w_v[b, 64 + k] = 1.0, 1.0
            w_o[k, b], w_o[64 + k, a] = 30.0, 30.0
    assert max(s.fact for s in facts.statements) < 64
    state["blocks.0.attn.v.weight"] = w_v.T.contiguous()
    state["blocks.0.attn.o.weight"] = w_o.T.contiguous()
    if keys:
        state["blocks.0.attn.k.weight"] = w_v.T.contiguous()
    model.load_state_dict(state)
    model.eval()
    return model, facts, tok


def test_head_writes_equal_the_planted_ov_circuit():
    model, facts, tok = _planted(shared=False)
    s = facts.split("forward_seen")[0]
    write = head_writes(model, facts, [s], tok)[0, 0, 0]
    a, b = encode_words(tok, [s.subject])[0], encode_words(tok, [s.object])[0]
    # uniform attention over <bos>, subject, relation; only the subject has a value: 30 / 3 on u(b)
    expected = torch.zeros_like(write)
    expected[b] = 10.0
    assert torch.allclose(write, expected, atol=1e-4), (write[b], write[a])


def test_shared_entry_is_shared():
    model, facts, tok = _planted(shared=True)
    result = entry_sharing(model, facts, tokenizer=tok)
    assert result.storage.storage_head == (0, 0)
    head = result.heads[(0, 0)]
    assert torch.allclose(head.matched, torch.ones_like(head.matched), atol=1e-4)  # the same write both ways
    mean, low, high = head.null_range()
    assert high < 0.5 and abs(mean) < 0.1
    assert result.verdict == "shared" and head.verdict == "shared"
    # the read key: (k(<bos>) + k(subject) + k(relation)) / 3 = e_fact / 3 both ways, centred over facts
    assert torch.allclose(head.key_matched, torch.ones_like(head.key_matched), atol=1e-5)
    assert abs(head.key_null_mean()) < 0.1 and result.key_verdict == "shared"
    numbers = result.to_numbers()
    assert numbers["verdict"] == "shared" and numbers["heads"][0]["n_facts"] == len(facts.split("reverse_held_out"))
    assert "-> shared" in result.summary()


def test_independent_entries_are_distinct():
    model, facts, tok = _planted(shared=False)
    result = entry_sharing(model, facts, tokenizer=tok)
    assert result.storage.storage_head == (0, 0)  # the reverse entries exist, in the same head
    head = result.heads[(0, 0)]
    assert head.matched.abs().max() < 0.2  # orthogonal writes: u(b_i) against u(a_i), centred
    assert result.verdict == "distinct", result.summary()
    assert head.key_matched.abs().max() < 1e-6 and result.key_verdict == "distinct"  # keys in orthogonal subspaces


def test_read_keys_equal_the_attention_weighted_keys_by_hand():
    model, facts, tok = _planted(shared=False)
    statements = facts.split("reverse_held_out")[:3]
    keys = head_read_keys(model, facts, statements, tok)[0, 0]
    for s, key in zip(statements, keys):
        b = encode_words(tok, [s.subject])[0]  # the reverse statement's subject b_k: key e_{64 + k} over 3 positions
        expected = torch.zeros_like(key)
        expected[64 + s.fact] = 1 / 3
        assert torch.allclose(key, expected, atol=1e-6), (b, key.nonzero())


def test_keys_that_do_not_vary_with_the_fact_leave_the_key_verdict_undetermined():
    model, facts, tok = _planted(shared=True, keys=False)  # W_K = 0: every read key is zero
    result = entry_sharing(model, facts, tokenizer=tok)
    head = result.heads[(0, 0)]
    assert result.verdict == "shared" and head.key_test is None and result.key_verdict == "undetermined"
    assert head.key_cosine is None and head.key_null_mean() is None  # no placeholder numbers
    assert result.to_numbers()["heads"][0]["key_matched_cosine"] is None
    assert not head_writes(model, facts, facts.split("reverse_held_out")[:2], tok).requires_grad
    assert "keys do not vary with the fact" in result.summary()


def test_a_forward_split_is_refused():
    model, facts, tok = _planted(shared=True)
    with pytest.raises(ValueError, match="expected a split of reverse statements"):
        entry_sharing(model, facts, reverse_split="forward_only", tokenizer=tok)
