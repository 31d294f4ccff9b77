"""The pipeline of one run: train -> evaluate -> analyses -> results saved in the run directory.

::

    facts ─ train ─> RUN_DIR/{model.*, checkpoints/, history.jsonl}
          ─ evaluate ─> RUN_DIR/behaviour.json
          ─ analyze ─> RUN_DIR/analysis/{run, behaviour, forward, reverse, dynamics}.json (+ views)

This is what the command line (``revinterp run`` / ``analyze``) and grids of runs call. Each analysis stage
measures one question a reader asks and saves what it measured (:mod:`revinterp.results`): the numbers, the
figures of the analyses' result objects (``result.plot()``) and the circuitsvis views. The report
(:mod:`revinterp.viz.report`) only reads those files and writes sentences and HTML from them.

Example:
    >>> from revinterp.pipeline import analyze                      # doctest: +SKIP
    >>> analyze("runs/default-seed0")                               # doctest: +SKIP
    >>> from revinterp.results import load_results                  # doctest: +SKIP
    >>> info, stages = load_results("runs/default-seed0")           # doctest: +SKIP
    >>> stages["forward"].numbers["localize"]["chosen"]             # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from revinterp.results import STAGES, StageResult, View, save_run_info, save_stage

BEHAVIOUR_FILE = "behaviour.json"
FORWARD_SPLITS = ("forward_seen", "forward_only", "chain_first_hop")
SEEN_REVERSE_SPLITS = ("reverse_seen", "reverse_only")
HELD_OUT_SPLITS = ("reverse_held_out", "forward_held_out", "chain_composed_held_out")
PROBE_SPLITS = ("reverse_seen", "reverse_held_out")
LOCALIZE_TARGET = 0.8
WEIGHT_BASELINE = "split"
"""Effective-weight entries are reported above their split's off-fact baseline (``EffectiveWeights.effect``),
at the end of training in the reverse stage and as a change since step 0 in the dynamics stage."""


@dataclass(frozen=True)
class TrainedRun:
    """A run after training and evaluation: its directory, the training outcome and the behaviour per split."""

    run_dir: Path
    training: object  # revinterp.training.TrainingResult
    behaviour: object  # revinterp.evaluation.Behaviour


def train_and_evaluate(facts, model_config, training_config, run_dir: str | Path, *, resume: bool = False,
                       device=None, progress: bool = True) -> TrainedRun:
    """Train (or resume) a run, evaluate it on every split and write ``RUN_DIR/behaviour.json``."""
    from revinterp.evaluation import evaluate
    from revinterp.io import atomic_write_text
    from revinterp.training import train

    run_dir = Path(run_dir)
    result = train(facts, model_config, training_config, run_dir, resume=resume, device=device, progress=progress)
    behaviour = evaluate(result.model, facts)
    atomic_write_text(run_dir / BEHAVIOUR_FILE, json.dumps(behaviour.to_dict(), indent=1, allow_nan=False))
    return TrainedRun(run_dir, result, behaviour)


def analyze(run_dir: str | Path, *, device=None, progress: bool = True, max_pairs: int = 200) -> dict[str, Path]:
    """Run every analysis stage on a trained run and save its results under ``RUN_DIR/analysis/``.

    Args:
        run_dir: a run directory written by :func:`revinterp.training.train`.
        device: where to run the model; default CUDA if available, else the CPU.
        progress: progress bars over the stages and the patching sweeps.
        max_pairs: prompt pairs per split in the patching analyses.

    Returns:
        The saved file of each stage (:data:`revinterp.results.STAGES`).
    """
    from revinterp.models import load_run
    from revinterp.training import read_training_config, versions

    if max_pairs < 2:
        raise ValueError(f"max_pairs={max_pairs}: expected at least 2 prompt pairs per split")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device)
    measures: dict[str, Callable[[], StageResult]] = {
        "behaviour": lambda: behaviour_stage(run),
        "forward": lambda: forward_stage(run, max_pairs, progress),
        "reverse": lambda: reverse_stage(run, max_pairs, progress),
        "dynamics": lambda: dynamics_stage(run),
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(STAGES), desc="analyses", unit="stage")
    saved = {}
    for name in STAGES:
        if bar is not None:
            bar.set_postfix_str(name)
        saved[name] = save_stage(run_dir, measures[name]())
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
    save_run_info(run_dir, f"The reversal curse in {run_dir.name}", config)
    return saved


# -- helpers shared by the stages -------------------------------------------------------------------------------
def first_split(facts, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` with at least two statements (prompt pairs need two)."""
    return next((name for name in names if len(facts.split(name)) >= 2), None)


