"""Study 1: the seed experiment of Zhu et al. (2024) at the default preset, over seeds.

    python analyses/seed_experiment.py                 # 5 seeds, both held-out-direction variants
    python analyses/seed_experiment.py --quick         # smoke test

For each seed: ``seed_experiment(200)`` (held-out direction chosen at random per one-way fact, as the seed code)
and ``seed_experiment(200, held_out_direction="forward")`` (every one-way fact trained forward, its reverse held
out), trained until fitted, evaluated per split: accuracy among the M candidates (chance 1/M), the answer's mean
rank (chance (M+1)/2), its log-probability normalized over the candidates (uniform -ln M) and p(answer) over the
vocabulary. Aggregates: the split means with 95 % bootstrap intervals over seeds (``evaluation.over_seeds``) and
the mean over seeds of each seed's interval over examples.
"""

from __future__ import annotations

import plotly.graph_objects as go
from common import Study, behaviour_over_seeds, ci, est, parser, rank_versus, seed_ci_table, versus

from revinterp.data import seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.stats import error_bars

VARIANTS = ("random", "forward")


def main() -> None:
    p = parser("seed_experiment", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    args = p.parse_args()
    study = Study("seed_experiment", "Seed experiment: the reversal curse over seeds", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    per_seed: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    behaviours: dict[str, list] = {v: [] for v in VARIANTS}
    for variant in VARIANTS:
        for seed in study.seeds:
            facts = seed_experiment(n_pairs, held_out_direction=variant, seed=seed)
            run_dir = study.train(f"{variant}-seed{seed}", facts, seed)
            run = load_run(run_dir)
            behaviour = evaluate(run.model, run.facts)
            behaviours[variant].append(behaviour)
            per_seed[variant].append(dict(seed=seed, run=study.run_log[-1], splits=behaviour.to_dict()["splits"]))
            if variant == "random" and seed == study.seeds[0]:
                study.figure(behaviour.plot(), "behaviour_seed0",
                             f"Seed {seed}, held-out direction random: accuracy per split with 95 % intervals over "
                             "examples; markers: chance 1/M.")

    aggregates = {}
    for variant in VARIANTS:
        splits = behaviour_over_seeds(behaviours[variant])
        aggregates[variant] = {
            "splits": splits,
            "steps": ci([s["run"]["steps"] for s in per_seed[variant]]),
            "all_fitted": all(s["run"]["fitted"] for s in per_seed[variant]),
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
        study.figure(fig, name, f"{title} per split, mean over seeds with 95 % bootstrap intervals over seeds, both "
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
            findings.append(
                f"`{variant}`, held-out `{split}`: accuracy {est(v['accuracy'], percent=True)} is "
                f"{versus(v['accuracy'], v['chance_accuracy'])} chance ({100 * v['chance_accuracy']:.2f} %); mean "
                f"rank {est(v['mean_rank'])} is {rank_versus(v['mean_rank'], v['chance_mean_rank'])} the chance "
                f"rank {v['chance_mean_rank']:.1f}; log p among candidates {est(v['logprob_candidates'])} is "
                f"{versus(v['logprob_candidates'], v['uniform_logprob_candidates'])} the uniform "
                f"{v['uniform_logprob_candidates']:.2f}"
                + (" (the held-out answers are pushed below uniform: never trained as answers of this relation)."
                   if v["logprob_candidates"].high < v["uniform_logprob_candidates"] else "."))
    config = dict(generator="seed_experiment", n_pairs=n_pairs, both_fraction=0.7, held_out_direction=list(VARIANTS),
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=table, findings=findings)


if __name__ == "__main__":
    main()
