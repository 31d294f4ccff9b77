"""Study 4: the theory of Zhu et al. (2024) beside the trained transformer, over seeds.

    python analyses/theory.py
    python analyses/theory.py --quick

Three parts, each over the same seeds:

1. Bilinear model (``revinterp.theory.bilinear``): ``l(y | x) = x^T Θ y`` with fixed random embeddings, trained by
   full-batch gradient descent on 10 pairs with pair 0's reverse held out, at embedding dimensions d = 8 .. 2048.
   The paper's bound ``L_rev(t)/L_rev(0) >= (L(t)/L(0))^ε`` holds along a run exactly for ``ε >= max_t ε̂(t)``
   with ``ε̂(t) = log(L_rev(t)/L_rev(0)) / log(L(t)/L(0))``; the paper says ε -> 0 as d grows. Reported per d:
   the final ``ε̂(T)``, the smallest valid ε (``max_t ε̂``), and the log-log slope of ``mean |ε̂(T)|`` against d.
2. One-layer effective weights (``revinterp.theory.one_layer``): ``Y`` (token-to-next-token logits) trained on the
   seed split of 200 pairs; the forward and seen-reverse entries grow, the held-out entry keeps its initial value
   exactly; with ``second_relation=True`` (every entity also a subject) the held-out entry moves, but only down.
3. The trained 2-layer transformer's end-to-end effective weights ``Y[s, o] = logit(o | <bos> s r)`` (row centred)
   at every checkpoint of the default seed-experiment run
   (``analysis.weights.effective_weights_over_training(path="end_to_end")``): change of each split's entries
   from initialization, and each split's effect (entry minus the mean over the other answers of its split).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import torch
from common import Study, ci, est, parser, table, versus
from plotly.subplots import make_subplots

from revinterp.analysis.weights import effective_weights_over_training
from revinterp.data import seed_experiment
from revinterp.stats import error_bars
from revinterp.theory import exponent_vs_dimension, train_bilinear, train_effective_weights

DIMS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
ONE_LAYER_CURVES = ("forward_entry", "seen_reverse_entry", "held_out_entry", "baseline_entry")


def slope(dims, values) -> float:
    """Least-squares slope of log |value| against log d."""
    x = torch.log(torch.tensor(dims, dtype=torch.float64))
    y = torch.log(torch.tensor(values, dtype=torch.float64).abs())
    x, y = x - x.mean(), y - y.mean()
    return ((x * y).sum() / (x * x).sum()).item()


def main() -> None:
    p = parser("theory", __doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=None, help=f"bilinear dimensions (default {DIMS})")
    p.add_argument("--bilinear-pairs", type=int, default=10)
    p.add_argument("--bilinear-steps", type=int, default=200)
    p.add_argument("--one-layer-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    p.add_argument("--one-layer-steps", type=int, default=300)
    p.add_argument("--one-layer-lr", type=float, default=300.0)
    p.add_argument("--n-pairs", type=int, default=None, help="transformer pairs (default 200; --quick 40)")
    args = p.parse_args()
    study = Study("theory", "Theory (bilinear model, one-layer effective weights) beside the trained transformer",
                  args)
    dims = tuple(args.dims or (DIMS[:4] if study.quick else DIMS))
    seeds = study.seeds

    # 1. bilinear model ------------------------------------------------------------------------
    sweep = exponent_vs_dimension(dims, n_pairs=args.bilinear_pairs, steps=args.bilinear_steps, seeds=seeds)
    bilinear_per_seed = [
        dict(seed=seed, final_exponent=sweep.final_exponent[:, j], max_exponent=sweep.max_exponent[:, j],
             loss_ratio=sweep.loss_ratio[:, j], reverse_loss_ratio=sweep.reverse_loss_ratio[:, j],
             slope=slope(dims, sweep.final_exponent[:, j].tolist()))
        for j, seed in enumerate(seeds)
    ]
    bilinear = dict(
        dims=dims, lr=sweep.lr, steps=sweep.steps, n_pairs=sweep.n_pairs,
        abs_final_exponent={d: ci(sweep.final_exponent[i].abs()) for i, d in enumerate(dims)},
        max_exponent={d: ci(sweep.max_exponent[i]) for i, d in enumerate(dims)},
        loss_ratio={d: ci(sweep.loss_ratio[i]) for i, d in enumerate(dims)},
        reverse_loss_ratio={d: ci(sweep.reverse_loss_ratio[i]) for i, d in enumerate(dims)},
        slope_of_mean=sweep.scaling_slope(), slope_per_seed=ci([r["slope"] for r in bilinear_per_seed]),
    )
    # log10 values on a linear axis: the PNG export draws a plotly log y axis as linear
    fig = go.Figure()
    for j, seed in enumerate(seeds):
        fig.add_scatter(x=list(dims), y=sweep.final_exponent[:, j].abs().log10().tolist(), mode="markers",
                        name=f"seed {seed}")
    mean_abs = sweep.mean_abs_exponent
    fig.add_scatter(x=list(dims), y=mean_abs.log10().tolist(), mode="lines+markers", name="mean over seeds")
    for power, name in ((0.5, "∝ d^-1/2"), (1.0, "∝ d^-1")):
        fig.add_scatter(x=list(dims), y=[math.log10(mean_abs[0].item() * (dims[0] / d) ** power) for d in dims],
                        mode="lines", name=name)
    fig.update_layout(title=f"Bilinear model: measured exponent against d (n={sweep.n_pairs}, log-log slope of the "
                            f"mean {sweep.scaling_slope():.2f})",
                      xaxis=dict(type="log", title="embedding dimension d"), yaxis_title="log10 |ε̂(T)|")
    study.figure(fig, "bilinear_exponent_vs_dimension",
                 f"Bilinear model, {sweep.n_pairs} pairs, {sweep.steps} full-batch steps: log10 |ε̂(T)| per seed and "
                 "of the mean over seeds against d (log axis), with d^-1/2 and d^-1 reference lines through the "
                 "first point.")
    fig = go.Figure()
    for name, key in (("smallest ε for which the bound holds (max_t ε̂)", "max_exponent"),
                      ("|ε̂(T)|", "abs_final_exponent")):
        values = [bilinear[key][d] for d in dims]
        fig.add_scatter(x=list(dims), y=[v.mean for v in values], mode="lines+markers", name=name,
                        error_y=error_bars(values))
    fig.add_hline(y=0.0)
    fig.update_layout(title="Bilinear model: exponent of the bound against d (mean, 95 % CI over seeds)",
                      xaxis=dict(type="log", title="embedding dimension d"), yaxis_title="exponent")
    study.figure(fig, "bilinear_bound_exponent",
                 "The smallest ε for which L_rev(t)/L_rev(0) >= (L(t)/L(0))^ε holds at every step, and |ε̂(T)|, "
                 "mean over seeds with 95 % intervals over seeds, against d.")
    mid = dims[len(dims) // 2]
    run = train_bilinear(args.bilinear_pairs, mid, args.bilinear_steps, sweep.lr, seed=seeds[0])
    study.figure(run.plot(), "bilinear_losses", f"Bilinear model at d = {mid}, seed {seeds[0]}: training loss, "
                                                "trained forward loss and held-out reverse loss over steps, "
                                                "each relative to its initial value.")

    # 2. one-layer effective weights -----------------------------------------------------------
    n_one = args.one_layer_pairs or study.size(200, 40)
    one_layer = {}
    one_layer_runs = {}
    for second in (False, True):
        key = "every entity also a subject" if second else "seed split"
        runs = [train_effective_weights(n_one, args.one_layer_steps, args.one_layer_lr, seed=seed,
                                        second_relation=second) for seed in seeds]
        one_layer_runs[key] = runs
        one_layer[key] = dict(
            per_seed=[dict(seed=seed, **{f"{c}_change": (getattr(r, c)[-1] - getattr(r, c)[0]).item()
                                         for c in ONE_LAYER_CURVES},
                           held_out_max_change=r.held_out_max_change.max().item(),
                           train_probability=r.train_probability[-1].item(),
                           held_out_probability=r.held_out_probability[-1].item())
                      for seed, r in zip(seeds, runs)],
        )
        rows = one_layer[key]["per_seed"]
        one_layer[key]["aggregate"] = {k: ci([r[k] for r in rows]) for k in rows[0] if k != "seed"}
        one_layer[key]["chance"] = runs[0].chance
        study.figure(runs[0].plot(), f"one_layer_{'second_relation' if second else 'seed'}",
                     f"One-layer effective weights ({key}), seed {seeds[0]}: mean entry of Y per group over "
                     "gradient steps.")

    # 3. the trained transformer ----------------------------------------------------------------
    n_pairs = args.n_pairs or study.size(200, 40)
    transformer_per_seed, dynamics = [], []
    run_dirs = study.train_all([study.spec(f"seed{seed}", seed_experiment(n_pairs, seed=seed), seed) for seed in seeds])
    for seed, run_dir, log in zip(seeds, run_dirs, study.run_log):
        dyn = effective_weights_over_training(run_dir, path="end_to_end")
        dynamics.append(dyn)
        statements = dyn.results[0].statements
        change = dyn.change_from_initial()
        record = dict(seed=seed, run=log, steps=dyn.steps, splits={})
        for split in dyn.results[0].splits:
            rows = [k for k, s in enumerate(statements) if s.split == split]
            record["splits"][split] = dict(
                change_curve=change[:, rows].mean(-1), effect_curve=[e.mean for e in dyn.estimates(split)],
                final_change=ci(change[-1, rows]), final_effect=dyn.results[-1].estimate(split),
                initial_effect=dyn.results[0].estimate(split),
            )
        transformer_per_seed.append(record)
        if seed == seeds[0]:
            study.figure(dyn.plot(), "transformer_effective_weights_seed0",
                         f"Trained transformer, seed {seed}: end-to-end effective-weight effect per split over "
                         "training checkpoints (95 % intervals over facts).")
    splits = list(transformer_per_seed[0]["splits"])
    transformer = {
        split: dict(
            final_change=ci([r["splits"][split]["final_change"].mean for r in transformer_per_seed]),
            final_effect=ci([r["splits"][split]["final_effect"].mean for r in transformer_per_seed]),
            initial_effect=ci([r["splits"][split]["initial_effect"].mean for r in transformer_per_seed]),
        ) for split in splits
    }

    # side-by-side figure: theory (change from initial per group) and transformer (change per split)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"one-layer effective weights, seed split (n={n_one})", f"trained transformer, end to end (n={n_pairs})"))
    theory_runs = one_layer_runs["seed split"]
    steps = list(range(theory_runs[0].steps + 1))
    for c in ONE_LAYER_CURVES:
        curves = torch.stack([getattr(r, c) - getattr(r, c)[0] for r in theory_runs])
        fig.add_scatter(x=[max(t, 0.5) for t in steps], y=curves.mean(0).tolist(), mode="lines",
                        name=f"theory {c}", row=1, col=1)
    x = [max(s, 0.5) for s in transformer_per_seed[0]["steps"]]
    same_steps = all(r["steps"] == transformer_per_seed[0]["steps"] for r in transformer_per_seed)
    for split in splits:
        if same_steps:
            curve = torch.stack([r["splits"][split]["change_curve"] for r in transformer_per_seed]).mean(0).tolist()
            label = f"{split} (mean of {len(seeds)} seeds)"
        else:  # runs stopped at different steps: show the first seed's curve
            curve = transformer_per_seed[0]["splits"][split]["change_curve"].tolist()
            label = f"{split} (seed {seeds[0]})"
        fig.add_scatter(x=x, y=curve, mode="lines+markers", name=label, row=1, col=2)
    fig.update_xaxes(title_text="gradient step (log)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="training step (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="entry change from initialization", row=1, col=1)
    fig.update_layout(title="Effective-weight entries: change from initialization, theory vs trained transformer")
    study.figure(fig, "theory_vs_transformer", "Left: one-layer effective-weights model (mean over seeds), change of "
                                               "the mean entry of each group from its initial value. Right: the "
                                               "trained transformer's end-to-end entries Y[subject, answer] per "
                                               "split, change from step 0.", width=12, height=5)

    # summary ----------------------------------------------------------------------------------
    results_table = ["### Bilinear model", ""]
    results_table += table(
        ["d", "|ε̂(T)| [95 % CI]", "smallest valid ε, max_t ε̂ [95 % CI]", "L(T)/L(0)", "L_rev(T)/L_rev(0)"],
        [[d, est(bilinear["abs_final_exponent"][d]), est(bilinear["max_exponent"][d]), est(bilinear["loss_ratio"][d]),
          est(bilinear["reverse_loss_ratio"][d])] for d in dims])
    results_table += ["", f"Log-log slope of mean |ε̂(T)| against d: {bilinear['slope_of_mean']:.2f} (per seed: "
                          f"{est(bilinear['slope_per_seed'])}).", "", "### One-layer effective weights", ""]
    results_table += table(
        ["variant", "forward entry change", "seen reverse change", "held-out entry change", "held-out max |change|",
         "p(train answer)", "p(held-out answer)", "chance"],
        [[key, *(est(v["aggregate"][k]) for k in ("forward_entry_change", "seen_reverse_entry_change",
                                                   "held_out_entry_change", "held_out_max_change",
                                                   "train_probability", "held_out_probability")),
          f"{v['chance']:.3g}"] for key, v in one_layer.items()])
    results_table += ["", "### Trained transformer, end-to-end effective weights (final checkpoint)", ""]
    results_table += table(["split", "entry change from step 0", "effect at step 0", "effect at the end"],
                           [[s, est(v["final_change"]), est(v["initial_effect"]), est(v["final_effect"])]
                            for s, v in transformer.items()])

    first, last = dims[0], dims[-1]
    seed_split = one_layer["seed split"]["aggregate"]
    second = one_layer["every entity also a subject"]["aggregate"]
    findings = [
        f"Bilinear model: the smallest ε for which the bound holds along the run falls from "
        f"{est(bilinear['max_exponent'][first])} at d = {first} to {est(bilinear['max_exponent'][last])} at d = "
        f"{last}; mean |ε̂(T)| falls from {est(bilinear['abs_final_exponent'][first])} to "
        f"{est(bilinear['abs_final_exponent'][last])} with log-log slope {bilinear['slope_of_mean']:.2f} (per seed "
        f"{est(bilinear['slope_per_seed'])}; -1 would be ε̂ ∝ 1/d, the O(1/d) reverse-logit change of one step).",
        f"Bilinear model fit: L(T)/L(0) is {est(bilinear['loss_ratio'][first])} at d = {first} and "
        f"{est(bilinear['loss_ratio'][last])} at d = {last}, while the held-out reverse loss keeps "
        f"{est(bilinear['reverse_loss_ratio'][last])} of its initial value at d = {last}.",
        f"One-layer model, seed split: forward entries rise by {est(seed_split['forward_entry_change'])} and seen "
        f"reverse entries by {est(seed_split['seen_reverse_entry_change'])}; "
        + ("the held-out entry never moves from its initial value (largest change at any step exactly 0 in every seed: "
           "its subject's row gets no gradient)" if seed_split["held_out_max_change"].high == 0 else
           f"the held-out entry changes by at most {est(seed_split['held_out_max_change'])} at any step")
        + f", and p(held-out answer) ends at {est(seed_split['held_out_probability'])} against chance "
        f"{one_layer['seed split']['chance']:.3g}.",
        f"One-layer model, every entity also a subject: the held-out entry now moves by "
        f"{est(second['held_out_entry_change'])} ({versus(second['held_out_entry_change'], 0.0)} zero; largest change "
        f"at any step {est(second['held_out_max_change'])}), while forward entries rise by "
        f"{est(second['forward_entry_change'])}"
        + (": with the subject's row trained, the held-out entry is pushed down, not up."
           if versus(second["held_out_entry_change"], 0.0) == "below" else "."),
    ]
    for split, v in transformer.items():
        findings.append(
            f"Trained transformer, {split}: end-to-end entries changed by {est(v['final_change'])} from step 0 "
            f"({versus(v['final_change'], 0.0)} zero); effect {est(v['initial_effect'])} -> {est(v['final_effect'])}.")
    held = [s for s in transformer if s.endswith("held_out")]
    trained = [s for s in transformer if s not in held]
    if held and trained:
        grow = min(transformer[s]["final_change"].low for s in trained)
        stay = max(max(abs(transformer[s]["final_change"].low), abs(transformer[s]["final_change"].high))
                   for s in held)
        findings.append(
            f"As in the one-layer theory, trained entries grow (every trained split's change at least {grow:.3g}) "
            f"while held-out entries stay within {stay:.3g} of their initial values "
            f"({100 * stay / grow:.1f} % of the smallest trained change)." if grow > 0 and math.isfinite(stay) else
            "The trained transformer's entries do not separate trained and held-out splits here.")
    config = dict(bilinear=dict(dims=dims, n_pairs=args.bilinear_pairs, steps=args.bilinear_steps, lr=sweep.lr,
                                held_out=1),
                  one_layer=dict(n_pairs=n_one, steps=args.one_layer_steps, lr=args.one_layer_lr, init_std=0.02,
                                 both_fraction=0.7),
                  transformer=dict(generator="seed_experiment", n_pairs=n_pairs, model=study.model_config(0),
                                   training=study.training_config(0), effective_weights="end_to_end"))
    per_seed = dict(bilinear=bilinear_per_seed,
                    one_layer={k: v["per_seed"] for k, v in one_layer.items()},
                    transformer=transformer_per_seed)
    aggregates = dict(bilinear=bilinear, one_layer={k: {"aggregate": v["aggregate"], "chance": v["chance"]}
                                                    for k, v in one_layer.items()}, transformer=transformer)
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