def prompt_lengths(run, splits) -> dict[int, int]:
    """How many prompts of ``splits`` have each length (in tokens)."""
    from revinterp.analysis.prompts import prompt_length_counts

    counts: dict[int, int] = {}
    for split in splits:
        for length, n in prompt_length_counts(run.facts, split, run.tokenizer).items():
            counts[length] = counts.get(length, 0) + n
    return dict(sorted(counts.items()))


def common_prompt_length(run, splits) -> int | None:
    """The prompt length shared by most statements of ``splits`` when their prompts have several lengths (patching
    needs one), else None."""
    counts = prompt_lengths(run, splits)
    return max(counts, key=counts.get) if len(counts) > 1 else None


def multi_token_reason(facts) -> dict:
    """Why token-to-token effective weights cannot be computed: the entities have several tokens (how many)."""
    words = [len(name.split()) for s in facts.statements for name in (s.subject, s.object)]
    return {"reason": "effective weights are token-to-token maps and the entities have several tokens",
            "max_tokens_per_entity": max(words)}


def probe_sets(probes) -> dict:
    """Per probe set (``cross_val``: seen pairs whose answer the probe never trained on; ``test``: held-out pairs),
    the number of sites and, where one reads the answer above chance (the lower end of its 95 % interval above
    chance), the most accurate of those; ``best`` is None where every site's interval includes chance or lies
    below it, since the best of chance-level scores is a meaningless place."""
    frame = probes.to_frame()
    sets = {}
    for name in ("cross_val", "test"):
        rows = frame[frame["set"] == name]
        if not len(rows):
            continue
        above = rows[rows["ci_low"] > probes.chance]
        best = None
        if len(above):
            row = above.loc[above["accuracy"].idxmax()]
            best = {"accuracy": float(row["accuracy"]), "low": float(row["ci_low"]), "high": float(row["ci_high"]),
                    "layer": str(row["layer"]), "position": str(row["position_label"])}
        sets[name] = {"n_sites": len(rows), "n_above_chance": len(above), "best": best,
                      "max_accuracy": float(rows["accuracy"].max())}
    return sets


