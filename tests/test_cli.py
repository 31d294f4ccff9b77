"""The `revinterp` command end to end on the tiny preset, its JSON output and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

from revinterp.cli import main


def test_train_then_eval_json(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--n-pairs", "30", "--seed", "1", "--out", str(out), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "reverse_held_out" in table and "fitted" in table and "chance" in table
    assert main(["eval", str(out), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)["splits"]
    saved = json.loads((out / "behaviour.json").read_text())["splits"]
    assert metrics == saved
    assert metrics["forward_seen"]["accuracy"] == 1.0 and metrics["forward_seen"]["n"] == 21
    held = metrics["reverse_held_out"]
    assert held["chance_accuracy"] == 1 / 30 and held["accuracy"] <= 3 * held["chance_accuracy"]
    for key in ("accuracy", "mean_rank", "logprob", "chance_accuracy", "n"):
        assert key in held
    # a second train into the same directory is refused, and nothing is overwritten
    before = (out / "model.safetensors").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "facts.csv"
    bad.write_text("subject,relation,object\na,r,b\n")
    assert main(["train", "--facts", str(bad), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "missing column(s) ['inverse']" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--data", "chain", "--tokens-per-entity", "2", "--template", "natural", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert "--tokens-per-entity, --template are not used by --data chain" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_help_is_fast_and_explains_options():
    code = "import sys, revinterp.cli; sys.argv=['revinterp','train','--help']; revinterp.cli.main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--trained-direction" in result.stdout and "--tokens-per-entity" in result.stdout
    heavy = subprocess.run([sys.executable, "-c", "import revinterp.cli, sys; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert heavy.stdout.strip() == "False"


def test_run_builds_a_report_for_data_the_analyses_cannot_all_cover(tmp_path, capsys):
    """`revinterp run` on chain data and on two-token entities: the analyses that need reverse pairs or single-token
    entities say why they were not run, the others run; a second run into the same directory is refused."""
    out = tmp_path / "chain"
    args = ["run", "--preset", "tiny", "--data", "chain", "--n-pairs", "20", "--out", str(out), "--quiet",
            "--device", "cpu"]
    assert main(args) == 0
    page = (out / "report.html").read_text()
    for line in ("Gradient view: not run", "Probes: not run", "chain_composed_held_out ("):
        assert line in page, line
    capsys.readouterr()
    before = (out / "report.html").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "report.html").read_bytes() == before

    out = tmp_path / "shared"
    assert main(["run", "--preset", "tiny", "--shared-tokens", "--tokens-per-entity", "2", "--n-pairs", "20",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    page = (out / "report.html").read_text()
    # the reverse-path, what-is-missing and dynamics sections, each with the reason and the number that decided it
    assert page.count("not run, since effective weights are token-to-token maps and the entities have several "
                      "tokens (max tokens per entity: 2)") == 3
    assert "reverse_held_out (" in page and "Linear probe" in page


def test_deprecated_held_out_direction_warns_and_means_trained_direction():
    import pytest

    from revinterp.cli import build_parser, make_facts

    new = build_parser().parse_args(["train", "--trained-direction", "forward", "--n-pairs", "20"])
    with pytest.warns(FutureWarning, match="--held-out-direction is deprecated.*--trained-direction"):
        old = build_parser().parse_args(["train", "--held-out-direction", "forward", "--n-pairs", "20"])
    assert vars(old) == vars(new)
    facts = make_facts(new)
    assert facts.split("reverse_held_out") and not facts.split("forward_held_out")
    assert build_parser().parse_args(["train"]).trained_direction == "random"


def test_threads_default_to_one_and_refuse_zero(tmp_path, capsys):
    import torch

    from revinterp.cli import build_parser, set_threads

    before = torch.get_num_threads()
    try:
        set_threads(build_parser().parse_args(["train", "--preset", "tiny"]))
        assert torch.get_num_threads() == 1
        set_threads(build_parser().parse_args(["train", "--threads", "2"]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert main(["train", "--threads", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--threads 0: expected at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_argument_errors_come_before_any_heavy_import():
    code = ("import sys; from revinterp.cli import main; rc = main(['train', '--threads', '0']); "
            "print(rc, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "False"] and "--threads 0" in result.stderr


def test_an_unfitted_run_says_which_splits_missed_and_what_helps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--n-pairs", "12", "--steps", "4", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "NOT fitted" in captured.out
    fit = json.loads((out / "training.json").read_text())["fit"]
    assert fit["fitted"] is False and fit["steps"] == 4
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    last = history[-1]["splits"]
    missed = fit["guidance"]["missed"]
    assert missed and set(missed) <= {name for name in last if name in ("forward_seen", "reverse_seen",
                                                                         "forward_only", "reverse_only")}
    for name, m in missed.items():  # the gaps are the last evaluation's distances to the criterion
        assert m["accuracy"] == last[name]["accuracy"] and m["accuracy_gap"] == 1 - last[name]["accuracy"]
        assert m["probability_gap"] == max(0.0, 0.99 - last[name]["probability"])
    assert "NOT fitted after 4 steps" in captured.err and "what usually helps" in captured.err
    assert any("--steps 8" in a for a in fit["guidance"]["advice"]) or any("--lr" in a or "--preset" in a
                                                                            for a in fit["guidance"]["advice"])
    assert f"{next(iter(missed))}: accuracy" in captured.err


def test_preset_auto_sizes_the_model_from_the_facts(tmp_path, capsys):
    from revinterp.data import seed_experiment
    from revinterp.models import MODEL_PRESETS
    from revinterp.training import AUTO_EPOCHS, TRAINING_PRESETS, auto_configs

    for pairs, preset in ((40, "tiny"), (200, "default"), (2000, "deep")):
        facts = seed_experiment(pairs)
        model, training, rule = auto_configs(facts)
        assert model == MODEL_PRESETS[preset] and f"preset {preset!r}" in rule
        n = len(facts.train)
        assert training.max_steps == max(TRAINING_PRESETS[preset].max_steps, -(-AUTO_EPOCHS * n // 64))
    out = tmp_path / "auto"
    assert main(["train", "--preset", "auto", "--n-pairs", "12", "--steps", "2", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert "preset auto: 20 trained statements -> preset 'tiny'" in capsys.readouterr().out
    assert json.loads((out / "model.json").read_text())["model"]["d_model"] == MODEL_PRESETS["tiny"].d_model
    assert main(["run", "--preset", "auto", "--seeds", "0", "1", "--out", str(tmp_path / "s")]) == 2


def test_scratch_tokens_are_refused_while_parsing_before_any_heavy_import():
    code = ("import sys; from revinterp.cli import main\n"
            "try:\n    main(['train', '--scratch-tokens', '-1'])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "False"]
    assert ("revinterp train: error: argument --scratch-tokens: '-1': expected a whole number >= 0 (scratch tokens "
            "before every answer; 0: none)") in result.stderr


def test_train_with_a_mitigation_then_scratch_tokens(tmp_path, capsys):
    from revinterp.cli import build_parser, seed_grid
    from revinterp.data import FactSet, apply_mitigation, seed_experiment, with_scratch_tokens
    from revinterp.models import load_run

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--n-pairs", "12", "--steps", "2", "--mitigation", "identity_bridge",
                 "--scratch-tokens", "3", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    facts = FactSet.load(out / "facts.json")
    expected = with_scratch_tokens(apply_mitigation(seed_experiment(12, seed=0), "identity_bridge"), 3)
    assert facts.to_manifest() == expected.to_manifest()
    assert facts.source["mitigation"] == "identity_bridge" and facts.source["scratch_tokens"] == 3
    assert facts.relations["->"].template == "{subject} -> [scratch] [scratch] [scratch] {object}"
    assert "[scratch]" in load_run(out, device="cpu").tokenizer.get_vocab()
    args = build_parser().parse_args(["run", "--scratch-tokens", "3", "--mitigation", "permute", "--seeds", "0", "1"])
    grid = seed_grid(args, [0, 1])["grid"]
    assert grid["scratch_tokens"] == 3 and grid["mitigation"] == "permute"
    assert "scratch_tokens" not in seed_grid(build_parser().parse_args(["run", "--seeds", "0", "1"]), [0, 1])["grid"]
