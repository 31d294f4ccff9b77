"""Hostile and careless use of run directories (issue 16): refused options and damaged files give exit code 2 with
a message naming the bad value and leave the filesystem as it was; NaN is an error, never a result; one writer per
run directory (two writers at once, a writer killed with -9 and its stale lock); strict JSON everywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from revinterp.cli import main
from revinterp.data import FactSet, encode_statements, seed_experiment
from revinterp.evaluation import answer_rank, answer_scores, candidate_scores, evaluate
from revinterp.io import NonFiniteJSONError, json_text, write_json
from revinterp.models import (
    MODEL_PRESETS,
    CheckpointError,
    DivergedRunError,
    NonFiniteError,
    build_model,
    check_finite,
    config_for_data,
    load_run,
    tokenizer_for,
)
from revinterp.rundir import LOCK_FILE, RunLockedError, run_lock
from revinterp.training import TrainingConfig, list_checkpoints, read_history, train

TINY = ["--preset", "tiny", "--n-pairs", "12", "--quiet"]
BASE = [*TINY, "--steps", "30", "--no-early-stop"]  # the run every damaged copy starts from
REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("hostile") / "base"
    assert main(["train", *BASE, "--out", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run


# -- refused options leave nothing behind -------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (["--lr", "-1"], "lr=-1.0"),
    (["--lr", "nan"], "lr=nan"),
    (["--lr", "inf"], "lr=inf"),
    (["--lr", "0"], "lr=0.0"),
    (["--weight-decay", "-1"], "weight_decay=-1.0"),
    (["--weight-decay", "nan"], "weight_decay=nan"),
    (["--steps", "0"], "max_steps=0"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--n-pairs", "0"], "n_pairs=0"),
])
def test_refused_option_leaves_nothing_behind(tmp_path, capsys, options, message):
    out = tmp_path / "nested" / "run"
    before = snapshot(tmp_path)
    rc, stdout, err = cli(capsys, "train", *TINY, "--steps", "5", "--out", out, *options)
    assert rc == 2 and message in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before
    # the corrected retry is not refused as "already exists"
    rc, _, err = cli(capsys, "train", *TINY, "--steps", "5", "--out", out)
    assert rc == 0, err


def test_refusal_after_the_directory_was_made_removes_what_this_call_made(tmp_path, monkeypatch):
    import revinterp.training as training

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training, "write_model_config", disk_full)
    facts = seed_experiment(12, seed=0)
    config = TrainingConfig(max_steps=5)
    with pytest.raises(OSError, match="disk full"):
        train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "new" / "run", progress=False, device="cpu")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="disk full"):
        train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "empty", progress=False, device="cpu")
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


# -- damaged run directories: a clear error naming the file and the field, nothing changed ------------------------
def edit_json(name, change):
    def mutate(run: Path):
        path = run / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return mutate


def write(name, text):
    def mutate(run: Path):
        (run / name).write_text(text)
    return mutate


def set_field(section, key, value):
    def change(data):
        data[section][key] = value
        return data
    return change


def drop_object(manifest):
    del manifest["statements"][0]["object"]
    return manifest


def token_id_beyond_vocab(run: Path):
    path = run / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab[max(vocab, key=vocab.get)] = 999
    path.write_text(json.dumps(data))


def nan_weights(run: Path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k in tensors if "embed" in k and tensors[k].is_floating_point())
    tensors[name][3, :5] = float("nan")
    save_file(tensors, str(path), metadata=meta)


def foreign_lock(pid: int):
    def mutate(run: Path):
        (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return mutate


DAMAGED = {
    "model.json holds a list": (write("model.json", "[1, 2]"), "model.json: holds a JSON list"),
    "model.json n_heads 0": (edit_json("model.json", set_field("model", "n_heads", 0)), "n_heads=0"),
    "model.json n_heads a string": (edit_json("model.json", set_field("model", "n_heads", "4")),
                                    "field 'model'.n_heads is '4'; expected an integer"),
    "model.json d_model null": (edit_json("model.json", set_field("model", "d_model", None)), "d_model is None"),
    "model.json unknown setting": (edit_json("model.json", set_field("model", "n_experts", 4)), "n_experts"),
    "model.json not JSON": (write("model.json", "{"), "model.json: not valid JSON"),
    "facts.json []": (write("facts.json", "[]"), "facts.json: holds a JSON list"),
    "facts.json no statements": (edit_json("facts.json", lambda m: {**m, "statements": []}), "'statements'"),
    "facts.json statement without object": (edit_json("facts.json", drop_object), "statements[0] lacks ['object']"),
    "facts.json fact a string": (edit_json("facts.json", lambda m: {**m, "statements": [
        {**m["statements"][0], "fact": "x"}, *m["statements"][1:]]}), "statements[0].fact is 'x'"),
    "training.json a list": (write("training.json", "[]"), "training.json: holds a JSON list"),
    "training.json lr a string": (edit_json("training.json", set_field("training", "lr", "fast")),
                                  "field 'training'.lr is 'fast'; expected a number"),
    "training.json lr negative": (edit_json("training.json", set_field("training", "lr", -1)), "lr=-1"),
    "training.json betas a number": (edit_json("training.json", set_field("training", "betas", 0.9)),
                                     "betas is 0.9; expected a list of 2 numbers"),
    "history.jsonl a bad line": (lambda run: (run / "history.jsonl").write_text('{"step": 0}\n{oops\n'),
                                 "history.jsonl, line 1: fields ['loss', 'splits', 'fitted'] are missing"),
    "tokenizer id >= d_vocab": (token_id_beyond_vocab, ("has id 999", "tokenizer.json does not match")),
    "NaN weights": (nan_weights, "holds 5 NaN values"),
    "weights of another config": (edit_json("model.json", set_field("model", "d_mlp", 128)),
                                  ("was written for model config", "holds a run of model")),
}


RESUME_ONLY = ("training.json lr a string", "training.json lr negative", "training.json betas a number",
               "history.jsonl a bad line")


@pytest.mark.parametrize("command, case", [(command, case) for case in DAMAGED for command in ("eval", "resume")
                                           if command == "resume" or case not in RESUME_ONLY])
def test_damaged_run_is_a_clear_error(run_copy, capsys, case, command):
    """``eval`` reads the model side; ``train --resume`` reads every file (eval never reads the training record
    beyond its divergence mark, nor the history)."""
    mutate, message = DAMAGED[case]
    mutate(run_copy)
    before = snapshot(run_copy.parent)
    argv = ["eval", run_copy] if command == "eval" else ["train", *BASE, "--out", run_copy, "--resume"]
    if isinstance(message, tuple):
        message = message[command == "resume"]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and message in err, err
    assert "Traceback" not in err and "100.0%" not in out
    assert snapshot(run_copy.parent) == before


def test_nan_weights_are_refused_by_evaluate_and_check_finite(base_run):
    run = load_run(base_run, device="cpu")
    assert evaluate(run).to_dict() == evaluate(run.model, run.facts).to_dict()  # a LoadedRun or (model, facts)
    name, param = next(iter(run.model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="holds 1 NaN values"):
        check_finite(run.model)
    with pytest.raises(NonFiniteError, match="not finite"):
        evaluate(run)


def test_bad_history_line_is_named_and_resume_refuses_it(run_copy, capsys):
    lines = (run_copy / "history.jsonl").read_text().splitlines()
    (run_copy / "history.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(CheckpointError, match="history.jsonl, line 2: not valid JSON"):
        read_history(run_copy)
    before = snapshot(run_copy.parent)
    rc, _, err = cli(capsys, "train", *BASE, "--out", run_copy, "--resume")
    assert rc == 2 and "history.jsonl, line 2" in err, err
    assert snapshot(run_copy.parent) == before
    (run_copy / "history.jsonl").write_text(json.dumps({"step": "ten", "loss": 1.0, "splits": {}, "fitted": False}))
    with pytest.raises(CheckpointError, match="field 'step' is 'ten'"):
        read_history(run_copy)


def test_bad_checkpoint_name_is_named(run_copy):
    assert [s for s, _ in list_checkpoints(run_copy)][0] == 0
    shutil.copy(run_copy / "model.safetensors", run_copy / "checkpoints" / "step_abc.safetensors")
    with pytest.raises(CheckpointError, match=r"step_abc.safetensors: not a checkpoint name; expected step_"):
        list_checkpoints(run_copy)


# -- NaN is an error, never 100 % -----------------------------------------------------------------------------------
def test_diverged_run_is_refused_everywhere(tmp_path, capsys):
    out = tmp_path / "div"
    options = [*TINY, "--lr", "1e6", "--steps", "100", "--out", out]
    rc, stdout, err = cli(capsys, "train", *options)
    assert rc == 2 and "training diverged at step" in err and "smaller --lr" in err, err
    assert "100.0" not in stdout + err
    record = strict_json((out / "training.json").read_text())["diverged"]
    assert record["step"] >= 1 and "nan" in record["reason"] or "inf" in record["reason"]
    assert not (out / "model.safetensors").exists() and not (out / LOCK_FILE).exists()
    for command in (["eval", out], ["train", *options, "--resume"]):
        before = snapshot(tmp_path)
        rc, stdout, err = cli(capsys, *command)
        assert rc == 2 and "marked as diverged" in err, (command, err)
        assert "100.0" not in stdout and snapshot(tmp_path) == before
    with pytest.raises(DivergedRunError, match="diverged at step"):
        load_run(out, device="cpu")


def test_weight_that_becomes_nan_stops_training(tmp_path, monkeypatch):
    """A NaN in a weight the loss never reads (the <eos> embedding) is caught at the next evaluation."""
    import revinterp.training as training
    from revinterp.models import tokenizer_for

    calls = []
    original = training.batch_loss
    facts = seed_experiment(12, seed=0)
    eos = tokenizer_for(facts).eos_token_id

    def corrupting(model, batch, loss):
        calls.append(1)
        if len(calls) == 5:
            with torch.no_grad():  # training steps through the plain model, whose token embedding is the bridge's W_E
                model.tok_embed.weight[eos] = float("nan")
        return original(model, batch, loss)

    monkeypatch.setattr(training, "batch_loss", corrupting)
    config = TrainingConfig(max_steps=30, eval_every=10, early_stop=False, n_checkpoints=2)
    with pytest.raises(DivergedRunError, match=r"diverged at step 10: weight .*embed.* holds 64 NaN"):
        train(facts, MODEL_PRESETS["tiny"], config, tmp_path / "r", progress=False, device="cpu")
    assert "diverged" in json.loads((tmp_path / "r" / "training.json").read_text())
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for _, p in list_checkpoints(tmp_path / "r") for t in load_file(p).values())


class NaNModel(torch.nn.Module):
    """Finite weights, NaN logits (as a model whose activations overflow)."""

    def __init__(self, d_vocab):
        super().__init__()
        self.d_vocab = d_vocab
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        return torch.full((*tokens.shape, self.d_vocab), float("nan")) + self.bias


def test_nan_scores_are_never_correct():
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[nan, nan, nan], [0.5, nan, 0.1], [-inf, -inf, -inf], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    ranks = answer_rank(scores, torch.zeros(5, dtype=torch.long))
    assert ranks.tolist() == [4, 2, 4, 2, 1]
    facts = seed_experiment(6, seed=0)
    tok = tokenizer_for(facts)
    model = NaNModel(len(tok))
    statements = facts.split("forward_seen")
    _, greedy = answer_scores(model, encode_statements(facts, statements, tok))
    assert not greedy.any()
    _, rank, m = candidate_scores(model, facts, statements, tok)
    assert (rank > m).all()  # below every candidate: never rank 1
    with pytest.raises(NonFiniteError, match="logits holds .* NaN"):
        evaluate(model, facts, tokenizer=tok)


def test_json_has_no_bare_nan(base_run, tmp_path):
    with pytest.raises(NonFiniteJSONError, match=r"splits\.a\.1 is not a finite number"):
        json_text({"splits": {"a": [0.5, float("nan")]}})
    with pytest.raises(NonFiniteJSONError):
        write_json(tmp_path / "x.json", {"loss": float("inf")})
    assert not (tmp_path / "x.json").exists()
    for path in [*base_run.glob("*.json"), *base_run.glob("*.jsonl")]:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            strict_json(line)
    FactSet.load(base_run / "facts.json")


# -- one writer per run directory -----------------------------------------------------------------------------------
def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


CHILD = """
import sys, time
from pathlib import Path
import transformer_lens, revinterp.cli, revinterp.pipeline, revinterp.training  # the imports take seconds: not timed
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
sys.exit(revinterp.cli.main(sys.argv[2:]))
"""


def revinterp_process(go: Path, *argv) -> subprocess.Popen:
    """``revinterp ARGV`` in a fresh process that imports everything first, then waits for the file ``go``."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(go), *map(str, argv)], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writers_at_once_one_proceeds(tmp_path, capsys):
    options = [*TINY, "--steps", "150", "--no-early-stop"]
    go = tmp_path / "go"
    writers = [revinterp_process(go, "train", *options, "--out", tmp_path / "shared") for _ in range(2)]
    rc, _, _ = cli(capsys, "train", *options, "--out", tmp_path / "alone")  # meanwhile: the uninterrupted run
    assert rc == 0
    go.touch()  # both writers start at the same instant
    results = [(p.wait(timeout=120), *p.communicate()) for p in writers]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert "being written by pid" in loser or "already exists" in loser, loser
    assert not (tmp_path / "shared" / LOCK_FILE).exists()
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("shared", "alone")]
    assert weights[0] == weights[1]
    figures = [cli(capsys, "eval", tmp_path / d, "--json") for d in ("shared", "alone")]
    assert figures[0][0] == figures[1][0] == 0 and figures[0][1] == figures[1][1]
    assert strict_json(figures[0][1])["splits"]


