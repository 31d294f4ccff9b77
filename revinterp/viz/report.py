"""The self-contained HTML report of a run: the reversal curse and its explanation.

:func:`analyze` runs the analyses on a trained run and gathers, per question a reader asks, the
figures (plotly JSON), the attention views (circuitsvis) and findings written from the measured
numbers; :meth:`Report.save` keeps them under ``RUN_DIR/analysis/`` so :func:`write_report` can
rebuild ``report.html`` without retraining or re-analysing. The HTML inlines plotly.js and the
circuitsvis bundle (``.local_src``): opened offline it makes no network request.

Sections, in the order a reader asks:

1. Does the curse appear?  behaviour per split with intervals, against chance
2. Where is the forward fact?  activation patching, localization, logit attribution, logit lens,
   attention of the heads that matter
3. Why is there no reverse path?  reverse patching, effective-weight asymmetry, probes, the gradient
   view, embedding starvation
4. How did it evolve?  behaviour and effective weights over the saved checkpoints
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from revinterp.io import atomic_write_text

REPORT_VERSION = 1
ANALYSIS_DIR = "analysis"
REPORT_DATA = "report.json"
REPORT_FILE = "report.html"


class ReportError(ValueError):
    """A directory without saved analyses, or analyses written by an incompatible version."""


@dataclass
class Block:
    """One figure (``kind="plotly"``, ``content`` = figure JSON) or HTML view (``kind="html"``)."""

    name: str
    title: str
    kind: str
    content: str
    caption: str = ""


@dataclass
class Section:
    key: str
    title: str
    findings: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def figure(self, name: str, title: str, figure, caption: str = "") -> None:
        self.blocks.append(Block(name, title, "plotly", figure.to_json(), caption))


@dataclass
class Report:
    """Sections of findings and figures, plus the run's configuration and versions."""

    title: str
    config: dict
    sections: list[Section]

    def save(self, run_dir: str | Path) -> Path:
        """Write ``RUN_DIR/analysis/report.json`` (figures inline, HTML views as files beside it)."""
        out = Path(run_dir) / ANALYSIS_DIR
        data = {"report_version": REPORT_VERSION, "title": self.title, "config": self.config, "sections": []}
        for section in self.sections:
            blocks = []
            for block in section.blocks:
                entry = asdict(block)
                if block.kind == "html":  # circuitsvis views carry a 1 MB bundle each: keep them as files
                    atomic_write_text(out / f"{block.name}.html", block.content)
                    entry["content"] = f"{block.name}.html"
                blocks.append(entry)
            data["sections"].append({"key": section.key, "title": section.title, "findings": section.findings,
                                     "blocks": blocks})
        atomic_write_text(out / REPORT_DATA, json.dumps(data))
        return out / REPORT_DATA

    @classmethod
    def load(cls, run_dir: str | Path) -> Report:
        from revinterp.models import read_model_config

        read_model_config(Path(run_dir))  # a directory that is not a run fails here, saying so
        path = Path(run_dir) / ANALYSIS_DIR / REPORT_DATA
        if not path.is_file():
            raise ReportError(f"{run_dir}: no saved analyses ({path}); run 'revinterp analyze {run_dir}' first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from None
        if data.get("report_version") != REPORT_VERSION:
            raise ReportError(f"{path}: analyses of report version {data.get('report_version')!r}; this revinterp "
                              f"reads version {REPORT_VERSION}: run 'revinterp analyze {run_dir}' again")
        sections = []
        for s in data["sections"]:
            blocks = []
            for b in s["blocks"]:
                if b["kind"] == "html":
                    view = path.parent / b["content"]
                    if not view.is_file():
                        raise ReportError(f"{path}: missing view {view}")
                    b = {**b, "content": view.read_text()}
                blocks.append(Block(**b))
            sections.append(Section(s["key"], s["title"], s["findings"], blocks))
        return cls(data["title"], data["config"], sections)


# -- HTML -----------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: .2em; }
.findings li { margin: .3em 0; } .caption { color: #555; font-size: .9em; }
nav a { margin-right: 1em; } table.config td { padding: 0 1em 0 0; font-size: .9em; vertical-align: top; }
.block { margin: 1.5em 0; } iframe.view { width: 100%; height: 560px; border: 1px solid #ddd; }
"""


def render_html(report: Report) -> str:
    """The whole report as one HTML page with every script and style inlined."""
    import plotly.offline

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{STYLE}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        "<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in report.sections) + "</nav>",
    ]
    for section in report.sections:
        parts.append(f"<section id='{section.key}'><h2>{html.escape(section.title)}</h2>")
        if section.findings:
            parts.append("<ul class='findings'>" + "".join(f"<li>{html.escape(f)}</li>" for f in section.findings)
                         + "</ul>")
        for block in section.blocks:
            parts.append(f"<div class='block'><h3>{html.escape(block.title)}</h3>")
            if block.kind == "plotly":
                div = f"fig-{section.key}-{block.name}"
                parts.append(f"<div id='{div}'></div><script type='text/javascript'>"
                             f"(function(){{var f={block.content};Plotly.newPlot('{div}',f.data,f.layout,"
                             "{responsive:true,displaylogo:false});})();</script>")
            else:  # an isolated frame: each circuitsvis view brings its own copy of the bundle
                parts.append(f"<iframe class='view' srcdoc=\"{html.escape(block.content, quote=True)}\"></iframe>")
            if block.caption:
                parts.append(f"<p class='caption'>{html.escape(block.caption)}</p>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append("<section id='config'><h2>Configuration</h2><table class='config'>")
    for key, value in report.config.items():
        parts.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(json.dumps(value))}</td></tr>")
    parts.append("</table></section></body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Rebuild ``RUN_DIR/report.html`` from the saved analyses (no model runs)."""
    report = Report.load(run_dir)
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, render_html(report))
    return path


# -- the analyses ---------------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def interval(est) -> str:
    return f"{est.mean:.3g} [95 % CI {est.low:.3g}, {est.high:.3g}]"


def first_split(facts, names: tuple[str, ...]) -> str | None:
    for name in names:
        if len(facts.split(name)) >= 2:
            return name
    return None


MULTI_TOKEN_WEIGHTS = ("Effective weights: not computed, since they are token-to-token maps and the entities have "
                       "several tokens.")


def common_prompt_length(run, splits) -> int | None:
    """The prompt length shared by most statements of ``splits`` when their prompts have several lengths (patching
    needs one), else None."""
    from revinterp.analysis.prompts import prompt_length_counts

    counts: dict[int, int] = {}
    for split in splits:
        for length, n in prompt_length_counts(run.facts, split, run.tokenizer).items():
            counts[length] = counts.get(length, 0) + n
    return max(counts, key=counts.get) if len(counts) > 1 else None


FORWARD_SPLITS = ("forward_seen", "forward_only", "chain_first_hop")
SEEN_REVERSE_SPLITS = ("reverse_seen", "reverse_only")
HELD_OUT_SPLITS = ("reverse_held_out", "forward_held_out", "chain_composed_held_out")


def analyze(run_dir: str | Path, *, device=None, progress: bool = True, max_pairs: int = 200) -> Report:
    """Run every analysis on a trained run and gather the report's sections (see the module docstring).

    ``max_pairs`` caps the prompt pairs per split of the patching analyses.
    """
    from revinterp.models import load_run
    from revinterp.training import read_training_config, versions

    run = load_run(run_dir, device=device)
    steps: list[tuple[str, Callable[[], Section]]] = [
        ("behaviour", lambda: behaviour_section(run)),
        ("forward fact", lambda: forward_section(run, max_pairs, progress)),
        ("reverse path", lambda: reverse_section(run, run_dir, max_pairs, progress)),
        ("dynamics", lambda: dynamics_section(run_dir, device, run.facts)),
    ]
    sections = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="analyses", unit="section")
    for name, build in steps:
        if bar is not None:
            bar.set_postfix_str(name)
        sections.append(build())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    config = {
        "run directory": str(run_dir),
        "facts": run.facts.source,
        "model": asdict(run.config),
        "training": asdict(read_training_config(run_dir)),
        "versions": versions(),
    }
    return Report(f"The reversal curse in {Path(run_dir).name}", config, sections)


def behaviour_section(run) -> Section:
    from revinterp.evaluation import evaluate

    behaviour = evaluate(run.model, run.facts)
    section = Section("behaviour", "1. Does the reversal curse appear?")
    for name, sb in behaviour.splits.items():
        m = sb.metrics()
        acc = sb.accuracy
        verdict = ""
        if not sb.trained:
            above = acc.low > m["chance_accuracy"]
            verdict = (" - above chance: a path for this direction exists" if above
                       else " - not distinguishable from chance or below it")
        section.findings.append(
            f"{name} ({'trained' if sb.trained else 'held out'}, n={m['n']}): accuracy {pct(acc.mean)} "
            f"[95 % CI {pct(acc.low)}, {pct(acc.high)}] against chance {pct(m['chance_accuracy'])}; mean rank "
            f"{m['mean_rank']:.1f} of {m['n_candidates']} (chance {m['chance_mean_rank']:.1f}); log-probability "
            f"among candidates {m['logprob_candidates']:.2f} against uniform {m['uniform_logprob_candidates']:.2f}"
            + verdict
        )
    section.figure("behaviour", "Accuracy per split", behaviour.plot(),
                   "Top-1 accuracy among the M candidate answers; markers show chance 1/M.")
    return section


def forward_section(run, max_pairs: int, progress: bool = False) -> Section:
    from revinterp.analysis.attribution import direct_logit_attribution, logit_lens
    from revinterp.analysis.patching import SWEEP_COMPONENTS, localize, patch_sweeps
    from revinterp.analysis.prompts import make_prompt_pairs

    section = Section("forward", "2. Where is the forward fact stored?")
    split = first_split(run.facts, FORWARD_SPLITS)
    if split is None:
        section.findings.append("No trained forward split with two or more facts: nothing to localize.")
        return section
    length = common_prompt_length(run, (split,))
    pairs = make_prompt_pairs(run.facts, split, run.tokenizer, max_pairs=max_pairs, prompt_length=length)
    section.findings.append(f"Prompt pairs: {len(pairs)} clean prompts of {split}, each corrupted by another "
                            "subject of the same split; metric: logit difference clean answer - corrupted answer."
                            + (f" The prompts have several lengths; those of {length} tokens are used." if length
                               else ""))
    sweeps = patch_sweeps(run.model, pairs, SWEEP_COMPONENTS, progress=progress)
    for component, result in sweeps.items():
        (site, value), *_ = result.top(1)
        section.findings.append(
            f"Denoising {component}: the strongest site is {site.label(pairs.labels)}, restoring "
            f"{value:.2f} of the clean logit difference (normalized: 0 corrupted, 1 clean)."
        )
        section.figure(f"patch_{component}", f"Activation patching (denoising): {component}", result.plot())
    located = localize(run.model, pairs, target=0.8)
    est = located.recovered_ci()
    section.findings.append(
        f"Restoring only {len(located.chosen)} site(s) together ("
        + ", ".join(s.label(pairs.labels) for s in located.chosen)
        + f") recovers {interval(est)} of the clean logit difference, measured by patching them jointly"
        + (" - the target 0.8 is reached." if located.reached else " - short of the target 0.8.")
    )
    section.figure("localize", "Localization: recovered fraction as sites are restored together", located.plot())
    dla = direct_logit_attribution(run.model, pairs)
    mean = dla.mean()
    order = mean.abs().argsort(descending=True).tolist()
    section.findings.append(
        "Direct logit attribution: the largest direct contributions to the logit difference are "
        + ", ".join(f"{dla.labels[i]} ({mean[i].item():.2f})" for i in order[:3])
        + f" of a total {dla.total.mean().item():.2f}."
    )
    section.figure("dla", "Direct logit attribution", dla.plot())
    lens = logit_lens(run.model, pairs)
    accuracy = lens.accuracy
    first = next((lens.labels[i] for i in range(len(lens.labels)) if accuracy[i] >= 0.5), None)
    section.findings.append(
        "Logit lens: the answer first ranks top for most prompts at " + (first or "no layer") + "."
    )
    section.figure("logit_lens", "Logit lens: answer log-probability after every layer", lens.plot())
    heads = [dla.labels[i] for i in order if dla.kinds[i] == "head"][:3]
    title = f"Attention of the heads with the largest direct effect ({', '.join(heads)}) on a forward prompt"
    section.blocks.append(attention_block(run, pairs, heads, "attention_forward", title))
    held_out = first_split(run.facts, HELD_OUT_SPLITS)
    if held_out is not None:
        reverse_pairs = make_prompt_pairs(run.facts, held_out, run.tokenizer, max_pairs=max_pairs,
                                          prompt_length=common_prompt_length(run, (held_out,)))
        section.blocks.append(attention_block(run, reverse_pairs, heads, "attention_held_out",
                                              f"The same heads on a {held_out} prompt"))
    return section


def attention_block(run, pairs, heads: list[str], name: str, title: str, index: int = 0) -> Block:
    """A circuitsvis view of the chosen heads (``"L0H2"``) on one clean prompt, offline (``.local_src``)."""
    import circuitsvis as cv
    import torch

    with torch.no_grad():
        _, cache = run.model.run_with_cache(pairs.clean[index:index + 1])
    patterns = []
    for head in heads:
        layer, h = (int(x) for x in head[1:].split("H"))
        patterns.append(cache["pattern", layer][0, h])
    tokens = run.tokenizer.convert_ids_to_tokens(pairs.clean[index].tolist())
    view = cv.attention.attention_heads(attention=torch.stack(patterns).cpu(), tokens=tokens,
                                        attention_head_names=heads)
    return Block(name, title, "html", view.local_src,
                 "Attention pattern (destination x source) of each head; hover a head to inspect it.")


def reverse_section(run, run_dir, max_pairs: int, progress: bool = False) -> Section:
    from revinterp.analysis.gradients import counterpart_pairs, gradient_step_effects
    from revinterp.analysis.interventions import METHODS, compare_splits, excludes_zero
    from revinterp.analysis.probes import probe_answer_identity
    from revinterp.analysis.starvation import starvation_report
    from revinterp.analysis.weights import effective_weights, single_token_entities

    section = Section("reverse", "3. Why is there no reverse path?")
    # reverse interventions: does any component carry the answer when the reverse question is asked?
    seen = [s for s in SEEN_REVERSE_SPLITS if len(run.facts.split(s)) >= 2][:1]
    held = [s for s in HELD_OUT_SPLITS if len(run.facts.split(s)) >= 2]
    if seen or held:
        splits = (*seen, *held)
        length = common_prompt_length(run, splits)
        result = compare_splits(run.model, run.facts, splits, tokenizer=run.tokenizer, max_pairs=max_pairs,
                                progress=progress,
                                prompt_length=length)
        seen_effect = result.total[seen[0]].mean if seen else None
        for split in splits:
            total = result.total[split]
            if not excludes_zero(total):
                verdict = "indistinguishable from zero"
            elif seen_effect and split not in seen:
                verdict = (f"distinguishable from zero, {100 * abs(total.mean / seen_effect):.1f} % of the "
                           "seen-reverse effect")
            else:
                verdict = "distinguishable from zero"
            counts = "; ".join(
                f"{method}: {len(result.distinguishable(split, method))} of {result.n_tested(split, method)} sites "
                "distinguishable from zero"
                for method in METHODS
            )
            section.findings.append(
                f"{split} ({result.n_pairs[split]} pairs): swapping the subject changes the logit difference (clean "
                f"answer - corrupted answer) by {interval(total)}, {verdict}. {counts} (about "
                f"{100 * (1 - result.confidence):.0f} % of sites without an effect exclude zero by chance)."
            )
        section.figure("reverse_interventions", "Interventions on reverse prompts: total effect and the patching "
                                                "sites of largest effect", result.plot())
        section.figure("reverse_dla", "The same for direct logit attribution", result.plot("dla"))
    if single_token_entities(run.facts.statements):
        weights = effective_weights(run.model, run.facts, path="end_to_end")
        for split in weights.splits:
            est = weights.estimate(split)
            section.findings.append(f"End-to-end effective weight Y[subject, answer] minus the off-fact baseline, "
                                    f"{split}: {interval(est)}")
        section.figure("weights", "Effective weights (end to end)", weights.plot())
    else:
        section.findings.append(MULTI_TOKEN_WEIGHTS)
    probe_splits = ("reverse_seen", "reverse_held_out")
    if all(len(run.facts.split(s)) >= 2 for s in probe_splits) and common_prompt_length(run, probe_splits) is None:
        probes = probe_answer_identity(run.model, run.facts)
        frame = probes.to_frame()
        for name in ("cross_val", "test"):
            rows = frame[frame["set"] == name]
            if len(rows):
                best = rows.loc[rows["accuracy"].idxmax()]
                what = ("seen pairs whose answer the probe never trained on" if name == "cross_val"
                        else "held-out pairs")
                section.findings.append(
                    f"Linear probe for the answer's identity on {what}: best accuracy {pct(best['accuracy'])} [95 % "
                    f"CI {pct(best['ci_low'])}, {pct(best['ci_high'])}] at {best['layer']}, "
                    f"{best['position_label']} (chance {pct(probes.chance)})."
                )
        section.figure("probes", "Probes for the answer's identity", probes.plot())
    else:
        section.findings.append("Probes: not run, since the reverse prompts have several lengths (positions must line "
                                "up; call probes.probe_answer_identity on one relation or template at a time) or a "
                                "reverse split has fewer than two statements.")
    if counterpart_pairs(run.facts):
        grads = gradient_step_effects(run.model, run.facts)
        for split in grads.splits:
            section.findings.append(f"One SGD step on a {split} statement moves the other direction's answer logit "
                                    f"by {interval(grads.ratio(split))} times what it moves its own.")
        section.figure("gradients", "The gradient view", grads.plot())
    else:
        section.findings.append("Gradient view: not run, since no fact has both a forward and a reverse statement "
                                "(e.g. chain data).")
    starvation = starvation_report(run_dir, device=next(run.model.parameters()).device)
    means = starvation.role_means()
    section.findings.append(
        f"Embedding starvation: {len(starvation.starved)} of {len(run.facts.split('held_out'))} held-out questions "
        "have a subject that never appears as an input in training"
        + (f"; their subjects' embeddings moved {means['held_out_subject']['embed_shift']:.3f} against "
           f"{means['trained_subject']['embed_shift']:.3f} for trained subjects."
           if "held_out_subject" in means and "trained_subject" in means else ".")
    )
    section.figure("starvation", "Embedding starvation", starvation.plot())
    return section


def dynamics_section(run_dir, device, facts) -> Section:
    from revinterp.analysis.dynamics import behaviour_dynamics
    from revinterp.analysis.weights import effective_weights_over_training, single_token_entities
    from revinterp.stats import bootstrap_ci

    section = Section("dynamics", "4. How did it evolve over training?")
    curves = behaviour_dynamics(run_dir, "probability")
    for name, curve in curves.values.items():
        section.findings.append(f"p(answer) on {name}: {curve[0].item():.3f} at step {curves.steps[0]} -> "
                                f"{curve[-1].item():.3f} at step {curves.steps[-1]}.")
    section.figure("behaviour_dynamics", "Mean probability of the answer per split over training", curves.plot())
    if not single_token_entities(facts.statements):
        section.findings.append(MULTI_TOKEN_WEIGHTS)
        return section
    weights = effective_weights_over_training(run_dir, path="end_to_end", device=device)
    change = weights.change_from_initial()[-1]
    statements = weights.results[0].statements
    for split in weights.results[0].splits:
        rows = [k for k, s in enumerate(statements) if s.split == split]
        section.findings.append(f"End-to-end entry Y[subject, answer] of {split}: change from step "
                                f"{weights.steps[0]} to {weights.steps[-1]} {interval(bootstrap_ci(change[rows]))}.")
    section.figure("weights_dynamics", "Effective weights over training", weights.plot())
    return section
