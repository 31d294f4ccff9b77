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
Clopper-Pearson interval.
"""

from __future__ import annotations

import torch
from common import Study, parser, table

from revinterp.analysis.starvation import starvation_report
from revinterp.data import STARVATION_CELLS, encode_statements, seed_experiment, starvation_cell
from revinterp.data.tokenizer import encode_words
from revinterp.evaluation import evaluate
from revinterp.models import load_run
from revinterp.stats import clopper_pearson, t_interval

SPLIT = "reverse_held_out"
CELL_LABELS = {"none": "neither fed (seed)", "subject": "subject fed", "answer": "answer fed", "both": "both fed"}


@torch.no_grad()
def held_out_answer_accuracy(model, facts, tokenizer) -> tuple[torch.Tensor, int]:
    """Per held-out reverse question: is its answer ranked first among the held-out answers only? And how many
    such candidates there are (chance 1 / that). Single-token entities: one forward of the prompts."""
    statements = facts.split(SPLIT)
    answers = sorted({s.object for s in statements})
    ids = [encode_words(tokenizer, a.split()) for a in answers]
    if any(len(i) != 1 for i in ids):
        raise ValueError("held_out_answer_accuracy expects single-token answers")
    ids = torch.tensor([i[0] for i in ids])
    encoded = encode_statements(facts, statements, tokenizer)
    device = next(model.parameters()).device
    logits = model(encoded.tokens.to(device))
    last = (encoded.prompt_lengths - 1).to(device)
    scores = logits[torch.arange(len(statements), device=device), last][:, ids.to(device)].cpu()
    target = torch.tensor([answers.index(s.object) for s in statements])
    answer_score = scores.gather(1, target[:, None])[:, 0]
    return (scores > answer_score[:, None]).sum(-1) == 0, len(answers)


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

    per_seed: dict[str, list[dict]] = {c: [] for c in args.cells}
    for cell in args.cells:
        feed_subject, feed_answer = STARVATION_CELLS[cell]
        for seed in study.seeds:
            facts = starvation_cell(seed_experiment(n_pairs, held_out_direction="forward", seed=seed),
                                    feed_subject=feed_subject, feed_answer=feed_answer, n_values=8, seed=seed)
            run_dir = study.train(f"{cell}-seed{seed}", facts, seed)
            run = load_run(run_dir)
            b = evaluate(run.model, run.facts, [SPLIT])[SPLIT]
            k, n = int(b.correct.sum()), b.n
            m = int(b.n_candidates[0])
            among, n_answers = held_out_answer_accuracy(run.model, run.facts, run.tokenizer)
            report = starvation_report(run)
            means = report.role_means()
            per_seed[cell].append(dict(
                seed=seed, run=study.run_log[-1], n_candidates=m, accuracy=proportion(k, n),
                mean_rank=b.rank.double().mean().item(), chance_mean_rank=(m + 1) / 2,
                held_out_answer_candidates=n_answers,
                accuracy_among_held_out_answers=proportion(int(among.sum()), len(among)),
                n_input_starved=len(report.input_starved), n_answer_starved=len(report.answer_starved),
                starvation={role: means[role] for role in ("held_out_subject", "held_out_answer", "trained_subject",
                                                           "trained_answer") if role in means},
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
        )

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

    findings = []
    for a in aggregates.values():
        acc, chance = a["accuracy_pooled"], a["chance_accuracy"]
        side = ("above" if acc["ci_low"] > chance else "below" if acc["ci_high"] < chance else "indistinguishable from")
        findings.append(
            f"{a['label']}: {sum(a['input_starved'])} of {sum(a['n_held_out'])} held-out questions input-starved, "
            f"{sum(a['answer_starved'])} answer-starved; held-out reverse accuracy pooled {pct(acc)} is {side} "
            f"chance {100 * chance:.2f} %; among the held-out answers only {pct(a['among_held_out_answers_pooled'])} "
            f"(chance {100 * a['chance_among_held_out_answers']:.1f} %); all runs fitted: {a['all_fitted']}.")
    if "both" in aggregates:
        b = aggregates["both"]
        high = b["accuracy_pooled"]["ci_high"]
        findings.append(
            f"In the cell where both sides are fed the held-out reverse accuracy is at most {100 * high:.1f} % at 95 % "
            "confidence (pooled Clopper-Pearson upper bound): "
            + ("it is not above chance, so starvation alone does not explain the failure: with both embeddings "
               "trained the reverse still does not form." if b["accuracy_pooled"]["ci_low"] <= b["chance_accuracy"]
               else "it is above chance there, so starvation is at least part of the cause of the failure."))
    config = dict(generator="starvation_cell(seed_experiment)", n_pairs=n_pairs, both_fraction=0.7,
                  held_out_direction="forward", n_values=8, cells=args.cells,
                  model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
