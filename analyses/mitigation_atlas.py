"""Study: every cure of the reversal curse under one harness: accuracy, cost, where the reverse path forms, and
whether its stored entry is the forward one.

    python analyses/mitigation_atlas.py                                   # 5 seeds, every 2x2 cell, default preset
    python analyses/mitigation_atlas.py --seeds 0 1 --cells none --n-pairs 100
    python analyses/mitigation_atlas.py --quick
    python analyses/mitigation_atlas.py --cells both      # adds one cell to the committed results

An invocation that runs some of the cells keeps the cells of the output folder's ``results.json`` that an earlier
invocation computed with the same configuration (pairs, cures, scratch tokens, seeds, preset, model and training),
and recomputes the aggregates, figure and summary over all of them; with another configuration it replaces them.

Base data per seed: ``seed_experiment(n_pairs, held_out_direction="forward")`` (every one-way fact trained
forward, its reverse ``<bos> b_i <-`` held out), in the starvation cells of ``--cells``
(``revinterp.data.starvation_cell``: ``none`` is the seed data, ``subject`` feeds every subject as the input of an
unrelated trained fact, ``answer`` every answer as the target of one, ``both`` both). Cures, one run per cell and seed:

- ``none``: next-token answer loss on the base data;
- data cures: ``reverse_entity`` (reverse training), ``permute`` (semantic-unit permutation), ``identity_bridge``
  (``apply_mitigation``) and ``scratch`` (``with_scratch_tokens``: ``--scratch`` tokens before every answer);
- objective cures (``revinterp.objectives``): ``mlm_u`` (bidirectional, uniform masking rate), ``masked_causal``
  (the masked entity predicted after the rest, causal) and ``blank_infilling`` (prefix mask).

Each objective asks its own question (``objectives.QueryModel``, ``query_facts``); the held-out questions are the
same for every cure. Per cure: held-out reverse accuracy among all M candidates and among the held-out answers only,
pooled over seeds (k of n with its exact Clopper-Pearson interval) with the behaviour line's finding
(``verdict.proportion_finding``: present, absent or undetermined against chance, its control the seen reverse
split); the cost: steps to the first fitted evaluation (mean and Student's t interval over seeds) and the forward
accuracy kept or lost (``forward_only``, pooled, against ``none``). Where the held-out reverse answer is above chance
in a run: where it is carried (``localize(target=0.8)`` on the held-out reverse prompt pairs: sites chosen on half
the pairs, recovery measured on the other half; the strongest attention output of the denoising sweep), through which
edges (``find_circuit`` as the pipeline runs it, found on half the pairs, its recovery measured on the other half)
and whether the storage head's entry is the forward one (``revinterp.analysis.entries.entry_sharing``: the cosine of
the projected forward and reverse writes, and of the read keys, per fact against unrelated facts, TOST at margin
0.1). Bidirectional models are patched with TransformerLens's reference sweep (the fast path assumes causal
attention). Runs are trained and analysed as Ray tasks (``Study.train_all``, ``Study.on_ray``).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import plotly.graph_objects as go
from common import Study, ci, est, exact, jsonable, parser, table

from revinterp.analysis.circuit import find_circuit
from revinterp.analysis.entries import entry_sharing
from revinterp.analysis.localize import localize
from revinterp.analysis.patching import patch_sweeps
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.analysis.verdict import proportion_finding, question_hits
from revinterp.data import STARVATION_CELLS, apply_mitigation, seed_experiment, starvation_cell, with_scratch_tokens
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.objectives import ATTENTION, query_facts, query_model
from revinterp.pipeline import CIRCUIT_CANDIDATES, CIRCUIT_MAX_EDGES
from revinterp.stats import error_bars
from revinterp.training import read_history, read_training_config

HELD, SEEN, FORWARD = "reverse_held_out", "reverse_seen", "forward_only"
DATA_CURES = ("reverse_entity", "permute", "identity_bridge")
OBJECTIVE_CURES = ("mlm_u", "masked_causal", "blank_infilling")
CURES = ("none", *DATA_CURES, "scratch", *OBJECTIVE_CURES)


def cure_data(base, cure: str, scratch: int):
    if cure in DATA_CURES:
        return apply_mitigation(base, cure)
    if cure == "scratch":
        return with_scratch_tokens(base, scratch)
    return base


def reverse_path(run, objective: str) -> dict:
    """Where the held-out reverse answer is carried, and whether its entry is the forward one."""
    facts = query_facts(run.facts, objective)
    method = "fast" if ATTENTION[objective] == "causal" else "transformer_lens"
    pairs = make_prompt_pairs(facts, HELD, run.tokenizer, max_length=run.config.n_ctx)
    sweeps = patch_sweeps(run.model, pairs, ("attn_out", "mlp_out"), method=method)
    located = localize(run.model, pairs, target=0.8, method=method)
    recovered = located.recovered_ci()
    out = dict(n_pairs=len(pairs), chosen=[s.label(pairs.labels) for s in located.chosen], reached=located.reached,
               recovered=None if recovered is None else recovered.mean,
               top_attn=sweeps["attn_out"].top(1)[0][0].label(pairs.labels),
               top_mlp=sweeps["mlp_out"].top(1)[0][0].label(pairs.labels))
    try:  # the pipeline's circuit search, on the held-out reverse pairs
        circuit = find_circuit(run.model, pairs, max_edges=CIRCUIT_MAX_EDGES, n_candidates=CIRCUIT_CANDIDATES)
        out["circuit"] = dict(edges=[e.label(circuit.labels) for e in circuit.edges],
                              recovered=circuit.recovered().mean, n_evaluation=circuit.n_evaluation)
    except ValueError as e:  # e.g. fewer than four pairs
        out["circuit"] = dict(skipped=str(e))
    try:
        sharing = entry_sharing(run.model, facts, reverse_split=HELD, tokenizer=run.tokenizer)
        head = sharing.heads.get(sharing.storage.storage_head)
        out["entry"] = dict(verdict=sharing.verdict, key_verdict=sharing.key_verdict,
                            storage_head=sharing.storage.head_label(),
                            **({} if head is None else dict(matched=head.matched_estimate().mean,
                                                            null=head.null_range()[0],
                                                            **({} if head.key_cosine is None else dict(
                                                                key_matched=head.key_matched.double().mean().item(),
                                                                key_null=head.key_null_mean())))))
    except ValueError as e:  # e.g. fewer than three held-out facts, prompts of several lengths
        out["entry"] = dict(verdict="not run", reason=str(e))
    return out


def run_record(run_dir: str, log: dict) -> dict:
    """One run's behaviour through its objective's query, its cost, and (where the held-out reverse answer is above
    chance) where its reverse path is carried."""
    run = load_run(run_dir)
    objective = read_training_config(run_dir).objective
    behaviour = evaluate(query_model(run.model, objective, run.tokenizer), run.facts, tokenizer=run.tokenizer)
    held, seen, forward = (behaviour[s].metrics() for s in (HELD, SEEN, FORWARD))
    k, n = question_hits(held)
    finding, evidence = proportion_finding(k, n, held["chance_accuracy"], seen["accuracy"])
    record = dict(run=log, objective=objective, attention=run.config.attention_dir,
                  held=dict(k=k, n=n, chance=held["chance_accuracy"], mean_rank=held["mean_rank"],
                            among_k=round(held["held_out_answers"]["accuracy"] * n),
                            among_chance=held["held_out_answers"]["chance_accuracy"]),
                  finding=finding, evidence=evidence, seen_accuracy=seen["accuracy"],
                  forward=dict(k=question_hits(forward)[0], n=question_hits(forward)[1],
                               probability=forward["probability"]),
                  trained_accuracy=min(behaviour[s].metrics()["accuracy"] for s in behaviour.splits
                                       if behaviour[s].trained),
                  first_fit_step=next((h["step"] for h in read_history(run_dir) if h["fitted"]), None))
    if finding == "present":
        record["path"] = reverse_path(run, objective)
    return record


def earlier_cells(study: Study, config: dict, cells: list[str]) -> tuple[dict[str, list[dict]], str | None]:
    """The per-seed records of the cells (not among ``cells``) that an earlier invocation wrote to the output folder
    with this configuration, and that invocation's command; nothing where there is none or it differs."""
    path = study.out / "results.json"
    if not path.is_file():
        return {}, None
    earlier = json.loads(path.read_text())
    mine = {**config, "preset": study.preset, "seeds": list(study.seeds), "quick": study.quick}
    theirs = {**earlier.get("configuration", {}), **{k: earlier.get(k) for k in ("preset", "seeds", "quick")}}
    differing = sorted(k for k in mine if k != "cells" and jsonable(mine[k]) != theirs.get(k))
    if differing:
        study.log(f"  not merging {path}: its {', '.join(differing)} differ from this invocation's")
        return {}, None
    kept = {key: rows for key, rows in earlier.get("per_seed", {}).items() if key.split("/")[0] not in cells}
    return kept, earlier.get("command")


