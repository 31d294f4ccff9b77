"""The report: built from a tiny run, every section present, offline, rebuilt without a model, rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from revinterp.cli import main
from revinterp.pipeline import analyze
from revinterp.results import STAGES, ResultsError, load_results
from revinterp.viz.report import write_report

SECTIONS = ("behaviour", "forward", "reverse", "missing", "dynamics", "verdict")
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
    saved = analyze(run_dir, device="cpu", progress=False)
    write_report(run_dir)
    return run_dir, saved


def test_analyses_are_saved_per_stage_and_the_report_shows_them(analysed_run):
    run_dir, saved = analysed_run
    assert tuple(saved) == STAGES == SECTIONS
    assert all(path.parent == run_dir / "analysis" for path in saved.values())
    info, stages = load_results(run_dir)
    assert info["config"]["model"]["n_layers"] == 1
    page = (run_dir / "report.html").read_text()
    for key in SECTIONS:
        assert f"<section id='{key}'>" in page
        assert stages[key].figures or key == "verdict", key  # the verdict is sentences from the others' numbers
    assert page.count("Plotly.newPlot(") == sum(len(s.figures) for s in stages.values())
    views = [v for s in stages.values() for v in s.views]
    assert views and page.count("CircuitsVis.render(") == len(views)  # circuitsvis attention views
    assert page.count("CircuitsVis=") <= 1 and "<iframe" not in page  # one copy of the bundle, no frames
    assert "reverse_held_out" in page and "chance" in page


def test_a_plain_run_says_next_token_training_and_no_mitigation(analysed_run):
    run_dir, _ = analysed_run
    assert json.loads((run_dir / "training.json").read_text())["training"]["objective"] == "next_token"
    assert "mitigation" not in json.loads((run_dir / "facts.json").read_text())["source"]
    page = (run_dir / "report.html").read_text()
    assert ("<h1>The reversal curse in run</h1><p class='summary'>Training objective: next-token training "
            "(next_token); data mitigation: none; scratch tokens: none.</p>") in page


@pytest.fixture(scope="module")
def cured_run(tmp_path_factory):
    """A tiny run trained with a mitigation, scratch tokens after it and a masked objective, by `revinterp run`
    (the masked objective skips the prompt-reading analyses, so it is quick)."""
    run_dir = tmp_path_factory.mktemp("cured") / "run"
    assert main(["run", "--preset", "tiny", "--n-pairs", "12", "--steps", "30", "--mitigation", "reverse_entity",
                 "--scratch-tokens", "2", "--objective", "masked_causal", "--out", str(run_dir), "--quiet",
                 "--device", "cpu"]) == 0
    return run_dir


def test_the_report_shows_the_cure_of_its_run(cured_run):
    assert json.loads((cured_run / "training.json").read_text())["training"]["objective"] == "masked_causal"
    manifest = json.loads((cured_run / "facts.json").read_text())
    assert manifest["source"]["mitigation"] == "reverse_entity" and manifest["source"]["scratch_tokens"] == 2
    augmented = [s for s in manifest["statements"] if s["split"] == "augmented"]
    trained = [s for s in manifest["statements"] if s["split"] in ("forward_seen", "reverse_seen", "forward_only",
                                                                   "reverse_only")]
    assert len(augmented) == len(trained) == 20  # one reversed statement per trained one
    page = (cured_run / "report.html").read_text()
    assert ("<p class='summary'>Training objective: masked-causal training (masked_causal); data mitigation: "
            "reverse_entity (20 augmented training statements); scratch tokens: 2 before every answer.</p>") in page


def test_the_cure_is_read_from_the_run_files_and_escaped(cured_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(cured_run, run_dir)
    (run_dir / "model.safetensors").unlink()  # no model needed
    path = run_dir / "facts.json"
    manifest = json.loads(path.read_text())
    manifest["source"].update(mitigation="<script>alert(1)</script>", scratch_tokens="<b>5</b>")
    path.write_text(json.dumps(manifest))
    page = write_report(run_dir).read_text()
    assert "<script>alert(1)</script>" not in page and "<b>5</b>" not in page
    assert ("data mitigation: &lt;script&gt;alert(1)&lt;/script&gt; (20 augmented training statements); scratch "
            "tokens: &lt;b&gt;5&lt;/b&gt; before every answer.") in page


def test_cure_summary_names_every_objective_and_the_bridge_relation():
    from revinterp.data import apply_mitigation, seed_experiment
    from revinterp.objectives import OBJECTIVES
    from revinterp.viz.report import OBJECTIVE_NAMES, cure_summary

    assert tuple(OBJECTIVE_NAMES) == OBJECTIVES
    facts = apply_mitigation(seed_experiment(6, seed=0), "identity_bridge", bridge_relation="identity")
    n = sum(s.split == "augmented" for s in facts.statements)
    assert n == 12  # every entity once: 6 subjects and 6 answers
    assert cure_summary("blank_infilling", facts) == (
        "Training objective: blank infilling (blank_infilling); data mitigation: identity_bridge (bridge relation "
        "identity; 12 augmented training statements); scratch tokens: none.")
    assert cure_summary("mlm_u", seed_experiment(6, seed=0)) == (
        "Training objective: MLM-U (mlm_u); data mitigation: none; scratch tokens: none.")


def test_the_verdict_judges_the_held_out_split_from_every_line(analysed_run):
    run_dir, _ = analysed_run
    _, stages = load_results(run_dir)
    found = stages["verdict"].numbers["verdict"]
    assert found["split"] == "reverse_held_out"
    assert [line["name"] for line in found["lines"]] == ["behaviour", "interventions", "effective weights", "probes",
                                                         "interchange", "what is missing"]
    assert found["input_side"] == found["answer_side"] == "starved"  # the seed setup starves both sides
    assert found["reverse_path"] in ("absent", "inconclusive")
    assert f"Verdict on reverse_held_out: {found['statement']}" in (run_dir / "report.html").read_text()


def test_saved_numbers_are_the_analyses_numbers(analysed_run, tiny_run):
    from revinterp.evaluation import evaluate
    from revinterp.viz.report import behaviour_findings

    run_dir, _ = analysed_run
    _, stages = load_results(run_dir)
    held_out = evaluate(tiny_run.model, tiny_run.facts)["reverse_held_out"]
    assert stages["behaviour"].numbers["splits"]["reverse_held_out"] == held_out.metrics()
    line = next(f for f in behaviour_findings(stages["behaviour"].numbers) if f.startswith("reverse_held_out"))
    assert f"accuracy {100 * held_out.accuracy.mean:.1f} %" in line
    assert f"chance {100 * held_out.chance_accuracy:.1f} %" in line
    page = (run_dir / "report.html").read_text()
    assert html_text(line) in page


def html_text(text: str) -> str:
    import html

    return html.escape(text)


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
    data = json.loads((old / "analysis" / "forward.json").read_text())
    data["results_version"] = 0
    (old / "analysis" / "forward.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="version 0"):
        load_results(old)
    assert main(["report", str(old)]) == 2
    assert "forward.json: results of version 0" in capsys.readouterr().err
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


HOSTILE_NAMES = ("</script><svg/onload=document.title='pwned'>", "<img/src=x/onerror=document.title='pwned'>",
                 "</SCRIPT><!--", "&lt;b&gt;&amp;")


def test_script_json_cannot_close_a_script():
    from revinterp.viz.report import inline_script, script_json

    text = script_json({"a": "</script><!--\u2028\u2029&"})
    assert json.loads(text) == {"a": "</script><!--\u2028\u2029&"}  # the same data
    assert not set("<>&\u2028\u2029") & set(text)
    assert "</script" not in inline_script("var s = '</script>'; var t = '</SCRIPT>';")[8:-9].lower()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A tiny run whose entities are named to break out of HTML, attributes and scripts."""
    folder = tmp_path_factory.mktemp("hostile")
    rows = ["subject,relation,object,inverse"]
    rows += [f"{HOSTILE_NAMES[i % 4]}{i},is_r,o{i}\"'x,rev_r" for i in range(24)]
    (folder / "facts.csv").write_text("\n".join(rows) + "\n")
    run_dir = folder / "run"
    assert main(["train", "--facts", str(folder / "facts.csv"), "--preset", "tiny", "--steps", "150",
                 "--out", str(run_dir), "--quiet"]) == 0
    assert main(["analyze", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_hostile_names_are_text_in_the_report(hostile_run):
    page = (hostile_run / "report.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for name in HOSTILE_NAMES:
        assert name not in page  # every occurrence is escaped for its context
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    # every <script> element closes where it should: its text holds no closing tag or comment opener
    assert all("</script" not in s.lower() and "<!--" not in s for s in scripts)
    assert "<svg/onload" not in page and "<img/src" not in page


def test_tampered_results_cannot_inject_or_read_files(analysed_run, tmp_path):
    run_dir, _ = analysed_run
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    path = bad / "analysis" / "forward.json"
    original = path.read_text()
    for tamper, message in [
        (lambda d: d["figures"][0].update(name="x'><script>alert(1)</script>"), "lowercase identifier"),
        (lambda d: d["views"][0].update(element="../../../../etc/passwd"), "expected one of"),
        (lambda d: d.update(figures={"a": 1}), "field 'figures' is a dict; expected list"),
        (lambda d: d["figures"][0].update(spec="<script>"), "field 'spec' is a str; expected dict"),
        (lambda d: d.pop("numbers"), "no field 'numbers'"),
    ]:
        data = json.loads(original)
        tamper(data)
        path.write_text(json.dumps(data))
        with pytest.raises(ResultsError, match=re.escape(message)):
            load_results(bad)
    data = json.loads(original)
    data["figures"][0]["title"] = "</h3><script>document.title='pwned'</script>"
    data["figures"][0]["spec"]["layout"]["title"] = {"text": "</script><script>document.title='pwned'</script>"}
    path.write_text(json.dumps(data))
    write_report(bad)
    page = (bad / "report.html").read_text()
    assert "<script>document.title" not in page and "</script><script>" not in page


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it where apt can)")
def test_no_injected_script_runs_in_chromium(hostile_run, tmp_path):
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
         (hostile_run / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    dom = result.stdout
    assert "<title>The reversal curse in run</title>" in dom  # no payload rewrote the title
    assert 'onload="' not in dom and 'onerror="' not in dom  # the payloads are text, never elements
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    # nothing tried to load from anywhere (the Content-Security-Policy would refuse it and say so) and no error
    assert not [line for line in console if re.search(r"Content Security Policy|Refused|Uncaught|Error", line)], console


def test_one_value_per_quantity_in_the_report(analysed_run):
    """No quantity is printed with two values: every 'label: value [95 % CI ...]' in the findings has one value."""
    import html as html_module

    run_dir, _ = analysed_run
    page = (run_dir / "report.html").read_text()
    findings = [html_module.unescape(f) for f in re.findall(r"<li>(.*?)</li>", page, flags=re.DOTALL)]
    values: dict[str, set[str]] = {}
    for finding in findings:
        for label, value in re.findall(r"([^.;:()]+?)(?::| by) (-?[\d.]+(?:e[-+]?\d+)?) \[95 % CI", finding):
            values.setdefault(label.strip(), set()).add(value)
    assert values and all(len(v) == 1 for v in values.values()), {k: v for k, v in values.items() if len(v) > 1}
    weights = [f for f in findings if "Y[subject, answer]" in f]
    assert weights and all("above its split's off-fact baseline" in f for f in weights)
    texts = findings + re.findall(r'"text": "([^"]*)"', page)  # findings and figure titles: the formatted numbers
    assert not [t for t in texts if re.search(r"-0\.0+(?![0-9e])", t)]  # never a negative zero


def test_no_probe_site_is_named_among_chance_scores():
    import torch

    from revinterp.pipeline import probe_numbers
    from revinterp.viz.report import reverse_findings, skipped

    class Site:
        def to_numbers(self):
            return dict(layer="L1 attn_out", position_label="<-", selectivity=0.4, test_hits=3, n_test=7,
                        test_accuracy=3 / 7, test_ci_low=0.1, test_ci_high=0.8, chance=0.05, p_value=0.003)

    class Probes:
        chance = 0.05
        selected_site = Site()

        def __init__(self, selectivity):
            self.selectivity = torch.tensor(selectivity)

    flat = probe_numbers(Probes([[0.0, -0.02], [-0.01, 0.0]]))  # every site at or below its control task
    assert flat["selected"] is None and flat["n_selective"] == 0
    one = probe_numbers(Probes([[0.0, 0.4], [-0.01, 0.0]]))
    assert one["selected"]["layer"] == "L1 attn_out" and one["n_selective"] == 1
    numbers = {"interventions": {"skipped": {"reason": "r", "split_sizes": {"reverse_seen": 1}}},
               "weights": {"skipped": {"reason": "the entities have several tokens", "max_tokens_per_entity": 2}},
               "probes": flat, "interchange": {"skipped": {"reason": "too few", "split_sizes": {"reverse_seen": 3}}},
               "gradients": {"per_split": {}}, "starvation": {"n_starved": 0, "n_held_out": 3, "embed_shift": {}}}
    findings = reverse_findings(numbers)
    assert any("no site is selective" in f and "no site is named" in f for f in findings)
    numbers["probes"] = one
    assert any("1 of 4 sites are selective" in f and "3 of 7 times" in f for f in reverse_findings(numbers))
    assert "Effective weights: not run, since the entities have several tokens (max tokens per entity: 2)." in findings
    assert skipped("Probes", {"reason": "lengths differ", "prompt_lengths": {3: 10, 5: 2}}) == (
        "Probes: not run, since lengths differ (prompt lengths: 3 (10), 5 (2)).")


def test_an_analysis_that_fails_is_recorded_and_the_others_complete(tiny_run_dir, tmp_path, monkeypatch, capsys):
    import revinterp.analysis.dla as dla_module

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(dla_module, "direct_logit_attribution", broken)
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    assert main(["analyze", str(run_dir), "--quiet", "--max-pairs", "8"]) == 0
    assert "forward.dla did not run: it failed with RuntimeError: planted failure" in capsys.readouterr().err
    _, stages = load_results(run_dir)
    forward = stages["forward"].numbers
    assert forward["dla"]["skipped"]["failed"] and "skipped" in forward["attention"]  # its dependant says why
    assert "skipped" not in forward["localize"] and "skipped" not in forward["logit_lens"]
    assert {f.name for f in stages["forward"].figures} >= {"localize", "logit_lens"}
    assert "dla" not in {f.name for f in stages["forward"].figures}
    page = (run_dir / "report.html").read_text()
    assert "Direct logit attribution: not run, since it failed with RuntimeError: planted failure" in page


@pytest.mark.parametrize("counts, expected", [({3: 10}, None), ({3: 10, 5: 20, 11: 30}, 5), ({3: 10, 4: 2}, 3)])
def test_prompts_longer_than_the_context_are_left_out(monkeypatch, counts, expected):
    from types import SimpleNamespace

    import revinterp.pipeline as pipeline

    monkeypatch.setattr(pipeline, "prompt_lengths", lambda run, splits: counts)
    run = SimpleNamespace(config=SimpleNamespace(n_ctx=10))
    assert pipeline.prompt_length_for(run, ("reverse_seen",)) == expected  # the most common length that fits
    monkeypatch.setattr(pipeline, "prompt_lengths", lambda run, splits: {11: 4})
    with pytest.raises(pipeline.Skip, match="longer than the model's context of 10"):
        pipeline.prompt_length_for(run, ("reverse_seen",))