def estimate(est) -> dict:
    """An :class:`~revinterp.stats.Estimate` as saved numbers."""
    return {"mean": est.mean, "low": est.low, "high": est.high, "n": est.n}


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is undefined (a normalized effect with no clean-corrupted gap)."""
    return value if value == value and abs(value) != float("inf") else None


# -- the stages -----------------------------------------------------------------------------------------------
def behaviour_stage(run) -> StageResult:
    """Behaviour per split (accuracy, rank and log-probability against chance)."""
    from revinterp.evaluation import evaluate

    behaviour = evaluate(run.model, run.facts)
    result = StageResult("behaviour", behaviour.to_dict())
    result.figure("behaviour", "Accuracy per split", behaviour.plot(),
                  "Top-1 accuracy among the M candidate answers; markers show chance 1/M.")
    return result


def forward_stage(run, max_pairs: int, progress: bool = False) -> StageResult:
    """Where the forward fact is stored: patching sweeps, localization, DLA, logit lens, attention views."""
    from revinterp.analysis.dla import direct_logit_attribution
    from revinterp.analysis.localize import localize
    from revinterp.analysis.logit_lens import logit_lens
    from revinterp.analysis.patching import patch_sweeps
    from revinterp.analysis.prompts import make_prompt_pairs
    from revinterp.analysis.sites import SWEEP_COMPONENTS

    result = StageResult("forward")
    split = first_split(run.facts, FORWARD_SPLITS)
    if split is None:
        sizes = {name: len(run.facts.split(name)) for name in FORWARD_SPLITS}
        result.numbers["skipped"] = {"reason": "no trained forward split has two or more statements",
                                     "split_sizes": sizes}
        return result
    length = common_prompt_length(run, (split,))
    pairs = make_prompt_pairs(run.facts, split, run.tokenizer, max_pairs=max_pairs, prompt_length=length)
    numbers = result.numbers
    numbers.update(split=split, n_pairs=len(pairs), prompt_length=length, metric="logit_diff", strongest={},
                   sweeps={})
    sweeps = patch_sweeps(run.model, pairs, SWEEP_COMPONENTS, progress=progress)
    for component, sweep in sweeps.items():
        (site, value), *_ = sweep.top(1)
        numbers["strongest"][component] = {"site": site.label(pairs.labels), "normalized": value}
        rows = sweep.to_frame().to_dict(orient="records")
        numbers["sweeps"][component] = [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
                                        for row in rows]
        result.figure(f"patch_{component}", f"Activation patching (denoising): {component}", sweep.plot())
    located = localize(run.model, pairs, target=LOCALIZE_TARGET)
    numbers["localize"] = {"chosen": [s.label(pairs.labels) for s in located.chosen],
                           "recovered": estimate(located.recovered_ci()), "reached": located.reached,
                           "target": LOCALIZE_TARGET}
    result.figure("localize", "Localization: recovered fraction as sites are restored together", located.plot())
    dla = direct_logit_attribution(run.model, pairs)
    mean = dla.mean()
    numbers["dla"] = {"parts": [{"label": label, "kind": kind, "mean": mean[i].item()}
                                for i, (label, kind) in enumerate(zip(dla.labels, dla.kinds))],
                      "total": dla.total.mean().item(), "unembed_bias": dla.unembed_bias.mean().item(),
                      "max_abs_residual": dla.residual.abs().max().item()}
    result.figure("dla", "Direct logit attribution", dla.plot())
    lens = logit_lens(run.model, pairs)
    accuracy = lens.accuracy.tolist()
    numbers["logit_lens"] = {"labels": list(lens.labels), "accuracy": accuracy,
                             "first_majority_top": next((lens.labels[i] for i, a in enumerate(accuracy) if a >= 0.5),
                                                        None)}
    result.figure("logit_lens", "Logit lens: answer log-probability after every layer", lens.plot())
    order = mean.abs().argsort(descending=True).tolist()
    heads = [dla.labels[i] for i in order if dla.kinds[i] == "head"][:3]
    numbers["attention_heads"] = heads
    result.views.append(attention_view(
        run, pairs, heads, "attention_forward",
        f"Attention of the heads with the largest direct effect ({', '.join(heads)}) on a forward prompt"))
    held_out = first_split(run.facts, HELD_OUT_SPLITS)
    if held_out is not None:
        reverse_pairs = make_prompt_pairs(run.facts, held_out, run.tokenizer, max_pairs=max_pairs,
                                          prompt_length=common_prompt_length(run, (held_out,)))
        result.views.append(attention_view(run, reverse_pairs, heads, "attention_held_out",
                                           f"The same heads on a {held_out} prompt"))
    return result


def attention_view(run, pairs, heads: list[str], name: str, title: str, index: int = 0) -> View:
    """A circuitsvis ``AttentionHeads`` view of the chosen heads (``"L0H2"``) on one clean prompt, as data."""
    import torch

    with torch.no_grad():
        _, cache = run.model.run_with_cache(pairs.clean[index:index + 1])
    patterns = []
    for head in heads:
        layer, h = (int(x) for x in head[1:].split("H"))
        patterns.append(cache["pattern", layer][0, h])
    tokens = run.tokenizer.convert_ids_to_tokens(pairs.clean[index].tolist())
    # the props circuitsvis.attention.attention_heads passes to its AttentionHeads component
    props = {"attention": torch.stack(patterns).cpu().tolist(), "tokens": tokens, "attentionHeadNames": heads}
    return View(name, title, "AttentionHeads", props,
                "Attention pattern (destination x source) of each head; hover a head to inspect it.")


def reverse_stage(run, max_pairs: int, progress: bool = False) -> StageResult:
    """Why there is no reverse path: interventions per split, effective weights, probes, the gradient view and
    embedding starvation."""
    from revinterp.analysis.gradients import counterpart_pairs, gradient_step_effects
    from revinterp.analysis.interventions import INTERVENTION_METHODS, compare_splits, excludes_zero
    from revinterp.analysis.probes import probe_answer_identity
    from revinterp.analysis.starvation import starvation_report
    from revinterp.analysis.weights import effective_weights, single_token_entities

    result = StageResult("reverse")
    numbers = result.numbers
    seen = [s for s in SEEN_REVERSE_SPLITS if len(run.facts.split(s)) >= 2][:1]
    held = [s for s in HELD_OUT_SPLITS if len(run.facts.split(s)) >= 2]
    if seen or held:
        splits = (*seen, *held)
        compared = compare_splits(run.model, run.facts, splits, tokenizer=run.tokenizer, max_pairs=max_pairs,
                                  progress=progress, prompt_length=common_prompt_length(run, splits))
        seen_effect = compared.total[seen[0]].mean if seen else None
        per_split = {}
        for split in splits:
            total = compared.total[split]
            per_split[split] = {
                "n_pairs": compared.n_pairs[split], "total": estimate(total), "excludes_zero": excludes_zero(total),
                "share_of_seen": (abs(total.mean / seen_effect) if seen_effect and split not in seen else None),
                "counts": {method: {"distinguishable": len(compared.distinguishable(split, method)),
                                    "tested": compared.n_tested(split, method)} for method in INTERVENTION_METHODS},
            }
        numbers["interventions"] = {"splits": list(splits), "seen": seen[0] if seen else None,
                                    "confidence": compared.confidence, "per_split": per_split}
        result.figure("reverse_interventions", "Interventions on reverse prompts: total effect and the patching "
                                               "sites of largest effect", compared.plot())
        result.figure("reverse_dla", "The same for direct logit attribution", compared.plot("dla"))
    else:
        numbers["interventions"] = {"skipped": {
            "reason": "no reverse split has two or more statements",
            "split_sizes": {name: len(run.facts.split(name)) for name in (*SEEN_REVERSE_SPLITS, *HELD_OUT_SPLITS)}}}
    if single_token_entities(run.facts.statements):
        weights = effective_weights(run.model, run.facts, path="end_to_end")
        numbers["weights"] = {"baseline": WEIGHT_BASELINE,
                              "per_split": {split: estimate(weights.estimate(split, baseline=WEIGHT_BASELINE))
                                            for split in weights.splits}}
        result.figure("weights", "Effective weights (end to end)", weights.plot())
    else:
        numbers["weights"] = {"skipped": multi_token_reason(run.facts)}
    probe_sizes = {name: len(run.facts.split(name)) for name in PROBE_SPLITS}
    probe_lengths = prompt_lengths(run, PROBE_SPLITS)
    if min(probe_sizes.values()) >= 2 and len(probe_lengths) == 1:
        probes = probe_answer_identity(run.model, run.facts)
        numbers["probes"] = {"chance": probes.chance, "sets": probe_sets(probes)}
        result.figure("probes", "Probes for the answer's identity", probes.plot())
    elif min(probe_sizes.values()) < 2:
        numbers["probes"] = {"skipped": {"reason": "a reverse split has fewer than two statements",
                                         "split_sizes": probe_sizes}}
    else:
        numbers["probes"] = {"skipped": {"reason": "the reverse prompts have several lengths (positions must line "
                                                   "up; probe one relation or template at a time)",
                                         "prompt_lengths": probe_lengths}}
    if counterpart_pairs(run.facts):
        grads = gradient_step_effects(run.model, run.facts)
        numbers["gradients"] = {"per_split": {split: estimate(grads.ratio(split)) for split in grads.splits}}
        result.figure("gradients", "The gradient view", grads.plot())
    else:
        directions = sorted({s.direction for s in run.facts.statements})
        numbers["gradients"] = {"skipped": {"reason": "no fact has both a forward and a reverse statement",
                                            "directions": directions}}
    starvation = starvation_report(run.path, device=next(run.model.parameters()).device)
    means = starvation.role_means()
    numbers["starvation"] = {
        "n_starved": len(starvation.starved), "n_held_out": len(run.facts.split("held_out")),
        "embed_shift": {role: means[role]["embed_shift"] for role in ("held_out_subject", "trained_subject")
                        if role in means},
    }
    result.figure("starvation", "Embedding starvation", starvation.plot())
    return result


def dynamics_stage(run) -> StageResult:
    """How behaviour and the end-to-end effective weights evolved over the saved checkpoints."""
    from revinterp.analysis.dynamics import behaviour_dynamics
    from revinterp.analysis.weights import effective_weights_over_training, single_token_entities
    from revinterp.stats import bootstrap_ci

    result = StageResult("dynamics")
    curves = behaviour_dynamics(run.path, "probability")
    result.numbers["probability"] = {
        "steps": [curves.steps[0], curves.steps[-1]],
        "per_split": {name: [curve[0].item(), curve[-1].item()] for name, curve in curves.values.items()},
    }
    result.figure("behaviour_dynamics", "Mean probability of the answer per split over training", curves.plot())
    if not single_token_entities(run.facts.statements):
        result.numbers["weights"] = {"skipped": multi_token_reason(run.facts)}
        return result
    weights = effective_weights_over_training(run.path, path="end_to_end", device=next(run.model.parameters()).device)
    # the quantity of the reverse stage (entry above its split's off-fact baseline), its change since step 0
    first, last = weights.results[0], weights.results[-1]
    change = last.effect(WEIGHT_BASELINE)[0] - first.effect(WEIGHT_BASELINE)[0]
    per_split = {}
    for split in first.splits:
        rows = [k for k, s in enumerate(first.statements) if s.split == split]
        per_split[split] = estimate(bootstrap_ci(change[rows]))
    result.numbers["weights"] = {"baseline": WEIGHT_BASELINE, "steps": [weights.steps[0], weights.steps[-1]],
                                 "per_split": per_split}
    result.figure("weights_dynamics", "Effective weights over training", weights.plot())
    return result