def test_held_lock_refuses_a_second_writer_and_readers(run_copy, capsys, tmp_path):
    with run_lock(run_copy):
        with run_lock(run_copy):  # re-entrant in one thread
            pass
        assert (run_copy / LOCK_FILE).exists()
    assert not (run_copy / LOCK_FILE).exists()
    taken, done = threading.Event(), threading.Event()

    def hold(purpose="train"):
        with run_lock(run_copy, purpose=purpose):
            taken.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        taken.wait(60)
        with pytest.raises(RunLockedError, match="another thread"), run_lock(run_copy):
            pass
        before = snapshot(tmp_path)
        for command in (["eval", run_copy], ["train", *BASE, "--out", run_copy, "--resume"]):
            rc, _, err = cli(capsys, *command)
            assert rc == 2 and f"another thread of this process (pid {os.getpid()})" in err, (command, err)
        assert snapshot(tmp_path) == before
    finally:
        done.set()
        holder.join()
    assert not (run_copy / LOCK_FILE).exists()
    taken.clear(), done.clear()
    holder = threading.Thread(target=hold, kwargs={"purpose": "analyze"})
    holder.start()
    try:  # an analysis holds the lock: a second writer is refused, a reader is not (the model files are complete)
        taken.wait(60)
        rc, _, err = cli(capsys, "train", *BASE, "--out", run_copy, "--resume")
        assert rc == 2 and "(analyze)" in err, err
        rc, _, err = cli(capsys, "eval", run_copy)
        assert rc == 0, err
    finally:
        done.set()
        holder.join()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        foreign_lock(sleeper.pid)(run_copy)
        for command in (["eval", run_copy], ["train", *BASE, "--out", run_copy, "--resume"]):
            rc, _, err = cli(capsys, *command)
            assert rc == 2 and f"being written by pid {sleeper.pid}" in err, (command, err)
            assert "rm " in err
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_lock_names_the_command_that_clears_it(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    foreign_lock(dead.pid)(run_copy)
    rc, _, err = cli(capsys, "train", *BASE, "--out", run_copy, "--resume")
    assert rc == 2 and "stale lock" in err and f"pid {dead.pid}" in err, err
    assert f"rm {run_copy / LOCK_FILE}" in err
    rc, out, _ = cli(capsys, "eval", run_copy)  # a stale lock does not stop a reader
    assert rc == 0


def test_kill_9_then_resume_after_clearing_the_stale_lock_is_bitwise_identical(tmp_path, capsys):
    options = [*TINY, "--steps", "400", "--no-early-stop"]
    go = tmp_path / "go"
    victim = revinterp_process(go, "train", *options, "--out", tmp_path / "cut")
    rc, _, _ = cli(capsys, "train", *options, "--out", tmp_path / "full")  # meanwhile: the uninterrupted run
    assert rc == 0
    go.touch()
    last = tmp_path / "cut" / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (tmp_path / "cut" / LOCK_FILE).exists() and not (tmp_path / "cut" / "model.safetensors").exists()
    rc, _, err = cli(capsys, "train", *options, "--out", tmp_path / "cut", "--resume")
    assert rc == 2 and "stale lock" in err, err
    (tmp_path / "cut" / LOCK_FILE).unlink()
    rc, _, err = cli(capsys, "train", *options, "--out", tmp_path / "cut", "--resume")
    assert rc == 0, err
    cut = load_run(tmp_path / "cut", device="cpu").model.state_dict()
    full = load_run(tmp_path / "full", device="cpu").model.state_dict()
    assert all(torch.equal(cut[k], full[k]) for k in full)
    assert read_history(tmp_path / "cut") == read_history(tmp_path / "full")


def test_config_validation_in_the_library():
    from dataclasses import replace

    # (wrong types are refused by the configs' own checks, or first by jaxtyping's type checker under pytest)
    for bad, message in [(dict(n_heads=0), "n_heads=0"), (dict(n_layers=0), "n_layers=0"),
                         (dict(act_fn="tanh"), "act_fn='tanh'"), (dict(d_model=2.5), "d_model")]:
        with pytest.raises((ValueError, TypeError), match=message):
            replace(MODEL_PRESETS["tiny"], **bad)
    for bad, message in [(dict(lr=-1.0), "lr=-1.0"), (dict(weight_decay=float("nan")), "weight_decay=nan"),
                         (dict(betas=(0.9, 1.5)), "betas"), (dict(warmup_steps=-1), "warmup_steps=-1"),
                         (dict(fit_probability=0.0), "fit_probability=0.0")]:
        with pytest.raises((ValueError, TypeError), match=message):
            TrainingConfig(**bad)
    facts = seed_experiment(6, seed=0)
    tok = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tok), tok, "cpu")
    check_finite(model)
