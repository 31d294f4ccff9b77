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

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from revinterp.analysis.verdict import MARGIN_FRACTION
from revinterp.results import STAGES, StageResult, View, save_run_info, save_stage

BEHAVIOUR_FILE = "behaviour.json"
FORWARD_SPLITS = ("forward_seen", "forward_only", "chain_first_hop")
SEEN_REVERSE_SPLITS = ("reverse_seen", "reverse_only")
HELD_OUT_SPLITS = ("reverse_held_out", "forward_held_out", "chain_composed_held_out")
PROBE_SPLITS = ("reverse_seen", "reverse_held_out")
LOCALIZE_TARGET = 0.8
CIRCUIT_MAX_EDGES = 10
CIRCUIT_CANDIDATES = 20
"""Edges (the best-ranked by edge attribution) the circuit is pruned from; the pruning's cost grows with their
square. On the default run 20, 30 and 40 candidates gave the same 8-edge circuit, held-out recovery 0.957 [0.944,
0.969], in 3.3, 6.3 and 11.0 s of CPU (measured)."""
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
    from revinterp.io import write_json
    from revinterp.objectives import query_model
    from revinterp.rundir import run_lock
    from revinterp.training import train

    run_dir = Path(run_dir)
    result = train(facts, model_config, training_config, run_dir, resume=resume, device=device, progress=progress)
    with run_lock(run_dir, purpose="evaluate"):  # one writer per run directory (revinterp.rundir)
        behaviour = evaluate(query_model(result.model, training_config.objective), facts)
        write_json(run_dir / BEHAVIOUR_FILE, behaviour.to_dict())
    return TrainedRun(run_dir, result, behaviour)


def analyze(run_dir: str | Path, *, device=None, progress: bool = True, max_pairs: int = 200) -> dict[str, Path]:
    """Run every analysis stage on a trained run and save its results under ``RUN_DIR/analysis/``.

    Args:
        run_dir: a run directory written by :func:`revinterp.training.train`.
        device: where to run the model; default CUDA if available, else the CPU.
        progress: progress bars over the stages and the patching sweeps.
        max_pairs: prompt pairs per split in the patching analyses.

    A run trained with a masked objective (:mod:`revinterp.objectives`) is asked through its query: its behaviour
    through :func:`~revinterp.objectives.query_model`, its forward analyses on the query prompts
    (:func:`~revinterp.objectives.query_facts`, whose last position answers; the reference patching method where
    attention is bidirectional, no edge circuit there); the reverse, missing-path and dynamics stages read
    next-token prompts and are recorded as not run, with the reason.

    Returns:
        The saved file of each stage (:data:`revinterp.results.STAGES`).
    """
    import torch

    from revinterp.models import load_run
    from revinterp.rundir import run_lock
    from revinterp.training import read_training_config, versions

    if max_pairs < 2:
        raise ValueError(f"max_pairs={max_pairs}: expected at least 2 prompt pairs per split")
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device)
    objective = read_training_config(run_dir).objective
    measures: dict[str, Callable[[], StageResult]] = {
        "behaviour": lambda: behaviour_stage(run, progress, objective),
        "forward": lambda: forward_stage(run, max_pairs, progress),
        "reverse": lambda: reverse_stage(run, max_pairs, progress),
        "missing": lambda: missing_stage(run),
        "dynamics": lambda: dynamics_stage(run),
        "verdict": lambda: verdict_stage({name: result.numbers for name, result in done.items()}),
    }
    if objective != "next_token":
        from revinterp.objectives import query_facts

        # the forward analyses read the last prompt position: a masked objective's prompt ends at its query token
        query_run = replace(run, facts=query_facts(run.facts, objective))
        measures["forward"] = lambda: forward_stage(query_run, max_pairs, progress)
        for name in ("reverse", "missing", "dynamics"):
            measures[name] = lambda name=name: not_next_token_stage(name, objective)
    with run_lock(run_dir, purpose="analyze"):  # one writer per run directory (revinterp.rundir)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(STAGES), desc="analyses", unit="stage")
        saved, done = {}, {}
        for name in STAGES:
            if bar is not None:
                bar.set_postfix_str(name)
            done[name] = measures[name]()
            saved[name] = save_stage(run_dir, done[name])
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
            "environment": {"device": str(next(run.model.parameters()).device),
                            "torch_threads": torch.get_num_threads()},
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


