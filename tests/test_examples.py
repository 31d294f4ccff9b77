"""The scripts in examples/: each runs as a user would run it (a subprocess) and prints what it promises.

Each example trains the `tiny` preset (a second or two on a CPU) and writes only into a temporary directory or
the ``--out`` it is given; the tests run them with an empty working directory and check it stays empty.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # one thread: the tiny models gain nothing from a second, and oversubscribed cores slow torch 5x
    env = {**os.environ, "TMPDIR": str(cwd.parent), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{name} failed:\n{result.stderr[-4000:]}"
    return result


@pytest.fixture
def cwd(tmp_path):
    path = tmp_path / "cwd"
    path.mkdir()
    yield path
    assert not any(path.iterdir()), f"an example wrote into its working directory: {list(path.iterdir())}"


def test_every_example_is_tested():
    tested = {"train_and_evaluate.py", "patch_one_fact.py", "attribute_one_answer.py", "load_your_own_facts.py",
              "open_the_report.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    for path in EXAMPLES.glob("*.py"):
        assert len(path.read_text().splitlines()) < 40, f"{path.name} is no longer short"


def test_train_and_evaluate(cwd, tmp_path):
    out = tmp_path / "run"
    result = run_example("train_and_evaluate.py", "--pairs", "30", "--seed", "1", "--out", str(out), cwd=cwd)
    assert f"run {out}: " in result.stdout and ", fitted" in result.stdout
    table = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    # accuracies with their exact (Clopper-Pearson) limits: all hits still allow less, no hits still allow more
    assert re.search(r"yes\s+100\.0% \[[5-9]\d\.\d, 100\.0\]", table["forward_seen"])
    assert re.search(r"no\s+0\.0% \[0\.0, [1-9]\d*\.\d\]", table["reverse_held_out"])
    assert re.search(r"held-out reverse accuracy 0 \[0, 0\.\d+\] against chance 0\.033", result.stdout)  # 1/30
    assert (out / "model.safetensors").is_file() and (out / "history.jsonl").is_file()


def test_patch_one_fact(cwd):
    result = run_example("patch_one_fact.py", cwd=cwd)
    effects = dict(re.findall(r"resid_pre L0 @(\S+)\s+normalized effect (-?[\d.]+)", result.stdout))
    subject = re.search(r"fact '(\S+) -> \S+'", result.stdout)[1]
    # the clean and corrupted prompts differ only at the subject: restoring it restores everything, the rest nothing
    assert effects == {"<bos>": "0.00", subject: "1.00", "->": "0.00"}


def test_attribute_one_answer(cwd):
    result = run_example("attribute_one_answer.py", cwd=cwd)
    total = float(re.search(r"= (-?[\d.]+)$", result.stdout.splitlines()[0])[1])
    parts = [float(v) for v in re.findall(r"^  \S.*?([+-][\d.]+)", result.stdout, flags=re.MULTILINE)]
    assert total > 1  # a fitted model prefers its own answer
    assert len(parts) == 9  # token and positional embeddings, 4 heads, the attention bias, the MLP, and b_U
    assert abs(sum(parts) - total) < 0.06  # parts + b_U = total, up to printed rounding
    assert float(re.search(r"error (\S+)\)", result.stdout)[1]) < 1e-4  # the decomposition is exact


def test_load_your_own_facts(cwd, tmp_path):
    out = tmp_path / "family"
    result = run_example("load_your_own_facts.py", "--out", str(out), cwd=cwd)
    assert "family.csv: 60 statements, relations ['child_of', 'mentee_of', 'mentor_of', 'parent_of']" in result.stdout
    assert ", fitted" in result.stdout and re.search(r"reverse_held_out\s+\d+\s+no", result.stdout)
    assert (out / "facts.json").is_file()


def test_load_your_own_facts_reports_a_bad_file(cwd, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,relation,object\nAda,parent_of,Ben\n")
    result = run_example("load_your_own_facts.py", str(bad), cwd=cwd, check=False)
    assert result.returncode == 1
    assert f"error: {bad}, line 1: missing column(s) ['inverse']" in result.stderr
    assert "Traceback" not in result.stderr


def test_open_the_report(cwd, tmp_path):
    out = tmp_path / "run"
    result = run_example("open_the_report.py", "--out", str(out), cwd=cwd)
    assert "6 stages: behaviour (1 figures); forward (" in result.stdout and "verdict (0 figures)" in result.stdout
    report = out / "report.html"
    assert f"report: {report} (" in result.stdout
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "reverse_held_out" in html
