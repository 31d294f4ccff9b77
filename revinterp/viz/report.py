"""The self-contained HTML report of a run: the reversal curse and its explanation.

Reads the results that :func:`revinterp.pipeline.analyze` saved under ``RUN_DIR/analysis/`` (nothing here runs a
model), writes the findings from the measured numbers and renders one HTML page. Under the title, the cure the run
was trained with (:func:`cure_summary`: its training objective, data mitigation and scratch tokens, read from its
``training.json`` and ``facts.json``). Sections, in the order a reader asks:

1. Does the curse appear?  behaviour per split with intervals, against chance
2. Where is the forward fact?  activation patching, localization, logit attribution, logit lens,
   attention of the heads that matter
3. Why is there no reverse path?  reverse interventions, effective-weight asymmetry, probes, the gradient
   view, embedding starvation
4. What exactly is missing?  routing against the stored entry, and inserting the missing entry
5. How did it evolve?  behaviour and effective weights over the saved checkpoints
6. What does the evidence support?  the verdict, each line of evidence with its positive control

The page is safe to open whatever the facts are called: every string from facts, tokens, configs or saved JSON
is escaped for its context (HTML text and attributes with :func:`html.escape`; JSON inside ``<script>`` with
``<``, ``>``, ``&``, U+2028 and U+2029 as ``\\u`` escapes, so no data can close the script), the attention views
are rendered from their props by one inlined copy of the circuitsvis bundle (no iframe, no HTML from data), and a
Content-Security-Policy forbids every network load. plotly.js and circuitsvis are inlined: opened offline the
page makes no request.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from revinterp.analysis.verdict import p_text
from revinterp.data.facts import AUGMENTED
from revinterp.io import atomic_write_text
from revinterp.results import StageResult, load_results
from revinterp.stats import format_fixed as num

REPORT_FILE = "report.html"
WEIGHT_ENTRY = "End-to-end effective-weight entry Y[subject, answer] above its split's off-fact baseline"
"""The one name of the effective-weight quantity, in the reverse section (its level) and the dynamics (its change)."""
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "img-src data: blob:; font-src data:; connect-src 'none'; frame-src 'none'; "
                           "base-uri 'none'; form-action 'none'")


@dataclass
class Section:
    """One question of the report: its findings (sentences) and the stage's figures and views."""

    key: str
    title: str
    findings: list[str] = field(default_factory=list)
    result: StageResult | None = None


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` from the saved analyses (no model runs)."""
    from revinterp.data import FactSet
    from revinterp.models import FACTS_FILE, read_model_config
    from revinterp.training import read_training_config

    read_model_config(Path(run_dir))  # a directory that is not a run fails here, saying so
    info, stages = load_results(run_dir)
    summary = cure_summary(read_training_config(run_dir).objective, FactSet.load(Path(run_dir) / FACTS_FILE))
    sections = [
        Section("behaviour", "1. Does the reversal curse appear?", behaviour_findings(stages["behaviour"].numbers)),
        Section("forward", "2. Where is the forward fact stored?", forward_findings(stages["forward"].numbers)),
        Section("reverse", "3. Why is there no reverse path?", reverse_findings(stages["reverse"].numbers)),
        Section("missing", "4. What exactly is missing?", missing_findings(stages["missing"].numbers)),
        Section("dynamics", "5. How did it evolve over training?", dynamics_findings(stages["dynamics"].numbers)),
        Section("verdict", "6. What does the evidence support?", verdict_findings(stages["verdict"].numbers)),
    ]
    for section in sections:
        section.result = stages[section.key]
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, render_html(info["title"], summary, info["config"], sections))
    return path


OBJECTIVE_NAMES = {"next_token": "next-token training", "mlm_u": "MLM-U", "masked_causal": "masked-causal training",
                   "blank_infilling": "blank infilling"}
"""How the report names each training objective (:data:`revinterp.objectives.OBJECTIVES`)."""


def cure_summary(objective: str, facts) -> str:
    """The cure a run was trained with, from its files: its training objective, the data mitigation recorded in its
    fact set's source (with the augmented statements it added) and its scratch tokens, each "none" where absent."""
    source = facts.source
    mitigation = source.get("mitigation")
    if mitigation is None:
        data = "none"
    else:
        bridge = f"bridge relation {source['bridge_relation']}; " if "bridge_relation" in source else ""
        data = f"{mitigation} ({bridge}{len(facts.split(AUGMENTED))} augmented training statements)"
    k = source.get("scratch_tokens")
    return (f"Training objective: {OBJECTIVE_NAMES[objective]} ({objective}); data mitigation: {data}; scratch "
            f"tokens: {f'{k} before every answer' if k else 'none'}.")


# -- findings from the numbers ----------------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{num(100 * x, 1)} %"


def skipped(what: str, skip: dict) -> str:
    """``what: not run, since REASON (the numbers that decided it).``"""
    details = "; ".join(f"{key.replace('_', ' ')}: {describe(value)}" for key, value in skip.items() if key != "reason")
    return f"{what}: not run, since {skip['reason']}" + (f" ({details})." if details else ".")


def describe(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} ({v})" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def interval(est: dict) -> str:
    """A saved estimate (``{"mean", "low", "high"}`` or ``{"mean", "ci_low", "ci_high"}``) as
    ``mean [95 % CI low, high]``."""
    low, high = est.get("low", est.get("ci_low")), est.get("high", est.get("ci_high"))
    return f"{est['mean']:.3g} [95 % CI {low:.3g}, {high:.3g}]"


def behaviour_findings(numbers: dict) -> list[str]:
    findings = []
    for name, m in numbers["splits"].items():
        verdict = ""
        if not m["trained"] and "tests" in m:
            tests = m["tests"]
            verdict = (f"; one-sided tests: accuracy above chance p = {p_text(tests['accuracy_above_chance_p'])}, "
                       f"rank worse than chance p = {p_text(tests['rank_below_chance_p'])}, log-probability below "
                       f"uniform p = {p_text(tests['logprob_below_chance_p'])}")
        among = m.get("held_out_answers")
        if among:
            verdict += (f"; among the {among['n_candidates']} held-out answers only: accuracy "
                        f"{pct(among['accuracy'])} [95 % CI {pct(among['accuracy_ci'][0])}, "
                        f"{pct(among['accuracy_ci'][1])}] against chance {pct(among['chance_accuracy'])} (p = "
                        f"{p_text(among['accuracy_above_chance_p'])}), mean rank {num(among['mean_rank'], 1)} (chance "
                        f"{num(among['chance_mean_rank'], 1)})")
        findings.append(
            f"{name} ({'trained' if m['trained'] else 'held out'}, n={m['n']}): accuracy {pct(m['accuracy'])} "
            f"[95 % CI {pct(m['accuracy_ci'][0])}, {pct(m['accuracy_ci'][1])}] against chance "
            f"{pct(m['chance_accuracy'])}; mean rank {num(m['mean_rank'], 1)} of {m['n_candidates']} (chance "
            f"{num(m['chance_mean_rank'], 1)}); log-probability among candidates {num(m['logprob_candidates'])} "
            f"against uniform {num(m['uniform_logprob_candidates'])}" + verdict
        )
    overlap = numbers.get("overlap")
    if overlap is not None:
        if "skipped" in overlap:
            findings.append(skipped("Lexical overlap", overlap["skipped"]))
        else:
            def acc(e):
                return "no such question" if e is None else (f"{pct(e['accuracy'])} [95 % CI {pct(e['ci'][0])}, "
                                                             f"{pct(e['ci'][1])}] of {e['n']}")
            findings.append(
                f"Lexical overlap: {overlap['n_overlap']} of {overlap['n_questions']} held-out questions share a token "
                f"between subject and answer; accuracy with overlap {acc(overlap['accuracy_with_overlap'])}, without "
                f"{acc(overlap['accuracy_without_overlap'])}"
                + (f" (one-sided Fisher exact p = {overlap['shortcut_p']:.2g})" if overlap["shortcut_p"] is not None
                   else "") + ".")
    return findings


def forward_findings(numbers: dict) -> list[str]:
    prompts = numbers["prompts"]
    if "skipped" in prompts:
        return [skipped("Localization", prompts["skipped"])]
    length = prompts["prompt_length"]
    findings = [f"Prompt pairs: {prompts['n_pairs']} clean prompts of {prompts['split']}, each corrupted by another "
                "subject of the same split; metric: logit difference clean answer - corrupted answer."
                + (f" The prompts have several lengths; those of {length} tokens are used "
                   f"({prompts['n_prompts_left_out']} left out)." if length else "")
                + ("".join(f" {n} pair(s) left out: {reason.replace('_', ' ')}."
                           for reason, n in prompts.get("pairs_left_out", {}).items() if n))]
    sweeps = numbers["sweeps"]
    if "skipped" in sweeps:
        findings.append(skipped("Activation patching", sweeps["skipped"]))
    else:
        for component, strongest in sweeps["strongest"].items():
            findings.append(f"Denoising {component}: the strongest site is {strongest['site']}, restoring "
                            f"{num(strongest['normalized'])} of the clean logit difference (normalized: 0 corrupted, "
                            "1 clean).")
    located = numbers["localize"]
    if "skipped" in located:
        findings.append(skipped("Localization", located["skipped"]))
    else:
        findings.append(
            f"Restoring only {len(located['chosen'])} site(s) together (" + ", ".join(located["chosen"])
            + f"; chosen on {located['chosen_on']} prompt pairs) recovers {interval(located['recovered'])} of the "
              f"clean logit difference on the other {located['measured_on']}, measured by patching them jointly"
            + (f" - the target {located['target']:g} is reached." if located["reached"]
               else f" - short of the target {located['target']:g}.")
        )
    dla = numbers["dla"]
    if "skipped" in dla:
        findings.append(skipped("Direct logit attribution", dla["skipped"]))
    else:
        top = sorted(dla["parts"], key=lambda part: -abs(part["mean"]))[:3]
        findings.append("Direct logit attribution: the largest direct contributions to the logit difference are "
                        + ", ".join(f"{part['label']} ({num(part['mean'])})" for part in top)
                        + f" of a total {num(dla['total'])}.")
    circuit = numbers["circuit"]
    if "skipped" in circuit:
        findings.append(skipped("Circuit", circuit["skipped"]))
    else:
        findings.append(
            f"Circuit: {circuit['n_edges']} edges (at most {circuit['max_edges']}), found by edge attribution and "
            "pruning" + (f" of the {circuit['n_candidates']} edges it ranks highest" if "n_candidates" in circuit
                         else "")
            + f" on {circuit['n_discovery']} pairs, recover {interval(circuit['held_out_recovered_corrupted'])} "
            f"of the clean logit difference alone on the other {circuit['n_evaluation']} pairs (edges outside it get "
            f"the corrupted run's writes; {interval(circuit['held_out_recovered_mean'])} with mean writes): "
            + "; ".join(circuit["edges"]) + "."
        )
    lens = numbers["logit_lens"]
    if "skipped" in lens:
        findings.append(skipped("Logit lens", lens["skipped"]))
    else:
        findings.append("Logit lens: the answer first ranks top for most prompts at "
                        + (lens["first_majority_top"] or "no layer") + ".")
    if "skipped" in numbers["attention"]:
        findings.append(skipped("Attention views", numbers["attention"]["skipped"]))
    return findings


def reverse_findings(numbers: dict) -> list[str]:
    findings = []
    interventions = numbers["interventions"]
    if "skipped" in interventions:
        findings.append(skipped("Reverse interventions", interventions["skipped"]))
    else:
        chance = 100 * (1 - interventions["confidence"])
        for split in interventions["splits"]:
            r = interventions["per_split"][split]
            eq = r.get("equivalence")
            if split == interventions["seen"] or eq is None:
                verdict = "the positive control" if split == interventions["seen"] else "no seen split to compare"
            else:
                verdict = (f"{eq['verdict']} within +-{eq['margin']:.3g} (5 % of the seen-reverse effect; two "
                           f"one-sided tests p = {eq['p_equivalence']:.2g})")
                if eq["verdict"] == "undetermined":
                    verdict += f"; about {eq['n_needed']} pairs would be needed"
                if r["share_of_seen"] is not None:
                    verdict += f"; {100 * r['share_of_seen']:.1f} % of the seen-reverse effect"
            counts = "; ".join(f"{method}: {c['distinguishable']} of {c['tested']} sites distinguishable from zero "
                               f"({c['nested_groups']} nested group(s), {c['holm']} after Holm's correction)"
                               for method, c in r["counts"].items())
            findings.append(
                f"{split} ({r['n_pairs']} pairs): swapping the subject changes the logit difference (clean answer - "
                f"corrupted answer) by {interval(r['total'])}, {verdict}. {counts} (about {chance:.0f} % of sites "
                "without an effect exclude zero by chance)."
            )
    weights = numbers["weights"]
    if "skipped" in weights:
        findings.append(skipped("Effective weights", weights["skipped"]))
    else:
        findings += [f"{WEIGHT_ENTRY} of {split} at the end of training: {interval(est)}"
                     for split, est in weights["per_split"].items()]
    probes = numbers["probes"]
    if "skipped" in probes:
        findings.append(skipped("Probes", probes["skipped"]))
    else:
        selected = probes["selected"]
        if selected is None:
            findings.append(
                f"Linear probes for the subject's identity (input-embedding targets, at every layer's residual stream "
                f"and attention and MLP outputs): no site is selective (cross-validated accuracy on seen pairs minus "
                f"a control task at most {num(probes['max_selectivity'], 3)} over {probes['n_sites']} sites), so no "
                "site is named."
            )
        else:
            findings.append(
                f"Linear probes for the subject's identity: {probes['n_selective']} of {probes['n_sites']} sites are "
                f"selective; the most selective on cross-validation over seen pairs, {selected['layer']} at "
                f"{selected['position_label']} (selectivity {num(selected['selectivity'], 3)}), reads held-out pairs "
                f"{selected['test_hits']} of {selected['n_test']} times ({pct(selected['test_accuracy'])}, exact 95 % "
                f"CI {pct(selected['test_ci_low'])}, {pct(selected['test_ci_high'])}; chance "
                f"{pct(selected['chance'])}, one-sided p = {selected['p_value']:.2g})."
            )
    interchange = numbers["interchange"]
    if "skipped" in interchange:
        findings.append(skipped("Subspace interchange", interchange["skipped"]))
    else:
        rows = {(r["set"], r["intervention"]): r for r in interchange["rows"]}
        parts = []
        for set_name, what in (("seen", "seen reverse pairs (the positive control)"), ("held_out", "held-out pairs")):
            if (set_name, "subspace") not in rows:
                continue
            r = rows[set_name, "subspace"]
            controls = ", ".join(f"{i} {rows[set_name, i]['hits']}" for i in ("placebo", "random")
                                 if (set_name, i) in rows)
            parts.append(f"on {what} it moves the answer to the source's {r['hits']} of {r['n']} times (exact 95 % "
                         f"CI {pct(r['ci_low'])}, {pct(r['ci_high'])}; {controls})")
        findings.append(
            f"Interchanging a rank-{interchange['rank']} subspace ({interchange['method'].replace('_', ' ')}, "
            f"{interchange['hook']} at the subject, fitted on {interchange['n_fit']} seen pairs): " + "; ".join(parts)
            + "."
        )
    gradients = numbers["gradients"]
    if "skipped" in gradients:
        findings.append(skipped("Gradient view", gradients["skipped"]))
    else:
        findings += [f"One SGD step on a {split} statement moves the other direction's answer logit by "
                     f"{interval(est)} times what it moves its own." for split, est in gradients["per_split"].items()]
    starvation = numbers["starvation"]
    if "skipped" in starvation:
        findings.append(skipped("Embedding starvation", starvation["skipped"]))
        return findings
    shift = starvation["embed_shift"]
    findings.append(
        f"Embedding starvation: {starvation['n_starved']} of {starvation['n_held_out']} held-out questions have a "
        "subject that never appears as an input in training"
        + (f"; their subjects' embeddings moved {shift['held_out_subject']:.3f} against "
           f"{shift['trained_subject']:.3f} for trained subjects." if len(shift) == 2 else ".")
    )
    if starvation.get("held_out_answer_unembed_pull") is not None:
        findings.append(
            f"Answer-side starvation: {starvation['n_answer_starved']} of {starvation['n_held_out']} held-out "
            "questions have an answer that is never a training target; the held-out answers' unembeddings were "
            f"pulled up by {starvation['held_out_answer_unembed_pull']:.3g} and pushed down by "
            f"{starvation['held_out_answer_unembed_push']:.3g} (gradient norms summed over the checkpoints). Where "
            "both sides are starved, the held-out reverse question is impossible whatever the model learned: the "
            "--feed subject|answer|both controls feed one side, the other or both."
        )
    return findings


INSERTION_GROUPS = {"edited": "held-out reverse statements whose entry was inserted",
                    "untouched": "other held-out reverse statements (not edited)",
                    "forward": "forward statements", "reverse_seen": "seen reverse statements"}


def missing_findings(numbers: dict) -> list[str]:
    found = numbers["verdict"]
    if "skipped" in found:
        return [skipped("What is missing", found["skipped"])]
    findings = ["Storage heads (whose entries carry seen reverse facts): " + ", ".join(found["storage_heads"]) + "."]
    for split, r in found["splits"].items():
        routing, entry = r["routing_tost"], r["entry_tost"]
        findings.append(
            f"{split}: the storage heads attend to the subject with weight {num(r['attention_to_subject'])} "
            f"(against the seen-reverse mean: {routing['verdict']} within +-{routing['margin']:g}); their summed "
            f"entry is {r['entry']:.3g} ({entry['verdict']} within +-{entry['margin']:.3g}) - {r['verdict']}."
        )
    failed = [name for name, passed in found["controls"].items() if not passed]
    findings.append("Positive controls: " + ("all pass." if not failed else "FAILED: " + ", ".join(failed) + "."))
    insertion = found.get("insertion")
    if insertion:
        findings.append(f"Inserting the missing entry (rank-one edit of {', '.join(insertion['heads'])}, scaled to the "
                        "seen-reverse entries) " + ("restores" if insertion["restored"] else "does not restore")
                        + f" the held-out reverse answer (accuracy among {insertion['n_candidates']} candidates, exact "
                          "binomial 95 % CI):")
        for group, what in INSERTION_GROUPS.items():
            if group in insertion:
                g = insertion[group]
                findings.append(
                    f"{what} (n={g['n']}): accuracy {pct(g['accuracy_before']['mean'])} before, "
                    f"{pct(g['accuracy_after']['mean'])} [95 % CI {pct(g['accuracy_after']['ci_low'])}, "
                    f"{pct(g['accuracy_after']['ci_high'])}] after, {pct(g['accuracy_placebo']['mean'])} with the "
                    f"placebo; margin change {interval(g['margin_change_after'])} against "
                    f"{interval(g['margin_change_placebo'])} for the placebo."
                )
    return findings


def verdict_findings(numbers: dict) -> list[str]:
    found = numbers["verdict"]
    if "skipped" in found:
        return [skipped("Verdict", found["skipped"])]
    sides = found["starvation"]
    findings = [f"Verdict on {found['split']}: {found['statement']}."]
    if sides:
        findings.append(f"Starvation of the {sides['n_held_out']} held-out questions: subject input side "
                        f"{found['input_side']} ({sides['n_input_starved']} never an input), answer side "
                        f"{found['answer_side']} ({sides['n_answer_starved']} never a training target).")
    for line in found["lines"]:
        findings.append(f"{line['name']}: {line['finding']}" + (" (votes)" if line["votes"] else " (does not vote)")
                        + f" - {line['evidence']}"
                        + (f"; positive control {line['control']}: {line['control_evidence']}"
                           if line["control_evidence"] else "") + ".")
    findings += [f"Caveat: {caveat}." for caveat in found["caveats"]]
    return findings


def dynamics_findings(numbers: dict) -> list[str]:
    probability = numbers["probability"]
    if "skipped" in probability:
        findings = [skipped("Behaviour over training", probability["skipped"])]
    else:
        first, last = probability["steps"]
        findings = [f"p(answer) on {name}: {start:.3f} at step {first} -> {end:.3f} at step {last}."
                    for name, (start, end) in probability["per_split"].items()]
    weights = numbers["weights"]
    if "skipped" in weights:
        findings.append(skipped("Effective weights over training", weights["skipped"]))
    else:
        first, last = weights["steps"]
        findings += [f"Change of the {WEIGHT_ENTRY[0].lower()}{WEIGHT_ENTRY[1:]} of {split} from step {first} to "
                     f"{last}: {interval(est)}" for split, est in weights["per_split"].items()]
    return findings


# -- HTML -------------------------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .2em; }
.findings li { margin: .3em 0; } .caption { color: #555; font-size: .9em; }
nav a { margin-right: 1em; } table.config td { padding: 0 1em 0 0; font-size: .9em; vertical-align: top; }
.block { margin: 1.5em 0; }
"""


def script_json(data) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>``: no ``<``, ``>`` or ``&`` (so no ``</script>``
    or ``<!--``) and no U+2028/U+2029 (line terminators in older JavaScript), each written as a ``\\u`` escape."""
    text = json.dumps(data, allow_nan=False)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def inline_script(source: str) -> str:
    """A bundled library's source inlined in a ``<script>`` element: ``</script`` inside it (in strings or
    comments) written ``<\\/script``, which means the same to JavaScript and cannot close the element."""
    return "<script>" + source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT") + "</script>"


def render_html(title: str, summary: str, config: dict, sections: list[Section]) -> str:
    """The whole report as one HTML page with every script and style inlined; ``summary`` (the run's cure,
    :func:`cure_summary`) under the title."""
    import plotly.offline

    esc = html.escape
    has_views = any(section.result.views for section in sections)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CONTENT_SECURITY_POLICY}\">",
        f"<title>{esc(title)}</title><style>{STYLE}</style>",
        inline_script(plotly.offline.get_plotlyjs()),
        inline_script(circuitsvis_bundle()) if has_views else "",
        f"</head><body><h1>{esc(title)}</h1><p class='summary'>{esc(summary)}</p>",
        "<nav>" + "".join(f"<a href='#{esc(s.key, quote=True)}'>{esc(s.title)}</a>" for s in sections) + "</nav>",
    ]
    for section in sections:
        parts.append(f"<section id='{esc(section.key, quote=True)}'><h2>{esc(section.title)}</h2>")
        if section.findings:
            parts.append("<ul class='findings'>" + "".join(f"<li>{esc(f)}</li>" for f in section.findings) + "</ul>")
        for figure in section.result.figures:
            div = f"fig-{section.key}-{figure.name}"
            parts.append(f"<div class='block'><h3>{esc(figure.title)}</h3><div id='{esc(div, quote=True)}'></div>"
                         f"<script>(function(){{var f={script_json(figure.spec)};Plotly.newPlot({script_json(div)},"
                         "f.data,f.layout,{responsive:true,displaylogo:false});})();</script>")
            parts.append(caption(figure.caption) + "</div>")
        for view in section.result.views:
            div = f"view-{section.key}-{view.name}"
            parts.append(f"<div class='block'><h3>{esc(view.title)}</h3><div id='{esc(div, quote=True)}'></div>"
                         f"<script>CircuitsVis.render({script_json(div)},CircuitsVis[{script_json(view.element)}],"
                         f"{script_json(view.props)});</script>")
            parts.append(caption(view.caption) + "</div>")
        parts.append("</section>")
    parts.append("<section id='config'><h2>Configuration</h2><table class='config'>"
                 "<tr><th>field</th><th>value</th></tr>")
    for key, value in flatten(config):
        parts.append(f"<tr><td>{esc(key)}</td><td>{esc(value)}</td></tr>")
    parts.append("</table></section></body></html>")
    return "\n".join(parts)


def flatten(config: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested configuration as ``(field, value)`` rows: ``("model.n_layers", "2")``; lists joined by commas."""
    rows = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(map(str, value))))
        else:
            rows.append((name, "none" if value is None else str(value)))
    return rows


def caption(text: str) -> str:
    return f"<p class='caption'>{html.escape(text)}</p>" if text else ""


def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle that defines the ``CircuitsVis`` global (the one ``.local_src`` inlines)."""
    import circuitsvis

    return (Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js").read_text(encoding="utf-8")
