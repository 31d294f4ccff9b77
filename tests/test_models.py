"""Tokenizer on the model, presets and variants, exact save/load, and checkpoint errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from revinterp.data import UnknownWordError, encode_statements, seed_experiment
from revinterp.models import (
    MODEL_PRESETS,
    CheckpointError,
    ModelConfig,
    build_model,
    config_for_data,
    load_run,
    tokenizer_for,
)
from revinterp.training import TRAINING_PRESETS, read_training_config, train


@pytest.fixture(scope="module")
def facts():
    return seed_experiment(10, tokens_per_entity=2, n_relations=2, template="natural", seed=0)


def test_tokenizer_round_trip_through_transformer_lens(facts):
    tok = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tok), tok, "cpu")
    statement = facts.statements[0]
    text = facts.text(statement)
    tokens = model.to_tokens(text)
    assert tokens[0, 0].item() == tok.bos_token_id
    assert model.to_str_tokens(text) == ["<bos>", *text.split()]
    assert tok.decode(tokens[0, 1:]) == text
    word = statement.object.split()[0]
    assert model.to_single_token(word) == tok.get_vocab()[word]
    assert torch.equal(encode_statements(facts, [statement], tok).tokens[0], tokens[0])


def test_unknown_word_is_named(facts):
    tok = tokenizer_for(facts)
    from revinterp.analysis.prompts import PromptPairs

    with pytest.raises(UnknownWordError, match="word 'zebra' is not in the tokenizer's vocabulary"):
        PromptPairs.from_prompts(tok, ["zebra ->"], ["zebra ->"], ["b1"], ["b2"])


@pytest.mark.parametrize("variant", [
    dict(attn_only=True), dict(positional_embedding_type="rotary"), dict(normalization_type="RMS"),
    dict(normalization_type=None), dict(normalization_type="LNPre"),
])
def test_variants_boot_and_run(facts, variant):
    tok = tokenizer_for(facts)
    config = config_for_data(replace(MODEL_PRESETS["tiny"], **variant), facts, tok)
    model = build_model(config, tok, "cpu")
    logits = model(encode_statements(facts, facts.statements[:3], tok).tokens)
    assert logits.shape == (3, config.n_ctx, len(tok)) and torch.isfinite(logits).all()


def test_same_seed_same_weights(facts):
    tok = tokenizer_for(facts)
    config = config_for_data(MODEL_PRESETS["tiny"], facts, tok)
    a, b = build_model(config, tok, "cpu"), build_model(config, tok, "cpu")
    c = build_model(replace(config, seed=1), tok, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.state_dict()["embed.weight"], c.state_dict()["embed.weight"])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="not divisible by n_heads=3"):
        ModelConfig(d_model=64, n_heads=3)
    with pytest.raises(ValueError, match="normalization_type='BN'"):
        ModelConfig(normalization_type="BN")


def test_reloaded_run_gives_identical_logits(tmp_path, tiny_facts):
    trained = train(tiny_facts, MODEL_PRESETS["tiny"], replace(TRAINING_PRESETS["tiny"], max_steps=30),
                    tmp_path / "run", progress=False, device="cpu")
    a, b = load_run(tmp_path / "run", device="cpu"), load_run(tmp_path / "run", device="cpu")
    assert not a.model.training and not trained.model.training
    tokens = encode_statements(tiny_facts, tiny_facts.statements, a.tokenizer).tokens
    with torch.no_grad():
        expected = trained.model(tokens)
        assert torch.equal(a.model(tokens), expected) and torch.equal(b.model(tokens), expected)
    assert a.facts == tiny_facts


def test_corrupt_and_mismatched_checkpoints(tiny_run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable safetensors file"):
        load_run(run, device="cpu")
    shutil.copy(tiny_run_dir / "model.safetensors", weights)
    config = json.loads((run / "model.json").read_text())
    config["model"]["d_mlp"] = 128
    (run / "model.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="was written for model config"):
        load_run(run, device="cpu")
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path, device="cpu")
    shutil.copy(tiny_run_dir / "model.json", run / "model.json")
    (run / "tokenizer.json").write_text('{"model": {"vocab": [1, 2]}}')
    with pytest.raises(CheckpointError, match="tokenizer.json: unreadable tokenizer"):
        load_run(run, device="cpu")
    (run / "training.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="training.json: not a training record"):
        read_training_config(run)


def test_output_path_that_is_a_file_is_refused(tmp_path, tiny_facts):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file; expected a run directory"):
        train(tiny_facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], path, progress=False, device="cpu")
    assert path.read_text() == "keep me"
