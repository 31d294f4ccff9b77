"""Sweeps on Ray (revinterp.sweep): equal to sequential runs bit for bit, resumable after a killed worker or driver,
failures reported while the others finish, bad input refused before any cell starts, the dry run, the table, the
summary over seeds and the report.

One local Ray cluster (2 CPUs) serves the module; tiny cells (20 pairs, 60 steps, behaviour only) keep it short.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from revinterp import sweep as sw  # noqa: E402
from revinterp.cli import main  # noqa: E402

BASE = {"preset": "tiny", "n_pairs": 20, "max_steps": 60, "eval_every": 10, "early_stop": False}
GRID = {"grid": {**BASE, "seed": [0, 1], "weight_decay": [0.0, 0.1]}, "sweep": {"analyze": False}}
GRID_TOML = """
[grid]
preset = "tiny"
n_pairs = 20
max_steps = 60
eval_every = 10
early_stop = false
seed = [0, 1]
weight_decay = [0.0, 0.1]

[sweep]
analyze = false
"""
HALF = {"grid": {**BASE, "weight_decay": 0.1, "seed": [0, 1]}, "sweep": {"analyze": False}}
"""Two of GRID's cells (the same configurations, so the same run directories and rows)."""


def rows_of(result, names=None) -> dict[str, dict]:
    """The table's rows (as written to table.jsonl) by cell, optionally only those of ``names``."""
    rows = [json.loads(line) for line in result.files["table_jsonl"].read_text().splitlines()]
    return {r["cell"]: r for r in rows if names is None or r["cell"] in names}


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` with its content hash and modification time (to show nothing was touched)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- no cluster needed ------------------------------------------------------------------------------------------
def test_dry_run_lists_cells_and_starts_no_ray(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run started Ray")

    monkeypatch.setattr(ray, "init", refuse)
    out = tmp_path / "sweep"
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(GRID_TOML)
    assert main(["sweep", str(out), "--grid", str(grid_file), "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    names = [c.name for c in sw.Grid.from_toml(grid_file).cells()]
    assert [c["cell"] for c in planned["cells"]] == names
    assert planned["n_to_run"] == 4 and all(c["run_dir"] == f"runs/{n}" for c, n in zip(planned["cells"], names))
    assert all(c["parameters"] > 0 and c["gflop_upper_bound"] > 0 for c in planned["cells"])
    assert "FLOPs upper bound" in planned["cost_method"]
    assert main(["sweep", str(out), "--grid", str(grid_file), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert all(f"runs/{n}" in text for n in names) and "GFLOP" in text
    assert not out.exists() and not ray.is_initialized()


def test_importing_the_sweep_module_loads_neither_ray_nor_torch():
    code = "import sys, revinterp.sweep; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cell_names_hash_the_full_configuration():
    cells = sw.Grid.from_mapping(GRID).cells()
    assert len({c.name for c in cells}) == 4
    again = sw.make_cell({"preset": "tiny", "n_pairs": 20, "max_steps": 60, "eval_every": 10, "early_stop": False,
                          "seed": 1, "weight_decay": 0.1})
    assert again.name == cells[-1].name  # the same configuration, however the grid spells it
    assert sw.make_cell({**BASE, "seed": 1, "weight_decay": 0.1, "lr": 0.01}).name == cells[-1].name  # the default
    assert sw.make_cell({**BASE, "seed": 1, "weight_decay": 0.1, "lr": 0.02}).name != cells[-1].name
    assert sw.make_cell({**BASE, "seed": 1, "steps": 60}).config() == sw.make_cell({**BASE, "seed": 1}).config()
    config = cells[0].config()
    assert set(config) == {"sweep_version", "facts", "model", "training", "seed"}
    assert config["training"]["weight_decay"] == 0.0 and config["model"]["d_model"] == 64


def test_settings_added_later_at_their_default_keep_the_cell_names():
    from revinterp.models import OMITTED_AT_DEFAULT

    cell = sw.make_cell({"preset": "tiny", "n_pairs": 20})
    config = cell.config()
    assert not set(OMITTED_AT_DEFAULT) & (set(config["model"]) | set(config["training"]))  # runs trained before
    other = sw.make_cell({"preset": "tiny", "n_pairs": 20, "attention_dir": "bidirectional"})
    assert other.config()["model"]["attention_dir"] == "bidirectional" and other.name != cell.name


def test_scratch_tokens_at_their_default_keep_the_cell_names():
    plain = sw.make_cell({"preset": "tiny", "n_pairs": 20})
    assert plain.name == "seed0-64d8611042c9"  # its name before scratch_tokens existed (commit 8731fb9)
    mitigated = sw.make_cell({"preset": "default", "seed": 3, "mitigation": "reverse_entity"})
    assert mitigated.name == "seed3-9f3d9795af3f"
    assert sw.make_cell({"preset": "tiny", "n_pairs": 20, "scratch_tokens": 0}).name == plain.name
    config = plain.config()
    assert "scratch_tokens" not in config["facts"]
    old_facts = {k: v for k, v in {**sw.FACT_DEFAULTS, "n_pairs": 20}.items() if k != "scratch_tokens"}
    without = {**config, "facts": old_facts}  # the configuration as it was before the option existed
    assert hashlib.sha256(sw.canonical_json(without).encode()).hexdigest()[:12] == plain.key
    scratched = sw.make_cell({"preset": "tiny", "n_pairs": 20, "scratch_tokens": 2})
    assert scratched.config()["facts"]["scratch_tokens"] == 2 and scratched.name != plain.name
    record = {"preset": "tiny", "config": config}
    assert sw.config_columns(record)["facts.scratch_tokens"] == 0  # the table has the column for every cell
    assert sw.config_columns({"preset": "tiny", "config": scratched.config()})["facts.scratch_tokens"] == 2


def test_scratch_tokens_come_after_the_mitigation():
    """The mitigation's reversed statements get the scratch tokens before their answer too (scratch tokens first
    would put them between the reversed statement's subject and relation)."""
    from revinterp.data import apply_mitigation, encode_statements, with_scratch_tokens
    from revinterp.models import tokenizer_for

    options = {"n_pairs": 16, "trained_direction": "forward", "mitigation": "reverse_entity"}
    both = sw.build_facts({**options, "scratch_tokens": 2}, 0)
    plain = sw.build_facts({"n_pairs": 16, "trained_direction": "forward"}, 0)
    assert both.to_manifest() == with_scratch_tokens(apply_mitigation(plain, "reverse_entity"), 2).to_manifest()
    assert both.statements == apply_mitigation(plain, "reverse_entity").statements
    assert {name: r.template for name, r in both.relations.items()} == {
        "->": "{subject} -> [scratch] [scratch] {object}", "<-": "{subject} <- [scratch] [scratch] {object}",
        "reverse_entity:->": "[rev] {subject} -> [scratch] [scratch] {object}",
        "reverse_entity:<-": "[rev] {subject} <- [scratch] [scratch] {object}"}
    assert both.source["mitigation"] == "reverse_entity" and both.source["scratch_tokens"] == 2
    tokenizer = tokenizer_for(both)
    augmented = next(s for s in both.statements if s.split == "augmented")
    words = tokenizer.convert_ids_to_tokens(encode_statements(both, [augmented], tokenizer).tokens[0].tolist())
    assert words[:6] == ["<bos>", "[rev]", augmented.subject, "->", "[scratch]", "[scratch]"]
    assert words[6] == augmented.object


@pytest.mark.parametrize("options", [
    {"n_pairs": 20},
    {"n_pairs": 20, "trained_direction": "forward", "mitigation": "reverse_entity"},
    {"n_pairs": 16, "mitigation": "permute", "scratch_tokens": 3},
    {"data": "chain", "n_pairs": 10, "both_fraction": 0.5},
    {"data": "graph", "n_pairs": 12, "relations": 3, "attributes": 4},
    {"n_pairs": 10, "tokens_per_entity": 2, "template": "natural", "shared_tokens": True},
    {"n_pairs": 16, "trained_direction": "forward", "feed": "both"},
    {"n_pairs": 16, "attributes": 3, "feed": "answer"},
])
def test_facts_are_those_of_the_command_line(options):
    from revinterp.cli import build_parser, make_facts

    argv = ["train", "--quiet", "--seed", "3"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    args = build_parser().parse_args(argv)
    expected = make_facts(argparse.Namespace(**vars(args)))
    assert sw.build_facts(options, 3).to_manifest() == expected.to_manifest()


def test_the_sweep_knows_every_data_option_of_the_command_line():
    """A data option added to the command line must be added to the sweep's fact options (and build_facts)."""
    from revinterp.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    group = next(g for g in train._action_groups if g.title.startswith("data"))
    options = {a.dest: a.default for a in group._group_actions if a.default is not argparse.SUPPRESS}
    assert options == sw.FACT_DEFAULTS


@pytest.mark.parametrize("grid, expected", [
    ({"learning_rate": 0.1}, "grid field 'learning_rate' is unknown"),
    ({"d_vocab": 10}, "follow from the data"),
    ({"n_layers": "two"}, "'n_layers': value 'two' (a str) cannot be used; expected a whole number"),
    ({"lr": [0.01, "fast"]}, "'lr': value 'fast' (a str) cannot be used; expected a finite number"),
    ({"lr": -1.0}, "lr=-1.0, seed=0: lr=-1.0: expected"),
    ({"schedule": "bogus"}, "schedule='bogus': expected one of"),
    ({"mitigation": "reverse_everything"}, "'mitigation': value 'reverse_everything'"),
    ({"scratch_tokens": -1}, "'scratch_tokens': value -1 (an int) cannot be used; expected a whole number >= 0"),
    ({"scratch_tokens": [0, 2.5]}, "'scratch_tokens': value 2.5 (a float) cannot be used; expected a whole number"),
    ({"scratch_tokens": True}, "'scratch_tokens': value True (a bool) cannot be used; expected a whole number"),
    ({"preset": "huge"}, "expected one of ('tiny', 'default', 'deep')"),
    ({"act_fn": "nope"}, "act_fn='nope': expected"),
    ({"data": "chain", "tokens_per_entity": 2}, "tokens_per_entity is not used by data='chain'"),
    ({"n_pairs": 1}, "the facts cannot be built"),
    ({"betas": [0.9, 0.99]}, "expected a pair of numbers"),
    ({"seed": []}, "an empty list"),
    ({"seed": [0, 0]}, "repeated values"),
])
def test_bad_grids_are_refused_before_anything_starts(grid, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    out = tmp_path / "sweep"
    with pytest.raises(sw.SweepError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sw.run_sweep({"grid": {"preset": "tiny", "n_pairs": 20, **grid}}, out, progress=False)
    assert not out.exists()


def test_bad_grids_exit_2_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(out), "--set", "learning_rate=0.1", "--dry-run"]) == 2
    assert "grid field 'learning_rate' is unknown" in capsys.readouterr().err
    assert main(["sweep", str(out), "--preset", "tiny", "--set", "n_layers=0", "--behaviour-only"]) == 2
    assert "n_layers=0: expected a positive" in capsys.readouterr().err
    assert main(["sweep", str(out), "--grid", str(tmp_path / "missing.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not out.exists()


def test_bad_toml_and_settings(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nseed = [0, 1\n")
    with pytest.raises(sw.SweepError, match="not valid TOML"):
        sw.Grid.from_toml(bad)
    with pytest.raises(sw.SweepError, match=r"\[sweep\] setting 'analyse' is unknown"):
        sw.Grid.from_mapping({"grid": {"seed": 0}, "sweep": {"analyse": False}})
    with pytest.raises(sw.SweepError, match="unknown table"):
        sw.Grid.from_mapping({"grids": {"seed": 0}})
    assert sw.parse_assignment("lr=0.01,0.003") == ("lr", [0.01, 0.003])
    assert sw.parse_assignment("mitigation=none,reverse_entity") == ("mitigation", ["none", "reverse_entity"])
    assert sw.parse_assignment("betas=[0.9,0.99]") == ("betas", [[0.9, 0.99]])
    assert sw.parse_assignment("attn_only=true,false") == ("attn_only", [True, False])


def test_unreachable_address_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    with pytest.raises(sw.SweepError, match="'127.0.0.1:1': no Ray cluster answers there"):
        sw.run_sweep(GRID, out, address="127.0.0.1:1", progress=False)
    assert main(["sweep", str(out), "--set", "preset=tiny", "--address", "127.0.0.1:1"]) == 2
    assert "no Ray cluster answers there" in capsys.readouterr().err
    with pytest.raises(sw.SweepError, match="expected HOST:PORT"):
        sw.check_address("nowhere")
    assert not out.exists()


def test_summary_lists_every_seed_and_uses_a_t_interval():
    from scipy import stats

    def row(seed, value, lr=0.01):
        return {"cell": f"c{seed}-{lr}", "status": "done", "seed": seed, "preset": "tiny", "training.lr": lr,
                "behaviour.reverse_held_out.accuracy": value, "behaviour.reverse_held_out.accuracy_ci_low": 0.0}

    values = [0.1, 0.3, 0.2, 0.6, 0.0]
    rows = [row(s, v) for s, v in enumerate(values)] + [row(0, 0.5, lr=0.1)]
    summary = sw.summarize(rows)
    assert "t interval" in summary["method"] and "every seed" in summary["method"]
    first, single = summary["groups"]
    figure = first["figures"]["behaviour.reverse_held_out.accuracy"]
    assert [v["value"] for v in figure["values"]] == values and [v["seed"] for v in figure["values"]] == [0, 1, 2, 3, 4]
    mean = sum(values) / 5
    half = stats.t.ppf(0.975, 4) * stats.tstd(values) / math.sqrt(5)
    assert figure["mean"] == pytest.approx(mean) and figure["low"] == pytest.approx(mean - half)
    assert figure["high"] == pytest.approx(mean + half)
    assert "behaviour.reverse_held_out.accuracy_ci_low" not in first["figures"]  # bounds are not figures
    one = single["figures"]["behaviour.reverse_held_out.accuracy"]
    assert one["n"] == 1 and one["low"] is None and "one seed" in one["note"]


def test_report_escapes_every_string_and_makes_no_request():
    from revinterp.viz.sweep_report import render_sweep_report, script_json

    evil = "</script><script>alert('x')</script>&<b>"
    sweep = {"grid": {"facts": [evil, "plain"], "seed": [0, 1]}, "sweep": {"analyze": False},
             "cells": [{"name": f"c{i}", "values": {"facts": f, "seed": s}}
                       for i, (f, s) in enumerate([(evil, 0), (evil, 1), ("plain", 0), ("plain", 1)])]}
    rows = [{"cell": c["name"], "run_dir": f"runs/{c['name']}", "status": "done", "error": evil,
             "seed": c["values"]["seed"], "facts.facts": c["values"]["facts"],
             "behaviour.reverse_held_out.accuracy": 0.25 * i,
             "behaviour.reverse_held_out.chance_accuracy": 0.05} for i, c in enumerate(sweep["cells"])]
    page = render_sweep_report("t<i>", sweep, rows, sw.summarize(rows))
    body = page.split("</head>", 1)[1]
    assert "<script>alert" not in page and "<b>" not in body and "t<i>" not in page
    assert "&lt;/script&gt;" in body  # in HTML text
    assert "\\u0026lt;/script\\u0026gt;" in body  # in the figures' JSON: escaped for plotly, then for <script>
    assert script_json({"a": "</script>&\u2028"}) == '{"a": "\\u003c/script\\u003e\\u0026\\u2028"}'
    head = page.split("</head>", 1)[0]
    assert "<script src" not in page and "<link" not in page and "Content-Security-Policy" in head
    assert "default-src 'none'" in head and "Plotly.newPlot" in body


# -- on the local cluster ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", object_store_memory=128 * 1024 ** 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    return sw.run_sweep(GRID, out, progress=False)


def test_grid_on_ray_equals_sequential_runs(swept, tmp_path):
    import torch

    from revinterp.pipeline import train_and_evaluate

    assert [s.status for s in swept.status.values()] == ["done"] * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task runs
    try:
        for cell in swept.cells:
            train_and_evaluate(sw.build_facts(cell.facts, cell.seed), cell.model, cell.training,
                               tmp_path / cell.name, progress=False)
            for name in ("behaviour.json", "model.safetensors", "history.jsonl", "training.json"):
                assert (swept.run_dir(cell) / name).read_bytes() == (tmp_path / cell.name / name).read_bytes(), name
    finally:
        torch.set_num_threads(threads)
    frame = swept.to_frame()
    assert len(frame) == 4 and list(frame["cell"]) == [c.name for c in swept.cells]
    assert set(frame["training.weight_decay"]) == {0.0, 0.1} and set(frame["seed"]) == {0, 1}
    for column in ("behaviour.reverse_held_out.accuracy", "behaviour.reverse_held_out.accuracy_ci_low",
                   "behaviour.reverse_held_out.accuracy_cp_high", "behaviour.reverse_held_out.chance_accuracy",
                   "behaviour.forward_seen.mean_rank", "behaviour.reverse_held_out.logprob", "trained.steps"):
        assert frame[column].notna().all(), column
    assert (frame["trained.steps"] == 60).all()
    for name in ("table_csv", "table_jsonl", "table_parquet", "summary_json", "summary_csv", "report"):
        assert swept.files[name].is_file(), name
    lines = swept.files["table_jsonl"].read_text().splitlines()
    assert [json.loads(line)["cell"] for line in lines] == list(frame["cell"])
    import pandas as pd

    assert pd.read_parquet(swept.files["table_parquet"]).shape == frame.shape
    groups = json.loads(swept.files["summary_json"].read_text())["groups"]
    assert len(groups) == 2 and all(g["seeds"] == [0, 1] for g in groups)
    assert "t interval" in json.loads(swept.files["summary_json"].read_text())["method"]


def test_a_finished_sweep_is_reused_not_rerun(swept):
    before = tree_digest(swept.out_dir / sw.RUNS_DIR)
    table = swept.files["table_csv"].read_bytes()
    again = sw.run_sweep(GRID, swept.out_dir, progress=False)
    assert all(s.status == "done" and s.reused for s in again.status.values())
    assert tree_digest(swept.out_dir / sw.RUNS_DIR) == before
    assert again.files["table_csv"].read_bytes() == table


def test_another_grid_in_the_same_directory_is_refused(swept, capsys):
    before = tree_digest(swept.out_dir)
    other = {"grid": {**GRID["grid"], "weight_decay": [0.0, 0.2]}, "sweep": {"analyze": False}}
    with pytest.raises(sw.SweepError, match=r"another grid: grid\.weight_decay is \[0\.0, 0\.1\] there and "
                                            r"\[0\.0, 0\.2\] here"):
        sw.run_sweep(other, swept.out_dir, progress=False)
    with pytest.raises(sw.SweepError, match="another grid: sweep.analyze"):
        sw.run_sweep({**GRID, "sweep": {"analyze": True}}, swept.out_dir, progress=False)
    argv = ["sweep", str(swept.out_dir), "--behaviour-only"]
    for name, value in GRID["grid"].items():
        argv += ["--set", f"{name}={','.join(map(str, value)) if isinstance(value, list) else value}".lower()]
    assert main(argv + ["--set", "max_steps=61"]) == 2
    assert "holds a sweep of another grid" in capsys.readouterr().err
    assert tree_digest(swept.out_dir) == before
    stray = swept.out_dir.parent / "not-a-sweep"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(sw.SweepError, match="not empty and holds no sweep.json"):
        sw.run_sweep(GRID, stray, progress=False)
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]


def test_a_worker_killed_mid_cell_is_retried_and_resumed_to_the_same_table(swept, tmp_path):
    victim = swept.cells[3].name  # weight_decay 0.1, seed 1
    out = tmp_path / "killed"
    result = sw.run_sweep(HALF, out, progress=False, _hooks={"kill_at_step": {victim: 30}})
    assert (out / sw.LOGS_DIR / f"{victim}.killed").is_file()  # the hook did kill the worker mid-training
    assert len((out / sw.LOGS_DIR / f"{victim}.attempts").read_text().splitlines()) == 2
    assert all(s.status == "done" for s in result.status.values())
    names = [c.name for c in result.cells]
    assert victim in names and rows_of(result) == rows_of(swept, names)
    for name in ("model.safetensors", "behaviour.json", "history.jsonl"):
        assert (out / "runs" / victim / name).read_bytes() == (swept.run_dir(swept.cells[3]) / name).read_bytes()


def test_a_killed_driver_restarted_ends_with_the_same_table(swept, tmp_path):
    """SIGKILL the whole ``revinterp sweep`` process group (driver, its local Ray cluster and workers) once a cell
    has a training checkpoint; the restarted sweep finishes with the table of one never killed."""
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(GRID_TOML.replace("weight_decay = [0.0, 0.1]", "weight_decay = 0.1"))
    out = tmp_path / "driver"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "revinterp.cli", "sweep", str(out), "--grid", str(grid_file),
                             "--quiet", "--num-cpus", "2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(out.glob("runs/*/checkpoints/last.safetensors")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray head processes; its workers notice and exit
        proc.wait()
    assert len(list(out.glob(f"runs/*/{sw.CELL_FILE}"))) < 2  # killed mid-sweep
    try:
        result = sw.run_sweep(sw.Grid.from_toml(grid_file), out, progress=False)  # at once: waits for the orphans
    finally:
        kill_session(proc.pid)
    assert all(s.status == "done" for s in result.status.values()), result.status
    assert rows_of(result) == rows_of(swept, [c.name for c in result.cells])


def kill_session(sid: int) -> None:
    """SIGKILL what is left of session ``sid`` (the killed driver's Ray workers, should any still run)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
                os.kill(int(stat.parent.name), signal.SIGKILL)


def test_a_failing_cell_is_reported_while_the_others_finish(cluster, tmp_path, capsys):
    grid = {"grid": {**BASE, "max_steps": 20, "seed": [0, 1]}, "sweep": {"analyze": False}}
    cells = sw.Grid.from_mapping(grid).cells()
    out = tmp_path / "failing"
    result = sw.run_sweep(grid, out, retries=1, progress=False,
                          _hooks={"fail": {cells[0].name: "planned failure for the test"}})
    assert result.status[cells[0].name].status == "failed"
    assert result.status[cells[0].name].error == "RuntimeError: planned failure for the test"
    assert result.status[cells[1].name].status == "done"
    assert len((out / sw.LOGS_DIR / f"{cells[0].name}.attempts").read_text().splitlines()) == 2  # retried once
    rows = {r["cell"]: r for r in result.rows}
    assert rows[cells[0].name]["status"] == "failed" and "planned failure" in rows[cells[0].name]["error"]
    assert rows[cells[1].name]["behaviour.reverse_held_out.accuracy"] is not None
    saved = json.loads((out / sw.STATUS_FILE).read_text())["cells"][cells[0].name]
    assert saved["status"] == "failed" and "planned failure" in saved["traceback"]
    again = sw.run_sweep(grid, out, progress=False)  # a restart runs the failed cell again, reuses the other
    assert again.status[cells[0].name].status == "done" and not again.status[cells[0].name].reused
    assert again.status[cells[1].name].reused


def test_run_seeds_goes_through_the_sweep_engine(cluster, tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["run", "--preset", "tiny", "--n-pairs", "20", "--steps", "30", "--seeds", "0", "1", "--max-pairs", "10",
            "--out", str(out), "--quiet", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seeds"] == [0, 1] and "t interval" in printed["method"] and not printed["failed"]
    accuracy = printed["splits"]["forward_seen"]["accuracy"]
    assert set(accuracy["values"]) == {"0", "1"} and accuracy["n"] == 2 and accuracy["ci_low"] <= accuracy["mean"]
    assert len(printed["reports"]) == 2 and all(Path(p).is_file() for p in printed["reports"])
    sweep = json.loads((out / sw.SWEEP_FILE).read_text())
    assert sweep["grid"]["seed"] == [0, 1] and sweep["sweep"] == {"analyze": True, "max_pairs": 10, "report": True}
    rows = [json.loads(line) for line in (out / sw.TABLE_JSONL).read_text().splitlines()]
    assert all(r["analysis.forward.localize_chosen"] and r["analysis.forward.localize_recovered"] is not None
               for r in rows)
    assert all(any(k.startswith("analysis.reverse.total.") for k in r) for r in rows)
    report = out / sw.REPORT_FILE
    report.unlink()
    runs = tree_digest(out / sw.RUNS_DIR)
    assert main(["sweep-report", str(out)]) == 0  # rebuilt from the saved results, nothing retrained
    assert report.is_file() and "localization" in report.read_text() and tree_digest(out / sw.RUNS_DIR) == runs
    report.unlink()
    assert main(["report", str(out)]) == 0  # `revinterp report` on a --seeds directory rebuilds its summary page
    assert report.is_file() and tree_digest(out / sw.RUNS_DIR) == runs
    assert main(argv) == 2  # an existing --out without --resume is refused
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0 and tree_digest(out / sw.RUNS_DIR) == runs


# -- the studies' run store -------------------------------------------------------------------------------------
def study_of(name: str, tmp_path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "analyses"))
    try:
        import common
    finally:
        sys.path.pop(0)
    args = argparse.Namespace(quick=True, seeds=[0], out=tmp_path / name, preset="default",
                              run_store=tmp_path / "store", address=None)
    return common.Study(name, name, args)


def test_studies_share_runs_in_the_store_equal_to_sequential_training(cluster, tmp_path):
    import dataclasses

    import torch

    from revinterp.data import seed_experiment

    threads = torch.get_num_threads()
    try:
        first = study_of("first", tmp_path)
        facts = [seed_experiment(20, seed=s) for s in (0, 1)]
        steps = {"max_steps": 60, "eval_every": 10, "early_stop": False}
        specs = [first.spec(f"seed{s}", facts[s], s, **steps) for s in (0, 1)]
        dirs = first.train_all(specs)
        assert [d.parent for d in dirs] == [tmp_path / "store" / sw.RUNS_DIR] * 2
        assert [r["steps"] for r in first.run_log] == [60, 60] and not any(r["reused"] for r in first.run_log)
        reference = first.train("sequential", facts[1], 1, **steps)  # one process, Study.train
        for name in ("model.safetensors", "history.jsonl", "facts.json", "training.json"):
            assert (dirs[1] / name).read_bytes() == (reference / name).read_bytes(), name
        before = tree_digest(tmp_path / "store" / sw.RUNS_DIR)
        second = study_of("second", tmp_path)  # another study asking for the same run: the same directory, reused
        assert second.train_all([second.spec("again", facts[1], 1, **steps)]) == [dirs[1]]
        assert second.run_log[0]["reused"] and second.run_log[0]["train_seconds"] == first.run_log[1]["train_seconds"]
        assert tree_digest(tmp_path / "store" / sw.RUNS_DIR) == before
    finally:
        torch.set_num_threads(threads)
    # the fact set's content is in the name: one statement moved to another split is another run
    moved = dataclasses.replace(facts[0], statements=(dataclasses.replace(facts[0].statements[0], split="forward_seen"
                                                      if facts[0].statements[0].split != "forward_seen"
                                                      else "forward_only"), *facts[0].statements[1:]))
    names = {sw.fact_set_cell(f, specs[0].model, specs[0].training).name for f in (facts[0], moved)}
    assert len(names) == 2 and dirs[0].name in names
    with pytest.raises(ValueError, match="given twice"):
        second.train_all([specs[0], specs[0]])


def test_a_study_maps_a_function_over_ray_tasks_in_order(cluster, tmp_path):
    study = study_of("mapped", tmp_path)

    def threads_and_sum(n: int, fill: float) -> list:  # a local function travels to the workers by value
        import torch

        return [torch.get_num_threads(), torch.full((n,), fill).sum().item()]

    calls = [(3, 2.0), (1, 5.0), (4, 0.5), (2, -1.0)]
    assert study.on_ray(threads_and_sum, calls) == [[1, 6.0], [1, 5.0], [1, 2.0], [1, -2.0]]
    assert study.on_ray(threads_and_sum, []) == []
    assert ray.is_initialized()  # the cluster it joined is left running