def multi_token_reason(facts) -> dict:
    """Why token-to-token effective weights cannot be computed: the entities have several tokens (how many)."""
    words = [len(name.split()) for s in facts.statements for name in (s.subject, s.object)]
    return {"reason": "effective weights are token-to-token maps and the entities have several tokens",
            "max_tokens_per_entity": max(words)}


def probe_numbers(probes) -> dict:
    """The probe's headline: the most selective site (Hewitt & Liang selectivity, chosen on cross-validation over
    seen pairs, never on the test split) with its held-out accuracy (Clopper-Pearson) against chance; ``selected`` is
    None where no site is selective (selectivity <= 0 everywhere), since the best of chance-level scores is a
    meaningless place."""
    selectivity = probes.selectivity
    best = float(selectivity.max())
    return {"chance": probes.chance, "n_sites": selectivity.numel(), "max_selectivity": best,
            "n_selective": int((selectivity > 0).sum()),
            "selected": probes.selected_site.to_numbers() if best > 0 else None}


def estimate(est) -> dict:
    """An :class:`~revinterp.stats.Estimate` as saved numbers."""
    return {"mean": est.mean, "low": est.low, "high": est.high, "n": est.n}


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is undefined (a normalized effect with no clean-corrupted gap)."""
    return value if value == value and abs(value) != float("inf") else None


# -- the stages -----------------------------------------------------------------------------------------------
class Skip(Exception):
    """An analysis that cannot run on these data: ``details`` says why, with the numbers that decided it."""

    def __init__(self, reason: str, **details):
        super().__init__(reason)
        self.details = {"reason": reason, **details}


def isolated(result: StageResult, key: str, measure: Callable[[StageResult], dict]) -> None:
    """Run one analysis into ``result.numbers[key]`` (its figures and views into ``result``); if it cannot run on
    these data, or fails, record why under ``{"skipped": {"reason": ...}}`` and go on with the others.

    One analysis that cannot run never throws away the training or the analyses that can.
    """
    scratch = StageResult(result.stage)
    try:
        result.numbers[key] = measure(scratch)
    except Skip as skip:
        result.numbers[key] = {"skipped": skip.details}
        return
    except Exception as e:  # noqa: BLE001 (recorded with its type and message, never silently dropped)
        result.numbers[key] = {"skipped": {"reason": f"it failed with {type(e).__name__}: {e}", "failed": True}}
        return
    result.figures += scratch.figures
    result.views += scratch.views


def prompt_length_for(run, splits) -> int | None:
    """The prompt length the patching analyses of ``splits`` use: None where every prompt has the same length and
    fits the model's context, else the most common length that fits (:class:`Skip` where none fits)."""
    counts = prompt_lengths(run, splits)
    fitting = {length: n for length, n in counts.items() if length <= run.config.n_ctx}
    if not fitting:
        raise Skip(f"every prompt is longer than the model's context of {run.config.n_ctx} tokens",
                   prompt_lengths=counts)
    if len(counts) == 1:
        return None
    return max(fitting, key=fitting.get)


def behaviour_stage(run, progress: bool = False, objective: str = "next_token") -> StageResult:
    """Behaviour per split (accuracy, rank and log-probability against chance, among all candidates and among the
    held-out answers only) and the lexical-overlap diagnostic; a run trained with a masked objective is asked
    through its query (:func:`revinterp.objectives.query_model`)."""
    from revinterp.evaluation import evaluate
    from revinterp.objectives import query_model

    behaviour = evaluate(query_model(run.model, objective, run.tokenizer), run.facts, tokenizer=run.tokenizer,
                         progress=progress)
    result = StageResult("behaviour", behaviour.to_dict())
    result.figure("behaviour", "Accuracy per split", behaviour.plot(),
                  "Top-1 accuracy among the M candidate answers; markers show chance 1/M.")
    isolated(result, "overlap", lambda out: measure_overlap(behaviour))
    return result


def measure_overlap(behaviour) -> dict:
    """The lexical-overlap diagnostic of the held-out questions (:func:`revinterp.analysis.overlap.lexical_overlap`):
    a subject that shares a token with its answer can be answered through that token, not a reverse path."""
    from revinterp.analysis.overlap import lexical_overlap

    held = [name for name in HELD_OUT_SPLITS if name in behaviour.splits and behaviour[name].n]
    if not held:
        raise Skip("no held-out split has questions", splits=list(behaviour.splits))
    return lexical_overlap(behaviour, held).to_numbers()


