"""The report: built from a tiny run, every section present, offline, rebuilt without a model, rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from revinterp.cli import main
from revinterp.viz.report import REPORT_DATA, Report, ReportError, analyze, write_report

SECTIONS = ("behaviour", "forward", "reverse", "dynamics")
# what would make the browser fetch: an element that loads a URL, a CSS url() or @import, an ES import from a URL
# (plain links <a href> load nothing; plotly.js holds some in its strings, e.g. its logo link)
EXTERNAL = re.compile(
    r"<(?:script|img|iframe|link|source|video|audio|embed|object)\b[^>]*\b(?:src|href|data)\s*=\s*[\"']?\s*(?:https?:)?//"
    r"|url\(\s*[\"']?\s*(?:https?:)?//|@import\s+(?:url\()?\s*[\"']?\s*(?:https?:)?//"
    r"|\bimport\b[^;]{0,200}?\bfrom\s*[\"'](?:https?:)?//",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def analysed_run(tiny_run_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    report = analyze(run_dir, device="cpu", progress=False)
    report.save(run_dir)
    write_report(run_dir)
    return run_dir, report


def test_report_has_every_section_with_findings_and_figures(analysed_run):
    run_dir, report = analysed_run
    assert [s.key for s in report.sections] == list(SECTIONS)
    for section in report.sections:
        assert section.findings and section.blocks, section.key
    page = (run_dir / "report.html").read_text()
    for key in SECTIONS:
        assert f"<section id='{key}'>" in page
    assert page.count("Plotly.newPlot(") == sum(b.kind == "plotly" for s in report.sections for b in s.blocks)
    assert "<iframe class='view'" in page  # circuitsvis attention views
    behaviour = report.sections[0]
    assert any("reverse_held_out" in f and "chance" in f for f in behaviour.findings)


def test_findings_follow_the_numbers(analysed_run, tiny_run):
    from revinterp.evaluation import evaluate

    _, report = analysed_run
    held_out = evaluate(tiny_run.model, tiny_run.facts)["reverse_held_out"]
    line = next(f for f in report.sections[0].findings if f.startswith("reverse_held_out"))
    assert f"accuracy {100 * held_out.accuracy.mean:.1f} %" in line
    assert f"chance {100 * held_out.chance_accuracy:.1f} %" in line


def test_report_makes_no_network_request(analysed_run):
    run_dir, _ = analysed_run
    page = (run_dir / "report.html").read_text()
    assert not EXTERNAL.findall(page)
    for fetching in ('<script src="https://cdn.example/x.js">', "@import url(https://fonts.example/css)",
                     '<link rel="stylesheet" href="//cdn.example/s.css">', 'import {x} from "https://unpkg.com/m.js"'):
        assert EXTERNAL.search(fetching), fetching  # the pattern does catch what would fetch
    assert not EXTERNAL.search('<a href="https://plotly.com/">plotly</a>')


def test_report_rebuilds_from_saved_analyses(analysed_run, tmp_path):
    run_dir, _ = analysed_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "model.safetensors").unlink()  # no model needed to rebuild
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_text() == (run_dir / "report.html").read_text()


def test_report_errors(analysed_run, tmp_path, capsys):
    run_dir, _ = analysed_run
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare)
    shutil.rmtree(bare / "analysis")
    assert main(["report", str(bare)]) == 2
    assert "no saved analyses" in capsys.readouterr().err
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    data = json.loads((old / "analysis" / REPORT_DATA).read_text())
    data["report_version"] = 0
    (old / "analysis" / REPORT_DATA).write_text(json.dumps(data))
    with pytest.raises(ReportError, match="report version 0"):
        Report.load(old)
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it where apt can)")
def test_report_renders_in_headless_chromium(analysed_run, tmp_path):
    from PIL import Image

    run_dir, _ = analysed_run
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1200,2400",
         "--virtual-time-budget=15000", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if re.search(r"Uncaught|Error|error|Failed", line)], console
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert high - low > 100  # not blank: text and figures drawn
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram)  # no single shade covers the page
