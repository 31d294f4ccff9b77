"""Study 7: mitigations of the reversal curse, and where the reverse path forms when it does, over seeds.

    python analyses/mitigations.py
    python analyses/mitigations.py --quick

Base data: ``seed_experiment(200, held_out_direction="forward")`` (every one-way fact trained forward, so all 60
one-way facts give a held-out reverse question ``<bos> b_i <-``). Variants, each one run per seed at the default
preset:

- ``none``: the base data;
- every mitigation of ``revinterp.data.MITIGATIONS`` (``apply_mitigation``): ``reverse_token``, ``reverse_entity``
  (reverse training), ``permute`` (semantic-unit permutation), ``identity_bridge``;
- a weight-decay sweep on the base data (``TrainingConfig.weight_decay``), trained for a fixed number of steps
  without early stopping (the default training stops as soon as it is fitted, long before weight decay can act);
  the held-out accuracy is also read at the first fitted evaluation from the run's history.

Held-out reverse accuracy among the M candidates pooled over seeds (k of n, Clopper-Pearson) with the behaviour
line's finding (``revinterp.analysis.verdict.proportion_finding``: present, absent or undetermined against chance),
among the held-out answers only, and the mean over seeds with Student's t interval. Runs are trained through the
shared run store on Ray (``Study.train_all``). For every variant, on the held-out
reverse prompts: a full denoising patching sweep (which layer, position and head restores the answer),
``localize(target=0.8)``, and each head's OV effective-weight map (``path="ov"``, scales and attention measured on
the prompts); these say where the reverse path is for the variants whose held-out accuracy rises above chance.
"""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go
import torch
from common import Study, ci, est, exact, head_heatmap, parser, rank_versus, table

from revinterp.analysis.dynamics import behaviour_dynamics
from revinterp.analysis.localize import localize
from revinterp.analysis.patching import patch_sweeps
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.analysis.sites import SWEEP_COMPONENTS
from revinterp.analysis.verdict import proportion_finding, question_hits
from revinterp.analysis.weights import effective_weights
from revinterp.data import MITIGATIONS, apply_mitigation, seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.stats import bootstrap_ci, error_bars
from revinterp.training import read_history

HELD, SEEN = "reverse_held_out", "reverse_seen"
WEIGHT_DECAYS = (0.0, 0.01, 0.1, 1.0)


def reverse_path(model, facts, tokenizer, target: float = 0.8) -> dict:
    """Where the held-out reverse answer is carried: patching sweeps, localization and OV maps per head."""
    pairs = make_prompt_pairs(facts, HELD, tokenizer).to(next(model.parameters()).device)
    sweeps = patch_sweeps(model, pairs, SWEEP_COMPONENTS)
    located = localize(model, pairs, target=target)
    ov = effective_weights(model, facts, path="ov", scale="prompts", splits=(SEEN, HELD))
    best = max(ov.labels, key=lambda h: ov.estimate(HELD, h).mean)
    first = sweeps["resid_pre"]
    return dict(
        clean_logit_diff=bootstrap_ci(first.clean.cpu()), corrupted_logit_diff=bootstrap_ci(first.corrupted.cpu()),
        top_sites={c: [(s.label(pairs.labels), v) for s, v in r.top(3, by="max")] for c, r in sweeps.items()},
        normalized={c: {s.label(pairs.labels): v for s, v in zip(r.sites(), r.normalized.flatten().tolist())}
                    for c, r in sweeps.items() if c != "head_out_by_pos"},
        recovered=located.recovered_ci(), reached=located.reached,
        chosen=[s.label(pairs.labels) for s in located.chosen],
        ov={label: {s: ov.estimate(s, label) for s in (SEEN, HELD)} for label in ov.labels},
        ov_top_head=dict(head=best, held_out=ov.estimate(HELD, best), seen=ov.estimate(SEEN, best)),
        sweeps=sweeps,
    )


