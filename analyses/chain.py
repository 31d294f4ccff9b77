"""Study 3: transitivity (chain data): hops are learned, held-out composed facts are not, over seeds.

    python analyses/chain.py
    python analyses/chain.py --quick

``chain_experiment(200)``: chains ``x_i -> y_i``, ``y_i -> z_i`` and the composed ``x_i ~> z_i``, 30 % of the
composed facts held out (Zhu et al. 2024, section 5). Per seed: accuracy among the M candidates of every split
(chance 1/M), and the end-to-end effective weight ``Y[x_i, z_i]`` (logit of ``z_i`` after ``<bos> x_i ~>``, row
centred) minus the mean over the other held-out answers (``weights.effective_weights(path="end_to_end")``): zero
when nothing ties ``x_i`` to its own ``z_i``. The same lines of evidence as the reverse-path study, on composed
prompts ``<bos> x_i ~>``, held-out against trained composed facts: residual-stream denoising (the raw logit-difference
change at the strongest site, with an interval over prompt pairs: does anything carry z when x is given?) and a
linear probe for z's identity (``probes.probe_answer_identity(direction="composed")``, fitted on trained composed
facts, tested on held-out ones).
"""

from __future__ import annotations

import plotly.graph_objects as go
from common import (
    Study,
    behaviour_over_seeds,
    ci,
    est,
    intervention_record,
    parser,
    probe_summary,
    rank_versus,
    seed_ci_table,
    versus,
)

from revinterp.analysis.interventions import INTERVENTION_METHODS, compare_splits
from revinterp.analysis.probes import probe_answer_identity
from revinterp.analysis.weights import effective_weights
from revinterp.data import chain_experiment
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.stats import error_bars

HELD_OUT, SEEN = "chain_composed_held_out", "chain_composed_seen"