def forward_stage(run, max_pairs: int, progress: bool = False) -> StageResult:
    """Where the forward fact is stored: patching sweeps, localization, DLA, logit lens, attention views."""
    from revinterp.analysis.prompts import make_prompt_pairs

    result = StageResult("forward")
    numbers = result.numbers
    pairs = None

    def prompt_pairs(_: StageResult) -> dict:
        nonlocal pairs
        split = first_split(run.facts, FORWARD_SPLITS)
        if split is None:
            raise Skip("no trained forward split has two or more statements",
                       split_sizes={name: len(run.facts.split(name)) for name in FORWARD_SPLITS})
        length = prompt_length_for(run, (split,))
        try:
            pairs = make_prompt_pairs(run.facts, split, run.tokenizer, max_pairs=max_pairs, prompt_length=length,
                                      max_length=run.config.n_ctx)
        except ValueError as e:  # the data admit no pair (too few statements, every swap also valid, ...)
            raise Skip(str(e), split=split) from None
        counts = prompt_lengths(run, (split,))
        left_out = 0 if length is None else sum(n for k, n in counts.items() if k != length)
        return {"split": split, "n_pairs": len(pairs), "prompt_length": length, "metric": "logit_diff",
                "n_prompts_left_out": left_out, "pairs_left_out": dict(pairs.left_out)}

    isolated(result, "prompts", prompt_pairs)
    if pairs is None:
        return result
    isolated(result, "sweeps", lambda out: measure_sweeps(run, pairs, out, progress))
    isolated(result, "localize", lambda out: measure_localize(run, pairs, out))
    isolated(result, "dla", lambda out: measure_dla(run, pairs, out))
    isolated(result, "logit_lens", lambda out: measure_logit_lens(run, pairs, out))
    isolated(result, "circuit", lambda out: measure_circuit(run, pairs, out))
    heads = [] if "skipped" in numbers["dla"] else numbers["dla"]["top_heads"]
    isolated(result, "attention", lambda out: measure_attention(run, pairs, heads, max_pairs, out))
    return result


def measure_sweeps(run, pairs, out: StageResult, progress: bool) -> dict:
    from revinterp.analysis.patching import patch_sweeps
    from revinterp.analysis.sites import SWEEP_COMPONENTS

    strongest, rows = {}, {}
    for component, sweep in patch_sweeps(run.model, pairs, SWEEP_COMPONENTS, progress=progress,
                                         method=patch_method(run)).items():
        (site, value), *_ = sweep.top(1)
        strongest[component] = {"site": site.label(pairs.labels), "normalized": value}
        rows[component] = [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
                           for row in sweep.to_frame().to_dict(orient="records")]
        out.figure(f"patch_{component}", f"Activation patching (denoising): {component}", sweep.plot())
    return {"strongest": strongest, "per_site": rows}


def patch_method(run) -> str:
    """The patching sweeps' method: the fast exact path, or TransformerLens's reference sweep for a model whose
    attention is not causal (the fast path reuses the causal forward)."""
    return "fast" if run.config.attention_dir == "causal" else "transformer_lens"


def measure_localize(run, pairs, out: StageResult) -> dict:
    from revinterp.analysis.localize import localize

    located = localize(run.model, pairs, target=LOCALIZE_TARGET, method=patch_method(run))
    out.figure("localize", "Localization: recovered fraction as sites are restored together", located.plot())
    return {"chosen": [s.label(pairs.labels) for s in located.chosen], "recovered": estimate(located.recovered_ci()),
            "reached": located.reached, "target": LOCALIZE_TARGET, "chosen_on": located.n_discovery,
            "measured_on": located.n_evaluation}


def measure_dla(run, pairs, out: StageResult) -> dict:
    from revinterp.analysis.dla import direct_logit_attribution

    dla = direct_logit_attribution(run.model, pairs)
    mean = dla.mean()
    order = mean.abs().argsort(descending=True).tolist()
    out.figure("dla", "Direct logit attribution", dla.plot())
    return {"parts": [{"label": label, "kind": kind, "mean": mean[i].item()}
                      for i, (label, kind) in enumerate(zip(dla.labels, dla.kinds))],
            "total": dla.total.mean().item(), "unembed_bias": dla.unembed_bias.mean().item(),
            "max_abs_residual": dla.residual.abs().max().item(),
            "top_heads": [dla.labels[i] for i in order if dla.kinds[i] == "head"][:3]}