def main() -> None:
    p = parser("mitigations", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    p.add_argument("--weight-decays", type=float, nargs="+", default=list(WEIGHT_DECAYS))
    p.add_argument("--wd-steps", type=int, default=None, help="steps of the weight-decay runs (default 800)")
    args = p.parse_args()
    study = Study("mitigations", "Mitigations: held-out reverse accuracy and where the reverse path forms", args)
    n_pairs = args.n_pairs or study.size(200, 40)
    wd_steps = args.wd_steps or study.size(800, 200)

    variants = ["none", *MITIGATIONS, *(f"weight_decay={wd:g}" for wd in args.weight_decays)]
    per_seed: dict[str, list[dict]] = {v: [] for v in variants}
    wd_curves: dict[str, list] = {}
    augmented: list[dict[str, list[str]]] = []  # per seed: the augmented statements' text of each mitigation
    runs, specs = [], []
    for seed in study.seeds:
        base = seed_experiment(n_pairs, held_out_direction="forward", seed=seed)
        augmented.append({m: [f.text(s) for s in f.split("augmented")]
                          for m, f in ((m, apply_mitigation(base, m)) for m in MITIGATIONS)})
        for variant in variants:
            overrides = {}
            facts = base
            if variant in MITIGATIONS:
                facts = apply_mitigation(base, variant)
            elif variant.startswith("weight_decay="):
                wd = float(variant.split("=")[1])
                overrides = dict(weight_decay=wd, early_stop=False, max_steps=wd_steps)
            runs.append((seed, variant))
            specs.append(study.spec(f"{variant}-seed{seed}", facts, seed, **overrides))
    run_dirs = study.train_all(specs)
    for (seed, variant), run_dir, log in zip(runs, run_dirs, study.run_log[-len(runs):]):
        run = load_run(run_dir)
        behaviour = evaluate(run.model, run.facts)
        record = dict(seed=seed, run=log, behaviour={s: behaviour[s].metrics() for s in (SEEN, HELD)},
                      trained_accuracy=min(behaviour[s].metrics()["accuracy"] for s in behaviour.splits
                                           if behaviour[s].trained))
        if variant.startswith("weight_decay="):
            history = behaviour_dynamics(run_dir, "accuracy")
            wd_curves.setdefault(variant, []).append(history)
            fitted_at = next((h for h in read_history(run_dir) if h["fitted"]), None)
            record["first_fitted"] = None if fitted_at is None else dict(
                step=fitted_at["step"], held_out_greedy_accuracy=fitted_at["splits"][HELD]["accuracy"])
            record["final_held_out_greedy_accuracy"] = float(history.values[HELD][-1])
        path = reverse_path(run.model, run.facts, run.tokenizer)
        sweeps = path.pop("sweeps")
        record["path"] = path
        per_seed[variant].append(record)
        if seed == study.seeds[0] and variant in ("reverse_entity", "identity_bridge"):
            study.figure(head_heatmap(sweeps["head_out_by_pos"], f"{variant}: head outputs patched on held-out "
                                                                 "reverse prompts"),
                         f"{variant}_heads_held_out_seed{seed}",
                         f"{variant}, seed {seed}: denoising patching of each head's output at each position on "
                         "held-out reverse prompts (normalized; 0 corrupted, 1 clean).", width=12)
            study.figure(sweeps["resid_pre"].plot(), f"{variant}_resid_held_out_seed{seed}",
                         f"{variant}, seed {seed}: denoising patching of the residual stream on held-out reverse "
                         "prompts.")

    aggregates = {}
    for variant, rows in per_seed.items():
        chance = sum(r["behaviour"][HELD]["chance_accuracy"] for r in rows) / len(rows)
        acc = ci([r["behaviour"][HELD]["accuracy"] for r in rows])
        held = [r["behaviour"][HELD] for r in rows]
        k, n = (sum(x) for x in zip(*map(question_hits, held)))
        among_k = sum(round(m["held_out_answers"]["accuracy"] * question_hits(m)[1]) for m in held)
        finding, evidence = proportion_finding(k, n, chance, sum(r["behaviour"][SEEN]["accuracy"] for r in rows)
                                               / len(rows))
        agg = dict(
            held_out_accuracy=acc, chance=chance, above_chance=finding == "present",
            pooled=dict(k=k, n=n, exact=exact(k, n), finding=finding, evidence=evidence),
            among_held_out_answers=dict(k=among_k, n=n, exact=exact(among_k, n),
                                        chance=sum(m["held_out_answers"]["chance_accuracy"] for m in held) / len(held)),
            held_out_rank=ci([r["behaviour"][HELD]["mean_rank"] for r in rows]),
            chance_rank=rows[0]["behaviour"][HELD]["chance_mean_rank"],
            seen_accuracy=ci([r["behaviour"][SEEN]["accuracy"] for r in rows]),
            trained_accuracy=ci([r["trained_accuracy"] for r in rows]),
            all_fitted=all(r["run"]["fitted"] for r in rows), steps=ci([r["run"]["steps"] for r in rows]),
            recovered=ci([r["path"]["recovered"].mean for r in rows]),
            chosen_counts=dict(Counter(s for r in rows for s in r["path"]["chosen"])),
            top_attn=dict(Counter(r["path"]["top_sites"]["attn_out"][0][0] for r in rows)),
            top_mlp=dict(Counter(r["path"]["top_sites"]["mlp_out"][0][0] for r in rows)),
            top_heads=[r["path"]["top_sites"]["head_out_by_pos"][0] for r in rows],
            ov_top_held_out=ci([r["path"]["ov_top_head"]["held_out"].mean for r in rows]),
            ov_top_seen=ci([r["path"]["ov_top_head"]["seen"].mean for r in rows]),
            ov_top_heads=[r["path"]["ov_top_head"]["head"] for r in rows],
            clean_logit_diff=ci([r["path"]["clean_logit_diff"].mean for r in rows]),
            corrupted_logit_diff=ci([r["path"]["corrupted_logit_diff"].mean for r in rows]),
            site_normalized={c: {site: ci([r["path"]["normalized"][c][site] for r in rows])
                                 for site in rows[0]["path"]["normalized"][c]}
                             for c in rows[0]["path"]["normalized"]},
        )
        if variant.startswith("weight_decay="):
            fitted = [r["first_fitted"] for r in rows if r["first_fitted"] is not None]
            agg["fitted_seeds"] = len(fitted)
            agg["held_out_greedy_at_first_fit"] = ci([f["held_out_greedy_accuracy"] for f in fitted])
            agg["first_fit_step"] = ci([f["step"] for f in fitted])
            agg["held_out_greedy_final"] = ci([r["final_held_out_greedy_accuracy"] for r in rows])
        aggregates[variant] = agg

    # figures -------------------------------------------------------------------------------------
    fig = go.Figure()
    values = [aggregates[v]["held_out_accuracy"] for v in variants]
    fig.add_bar(x=variants, y=[v.mean for v in values], name="held-out reverse accuracy",
                error_y=error_bars(values))
    fig.add_hline(y=aggregates["none"]["chance"])
    fig.update_layout(title=f"Held-out reverse accuracy per mitigation, mean over {len(study.seeds)} seeds (95 % CI "
                            "over seeds; dotted: chance)", yaxis=dict(title="accuracy", range=[0, 1.05]))
    study.figure(fig, "held_out_accuracy_by_variant", "Held-out reverse accuracy among the M candidates for every "
                                                      "variant, mean over seeds with 95 % intervals over seeds.",
                 width=11)
    if wd_curves:
        fig = go.Figure()
        for variant, curves in wd_curves.items():
            steps = curves[0].steps
            if all(c.steps == steps for c in curves):
                mean = torch.stack([c.values[HELD] for c in curves]).mean(0)
                fig.add_scatter(x=[max(s, 0.5) for s in steps], y=mean.tolist(), mode="lines", name=variant)
        fig.update_layout(title="Held-out reverse accuracy (greedy over the vocabulary) in training, mean over seeds",
                          xaxis=dict(type="log", title="training step"), yaxis_title="accuracy")
        study.figure(fig, "weight_decay_held_out_over_training", "Held-out reverse accuracy (every answer token the "
                                                                 "arg max over the vocabulary, from the runs' "
                                                                 "periodic evaluation) over training for each weight "
                                                                 "decay, mean over seeds.")
    mitigated = [v for v in variants if aggregates[v]["above_chance"]]
    if mitigated:
        fig = go.Figure()
        for variant in mitigated:
            sites = aggregates[variant]["site_normalized"]
            names = [s for c in ("resid_pre", "attn_out", "mlp_out") for s in sites[c]]
            vals = [sites[c][s] for c in ("resid_pre", "attn_out", "mlp_out") for s in sites[c]]
            fig.add_bar(x=names, y=[v.mean for v in vals], name=variant,
                        error_y=error_bars(vals))
        fig.update_layout(title="Where the reverse path forms: denoising patching on held-out reverse prompts "
                                "(normalized, 95 % CI over seeds)", yaxis_title="normalized logit difference")
        study.figure(fig, "reverse_path_sites", "For every variant whose held-out reverse accuracy is above chance: "
                                                "normalized denoising effect of each residual-stream, attention-output "
                                                "and MLP-output site on held-out reverse prompts, mean over seeds with "
                                                "95 % intervals over seeds.", width=12)

    # summary -------------------------------------------------------------------------------------
    rows = []
    for v in variants:
        a = aggregates[v]
        among = a["among_held_out_answers"]
        rows.append([v, a["pooled"]["exact"], a["pooled"]["finding"], est(a["held_out_accuracy"], percent=True),
                     f"{100 * a['chance']:.2f} %", f"{among['exact']} (chance {100 * among['chance']:.1f} %)",
                     est(a["held_out_rank"]), est(a["seen_accuracy"], percent=True),
                     est(a["trained_accuracy"], percent=True), a["all_fitted"], est(a["steps"])])
    results_table = table(["variant", "held-out reverse accuracy pooled k/n [Clopper-Pearson]", "behaviour line",
                           "mean over seeds [t]", "chance", "among held-out answers only", "mean rank",
                           "seen reverse accuracy", "worst trained split", "all fitted", "steps"], rows)
    wd_rows = [[v, aggregates[v]["fitted_seeds"], est(aggregates[v]["first_fit_step"]),
                est(aggregates[v]["held_out_greedy_at_first_fit"], percent=True),
                est(aggregates[v]["held_out_greedy_final"], percent=True)]
               for v in variants if v.startswith("weight_decay=")]
    if wd_rows:
        results_table += ["", f"Weight decay, {wd_steps} steps without early stopping; held-out reverse accuracy "
                              "greedy over the vocabulary from the periodic evaluation:", ""]
        results_table += table(["variant", "seeds fitted", "first fitted step", "held-out at first fit",
                                f"held-out at step {wd_steps}"], wd_rows)
    results_table += ["", "Where the reverse path is (held-out reverse prompts). Normalized values divide by the "
                          "clean - corrupted gap; for variants at chance that gap is about zero, so localization and "
                          "head fractions are left out there (n/a):", ""]

    def where(v: str, text: str) -> str:
        return text if aggregates[v]["above_chance"] else "n/a"

    results_table += table(
        ["variant", "clean / corrupted logit diff", "localize: recovered", "chosen sites (seeds)",
         "top head per seed (normalized)", "top OV head: held-out / seen effect"],
        [[v, f"{est(aggregates[v]['clean_logit_diff'])} / {est(aggregates[v]['corrupted_logit_diff'])}",
          where(v, est(aggregates[v]["recovered"])),
          where(v, ", ".join(f"{s} ({n})" for s, n in sorted(aggregates[v]["chosen_counts"].items(),
                                                              key=lambda x: -x[1]))),
          where(v, ", ".join(f"{s} ({x:.2f})" for s, x in aggregates[v]["top_heads"])),
          f"{est(aggregates[v]['ov_top_held_out'])} / {est(aggregates[v]['ov_top_seen'])}"]
         for v in variants])

    none = aggregates["none"]
    findings = [f"Without mitigation, held-out reverse accuracy pooled over seeds is {none['pooled']['exact']} "
                f"against chance {100 * none['chance']:.2f} % (behaviour line: {none['pooled']['finding']}: "
                f"{none['pooled']['evidence']})."]
    for v in variants[1:]:
        a = aggregates[v]
        text = (f"`{v}`: held-out reverse accuracy pooled {a['pooled']['exact']} (behaviour line: "
                f"{a['pooled']['finding']}); among the held-out answers only {a['among_held_out_answers']['exact']}; "
                f"mean rank {est(a['held_out_rank'])} "
                f"({rank_versus(a['held_out_rank'], a['chance_rank'])} chance); trained splits at least "
                f"{est(a['trained_accuracy'], percent=True)}, all fitted: {a['all_fitted']}.")
        if a["above_chance"]:
            chosen = sorted(a["chosen_counts"].items(), key=lambda x: -x[1])
            text += (" Where: on held-out reverse prompts, localize restores "
                     + ", ".join(f"{s} ({n} of {len(study.seeds)} seeds)" for s, n in chosen)
                     + f", recovering {est(a['recovered'])} of the clean logit difference; the strongest attention "
                     f"output is " + ", ".join(f"{s} ({n})" for s, n in a["top_attn"].items())
                     + "; the strongest head per seed: " + ", ".join(f"{s} ({x:.2f})" for s, x in a["top_heads"])
                     + f"; the head with the largest held-out OV entry ({', '.join(a['ov_top_heads'])}) has effect "
                     f"{est(a['ov_top_held_out'])} on held-out pairs against {est(a['ov_top_seen'])} on seen ones.")
        if v.startswith("weight_decay="):
            text += (f" Read at the first fitted evaluation ({a['fitted_seeds']} of {len(study.seeds)} seeds fitted, "
                     f"step {est(a['first_fit_step'])}): held-out greedy accuracy "
                     f"{est(a['held_out_greedy_at_first_fit'], percent=True)}; at step {wd_steps}: "
                     f"{est(a['held_out_greedy_final'], percent=True)}.")
        findings.append(text)
    same = [sorted(base_texts["reverse_token"]) == sorted(base_texts["reverse_entity"]) for base_texts in augmented]
    if all(same):
        findings.append("For single-token entities `reverse_token` and `reverse_entity` add exactly the same training "
                        f"text in every seed ({len(same)} of {len(same)}), so their runs coincide.")
    findings.append("Variants above chance: " + (", ".join(f"`{v}`" for v in mitigated) or "none") + ".")
    config = dict(generator="seed_experiment", n_pairs=n_pairs, held_out_direction="forward",
                  mitigations=list(MITIGATIONS), weight_decays=list(args.weight_decays),
                  weight_decay_runs=dict(max_steps=wd_steps, early_stop=False),
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