def main() -> None:
    p = parser("mitigation_atlas", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    p.add_argument("--cells", nargs="+", choices=list(STARVATION_CELLS), default=list(STARVATION_CELLS))
    p.add_argument("--cures", nargs="+", choices=CURES, default=list(CURES))
    p.add_argument("--scratch", type=int, default=4, help="scratch tokens of the 'scratch' cure (default 4)")
    args = p.parse_args()
    study = Study("mitigation_atlas", "Every cure under one harness: accuracy, cost, where the path forms, "
                                      "shared or distinct entry", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    grid = [(cell, cure, seed) for cell in args.cells for cure in args.cures for seed in study.seeds]
    specs = []
    for cell, cure, seed in grid:
        feed_subject, feed_answer = STARVATION_CELLS[cell]
        base = seed_experiment(n_pairs, held_out_direction="forward", seed=seed)
        if cell != "none":
            base = starvation_cell(base, feed_subject=feed_subject, feed_answer=feed_answer, n_values=8, seed=seed)
        objective = cure if cure in OBJECTIVE_CURES else "next_token"
        specs.append(study.spec(f"{cell}-{cure}-seed{seed}", cure_data(base, cure, args.scratch), seed,
                                objective=objective))
    run_dirs = study.train_all(specs)

    config = dict(generator="seed_experiment", n_pairs=n_pairs, held_out_direction="forward", cells=args.cells,
                  cures=args.cures, scratch_tokens=args.scratch, model=study.model_config(0),
                  training=study.training_config(0))
    merged, merged_command = earlier_cells(study, config, args.cells)
    study.log(f"  analysing {len(grid)} runs on Ray ...")
    records = study.on_ray(run_record, list(zip(map(str, run_dirs), study.run_log[-len(grid):])))
    computed: dict[str, list[dict]] = {}
    for (cell, cure, seed), record in zip(grid, records):
        computed.setdefault(f"{cell}/{cure}", []).append(dict(seed=seed, **record))
    cells = [c for c in STARVATION_CELLS if c in args.cells or any(k.split("/")[0] == c for k in merged)]
    per_seed = {f"{cell}/{cure}": (computed | merged)[f"{cell}/{cure}"] for cell in cells for cure in args.cures}
    config["cells"] = cells

    aggregates = {}
    for key, rows in per_seed.items():
        k, n = sum(r["held"]["k"] for r in rows), sum(r["held"]["n"] for r in rows)
        chance = sum(r["held"]["chance"] for r in rows) / len(rows)
        finding, evidence = proportion_finding(k, n, chance, sum(r["seen_accuracy"] for r in rows) / len(rows))
        among_k = sum(r["held"]["among_k"] for r in rows)
        fk, fn = sum(r["forward"]["k"] for r in rows), sum(r["forward"]["n"] for r in rows)
        located = [r["path"] for r in rows if "path" in r]
        circuits = [p["circuit"] for p in located if "edges" in p.get("circuit", {})]
        fitted = [r["first_fit_step"] for r in rows if r["first_fit_step"] is not None]
        aggregates[key] = dict(
            held=dict(k=k, n=n, exact=exact(k, n), chance=chance, finding=finding, evidence=evidence),
            among_held_out_answers=dict(k=among_k, n=n, exact=exact(among_k, n),
                                        chance=sum(r["held"]["among_chance"] for r in rows) / len(rows)),
            held_out_accuracy=ci([r["held"]["k"] / r["held"]["n"] for r in rows]),
            forward=dict(k=fk, n=fn, exact=exact(fk, fn)),
            all_fitted=all(r["run"]["fitted"] for r in rows), fitted_seeds=len(fitted),
            steps_to_fit=ci(fitted), steps=[r["run"]["steps"] for r in rows],
            located_seeds=len(located),
            chosen=dict(Counter(s for p in located for s in p["chosen"])),
            recovered=ci([p["recovered"] for p in located if p["recovered"] is not None]),
            top_attn=dict(Counter(p["top_attn"] for p in located)),
            entry=dict(Counter(p["entry"]["verdict"] for p in located)), entries=[p["entry"] for p in located],
            key_entry=dict(Counter(p["entry"].get("key_verdict", "not measured") for p in located)),
            storage_heads=dict(Counter(p["entry"]["storage_head"] for p in located if "storage_head" in p["entry"])),
            circuit_skipped=dict(Counter(p["circuit"]["skipped"] for p in located
                                         if "skipped" in p.get("circuit", {}))),
            circuit_seeds=len(circuits), circuit_edges=dict(Counter(e for c in circuits for e in c["edges"])),
            circuit_size=ci([len(c["edges"]) for c in circuits]),
            circuit_recovered=ci([c["recovered"] for c in circuits]),
        )
    for cell in cells:  # forward accuracy kept or lost, against next-token training on the same data
        reference = aggregates.get(f"{cell}/none")
        for cure in args.cures:
            a = aggregates[f"{cell}/{cure}"]
            a["forward_change_points"] = None if reference is None else 100 * (
                a["forward"]["k"] / a["forward"]["n"] - reference["forward"]["k"] / reference["forward"]["n"])

    # figure --------------------------------------------------------------------------------------
    fig = go.Figure()
    for cell in cells:
        values = [aggregates[f"{cell}/{c}"]["held_out_accuracy"] for c in args.cures]
        fig.add_bar(x=list(args.cures), y=[v.mean for v in values], name=f"cell {cell}", error_y=error_bars(values))
    fig.update_layout(title=f"Held-out reverse accuracy per cure, mean over {len(study.seeds)} seeds (95 % t "
                            "interval over seeds)", yaxis=dict(title="accuracy among all candidates",
                                                               range=[0, 1.05]))
    study.figure(fig, "held_out_accuracy_by_cure", "Held-out reverse accuracy among the M candidates for every cure "
                                                   "and cell, mean over seeds with 95 % t intervals over seeds.",
                 width=11)

    # summary -------------------------------------------------------------------------------------
    def where(a) -> str:
        if not a["located_seeds"]:
            return "no path to locate (held-out reverse not above chance)"
        chosen = ", ".join(f"{s} ({m})" for s, m in sorted(a["chosen"].items(), key=lambda x: -x[1]))
        nodes = (f"localize ({a['located_seeds']} seeds): {chosen}; recovers {est(a['recovered'])}; top attention "
                 + ", ".join(f"{s} ({m})" for s, m in a["top_attn"].items()))
        if not a["circuit_seeds"]:
            return nodes + "; edges: not found (" + "; ".join(a["circuit_skipped"]) + ")"
        common_edges = sorted(a["circuit_edges"].items(), key=lambda x: -x[1])[:3]
        return (nodes + f"; edge circuit ({a['circuit_seeds']} seeds): {est(a['circuit_size'], 2)} edges, held-out "
                f"recovery {est(a['circuit_recovered'])}, most often "
                + ", ".join(f"{e} ({m})" for e, m in common_edges))

    def entry(a) -> str:
        if not a["located_seeds"]:
            return "n/a"
        heads = ", ".join(f"{h} ({m})" for h, m in a["storage_heads"].items())
        cosines = "; ".join(f"{e['matched']:.2f} vs {e['null']:.2f}" for e in a["entries"] if "matched" in e)
        keys = "; ".join(f"{e['key_matched']:.2f} vs {e['key_null']:.2f}" for e in a["entries"] if "key_matched" in e)
        return ("writes " + ", ".join(f"{v} ({m})" for v, m in a["entry"].items())
                + (f" (matched cosine vs unrelated per seed: {cosines})" if cosines else "")
                + "; read keys " + ", ".join(f"{v} ({m})" for v, m in a["key_entry"].items())
                + (f" ({keys})" if keys else "") + (f"; storage head {heads}" if heads else ""))

    rows = []
    for key, a in aggregates.items():
        change = a["forward_change_points"]
        among = a["among_held_out_answers"]
        rows.append([key, a["held"]["exact"], a["held"]["finding"],
                     f"{among['exact']} (chance {100 * among['chance']:.1f} %)",
                     f"{est(a['steps_to_fit'])} ({a['fitted_seeds']}/{len(study.seeds)} fitted)",
                     a["forward"]["exact"] + ("" if change is None else f" ({change:+.1f} points vs none)"),
                     where(a), entry(a)])
    results_table = table(["cell/cure", "held-out reverse, pooled k/n [Clopper-Pearson]", "behaviour line",
                           "among held-out answers only", "steps to fit [t]", "forward_only accuracy kept/lost",
                           "where the reverse path forms", "entry: writes and read keys (entry_sharing per seed)"],
                          rows)
    # what feeding the subject or the answer does to each cure: paired by seed (a seed fixes the base facts)
    feeding = {}
    for cure in args.cures:
        reference = {r["seed"]: r["held"]["k"] / r["held"]["n"] for r in per_seed.get(f"none/{cure}", [])}
        for cell in cells:
            if cell == "none" or not reference:
                continue
            by_seed = {r["seed"]: r["held"]["k"] / r["held"]["n"] - reference[r["seed"]]
                       for r in per_seed[f"{cell}/{cure}"] if r["seed"] in reference}
            feeding[f"{cell}/{cure}"] = dict(per_seed=by_seed, difference=ci(list(by_seed.values())))
    for key, change in feeding.items():
        aggregates[key]["held_out_change_vs_none"] = change
    feeding_table = table(
        ["cell/cure", "held-out reverse accuracy minus the `none` cell's, per seed", "mean [t over seeds]"],
        [[key, ", ".join(f"{d:+.3f}" for d in v["per_seed"].values()), est(v["difference"])]
         for key, v in feeding.items()])

    findings = []
    for key, a in aggregates.items():
        findings.append(f"`{key}`: held-out reverse {a['held']['exact']} (chance {100 * a['held']['chance']:.2f} %; "
                        f"behaviour line {a['held']['finding']}: {a['held']['evidence']}); {where(a)}; entry: "
                        f"{entry(a)}.")
    for direction, sign in (("lowers", -1), ("raises", 1)):
        moved = [f"`{k}` ({est(d)})" for k, d in ((k, v["difference"]) for k, v in feeding.items())
                 if math.isfinite(d.low) and min(sign * d.low, sign * d.high) > 0]
        if feeding:
            findings.append(f"Feeding {direction} held-out reverse accuracy against the `none` cell (nothing fed; "
                            f"paired by seed, 95 % t interval excluding 0; {len(feeding)} comparisons, not corrected "
                            "for multiplicity) in: " + (", ".join(moved) or "no cell and cure") + ".")
    lifted = [k for k, a in aggregates.items() if a["held"]["finding"] == "present"]
    findings.append("Cures with held-out reverse above chance: " + (", ".join(f"`{k}`" for k in lifted) or "none")
                    + ".")
    left_out = [f"seeds {sorted(set(range(5)) - set(study.seeds))}" * (len(study.seeds) < 5),
                f"cells {[c for c in STARVATION_CELLS if c not in cells]}" * (len(cells) < 4),
                f"cures {[c for c in CURES if c not in args.cures]}" * (len(args.cures) < len(CURES)),
                f"{n_pairs} pairs instead of 200" * (n_pairs != 200)]
    notes = [f"Reduced run: {', '.join(x for x in left_out if x)} were not run (the full atlas is "
             "`python analyses/mitigation_atlas.py`: 5 seeds, the 2x2 cells, 200 pairs)."] if any(left_out) else []
    if merged:
        notes.append(f"Cells {sorted({k.split('/')[0] for k in merged})} are kept from an earlier invocation with this "
                     f"configuration (`{merged_command}`); this invocation computed cells {args.cells}. The timing "
                     "line above is this invocation's.")
    notes.append("Not run here: the pipeline's own analysis stages (`Study.analyze_all`; `revinterp run --objective` "
                 "runs them on one run, a masked objective's forward stage on its query prompts); the path, edge and "
                 "entry columns are this script's own, on the held-out reverse prompts through each objective's "
                 "query (`objectives.query_facts`).")
    if feeding:
        results_table += ["", "Feeding the subject (`subject`), the answer (`answer`) or both, per cure, against the "
                              "`none` cell (paired by seed: a seed fixes the base facts):", "", *feeding_table]
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings, notes=notes)


if __name__ == "__main__":
    main()
