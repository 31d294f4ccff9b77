"""Storage, the insertion test and the verdict on a planted model whose one head's OV stores known pairs: the analysis
finds that head, a rank-one insertion of held-out pairs restores them while the placebo does not, specificity is
measured; and the caller's model is never modified."""

from __future__ import annotations

import pytest
import torch

from revinterp.analysis.edit import insert_missing_entries
from revinterp.analysis.missing import what_is_missing
from revinterp.analysis.storage import storage
from revinterp.data import seed_experiment
from revinterp.data.tokenizer import encode_words
from revinterp.models import ModelConfig, build_model, config_for_data, tokenizer_for


@pytest.fixture(scope="module")
def planted():
    """Attention-only, one layer, one head, no norm: one-hot embeddings and unembeddings, uniform attention (W_Q = 0),
    W_O maps value direction j to answer j for every pair, W_V maps subject j to direction j for trained statements
    only: the routing is there for every prompt, the held-out entries are not."""
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
    for k, s in enumerate(facts.statements):
        subject = encode_words(tok, [s.subject])[0]
        answer = encode_words(tok, [s.object])[0]
        w_o[k, answer] = 30.0
        if s.trained:
            w_v[subject, k] = 1.0
    state["blocks.0.attn.v.weight"] = w_v.T.contiguous()
    state["blocks.0.attn.o.weight"] = w_o.T.contiguous()
    model.load_state_dict(state)
    model.eval()
    return model, facts, tok


def test_storage_finds_the_planted_head(planted):
    model, facts, tok = planted
    found = storage(model, facts, tokenizer=tok)
    assert found.storage_head == (0, 0)
    seen, held = found.splits["reverse_seen"], found.splits["reverse_held_out"]
    assert seen.head_estimate(0, 0).low > 1.0
    assert abs(held.head_estimate(0, 0).mean) < 1e-4  # nothing stored for held-out pairs
    # uniform attention over <bos>, subject, relation: the routing is the same for every split
    assert torch.allclose(held.attention, torch.full_like(held.attention, 1 / 3), atol=1e-5)
    assert "storage head" in found.summary() and len(found.to_frame()) == len(found.splits)
    assert "L0H0" in found.attention_view("reverse_seen").local_src


def test_insertion_restores_the_planted_held_out_pairs_and_placebo_does_not(planted):
    model, facts, tok = planted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = insert_missing_entries(model, facts, tokenizer=tok, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    edited = result.groups["edited"]
    assert edited.accuracy("before").mean == 0.0
    assert edited.accuracy("after").mean == 1.0
    assert edited.accuracy("placebo").mean < 0.5
    assert result.restored
    # specificity, measured: trained answers stay correct, untouched held-out pairs stay unanswered
    for group in ("forward", "reverse_seen"):
        assert result.groups[group].accuracy("after").mean == 1.0
    assert result.groups["untouched"].accuracy("after").mean == 0.0
    assert result.groups["untouched"].margin_change("after").high < 1.0


def test_verdict_on_the_planted_model(planted):
    import json

    model, facts, tok = planted
    result = what_is_missing(model, facts, tokenizer=tok)
    assert result.verdicts["reverse_held_out"].startswith("only the entry is missing; inserting it restores")
    assert result.verdicts["reverse_seen"] == "routing and entry present"
    json.dumps(result.to_numbers(), allow_nan=False)
    assert set(result.figures()) == {"storage", "insertion"}


def test_no_storage_head_is_a_clear_error(planted):
    model, facts, tok = planted
    blank = build_model(model.cfg and config_for_data(ModelConfig(n_layers=1, d_model=128, n_heads=1, attn_only=True,
                                                                   normalization_type=None), facts, tok), tok, "cpu")
    state = {k: torch.zeros_like(v) for k, v in blank.state_dict().items()}
    blank.load_state_dict(state)
    blank.eval()
    with pytest.raises(ValueError, match="found no head"):
        insert_missing_entries(blank, facts, tokenizer=tok)
    with pytest.raises(ValueError, match=r"head \(3, 0\)"):
        insert_missing_entries(model, facts, tokenizer=tok, heads=[(3, 0)])