def measure_logit_lens(run, pairs, out: StageResult) -> dict:
    from revinterp.analysis.logit_lens import logit_lens

    lens = logit_lens(run.model, pairs)
    accuracy = lens.accuracy.tolist()
    out.figure("logit_lens", "Logit lens: answer log-probability after every layer", lens.plot())
    return {"labels": list(lens.labels), "accuracy": accuracy,
            "first_majority_top": next((lens.labels[i] for i, a in enumerate(accuracy) if a >= 0.5), None)}


def measure_circuit(run, pairs, out: StageResult) -> dict:
    from revinterp.analysis.circuit import find_circuit

    if len(pairs) < 8:
        raise Skip("fewer than eight prompt pairs (a circuit is found on half and measured on the other half)",
                   n_pairs=len(pairs))
    circuit = find_circuit(run.model, pairs, max_edges=CIRCUIT_MAX_EDGES, n_candidates=CIRCUIT_CANDIDATES)
    out.figure("circuit", "The forward circuit: edges found on half the pairs (width = effect)", circuit.plot())
    return circuit.to_numbers()


def measure_attention(run, pairs, heads: list[str], max_pairs: int, out: StageResult) -> dict:
    from revinterp.analysis.prompts import make_prompt_pairs

    if not heads:
        raise Skip("no head was ranked by direct logit attribution (it did not run)")
    out.views.append(attention_view(
        run, pairs, heads, "attention_forward",
        f"Attention of the heads with the largest direct effect ({', '.join(heads)}) on a forward prompt"))
    held_out = first_split(run.facts, HELD_OUT_SPLITS)
    if held_out is not None:
        reverse_pairs = make_prompt_pairs(run.facts, held_out, run.tokenizer, max_pairs=max_pairs,
                                          prompt_length=prompt_length_for(run, (held_out,)),
                                          max_length=run.config.n_ctx)
        out.views.append(attention_view(run, reverse_pairs, heads, "attention_held_out",
                                        f"The same heads on a {held_out} prompt"))
    return {"heads": heads, "held_out_split": held_out}


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
    result = StageResult("reverse")
    isolated(result, "interventions", lambda out: measure_interventions(run, max_pairs, progress, out))
    isolated(result, "weights", lambda out: measure_weights(run, out))
    isolated(result, "probes", lambda out: measure_probes(run, out))
    isolated(result, "interchange", lambda out: measure_interchange(run, out))
    isolated(result, "gradients", lambda out: measure_gradients(run, out))
    isolated(result, "starvation", lambda out: measure_starvation(run, out))
    return result


def measure_interventions(run, max_pairs: int, progress: bool, out: StageResult) -> dict:
    from revinterp.analysis.interventions import INTERVENTION_METHODS, compare_splits, excludes_zero

    seen = [s for s in SEEN_REVERSE_SPLITS if len(run.facts.split(s)) >= 2][:1]
    held = [s for s in HELD_OUT_SPLITS if len(run.facts.split(s)) >= 2]
    if not seen and not held:
        raise Skip("no reverse split has two or more statements",
                   split_sizes={name: len(run.facts.split(name)) for name in (*SEEN_REVERSE_SPLITS, *HELD_OUT_SPLITS)})
    splits = (*seen, *held)
    compared = compare_splits(run.model, run.facts, splits, tokenizer=run.tokenizer, max_pairs=max_pairs,
                              progress=progress, prompt_length=prompt_length_for(run, splits))
    seen_effect = compared.total[seen[0]].mean if seen else None
    per_split = {}
    for split in splits:
        total = compared.total[split]
        per_split[split] = {
            "n_pairs": compared.n_pairs[split], "total": estimate(total), "excludes_zero": excludes_zero(total),
            "share_of_seen": (abs(total.mean / seen_effect) if seen_effect and split not in seen else None),
            "equivalence": (compared.equivalence(split, seen[0], MARGIN_FRACTION).to_dict() if seen_effect
                            else None),
            "counts": {method: {"distinguishable": len(compared.distinguishable(split, method)),
                                "tested": compared.n_tested(split, method),
                                "nested_groups": compared.n_groups(split, method),
                                "holm": compared.n_holm(split, method)} for method in INTERVENTION_METHODS},
        }
    out.figure("reverse_interventions", "Interventions on reverse prompts: total effect and the patching sites of "
                                        "largest effect", compared.plot())
    out.figure("reverse_dla", "The same for direct logit attribution", compared.plot("dla"))
    return {"splits": list(splits), "seen": seen[0] if seen else None, "confidence": compared.confidence,
            "per_split": per_split}