def main() -> None:
    p = parser("chain", __doc__.splitlines()[0])
    p.add_argument("--n-chains", type=int, default=None, help="chains (default 200; --quick 40)")
    p.add_argument("--held-out-fraction", type=float, default=0.3, help="composed facts held out (default 0.3)")
    args = p.parse_args()
    study = Study("chain", "Chains: hops are learned, held-out composed facts are not", args)
    n_chains = args.n_chains or study.size(200, 40)

    per_seed, behaviours = [], []
    run_dirs = study.train_all([study.spec(f"chain-seed{seed}", chain_experiment(
        n_chains, composed_held_out_fraction=args.held_out_fraction, seed=seed), seed) for seed in study.seeds])
    for seed, run_dir, log in zip(study.seeds, run_dirs, study.run_log):
        run = load_run(run_dir)
        behaviour = evaluate(run.model, run.facts)
        behaviours.append(behaviour)
        weights = effective_weights(run.model, run.facts, path="end_to_end")
        probes = probe_answer_identity(run.model, run.facts, direction="composed", tokenizer=run.tokenizer)
        per_seed.append(dict(seed=seed, run=log, splits=behaviour.to_dict()["splits"],
                             effective_weight_effect={s: weights.estimate(s) for s in weights.splits},
                             patching=intervention_record(compare_splits(run.model, run.facts, (SEEN, HELD_OUT),
                                                                         tokenizer=run.tokenizer)),
                             probe=probe_summary(probes)))
        if seed == study.seeds[0]:
            study.figure(probes.plot(), "probes_seed0", f"Seed {seed}: probe for z at the composed prompt, per depth "
                                                        "and position: train, cross-validated (trained composed facts, "
                                                        "unseen classes), held-out test, shuffled controls; dotted: "
                                                        "chance.", width=12)
            study.figure(behaviour.plot(), "behaviour_seed0", f"Seed {seed}: accuracy per split with 95 % intervals "
                                                              "over examples; markers: chance 1/M.")
            study.figure(weights.plot(relation="~>"), "effective_weights_composed_seed0",
                         f"Seed {seed}: end-to-end effective weights of the composed relation ~> (left: Y[x, z], "
                         "facts on the diagonal, rows and columns ordered by split), right: mean effect per split "
                         "(split baseline) with 95 % intervals over facts.")

    splits = behaviour_over_seeds(behaviours)
    weight_effect = {s: ci([r["effective_weight_effect"][s].mean for r in per_seed])
                     for s in per_seed[0]["effective_weight_effect"]}
    patching = {s: ci([r["patching"][s]["total"].mean for r in per_seed]) for s in (SEEN, HELD_OUT)}
    patching_nonzero = {s: sum(not (r["patching"][s]["total"].low <= 0 <= r["patching"][s]["total"].high)
                               for r in per_seed) for s in (SEEN, HELD_OUT)}
    sites_nonzero = {s: {m: ci([r["patching"][s]["distinguishable"][m] for r in per_seed])
                         for m in INTERVENTION_METHODS}
                     for s in (SEEN, HELD_OUT)}
    n_tested = per_seed[0]["patching"][SEEN]["tested"]["patching"]
    probe = {k: ci([r["probe"][k] for r in per_seed]) for k in ("final_cv", "final_test", "final_control_test")}
    aggregates = dict(splits=splits, effective_weight_effect=weight_effect, patching=patching,
                      patching_nonzero=patching_nonzero, probe=probe, probe_chance=per_seed[0]["probe"]["chance"],
                      steps=ci([r["run"]["steps"] for r in per_seed]),
                      all_fitted=all(r["run"]["fitted"] for r in per_seed))

    fig = go.Figure()
    names = list(splits)
    values = [splits[s]["accuracy"] for s in names]
    fig.add_bar(x=names, y=[v.mean for v in values], name="accuracy",
                error_y=error_bars(values))
    fig.add_hline(y=splits[HELD_OUT]["chance_accuracy"])
    fig.update_layout(title=f"Chain data: accuracy per split over {len(study.seeds)} seeds (95 % CI over seeds; "
                            "dotted: chance)", yaxis_title="accuracy")
    study.figure(fig, "accuracy_over_seeds", "Accuracy among the M candidates per split, mean over seeds with 95 % "
                                             "bootstrap intervals over seeds; the dotted line is chance 1/M.")
    fig = go.Figure()
    names = list(weight_effect)
    fig.add_bar(x=names, y=[weight_effect[s].mean for s in names], name="effect",
                error_y=error_bars([weight_effect[s] for s in names]))
    fig.update_layout(title="End-to-end effective weight of each fact minus its split baseline (95 % CI over seeds)",
                      yaxis_title="Y[subject, answer] - baseline")
    study.figure(fig, "effective_weights_over_seeds", "End-to-end effective-weight effect per split (entry minus the "
                                                      "row mean over the other answers of its split), mean over seeds "
                                                      "with 95 % intervals over seeds.")

    extra = {"_header": ("chance", "mean of per-seed example CIs", "effective-weight effect")}
    for split, v in splits.items():
        low, high = v["mean_example_accuracy_ci"]
        extra[split] = (f"{100 * v['chance_accuracy']:.2f} %", f"[{100 * low:.1f}, {100 * high:.1f}] %",
                        est(weight_effect[split]) if split in weight_effect else "-")
    table = [f"Steps to fit {est(aggregates['steps'])}; all fitted: {aggregates['all_fitted']}.", ""]
    table += seed_ci_table(splits, [("accuracy", "accuracy [95 % CI over seeds]", True),
                                    ("mean_rank", "mean rank", False), ("logprob_candidates", "log p(cand)", False)],
                           extra)
    held = splits[HELD_OUT]
    trained = [s for s, v in splits.items() if v["trained"]]
    findings = [
        "Trained splits (" + ", ".join(f"{s} {est(splits[s]['accuracy'], percent=True)}" for s in trained)
        + f"); all runs fitted: {aggregates['all_fitted']}.",
        f"Held-out composed facts x ~> z: accuracy {est(held['accuracy'], percent=True)} is "
        f"{versus(held['accuracy'], held['chance_accuracy'])} chance ({100 * held['chance_accuracy']:.2f} %); "
        f"mean rank {est(held['mean_rank'])} is {rank_versus(held['mean_rank'], held['chance_mean_rank'])} chance "
        f"({held['chance_mean_rank']:.1f})"
        + (": both hops are answered, their composition is not inferred."
           if versus(held["accuracy"], held["chance_accuracy"]) != "above"
           and min(splits[s]["accuracy"].mean for s in ("chain_first_hop", "chain_second_hop")) > 0.99
           else "."),
        f"End-to-end effective weight Y[x, z] of held-out composed facts minus its baseline: "
        f"{est(weight_effect[HELD_OUT])} ({versus(weight_effect[HELD_OUT], 0.0)} zero), against "
        f"{est(weight_effect['chain_composed_seen'])} for trained composed facts.",
    ]
    findings.append(
        f"Interventions on composed prompts: swapping the subject x changes the held-out logit difference by "
        f"{est(patching[HELD_OUT])} ({versus(patching[HELD_OUT], 0.0)} zero; distinguishable from zero over prompt "
        f"pairs in {patching_nonzero[HELD_OUT]} of {len(per_seed)} seeds), against {est(patching[SEEN])} for trained "
        f"composed facts ({patching_nonzero[SEEN]} of {len(per_seed)} seeds). Sites distinguishable from zero "
        f"(patching / attribution patching / DLA, mean per seed): held-out "
        + " / ".join(f"{sites_nonzero[HELD_OUT][m].mean:.1f}" for m in INTERVENTION_METHODS) + ", trained "
        + " / ".join(f"{sites_nonzero[SEEN][m].mean:.1f}" for m in INTERVENTION_METHODS)
        + f" of {n_tested} patched sites (about 5 % of sites with no effect exclude zero by chance).")
    findings.append(
        f"Probe for z at the last position of the final residual stream: held-out composed facts "
        f"{est(probe['final_test'])} (chance {aggregates['probe_chance']:.3f}; shuffled-label control "
        f"{est(probe['final_control_test'])}), where trained composed facts of unseen classes give "
        f"{est(probe['final_cv'])} (cross-validated).")
    config = dict(generator="chain_experiment", n_chains=n_chains, composed_held_out_fraction=args.held_out_fraction,
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=table, findings=findings)


if __name__ == "__main__":
    main()
