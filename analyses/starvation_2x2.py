"""Study: the 2x2 embedding-starvation design: is the held-out reverse impossible only because of starvation?

    python analyses/starvation_2x2.py                  # 4 cells x 5 seeds at the default preset
    python analyses/starvation_2x2.py --quick          # smoke test

In the seed setup the subject ``b_i`` of a held-out reverse question ``b_i <- ?`` is never an input in training
(input-side starvation) and its answer ``a_i`` is never a training target (answer-side starvation). The four cells
(``revinterp.data.starvation_cell``) feed neither, the subject (``e lives_in c_k`` for every entity, 8 values), the
answer (``h_k has_member e`` for every entity, a fresh subject each) or both. For each cell and seed:
``seed_experiment(200, held_out_direction="forward")`` (every one-way fact trained forward, its reverse held out),
trained until fitted, evaluated on ``reverse_held_out``: accuracy among all M candidates with its exact
Clopper-Pearson interval, the mean rank against chance (M + 1) / 2, and the accuracy among the held-out answers
only (the candidates that are answers of held-out questions: the trained answers, pulled up in training, cannot
outrank them there). The starvation report (``revinterp.analysis.starvation``) says which side is starved per cell.
Over seeds: every seed's value, the mean with Student's t interval and the pooled count k of n with its
Clopper-Pearson interval. Every run is analysed by the pipeline (:func:`revinterp.pipeline.analyze`, as Ray tasks),
and its verdict (:mod:`revinterp.analysis.verdict`) says per run whether a reverse path exists and which causes
the evidence supports; a cell's verdict is the seeds' common one, else "inconclusive".
"""

from __future__ import annotations

from common import Study, parser, seed_verdicts, table

from revinterp.analysis.starvation import starvation_report
from revinterp.analysis.verdict import proportion_finding, question_hits
from revinterp.data import STARVATION_CELLS, seed_experiment, starvation_cell
from revinterp.results import load_results
from revinterp.stats import clopper_pearson, t_interval

SPLIT = "reverse_held_out"
CELL_LABELS = {"none": "neither fed (seed)", "subject": "subject fed", "answer": "answer fed", "both": "both fed"}


def proportion(k: int, n: int) -> dict:
    e = clopper_pearson(k, n)
    return {"k": k, "n": n, "value": e.mean, "ci_low": e.low, "ci_high": e.high}


def pct(p: dict) -> str:
    return f"{p['k']}/{p['n']} = {100 * p['value']:.1f} % [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]"


def t_or_none(values):
    if len(values) < 2:
        return None
    e = t_interval(values)
    return {"mean": e.mean, "ci_low": e.low, "ci_high": e.high, "n": e.n}


def t_text(e, percent=True) -> str:
    if e is None:
        return "n/a (one seed)"
    f = 100 if percent else 1
    unit = " %" if percent else ""
    return f"{f * e['mean']:.1f}{unit} [{f * e['ci_low']:.1f}, {f * e['ci_high']:.1f}]"


