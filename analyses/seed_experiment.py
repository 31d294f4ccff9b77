"""Study 1: the seed experiment of Zhu et al. (2024) at the default preset, over seeds.

    python analyses/seed_experiment.py                 # 5 seeds, both held-out-direction variants
    python analyses/seed_experiment.py --quick         # smoke test

For each seed: ``seed_experiment(200)`` (held-out direction chosen at random per one-way fact, as the seed code)
and ``seed_experiment(200, held_out_direction="forward")`` (every one-way fact trained forward, its reverse held
out), trained until fitted, evaluated per split: accuracy among the M candidates (chance 1/M), the answer's mean
rank (chance (M+1)/2), its log-probability normalized over the candidates (uniform -ln M) and p(answer) over the
vocabulary. Aggregates: the split means with Student's t intervals over seeds (``evaluation.over_seeds``); for the
held-out splits the accuracy pooled over seeds (k of n, Clopper-Pearson) among all candidates and among the
held-out answers only, and per seed the one-sided tests of a rank worse than chance and a log-probability below
uniform (``revinterp.chance``). Runs are trained through the shared run store on Ray (``Study.train_all``).
"""

from __future__ import annotations

import plotly.graph_objects as go
from common import Study, behaviour_over_seeds, ci, est, exact, parser, seed_ci_table

from revinterp.analysis.verdict import proportion_finding, question_hits
from revinterp.data import seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.stats import error_bars

VARIANTS = ("random", "forward")


def pooled_held_out(rows: list[dict], split: str) -> dict:
    """A held-out split over seeds: accuracy pooled as k of n with its Clopper-Pearson interval and the behaviour
    line's finding on it (:func:`revinterp.analysis.verdict.proportion_finding`, against the seen reverse accuracy);
    the same among the held-out answers only; per seed the one-sided p-values of a rank worse than chance and a
    log-probability below uniform (:mod:`revinterp.chance`)."""
    metrics = [r["splits"][split] for r in rows]
    k, n = (sum(x) for x in zip(*map(question_hits, metrics)))
    chance = sum(m["chance_accuracy"] * question_hits(m)[1] for m in metrics) / n
    seen = sum(r["splits"]["reverse_seen"]["accuracy"] for r in rows) / len(rows)
    finding, evidence = proportion_finding(k, n, chance, seen)
    among_k = sum(round(m["held_out_answers"]["accuracy"] * question_hits(m)[1]) for m in metrics)
    rank_p = [m["tests"]["rank_below_chance_p"] for m in metrics]
    logprob_p = [m["tests"]["logprob_below_chance_p"] for m in metrics]

    return {"k": k, "n": n, "accuracy": exact(k, n), "finding": finding, "evidence": evidence,
            "among_k": among_k, "among": exact(among_k, n),
            "among_chance": sum(m["held_out_answers"]["chance_accuracy"] for m in metrics) / len(metrics),
            "rank_below": sum(p is not None and p < 0.05 for p in rank_p),
            "rank_p": ", ".join("n/a" if p is None else f"{p:.2g}" for p in rank_p),
            "logprob_below": sum(p is not None and p < 0.05 for p in logprob_p),
            "logprob_p": ", ".join("n/a" if p is None else f"{p:.2g}" for p in logprob_p)}