def measure_weights(run, out: StageResult) -> dict:
    from revinterp.analysis.weights import effective_weights, single_token_entities
    from revinterp.stats import equivalence_test

    if not single_token_entities(run.facts.statements):
        raise Skip(**multi_token_reason(run.facts))
    weights = effective_weights(run.model, run.facts, path="end_to_end")
    out.figure("weights", "Effective weights (end to end)", weights.plot())
    effect = weights.effect(WEIGHT_BASELINE)[0].double().cpu()
    values = {split: effect[[k for k, s in enumerate(weights.statements) if s.split == split]]
              for split in weights.splits}
    seen = next((s for s in SEEN_REVERSE_SPLITS if s in values), None)
    margin = MARGIN_FRACTION * abs(values[seen].mean().item()) if seen else 0.0
    return {"baseline": WEIGHT_BASELINE,
            "per_split": {split: estimate(weights.estimate(split, baseline=WEIGHT_BASELINE))
                          for split in weights.splits},
            # absence as equivalence: TOST against 5 % of the seen-reverse entry (revinterp.analysis.verdict)
            "equivalence": {split: equivalence_test(v if v.numel() > 1 else v.repeat(2), margin).to_dict()
                            for split, v in values.items()} if margin > 0 else {}}


def measure_probes(run, out: StageResult) -> dict:
    from revinterp.analysis.probes import probe_answer_identity

    sizes = {name: len(run.facts.split(name)) for name in PROBE_SPLITS}
    lengths = prompt_lengths(run, PROBE_SPLITS)
    if min(sizes.values()) < 2:
        raise Skip("a reverse split has fewer than two statements", split_sizes=sizes)
    if len(lengths) > 1:
        raise Skip("the reverse prompts have several lengths (positions must line up; probe one relation or "
                   "template at a time)", prompt_lengths=lengths)
    probes = probe_answer_identity(run)
    out.figure("probes", "Probes for the answer's identity (input-embedding targets, with the control task)",
               probes.plot())
    return probe_numbers(probes)


def measure_interchange(run, out: StageResult) -> dict:
    from revinterp.analysis.interchange import subspace_interchange

    sizes = {name: len(run.facts.split(name)) for name in PROBE_SPLITS}
    if sizes["reverse_seen"] < 4:
        raise Skip("the seen reverse split has fewer than four statements (half to fit the subspace on, half to "
                   "measure it)", split_sizes=sizes)
    layer = min(1, run.config.n_layers - 1)
    found = subspace_interchange(run, layer=layer)
    out.figure("interchange", "Interchanging the subspace of the subject's identity at B's position", found.plot())
    rows = found.to_frame().to_dict(orient="records")
    return {"layer": layer, "hook": found.hook_name, "rank": found.rank, "method": found.method,
            "n_fit": len(found.fit_statements), "chance": found.chance, "rows": rows}


def measure_gradients(run, out: StageResult) -> dict:
    from revinterp.analysis.gradients import counterpart_pairs, gradient_step_effects

    if not counterpart_pairs(run.facts):
        raise Skip("no fact has both a forward and a reverse statement",
                   directions=sorted({s.direction for s in run.facts.statements}))
    grads = gradient_step_effects(run.model, run.facts)
    out.figure("gradients", "The gradient view", grads.plot())
    return {"per_split": {split: estimate(grads.ratio(split)) for split in grads.splits}}


def measure_starvation(run, out: StageResult) -> dict:
    from revinterp.analysis.starvation import starvation_report

    starvation = starvation_report(run.path, device=next(run.model.parameters()).device)
    means = starvation.role_means()
    out.figure("starvation", "Embedding starvation", starvation.plot())
    frame = starvation.question_frame()
    return {"n_starved": len(starvation.starved), "n_answer_starved": len(starvation.answer_starved),
            "n_held_out": len(run.facts.split("held_out")),
            "embed_shift": {role: means[role]["embed_shift"] for role in ("held_out_subject", "trained_subject")
                            if role in means},
            "held_out_answer_unembed_pull": float(frame["answer_unembed_pull"].mean()) if len(frame) else None,
            "held_out_answer_unembed_push": float(frame["answer_unembed_push"].mean()) if len(frame) else None}


