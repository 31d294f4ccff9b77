"""Study 8: training dynamics of the default run - behaviour and effective weights over the checkpoints, over seeds.

    python analyses/dynamics.py
    python analyses/dynamics.py --quick

Per seed, the default seed-experiment run (trained until fitted; weights saved at log-spaced steps):

- ``dynamics.behaviour_dynamics``: accuracy (greedy over the vocabulary) and mean p(answer) per split at every
  periodic evaluation (``history.jsonl``);
- ``weights.effective_weights_over_training(path="end_to_end")``: the whole model's map ``Y[s, o] = logit(o | <bos> s
  r)`` (row centred) at every checkpoint: each split's entries' change from step 0, and each split's effect (entry minus
  the mean over the other answers of its split);
- the same for the OV map of the main head (``path="ov"``, weights only, ``scale="none"``): the head whose OV map has
  the largest forward effect at the end of training;
- the asymmetry statistic of the end-to-end map (``EffectiveWeights.asymmetry``: per one-way fact, trained-direction
  effect minus held-out-direction effect) at every checkpoint;
- the gradient view over training (``gradients.gradient_step_effects_over_training``): at every checkpoint, how far
  one SGD step on a forward statement moves its reverse answer's logit, as a fraction of its own (``forward_only``:
  the reverse is held out; ``forward_seen``: the reverse is trained too).

Expected from Zhu et al. (2024): forward (and seen-reverse) entries grow, held-out reverse entries stay near their
initial values.
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from common import Study, ci, est, parser, table, versus

from revinterp.analysis.dynamics import behaviour_dynamics
from revinterp.analysis.gradients import gradient_step_effects_over_training
from revinterp.analysis.weights import effective_weights, effective_weights_over_training
from revinterp.data import SPLITS, seed_experiment
from revinterp.models import load_run

FORWARD = "forward_seen"


def weight_curves(dyn) -> dict:
    """Per split: mean entry change from step 0 and mean effect at every checkpoint, and the final values with
    intervals over facts."""
    statements = dyn.results[0].statements
    change = dyn.change_from_initial()
    out = {}
    for split in dyn.results[0].splits:
        rows = [k for k, s in enumerate(statements) if s.split == split]
        out[split] = dict(change=change[:, rows].mean(-1).tolist(), effect=[e.mean for e in dyn.estimates(split)],
                          final_change=ci(change[-1, rows]), final_effect=dyn.results[-1].estimate(split),
                          initial_effect=dyn.results[0].estimate(split))
    return out


def main() -> None:
    p = parser("dynamics", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    args = p.parse_args()
    study = Study("dynamics", "Training dynamics: behaviour and effective weights over checkpoints", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    per_seed = []
    run_dirs = study.train_all([study.spec(f"seed{seed}", seed_experiment(n_pairs, seed=seed), seed)
                                for seed in study.seeds])
    for seed, run_dir, log in zip(study.seeds, run_dirs, study.run_log):
        run = load_run(run_dir)
        accuracy = behaviour_dynamics(run_dir, "accuracy")
        probability = behaviour_dynamics(run_dir, "probability")
        end_to_end = effective_weights_over_training(run_dir, path="end_to_end")
        final_ov = effective_weights(run.model, run.facts, path="ov")
        head = max(final_ov.labels, key=lambda h: final_ov.estimate(FORWARD, h).mean)
        layer, index = (int(x) for x in head[1:].split("H"))
        ov = effective_weights_over_training(run_dir, path="ov", heads=[(layer, index)])
        gradients = gradient_step_effects_over_training(run_dir, splits=["forward_seen", "forward_only"])
        record = dict(
            seed=seed, run=log, eval_steps=accuracy.steps, checkpoint_steps=end_to_end.steps,
            accuracy={k: v.tolist() for k, v in accuracy.values.items()},
            probability={k: v.tolist() for k, v in probability.values.items()},
            end_to_end=weight_curves(end_to_end), main_head=head, ov=weight_curves(ov),
            asymmetry=[r.asymmetry() for r in end_to_end.results],
            gradient_steps=list(gradients.steps),
            gradient_ratio={s: gradients.ratios(s) for s in ("forward_seen", "forward_only")},
        )
        per_seed.append(record)
        if seed == study.seeds[0]:
            study.figure(probability.plot(), f"probability_seed{seed}",
                         f"Seed {seed}: mean p(answer) per split at every periodic evaluation (log step axis).")
            study.figure(end_to_end.plot(), f"end_to_end_seed{seed}",
                         f"Seed {seed}: end-to-end effective-weight effect per split over checkpoints (95 % intervals "
                         "over facts).")
            study.figure(ov.plot(), f"ov_main_head_seed{seed}",
                         f"Seed {seed}: OV effective-weight effect per split of the main head {head} over checkpoints.")

    splits = list(per_seed[0]["end_to_end"])
    aggregates = {}
    for path in ("end_to_end", "ov"):
        aggregates[path] = {split: dict(
            final_change=ci([r[path][split]["final_change"].mean for r in per_seed]),
            final_effect=ci([r[path][split]["final_effect"].mean for r in per_seed]),
            initial_effect=ci([r[path][split]["initial_effect"].mean for r in per_seed]),
        ) for split in splits}
    aggregates["main_heads"] = [r["main_head"] for r in per_seed]
    aggregates["final_probability"] = {s: ci([r["probability"][s][-1] for r in per_seed]) for s in splits}
    aggregates["initial_probability"] = {s: ci([r["probability"][s][0] for r in per_seed]) for s in splits}
    aggregates["final_step"] = ci([r["eval_steps"][-1] for r in per_seed])
    aggregates["asymmetry"] = dict(initial=ci([r["asymmetry"][0].mean for r in per_seed]),
                                   final=ci([r["asymmetry"][-1].mean for r in per_seed]))
    aggregates["gradient_ratio"] = {
        s: dict(initial=ci([r["gradient_ratio"][s][0].mean for r in per_seed]),
                final=ci([r["gradient_ratio"][s][-1].mean for r in per_seed]),
                largest=ci([max(abs(e.mean) for e in r["gradient_ratio"][s]) for r in per_seed]))
        for s in ("forward_seen", "forward_only")}

    # mean curves over seeds on the checkpoint steps every run has
    common = sorted(set.intersection(*(set(r["checkpoint_steps"]) for r in per_seed)))
    aggregates["largest_dip"] = {}
    for path in ("end_to_end", "ov"):
        for split in splits:
            mean = torch.tensor([[r[path][split]["change"][r["checkpoint_steps"].index(s)] for s in common]
                                 for r in per_seed]).mean(0)
            k = int(mean.argmin())
            aggregates["largest_dip"].setdefault(path, {})[split] = dict(step=common[k], change=float(mean[k]))
    for path, title in (("end_to_end", "end-to-end map"), ("ov", "OV map of each seed's main head")):
        fig = go.Figure()
        for split in splits:
            curves = torch.tensor([[r[path][split]["change"][r["checkpoint_steps"].index(s)] for s in common]
                                   for r in per_seed])
            bands = [ci(curves[:, k]) for k in range(len(common))]
            x = [max(s, 0.5) for s in common]
            fig.add_scatter(x=x + x[::-1], y=[b.high for b in bands] + [b.low for b in bands][::-1], fill="toself",
                            line=dict(width=0), opacity=0.2, showlegend=False)
            fig.add_scatter(x=x, y=[b.mean for b in bands], mode="lines+markers", name=split)
        fig.update_layout(title=f"Change of the {title}'s entries from step 0, mean over {len(per_seed)} seeds "
                                "(95 % CI over seeds)", xaxis=dict(type="log", title="training step"),
                          yaxis_title="entry change")
        study.figure(fig, f"{path}_change_over_seeds",
                     f"Change of the {title}'s entries Y[subject, answer] from initialization per split, mean over "
                     f"seeds with 95 % intervals over seeds, on the checkpoint steps every run has (up to step "
                     f"{common[-1]}).")
    fig = go.Figure()
    for split, label in (("forward_only", "forward_only -> its held-out reverse"),
                         ("forward_seen", "forward_seen -> its seen reverse")):
        for r in per_seed:
            values = r["gradient_ratio"][split]
            fig.add_scatter(x=[max(s, 0.5) for s in r["gradient_steps"]], y=[e.mean for e in values],
                            mode="lines+markers", name=f"{label}, seed {r['seed']}",
                            line=dict(dash="solid" if split == "forward_only" else "dot"))
    fig.update_layout(title="Gradient view over training: reverse-logit change / own-logit change of one SGD step",
                      xaxis=dict(type="log", title="training step"), yaxis_title="ratio")
    study.figure(fig, "gradient_ratio_over_training", "At every checkpoint, one SGD step on a forward statement: the "
                                                      "change of its reverse answer's logit as a fraction of the "
                                                      "change of its own answer's logit, per seed (solid: the reverse "
                                                      "is held out; dotted: the reverse is trained too).", width=11)
    eval_common = sorted(set.intersection(*(set(r["eval_steps"]) for r in per_seed)))
    fig = go.Figure()
    for split in splits:
        values = torch.tensor([[r["probability"][split][r["eval_steps"].index(s)] for s in eval_common]
                               for r in per_seed])
        fig.add_scatter(x=[max(s, 0.5) for s in eval_common], y=values.mean(0).tolist(), mode="lines+markers",
                        name=split)
    fig.update_layout(title=f"Mean p(answer) per split over training, mean over {len(per_seed)} seeds",
                      xaxis=dict(type="log", title="training step"), yaxis_title="p(answer)")
    study.figure(fig, "probability_over_seeds", "Mean probability of the answer per split at the periodic "
                                                "evaluations every run has, mean over seeds.")

    results_table = []
    for path, title in (("end_to_end", "End-to-end map"), ("ov", "OV map of the main head")):
        results_table += [f"### {title} (final checkpoint; mean over seeds [95 % CI over seeds])", ""]
        header = ["split", "trained", "entry change from step 0", "effect at step 0", "effect at the end"]
        results_table += table(header,
                               [[s, SPLITS[s], est(v["final_change"]), est(v["initial_effect"]),
                                 est(v["final_effect"])] for s, v in aggregates[path].items()])
        results_table.append("")
    results_table += ["### p(answer)", ""]
    results_table += table(["split", "step 0", "final"], [[s, est(aggregates["initial_probability"][s]),
                                                           est(aggregates["final_probability"][s])] for s in splits])
    results_table += ["", f"Main heads per seed: {', '.join(aggregates['main_heads'])}; final step "
                          f"{est(aggregates['final_step'])}."]

    findings = []
    for path, title in (("end_to_end", "End-to-end"), ("ov", "Main-head OV")):
        agg = aggregates[path]
        trained = [s for s in splits if SPLITS[s]]
        held = [s for s in splits if not SPLITS[s]]
        smallest = min(agg[s]["final_change"].mean for s in trained)
        for s in held:
            c = agg[s]["final_change"]
            dip = aggregates["largest_dip"][path][s]
            findings.append(
                f"{title}: held-out `{s}` entries changed by {est(c)} ({versus(c, 0.0)} zero), "
                f"{100 * abs(c.mean) / smallest:.1f} % of the smallest trained split's change ({smallest:.3g}); "
                f"their effect went {est(agg[s]['initial_effect'])} -> {est(agg[s]['final_effect'])}."
                + (f" On the way they dip: the mean change over seeds is lowest, {dip['change']:.3g}, at step "
                   f"{dip['step']} (each step on a trained statement pushes the other answers' logits down), then "
                   "returns." if dip["change"] < c.low else ""))
        findings.append(f"{title}: trained splits' entries grew by "
                        + ", ".join(f"{s} {est(agg[s]['final_change'])}" for s in trained) + ".")
    asym = aggregates["asymmetry"]
    findings.append(f"Asymmetry statistic of the end-to-end map (per one-way fact, trained-direction effect minus "
                    f"held-out-direction effect): {est(asym['initial'])} at step 0 -> {est(asym['final'])} at the end.")
    g = aggregates["gradient_ratio"]
    findings.append(f"Gradient view over training: one SGD step on a `forward_only` statement moves its held-out "
                    f"reverse logit by {est(g['forward_only']['initial'])} of its own change at step 0 and "
                    f"{est(g['forward_only']['final'])} at the end (largest |ratio| at any checkpoint "
                    f"{est(g['forward_only']['largest'])}); for `forward_seen` (reverse trained too): "
                    f"{est(g['forward_seen']['initial'])} -> {est(g['forward_seen']['final'])}.")
    findings.append("p(answer) at the end: " + ", ".join(f"{s} {est(aggregates['final_probability'][s])}"
                                                         for s in splits) + ".")
    config = dict(generator="seed_experiment", n_pairs=n_pairs, model=study.model_config(0),
                  training=study.training_config(0), ov_scale="none")
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
