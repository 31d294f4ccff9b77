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