def main() -> None:
    p = parser("starvation_2x2", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs (default 200; --quick 40)")
    p.add_argument("--cells", nargs="+", choices=list(STARVATION_CELLS), default=list(STARVATION_CELLS))
    args = p.parse_args()
    study = Study("starvation_2x2", "Starvation 2x2: subject fed or not, answer fed or not", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    grid = [(cell, seed) for cell in args.cells for seed in study.seeds]
    specs = []
    for cell, seed in grid:
        feed_subject, feed_answer = STARVATION_CELLS[cell]
        facts = starvation_cell(seed_experiment(n_pairs, held_out_direction="forward", seed=seed),
                                feed_subject=feed_subject, feed_answer=feed_answer, n_values=8, seed=seed)
        specs.append(study.spec(f"{cell}-seed{seed}", facts, seed))
    run_dirs = study.train_all(specs)
    study.analyze_all(run_dirs)  # every analysis stage of every run, as Ray tasks; the verdict is one of them

    per_seed: dict[str, list[dict]] = {c: [] for c in args.cells}
    for (cell, seed), run_dir, log in zip(grid, run_dirs, study.run_log[-len(grid):]):
        _, stages = load_results(run_dir)
        b = stages["behaviour"].numbers["splits"][SPLIT]
        among = b["held_out_answers"]
        found = stages["verdict"].numbers["verdict"]
        (k, n), m = question_hits(b), b["n_candidates"]
        report = starvation_report(run_dir)
        means = report.role_means()
        per_seed[cell].append(dict(
            seed=seed, run=log, n_candidates=m, accuracy=proportion(k, n), chance_accuracy=b["chance_accuracy"],
            mean_rank=b["mean_rank"], chance_mean_rank=b["chance_mean_rank"], tests=b["tests"],
            held_out_answer_candidates=among["n_candidates"],
            accuracy_among_held_out_answers=proportion(round(among["accuracy"] * n), n),
            among_above_chance_p=among["accuracy_above_chance_p"],
            n_input_starved=len(report.input_starved), n_answer_starved=len(report.answer_starved),
            starvation={role: means[role] for role in ("held_out_subject", "held_out_answer", "trained_subject",
                                                       "trained_answer") if role in means},
            seen_accuracy=stages["behaviour"].numbers["splits"]["reverse_seen"]["accuracy"], verdict=found,
        ))
        if seed == study.seeds[0]:
            study.figure(report.plot(), f"starvation_{cell}_seed{seed}",
                         f"Cell '{CELL_LABELS[cell]}', seed {seed}: per role, how far the input embeddings and "
                         "unembeddings moved from step 0, and the pull (as a target) and push (as a non-target) "
                         "parts of the unembedding gradient, summed over checkpoints.")

    aggregates = {}
    for cell, rows in per_seed.items():
        acc = [r["accuracy"]["value"] for r in rows]
        among = [r["accuracy_among_held_out_answers"]["value"] for r in rows]
        aggregates[cell] = dict(
            label=CELL_LABELS[cell], feed_subject=STARVATION_CELLS[cell][0], feed_answer=STARVATION_CELLS[cell][1],
            accuracy_per_seed=acc, accuracy_t=t_or_none(acc),
            accuracy_pooled=proportion(sum(r["accuracy"]["k"] for r in rows), sum(r["accuracy"]["n"] for r in rows)),
            chance_accuracy=sum(1 / r["n_candidates"] for r in rows) / len(rows),
            mean_rank_per_seed=[r["mean_rank"] for r in rows], mean_rank_t=t_or_none([r["mean_rank"] for r in rows]),
            chance_mean_rank=sum(r["chance_mean_rank"] for r in rows) / len(rows),
            among_held_out_answers_per_seed=among, among_held_out_answers_t=t_or_none(among),
            among_held_out_answers_pooled=proportion(
                sum(r["accuracy_among_held_out_answers"]["k"] for r in rows),
                sum(r["accuracy_among_held_out_answers"]["n"] for r in rows)),
            chance_among_held_out_answers=sum(1 / r["held_out_answer_candidates"] for r in rows) / len(rows),
            input_starved=[r["n_input_starved"] for r in rows], answer_starved=[r["n_answer_starved"] for r in rows],
            n_held_out=[r["accuracy"]["n"] for r in rows],
            all_fitted=all(r["run"]["fitted"] for r in rows), steps=[r["run"]["steps"] for r in rows],
            verdicts=[{k: r["verdict"][k] for k in ("reverse_path", "causes", "input_side", "answer_side")}
                      for r in rows],
            verdict=seed_verdicts([r["verdict"] for r in rows]),
        )
        # the behaviour line on the pooled questions (its positive control: every seed's seen reverse above chance)
        control = all(r["verdict"]["lines"][0]["control"] == "pass" for r in rows)
        pooled = aggregates[cell]["accuracy_pooled"]
        finding, evidence = proportion_finding(pooled["k"], pooled["n"], aggregates[cell]["chance_accuracy"],
                                               sum(r["seen_accuracy"] for r in rows) / len(rows))
        aggregates[cell]["pooled_behaviour"] = {"finding": finding if control else "inconclusive",
                                                "evidence": evidence, "control": "pass" if control else "fail"}

    rows = []
    for a in aggregates.values():
        rows.append([
            a["label"], f"{sum(a['input_starved'])}/{sum(a['n_held_out'])}",
            f"{sum(a['answer_starved'])}/{sum(a['n_held_out'])}",
            pct(a["accuracy_pooled"]), t_text(a["accuracy_t"]),
            " ".join(f"{100 * v:.1f}" for v in a["accuracy_per_seed"]), f"{100 * a['chance_accuracy']:.2f} %",
            f"{t_text(a['mean_rank_t'], percent=False)} vs {a['chance_mean_rank']:.1f}",
            f"{pct(a['among_held_out_answers_pooled'])} (chance {100 * a['chance_among_held_out_answers']:.1f} %)",
            str(a["all_fitted"]),
        ])
    results_table = table(
        ["cell", "input-starved", "answer-starved", "accuracy, pooled k/n [Clopper-Pearson]",
         "mean over seeds [t]", "per seed (%)", "chance 1/M", "mean rank [t] vs chance", "among held-out answers only",
         "all fitted"], rows)
    results_table += ["", "Per seed, accuracy with its exact Clopper-Pearson interval over the seed's held-out "
                          "questions:", ""]
    results_table += table(["cell", *[f"seed {r['seed']}" for r in next(iter(per_seed.values()))]],
                           [[CELL_LABELS[c], *[pct(r["accuracy"]) for r in rs]] for c, rs in per_seed.items()])
    pulls = []
    for cell, rs in per_seed.items():
        pull = [r["starvation"]["held_out_answer"]["unembed_pull"] for r in rs]
        grad = [r["starvation"]["held_out_subject"]["embed_gradient"] for r in rs]
        pulls.append([CELL_LABELS[cell], " ".join(f"{v:.3g}" for v in grad), " ".join(f"{v:.3g}" for v in pull)])
    results_table += ["", "Starvation per seed: gradient received by the held-out subjects' input embeddings "
                          "(sum over checkpoints of the norm) and pull on the held-out answers' unembeddings (the "
                          "part of the gradient from being a target; 0 = only ever pushed down):", ""]
    results_table += table(["cell", "held-out subject sum|gW_E|", "held-out answer pull"], pulls)

    results_table += ["", "Verdict per run (revinterp.analysis.verdict: each line of evidence with its positive "
                          "control on seen reverse pairs; a failed control does not vote) and per cell:", ""]
    results_table += table(
        ["cell", *[f"seed {r['seed']}" for r in next(iter(per_seed.values()))], "pooled behaviour", "cell verdict"],
        [[CELL_LABELS[c], *[f"{r['verdict']['reverse_path']} ({', '.join(r['verdict']['causes']) or 'none'}; votes: "
                            + (", ".join(line["name"] for line in r["verdict"]["lines"] if line["votes"]) or "none")
                            + ")"
                            for r in rs],
          aggregates[c]["pooled_behaviour"]["finding"], aggregates[c]["verdict"]] for c, rs in per_seed.items()])

    findings = []
    for a in aggregates.values():
        findings.append(
            f"{a['label']}: {sum(a['input_starved'])} of {sum(a['n_held_out'])} held-out questions input-starved, "
            f"{sum(a['answer_starved'])} answer-starved; held-out reverse accuracy pooled {pct(a['accuracy_pooled'])} "
            f"(behaviour line on the pooled questions: {a['pooled_behaviour']['finding']}: "
            f"{a['pooled_behaviour']['evidence']}); among the held-out answers only "
            f"{pct(a['among_held_out_answers_pooled'])} (chance {100 * a['chance_among_held_out_answers']:.1f} %); "
            f"all runs fitted: {a['all_fitted']}; verdict: {a['verdict']}.")
    config = dict(generator="starvation_cell(seed_experiment)", n_pairs=n_pairs, both_fraction=0.7,
                  held_out_direction="forward", n_values=8, cells=args.cells,
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