def missing_stage(run) -> StageResult:
    """What exactly is missing on a held-out reverse prompt: the routing or only the stored entry
    (:func:`revinterp.analysis.missing.what_is_missing`: storage heads, routing and entry tests per split with their
    positive controls, and the causal insertion of the missing entry with its placebo and specificity)."""
    result = StageResult("missing")
    isolated(result, "verdict", lambda out: measure_missing(run, out))
    return result


def measure_missing(run, out: StageResult) -> dict:
    from revinterp.analysis.missing import what_is_missing
    from revinterp.analysis.weights import single_token_entities

    if not single_token_entities(run.facts.statements):
        raise Skip(**multi_token_reason(run.facts))
    found = what_is_missing(run)
    for name, figure in found.figures().items():
        out.figure(f"missing_{name}", {"storage": "Where the entries are stored: each head's entry and its attention "
                                                 "to the subject, per split",
                                       "insertion": "Inserting the missing entry: margins before and after, with a "
                                                    "placebo of the same norm"}.get(name, name), figure)
    return found.to_numbers()


def dynamics_stage(run) -> StageResult:
    """How behaviour and the end-to-end effective weights evolved over the saved checkpoints."""
    result = StageResult("dynamics")
    isolated(result, "probability", lambda out: measure_probability_dynamics(run, out))
    isolated(result, "weights", lambda out: measure_weight_dynamics(run, out))
    return result


def not_next_token_stage(stage: str, objective: str) -> StageResult:
    """A stage whose analyses all read a next-token model's prompts, for a run trained otherwise: every analysis
    recorded as not run, with the reason (never numbers read from the wrong position)."""
    keys = {"reverse": ("interventions", "weights", "probes", "interchange", "gradients", "starvation"),
            "missing": ("verdict",), "dynamics": ("probability", "weights")}[stage]
    reason = (f"the run was trained with objective {objective!r} (revinterp.objectives), which answers through its "
              "query tokens, and this analysis reads a next-token model's prompt positions; analysing such runs is "
              "not supported yet")
    return StageResult(stage, {key: {"skipped": {"reason": reason, "objective": objective}} for key in keys})


def verdict_stage(numbers: dict[str, dict]) -> StageResult:
    """The run's verdict, computed from the numbers of the other stages (:func:`revinterp.analysis.verdict.verdict`):
    each line of evidence with its positive control, the reverse path present, absent or inconclusive, and the
    causes the starvation diagnostic supports."""
    from revinterp.analysis.verdict import verdict

    result = StageResult("verdict")
    isolated(result, "verdict", lambda out: verdict(numbers).to_numbers())
    return result


def measure_probability_dynamics(run, out: StageResult) -> dict:
    from revinterp.analysis.dynamics import behaviour_dynamics

    curves = behaviour_dynamics(run.path, "probability")
    out.figure("behaviour_dynamics", "Mean probability of the answer per split over training", curves.plot())
    return {"steps": [curves.steps[0], curves.steps[-1]],
            "per_split": {name: [curve[0].item(), curve[-1].item()] for name, curve in curves.values.items()}}


def measure_weight_dynamics(run, out: StageResult) -> dict:
    from revinterp.analysis.weights import effective_weights_over_training, single_token_entities
    from revinterp.stats import bootstrap_ci

    if not single_token_entities(run.facts.statements):
        raise Skip(**multi_token_reason(run.facts))
    weights = effective_weights_over_training(run.path, path="end_to_end", device=next(run.model.parameters()).device)
    # the quantity of the reverse stage (entry above its split's off-fact baseline), its change since step 0
    first, last = weights.results[0], weights.results[-1]
    change = last.effect(WEIGHT_BASELINE)[0] - first.effect(WEIGHT_BASELINE)[0]
    per_split = {}
    for split in first.splits:
        rows = [k for k, s in enumerate(first.statements) if s.split == split]
        per_split[split] = estimate(bootstrap_ci(change[rows]))
    out.figure("weights_dynamics", "Effective weights over training", weights.plot())
    return {"baseline": WEIGHT_BASELINE, "steps": [weights.steps[0], weights.steps[-1]], "per_split": per_split}
