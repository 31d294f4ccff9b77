"""The documentation: every tutorial runs top to bottom, the site builds strictly, the API reference is complete.

Tutorials are jupytext percent-format notebooks (``docs/tutorials/*.py``). They are executed *as notebooks*:
jupytext turns each into a notebook and nbclient runs its cells in order in an IPython kernel (ipykernel), the
way a reader runs them, so cell boundaries, IPython display of a cell's last expression (plotly figures, data
frames, the circuitsvis HTML view) and kernel state across cells are all exercised. Where jupytext, nbclient or
ipykernel is not installed, the same file runs as a plain script in a subprocess instead: a percent-format
notebook *is* a Python script (its markdown cells are comments), so that is faithful for everything but the
display of last expressions, which then evaluate without being shown.

Each tutorial runs with an empty working directory, checked empty afterwards, and its own temporary directory
(``TMPDIR``), checked free of the tutorial's files: a tutorial writes only into a temporary directory it makes and
removes, never into the repo.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import revinterp

ROOT = Path(__file__).resolve().parent.parent
# The tiny models gain nothing from a second thread, and with every core busy (pytest-xdist, or anything else
# running) torch's threads wait for each other: measured 5x slower training with 2 threads beside one busy core.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))

# Text each tutorial must print: the claim it demonstrates, as its own output states it.
EXPECTED_OUTPUT = {
    "01_reversal_curse": [
        r"^reverse_held_out\s+\d+\s+no\s+0\.0% \[0\.0, [1-9]\d\.\d\]",  # the curse, with its exact upper limit
        r"^forward_seen\s+\d+\s+yes\s+100\.0% \[[89]\d\.\d, 100\.0\]",
        r"fitted: True",
        r"model\.safetensors",
    ],
    "02_forward_fact": [
        r"resid_pre L0 @subject\s+1 \[1, 1\]",
        r"max \|fast - TransformerLens\| = (0\.0e\+00|\d\.\de-0[6-9])",  # float rounding (the two answer columns)
        r"target 0\.8, reached",
        r"agreement over \d+ sites",
    ],
    "03_reverse_path": [
        r"^input side: 12 of 12 held-out question\(s\) whose subject never appears",  # starved in the seed data
        r"^input side: 0 of 12 held-out question\(s\) whose subject never appears",  # not in the control
        r"^answer side: 12 of 12 held-out question\(s\) whose answer is never a training target",  # both runs
        r"reverse_held_out\s+12\s+no\s+0\.0%",
        r"forward_only\s+-> reverse_held_out",
        r"^reverse_seen \(\d+ pairs\): total effect [\d.]+ \[[\d.]+, [\d.]+\] \(distinguishable from zero\)",
        r"^reverse_held_out \(12 pairs\): total effect \S+ \[-[\d.]+, [\d.]+\] \(indistinguishable from zero\)",
        r"^seed: no selective site \(selectivity at most",  # probes with the control task name no site at chance
        r"^control: no selective site",
    ],
    "04_your_own_facts": [
        r"^64 statements over relations \['child_of', 'parent_of'\]",
        r"^relations with several answers: \['child_of', 'parent_of'\]",
        # two parents
        r"^'[A-Z][a-z]+ [A-Z][a-z]+' child_of -> \('[A-Z][a-z]+ [A-Z][a-z]+', '[A-Z][a-z]+ [A-Z][a-z]+'\)",
        r"^forward_seen\s+12  yes\s+100\.0% \[73\.5, 100\.0\]\s+12\.5%\s+1\.0 ",  # either child counts
        r"^reverse_held_out\s+4  no\s+0\.0% \[0\.0, 60\.2\]\s+12\.5%",  # 4 children, 2 parents each
        r"^among the 4 held-out answers: accuracy [\d.]+ \[[\d.]+, [\d.]+\] against chance 0\.50",
        r"'rank_below_chance_p': 0\.0\d+",
        r"^Lexical overlap in reverse_held_out: \d of 4 held-out questions",
        r"^same splits: True",
        r"missing column\(s\) \['inverse'\]",
        r"line 3: fact \('Ada Ash', 'parent_of', 'Ben Birch'\) has split 'reverse_held_out' here",
        r"line 5: question \('Dan Dale', 'child_of'\) is trained here \(answer 'Eve Elm'\) but held out on line 4",
        r"declared with inverse 'kid_of'",
    ],
    "05_mitigations": [
        r"^none\s+\d+\s+0 \[0, 0\.\d+\]",  # 0 of 12 with its exact upper limit
        r"^reverse_entity\s+\d+\s+1 \[0\.\d+, 1\]",
        r"attn_out L0 @<-\s+1 \[1, 1\]",
    ],
    "06_circuits": [
        r"max \|path patching - TransformerLens hook\| = \S+e-0[5-9]",
        r"^held-out faithfulness of the \d+-edge circuit: [\d.]+ \[[\d.]+, [\d.]+\] on \d+ pairs not used to find it",
        r"^reverse_seen at L\dH\d: attention to subject [\d.]+, entry [\d.]+ \[[\d.]+, [\d.]+\]",
        r"^reverse_held_out at L\dH\d: attention to subject [\d.]+, entry \S+ \[-[\d.]+, [\d.]+\]",
        r"^edited: margin change [\d.]+ \[[\d.]+, [\d.]+\] vs placebo",
        r"^verdict reverse_seen: routing and entry present",
        r"^verdict reverse_held_out: ",
    ],
    "07_cures": [
        r"^masked_causal trains <bos> \[mask\] \S+ \S+ \S+\s+predicting",  # the source entity is a target
        r"^reverse_entity\s+\d+\s+1 \[0\.7\d+, 1\]\s+1\.00",  # 12 of 12 held out, forward kept
        r"^masked_causal\s+\d+\s+1 \[0\.7\d+, 1\]\s+1\.00",
        r"^masked_causal: prompt \['<bos>', 'b\d+', '<-', '\[mask\]'\]; localize restores \['attn_out L0 @\[mask\]'",
        r"^masked_causal: forward entry reused by the reverse path\? .* -> (shared|distinct|undetermined)$",
        r"^  L0H\d: writes: matched cosine \S+ \[\S+, \S+\] over 12 facts; unrelated pairs .*; read keys: matched "
        r"cosine \S+, unrelated \S+; matched minus null: .* -> (shared|distinct|undetermined)$",
    ],
}


def _notebook_tools() -> bool:
    return all(importlib.util.find_spec(name) for name in ("jupytext", "nbclient", "ipykernel"))


def _run_as_notebook(path: Path, cwd: Path, env: dict) -> str:
    import jupytext
    import nbclient

    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=False)
    client.execute(cwd=str(cwd), env=env)  # raises CellExecutionError, with the cell and traceback, on any error
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                texts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                texts.append(output.data.get("text/plain", ""))
    return "".join(texts)


def _run_as_script(path: Path, cwd: Path, env: dict) -> str:
    if "from IPython" in path.read_text() and importlib.util.find_spec("IPython") is None:
        pytest.skip(f"{path.name} displays HTML through IPython, which is not installed (pip install -e '.[dev]')")
    result = subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stderr[-4000:]}"
    return result.stdout


def test_every_tutorial_is_checked():
    assert [p.stem for p in TUTORIALS] == sorted(EXPECTED_OUTPUT)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_top_to_bottom(path, tmp_path):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), **ONE_THREAD}
    run = _run_as_notebook if _notebook_tools() else _run_as_script
    output = run(path, cwd, env)
    for pattern in EXPECTED_OUTPUT[path.stem]:
        assert re.search(pattern, output, flags=re.MULTILINE), f"{path.name}: no output matches {pattern!r}"
    assert not any(cwd.iterdir()), f"{path.name} wrote into its working directory: {list(cwd.iterdir())}"
    # (torch may leave an empty cache directory there, torchinductor_USER; the tutorial's own must be gone)
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith(("revinterp", "tmp"))]
    assert not leftovers, f"{path.name} left temporary files behind: {leftovers}"


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict``: every warning (a broken link, a docstring griffe cannot parse, a page left out
    of the nav) fails the build."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    for page in ("index.html", "concepts/index.html", "cli/index.html", "api/analysis.patching/index.html",
                 "tutorials/01_reversal_curse/index.html"):
        assert (site / page).is_file(), f"the site has no {page}"
    patching = (site / "api/analysis.patching/index.html").read_text()
    assert 'id="revinterp.analysis.patching.patch_sweep"' in patching  # rendered from the docstrings
    tutorial = (site / "tutorials/03_reverse_path/index.html").read_text()
    assert "starvation_report" in tutorial


def _api_pages() -> dict[str, Path]:
    pages = {}
    for page in (ROOT / "docs" / "api").glob("*.md"):
        for match in re.finditer(r"^::: ([\w.]+)", page.read_text(), flags=re.MULTILINE):
            pages[match[1]] = page
    return pages


def test_every_module_has_an_api_page():
    modules = [m.name for m in pkgutil.walk_packages(revinterp.__path__, "revinterp.") if not m.ispkg]
    missing = sorted(set(modules) - set(_api_pages()))
    assert not missing, (
        f"modules without an API page: {missing}; add docs/api/NAME.md holding '::: MODULE' and list it in the nav "
        "of mkdocs.yml"
    )


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted({p.name for p in _api_pages().values()}):
        assert f"api/{page}" in nav, f"docs/api/{page} is not in the nav of mkdocs.yml"


def test_every_command_line_option_is_documented():
    from revinterp.cli import build_parser

    documented = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        assert f"revinterp {name}" in documented, f"docs/cli.md does not describe 'revinterp {name}'"
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in documented, f"docs/cli.md does not mention {option} of 'revinterp {name}'"