def main() -> None:
    p = parser("seed_experiment", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    args = p.parse_args()
    study = Study("seed_experiment", "Seed experiment: the reversal curse over seeds", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    grid = [(variant, seed) for variant in VARIANTS for seed in study.seeds]
    run_dirs = study.train_all([study.spec(f"{variant}-seed{seed}",
                                           seed_experiment(n_pairs, held_out_direction=variant, seed=seed), seed)
                                for variant, seed in grid])
    per_seed: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    behaviours: dict[str, list] = {v: [] for v in VARIANTS}
    for (variant, seed), run_dir, log in zip(grid, run_dirs, study.run_log[-len(grid):]):
        run = load_run(run_dir)
        behaviour = evaluate(run.model, run.facts)
        behaviours[variant].append(behaviour)
        per_seed[variant].append(dict(seed=seed, run=log, splits=behaviour.to_dict()["splits"]))
        if variant == "random" and seed == study.seeds[0]:
            study.figure(behaviour.plot(), "behaviour_seed0",
                         f"Seed {seed}, held-out direction random: accuracy per split with exact 95 % intervals over "
                         "examples; markers: chance 1/M.")

    aggregates = {}
    for variant in VARIANTS:
        splits = behaviour_over_seeds(behaviours[variant])
        aggregates[variant] = {
            "splits": splits,
            "steps": ci([s["run"]["steps"] for s in per_seed[variant]]),
            "all_fitted": all(s["run"]["fitted"] for s in per_seed[variant]),
            "held_out": {split: pooled_held_out(per_seed[variant], split) for split, v in splits.items()
                         if not v["trained"]},
        }

    # figures: accuracy and candidate log-probability per split, both variants, intervals over seeds
    for metric, title, reference, name in (
        ("accuracy", "accuracy among the M candidates", "chance_accuracy", "accuracy_over_seeds"),
        ("logprob_candidates", "log p(answer) normalized over the candidates", "uniform_logprob_candidates",
         "logprob_over_seeds"),
        ("mean_rank", "mean rank of the answer among the candidates", "chance_mean_rank", "rank_over_seeds"),
    ):
        fig = go.Figure()
        for variant in VARIANTS:
            splits = aggregates[variant]["splits"]
            names = list(splits)
            values = [splits[s][metric] for s in names]
            fig.add_bar(x=names, y=[v.mean for v in values], name=f"held-out direction {variant}",
                        error_y=error_bars(values))
        ref = aggregates["random"]["splits"]["forward_seen"][reference]
        fig.add_hline(y=ref)
        fig.update_layout(title=f"{title}: mean over {len(study.seeds)} seeds, 95 % CI over seeds "
                                f"(dotted: {reference.replace('_', ' ')} {ref:.3g})",
                          yaxis_title=metric)
        study.figure(fig, name, f"{title} per split, mean over seeds with 95 % t intervals over seeds, both "
                                f"held-out-direction variants; the dotted line is the {reference.replace('_', ' ')}.")

    # summary
    table = []
    findings = []
    for variant in VARIANTS:
        splits = aggregates[variant]["splits"]
        extra = {"_header": ("chance", "mean of per-seed example CIs", "-ln M", "n per seed")}
        for split, v in splits.items():
            low, high = v["mean_example_accuracy_ci"]
            extra[split] = (f"{100 * v['chance_accuracy']:.2f} %", f"[{100 * low:.1f}, {100 * high:.1f}] %",
                            f"{v['uniform_logprob_candidates']:.2f}", " ".join(map(str, v["n_per_seed"])))
        table += [f"### Held-out direction `{variant}` (steps to fit {est(aggregates[variant]['steps'])}, "
                  f"all fitted: {aggregates[variant]['all_fitted']})", ""]
        table += seed_ci_table(splits, [("accuracy", "accuracy [95 % CI over seeds]", True),
                                        ("mean_rank", "mean rank", False),
                                        ("logprob_candidates", "log p(cand)", False),
                                        ("probability", "p(answer)", False)], extra)
        table.append("")
        trained = [s for s, v in splits.items() if v["trained"]]
        worst = min(splits[s]["accuracy"].mean for s in trained)
        findings.append(
            f"`{variant}`: every trained split ({', '.join(trained)}) is answered with mean accuracy at least "
            f"{100 * worst:.1f} % over seeds; all runs fitted (accuracy 100 % and p(answer) >= 0.99): "
            f"{aggregates[variant]['all_fitted']}.")
        for split, v in splits.items():
            if v["trained"]:
                continue
            h = aggregates[variant]["held_out"][split]
            findings.append(
                f"`{variant}`, held-out `{split}`: accuracy pooled over seeds {h['accuracy']} against chance "
                f"{100 * v['chance_accuracy']:.2f} % (behaviour line: {h['finding']}: {h['evidence']}); among the "
                f"held-out answers only {h['among']} against chance {100 * h['among_chance']:.1f} %; mean rank "
                f"{est(v['mean_rank'])} against the chance rank {v['chance_mean_rank']:.1f}, worse than chance "
                f"(p < 0.05) in {h['rank_below']} of {len(study.seeds)} seeds (one-sided p per seed: {h['rank_p']}); "
                f"log p among candidates {est(v['logprob_candidates'])} against the uniform "
                f"{v['uniform_logprob_candidates']:.2f}, below it in {h['logprob_below']} of {len(study.seeds)} seeds "
                f"(one-sided p per seed: {h['logprob_p']}).")
    config = dict(generator="seed_experiment", n_pairs=n_pairs, both_fraction=0.7, held_out_direction=list(VARIANTS),
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=table, findings=findings)


if __name__ == "__main__":
    main()
