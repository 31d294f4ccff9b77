"""Training: the reversal curse itself on the tiny preset, determinism, resume, and run directories."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from revinterp.data import FORWARD_SEEN, REVERSE_HELD_OUT, REVERSE_SEEN, seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS, CheckpointError, load_run
from revinterp.rundir import LOCK_FILE
from revinterp.training import TRAINING_PRESETS, TrainingConfig, checkpoint_steps, list_checkpoints, read_history, train


def test_tiny_preset_shows_the_reversal_curse(tiny_run):
    behaviour = evaluate(tiny_run.model, tiny_run.facts)
    for split in (FORWARD_SEEN, "forward_only", REVERSE_SEEN, "reverse_only"):
        assert behaviour[split].accuracy.mean >= 0.99, split
    for split in (REVERSE_HELD_OUT, "forward_held_out"):
        sb = behaviour[split]
        assert sb.accuracy.mean <= 3 * sb.chance_accuracy, split  # within a small multiple of chance
        assert sb.metrics()["logprob_candidates"] < -2.0  # no probability mass on the right answer


def test_run_directory_contents(tiny_run_dir):
    for name in ("model.json", "model.safetensors", "tokenizer.json", "facts.json", "training.json", "history.jsonl"):
        assert (tiny_run_dir / name).is_file(), name
    history = read_history(tiny_run_dir)
    assert history[0]["step"] == 0 and history[-1]["fitted"]
    steps = [s for s, _ in list_checkpoints(tiny_run_dir)]
    assert steps[0] == 0 and steps[-1] == history[-1]["step"]
    assert set(steps) - {history[-1]["step"]} <= checkpoint_steps(TRAINING_PRESETS["tiny"].max_steps, 20)
    snapshot = load_run(tiny_run_dir, checkpoint=dict(list_checkpoints(tiny_run_dir))[0], device="cpu")
    assert snapshot.model.state_dict()["embed.weight"].std() > 0


def test_checkpoint_steps_are_log_spaced():
    steps = sorted(checkpoint_steps(1000, 4))
    assert steps == [0, 1, 10, 100, 1000]


def small_config(**kw):
    return replace(TrainingConfig(max_steps=30, eval_every=10, early_stop=False, n_checkpoints=4), **kw)


def test_same_seed_same_weights_and_history(tmp_path):
    facts = seed_experiment(12, seed=1)
    a = train(facts, MODEL_PRESETS["tiny"], small_config(), tmp_path / "a", progress=False, device="cpu")
    b = train(facts, MODEL_PRESETS["tiny"], small_config(), tmp_path / "b", progress=False, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.history == b.history


def test_resume_continues_exactly(tmp_path):
    facts = seed_experiment(12, seed=2)
    config = small_config(lr=3e-3, schedule="cosine", warmup_steps=5)
    full = train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "full", progress=False, device="cpu")

    def interrupt(record):
        if record["step"] == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "cut", progress=False, device="cpu", on_eval=interrupt)
    assert not (tmp_path / "cut" / LOCK_FILE).exists()  # an interrupted writer gives its lock back
    resumed = train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "cut", resume=True, progress=False, device="cpu")
    assert resumed.steps == 30
    for (k, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(x, y), k
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]


def test_existing_run_directory_is_refused_and_kept(tmp_path):
    facts = seed_experiment(12, seed=3)
    run = tmp_path / "run"
    train(facts, MODEL_PRESETS["tiny"], small_config(max_steps=10), run, progress=False, device="cpu")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already exists"):
        train(facts, MODEL_PRESETS["tiny"], small_config(max_steps=10), run, progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="other facts"):
        train(seed_experiment(12, seed=4), MODEL_PRESETS["tiny"], small_config(max_steps=10), run, resume=True,
              progress=False, device="cpu")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_sequence_loss_trains_too(tmp_path):
    facts = seed_experiment(12, seed=5)
    result = train(facts, MODEL_PRESETS["tiny"], small_config(loss="sequence"), tmp_path / "r", progress=False,
                   device="cpu")
    assert result.history[-1]["loss"] < result.history[1]["loss"]


@pytest.mark.parametrize("variant", [{}, {"positional_embedding_type": "rotary", "normalization_type": "RMS"},
                                     {"attn_only": True, "normalization_type": None}])
def test_plain_model_trains_bit_identical_weights_to_the_bridge(variant):
    """train() steps through plain_model (no hook points, the bridge's own tensors); the reference steps through the
    bridge itself with the per-tensor AdamW loop. Forwards and weights after 8 steps must be bit-identical."""
    from revinterp.data import encode_statements
    from revinterp.models import build_model, config_for_data, tokenizer_for
    from revinterp.training import batch_loss, plain_model

    facts = seed_experiment(12, seed=3)
    tokenizer = tokenizer_for(facts)
    config = config_for_data(replace(MODEL_PRESETS["tiny"], **variant), facts, tokenizer)
    data = encode_statements(facts, facts.train, tokenizer)
    weights = {}
    for path in ("bridge", "plain"):
        bridge = build_model(config, tokenizer, "cpu")
        bridge.train()
        stepped = plain_model(bridge) if path == "plain" else bridge
        assert stepped is not bridge or path == "bridge"
        if path == "plain":
            assert torch.equal(stepped(data.tokens), bridge(data.tokens))
        optimizer = torch.optim.AdamW(bridge.parameters(), lr=0.01, foreach=path == "plain")
        for step in range(8):
            loss = batch_loss(stepped, data.select(torch.arange(step % 3, len(data), 3)), "answer")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights[path] = bridge.state_dict()
    assert weights["bridge"].keys() == weights["plain"].keys()
    assert all(torch.equal(weights["bridge"][k], weights["plain"][k]) for k in weights["bridge"])
    assert any(not torch.equal(weights["bridge"][k], v) for k, v in build_model(config, tokenizer, "cpu")
               .state_dict().items())  # the steps moved the weights


def test_training_record_states_device_and_threads(tiny_run_dir):
    import json

    record = json.loads((tiny_run_dir / "training.json").read_text())
    assert record["environment"] == {"device": "cpu", "torch_threads": torch.get_num_threads()}


def test_plain_forwards_leave_nothing_on_the_bridge(tiny_run):
    """After a bridge forward, the bridge's capture hook on the shared ln1 also fires in plain forwards; the plain
    model releases what it stored, so no autograd graph stays on the bridge and the bridge can still be copied."""
    import copy

    from revinterp.training import plain_model

    model = copy.deepcopy(tiny_run.model)
    tokens = torch.tensor([[tiny_run.tokenizer.bos_token_id, 5, 6]])
    with torch.no_grad():
        model(tokens)  # wires the bridge's capture hooks
    plain_model(model)(tokens).sum().backward()
    held = [m for m in model.modules() if getattr(m, "_captured_pre_ln_residual", None) is not None]
    assert held == []
    copy.deepcopy(model)


def test_questions_with_several_answers_can_fit(tmp_path):
    """A child with two parents: each parent alone reaches p about 1/2, so fitting is judged per question (the
    probability of either parent, a hit when the greedy answer is either); per statement the run could never fit."""
    import math

    from revinterp.data import celebrity_like
    from revinterp.training import per_question

    facts = celebrity_like(8, seed=0)
    assert facts.many_answer_relations
    result = train(facts, MODEL_PRESETS["tiny"], replace(TRAINING_PRESETS["tiny"], max_steps=1500), tmp_path / "r",
                   progress=False, device="cpu")
    assert result.fitted
    last = read_history(tmp_path / "r")[-1]["splits"]
    statements = facts.split("forward_seen")
    logprob, hit = per_question(statements, torch.full((len(statements),), math.log(0.5)),
                                torch.zeros(len(statements)))
    n_questions = len({(s.subject, s.relation) for s in statements})
    assert len(logprob) == n_questions < len(statements) and not hit.any()
    assert math.isclose(logprob.exp().max().item(), 0.5 * max(
        sum(1 for t in statements if (t.subject, t.relation) == (s.subject, s.relation)) for s in statements),
        rel_tol=1e-6)
    far = per_question(statements, torch.full((len(statements),), -200.0), torch.zeros(len(statements)))[0]
    assert torch.isfinite(far).all() and far.max().item() > -200  # summed in log space: no underflow to -inf
    assert all(m["accuracy"] == 1.0 and m["probability"] >= 0.99 for name, m in last.items()
               if name in ("forward_seen", "reverse_seen"))
    assert all(m["log_probability"] <= math.log(m["probability"]) + 1e-6 for m in last.values())  # Jensen


def test_a_run_killed_after_its_last_state_but_before_its_model_is_finished_on_resume(tmp_path):
    """The last step's state (weights and optimizer) is saved before the final model: a run killed in between
    resumes to the same final model without another step (a sweep restarted after a kill reaches this state)."""
    from safetensors.torch import load_file

    facts = seed_experiment(12, seed=0)
    config = TrainingConfig(max_steps=40, eval_every=20, early_stop=False, n_checkpoints=2)
    train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "r", progress=False, device="cpu")
    final = load_file(tmp_path / "r" / "model.safetensors")
    (tmp_path / "r" / "model.safetensors").unlink()
    resumed = train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "r", resume=True, progress=False, device="cpu")
    assert resumed.steps == 40
    again = load_file(tmp_path / "r" / "model.safetensors")
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
