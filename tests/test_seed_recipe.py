"""The seed paper's recipe (revinterp.baselines.seed_recipe): its model computes Hugging Face's GPT-2, its data
generator draws the seed's split, and its loop trains, records and stops as documented."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from revinterp.baselines.seed_recipe import SeedGPT2, SeedRecipe, seed_code_facts, seed_tokens, train_seed_recipe
from revinterp.data import seed_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_seed_model_computes_hugging_face_gpt2_with_the_same_weights():
    """GPT2LMHeadModel (the seed's model) and SeedGPT2 given its weights give the same logits in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    recipe = SeedRecipe(n_layers=2, d_model=32, n_heads=4, tied_embeddings=True)
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=8)).eval()
    ours = SeedGPT2(recipe, vocab_size=50, n_positions=8).eval()
    hf = reference.transformer
    with torch.no_grad():
        ours.wte.weight.copy_(hf.wte.weight)
        ours.wpe.weight.copy_(hf.wpe.weight)
        ours.ln_f.load_state_dict(hf.ln_f.state_dict())
        for block, h in zip(ours.blocks, hf.h):
            block.ln_1.load_state_dict(h.ln_1.state_dict())
            block.ln_2.load_state_dict(h.ln_2.state_dict())
            for linear, conv in ((block.qkv, h.attn.c_attn), (block.attn_proj, h.attn.c_proj),
                                 (block.mlp_in, h.mlp.c_fc), (block.mlp_proj, h.mlp.c_proj)):
                linear.weight.copy_(conv.weight.T)  # Conv1D stores (in, out)
                linear.bias.copy_(conv.bias)
        tokens = torch.randint(0, 50, (3, 8))
        torch.testing.assert_close(ours(tokens), reference(tokens).logits, atol=1e-5, rtol=1e-5)


def test_the_seed_codes_model_does_not_tie_its_unembedding():
    """The seed's GPT2CustomLMHeadModel replaces ``self.transformer`` after GPT2LMHeadModel's ``__init__`` tied
    ``lm_head`` to the first transformer's embedding: the embedding it trains is not its unembedding, so the recipe's
    default is untied."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    class Replaced(GPT2LMHeadModel):  # the construction of the seed's model class, its forward aside
        def __init__(self, config):
            super().__init__(config)
            self.transformer = GPT2Model(config)

    model = Replaced._from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=4))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert not SeedRecipe().tied_embeddings


def test_the_seed_initialisation_and_the_switches_towards_revinterp():
    torch.manual_seed(0)
    model = SeedGPT2(SeedRecipe(), vocab_size=402, n_positions=3)
    assert model.lm_head.weight.shape == (402, 128) and abs(model.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(model.lm_head.weight.std().item() - 0.02) < 1e-3
    assert abs(model.blocks[0].attn_proj.weight.std().item() - 0.02 / 2) < 1e-3  # 0.02 / sqrt(2 n_layers)
    assert all(b.qkv.bias.abs().max() == 0 for b in model.blocks)
    tied = SeedGPT2(SeedRecipe(tied_embeddings=True, initializer_range=0.0707), vocab_size=402, n_positions=3)
    assert tied.lm_head is None and abs(tied.wte.weight.std().item() - 0.0707) < 2e-3

    facts = seed_experiment(20, seed=0)
    plain, answer_length = seed_tokens(facts, facts.train)
    with_bos, _ = seed_tokens(facts, facts.train, bos=True)
    assert answer_length == 1 and plain.shape[1] == 3 and with_bos.shape[1] == 4
    assert (with_bos[:, 0] == len(facts.vocabulary())).all() and torch.equal(with_bos[:, 1:], plain)


def test_seed_code_facts_draws_the_seed_split():
    """At the seed's defaults: 400 tokens from two disjoint alphabets of 200, 200 pairs, 140 trained both ways
    (round(0.7 * 200)), and 60 one way with the held-out direction drawn per pair; 400 of the 800 tokens unused."""
    facts = seed_code_facts()
    counts = {name: len(facts.split(name)) for name in facts.split_names}
    assert counts["forward_seen"] == counts["reverse_seen"] == 140
    assert counts["forward_only"] == counts["reverse_held_out"] and counts["reverse_only"] == counts["forward_held_out"]
    assert counts["reverse_held_out"] + counts["forward_held_out"] == 60 and 0 < counts["reverse_held_out"] < 60
    forward = [s for s in facts.statements if s.direction == "forward"]
    x_tokens, y_tokens = {s.subject for s in forward}, {s.object for s in forward}
    assert len(x_tokens) == len(y_tokens) == 200 and not x_tokens & y_tokens
    assert all(2 <= int(t[1:]) < 802 for t in x_tokens | y_tokens)
    assert facts.source["unused_tokens"] == 400 and len(facts.vocabulary()) == 402  # 400 tokens and two arrows
    assert seed_code_facts().to_manifest() == facts.to_manifest()
    assert seed_code_facts(seed=1).to_manifest() != facts.to_manifest()
    pairs = seed_code_facts(vocab_size=40, word_size=2)  # 10-token alphabets: 20 pairs of two-token words
    assert len(pairs.statements) == 40 and all(len(s.subject.split()) == 2 for s in pairs.statements)


def test_train_seed_recipe_fits_records_every_split_and_stops_where_told():
    facts = seed_experiment(20, seed=0)
    fit = train_seed_recipe(facts, SeedRecipe(n_layers=1, d_model=32, dropout=0.0, max_epochs=400))
    assert fit.fitted and fit.history[-1]["fitted"] and not any(r["fitted"] for r in fit.history[:-1])
    last = fit.history[-1]["splits"]
    assert set(last) == set(facts.split_names)
    assert all(last[name]["accuracy"] == 1.0 and last[name]["probability"] >= 0.99
               for name in ("forward_seen", "reverse_seen", "forward_only", "reverse_only"))
    assert all(m["log_probability"] <= 0 for m in last.values())
    batches = -(-len(facts.train) // 64)
    assert [r["step"] for r in fit.history] == [batches * r["epoch"] for r in fit.history]

    budget = replace(SeedRecipe(n_layers=1, d_model=32, unused_tokens=7), max_steps=5, stop_when_fitted=False)
    stopped = train_seed_recipe(facts, budget)
    assert stopped.steps == 5 and stopped.model.wte.weight.shape[0] == len(facts.vocabulary()) + 7
    again = train_seed_recipe(facts, budget)
    assert again.history == stopped.history  # the same seed gives the same run


@pytest.mark.parametrize("field, value", [("unused_tokens", -1), ("max_steps", 0), ("max_epochs", 0),
                                          ("batch_size", True), ("dropout", 1.0)])
def test_a_bad_recipe_setting_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}: expected"):
        SeedRecipe(**{field: value})
