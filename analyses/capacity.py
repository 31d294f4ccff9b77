"""Study: capacity - does the curse hold from 1 layer d 20 to 8 layers d 256, and what carries the forward fact once
there are more facts than the attention's OV rank?

    python analyses/capacity.py                 # the grid below, seeds by cost, in the shared run store
    python analyses/capacity.py --quick         # smoke test

Grid: layers 1, 2, 4, 8 x d_model 20, 64, 128, 256 (4 heads of d_model / 4, d_mlp 4 d_model, otherwise the
default preset) x ``seed_experiment(N, held_out_direction="forward")`` with N = 200, 1000, 5000 pairs (every
one-way fact trained forward, its reverse held out: 0.3 N held-out reverse questions). Each cell trains until every
trained split is fitted (accuracy 100 % and mean p(answer) >= 0.99) or its step budget (:data:`STEP_BUDGET`, by N)
is spent. Seeds per cell follow its cost, the FLOP upper bound of its step budget
(:data:`revinterp.sweep.COST_METHOD`, from the booted model's parameter count): :data:`SEED_TIERS` (``--tiers``)
gives how many of ``--seeds`` a cell of that cost gets, zero (not run) above the last tier. All runs are Ray tasks
through ``Study.train_all`` (shared run store, both cores).

Per cell and seed: steps to fit (or not fitted), held-out reverse accuracy among all M candidates (k of n with its
exact Clopper-Pearson interval; pooled over seeds too) and among the held-out answers only
(:func:`held_out_answer_accuracy`, as the 2x2 study computed it: the trained answers, pulled up in training,
cannot outrank them there), and on forward prompt pairs (``forward_seen``, at most ``--max-pairs``): direct logit
attribution of the clean-minus-corrupted logit difference summed per kind (attention = every head and b_O, MLPs,
embeddings; shares of the total, which they sum to up to the unembedding bias) and ``localize(target=0.8)``
(sites chosen on half the pairs, recovery measured on the other half; how many chosen sites are attention or
MLP). The OV rank of a layer is n_heads x d_head = d_model (each head's W_V W_O has rank at most d_head), so
facts exceed it in every layer once N > d_model. Over seeds: every seed's value, the mean with a t interval
(``revinterp.stats.t_interval``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import plotly.graph_objects as go
import torch
from common import Study, parser, table

from revinterp.analysis.dla import direct_logit_attribution
from revinterp.analysis.localize import localize
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.data import encode_statements, seed_experiment
from revinterp.data.tokenizer import encode_words
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS, config_for_data, load_run, tokenizer_for
from revinterp.stats import clopper_pearson, format_fixed, t_interval
from revinterp.sweep import parameter_count

LAYERS, D_MODELS, N_PAIRS = (1, 2, 4, 8), (20, 64, 128, 256), (200, 1000, 5000)
QUICK_LAYERS, QUICK_D_MODELS, QUICK_N_PAIRS = (1, 2), (20, 64), (30, 60)
N_HEADS = 4
STEP_BUDGET = {200: 2000, 1000: 3000, 5000: 5000}
EVAL_EVERY = {200: 50, 1000: 100, 5000: 250}  # one evaluation of every statement per this many steps
SEED_TIERS = ((1_500, 5), (3_000, 3), (8_000, 1))
"""(GFLOP upper bound of the step budget, seeds): a cell costing at most the first number gets that many seeds."""
SPLIT, FORWARD = "reverse_held_out", "forward_seen"
TARGET = 0.8


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


def model_config(n_layers: int, d_model: int, seed: int):
    return dataclasses.replace(MODEL_PRESETS["default"], n_layers=n_layers, d_model=d_model, n_heads=N_HEADS,
                               d_mlp=4 * d_model, seed=seed)


def seed_tier(text: str) -> tuple[float, int]:
    """``GFLOP:SEEDS`` (e.g. ``10000:3``) as ``(10000.0, 3)``."""
    limit, sep, n = text.partition(":")
    try:
        return float(limit), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed tier {text!r}: expected GFLOP:SEEDS, e.g. 10000:3") from None


def seeds_for(gflop: float, seeds: tuple[int, ...], tiers) -> tuple[int, ...]:
    for limit, n in tiers:
        if gflop <= limit:
            return seeds[:n]
    return ()


def proportion(k: int, n: int) -> dict:
    e = clopper_pearson(k, n)
    return {"k": k, "n": n, "value": e.mean, "ci_low": e.low, "ci_high": e.high}


def over_seeds(values):
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return {"values": values, "mean": values[0] if values else None, "ci_low": None, "ci_high": None,
                "method": "one seed: no interval" if values else "no value"}
    e = t_interval(values)
    return {"values": values, "mean": e.mean, "ci_low": e.low, "ci_high": e.high, "method": "t interval over seeds"}


def percent(x: float) -> str:
    """A proportion in percent: one decimal from 1 %, two significant digits below (0.019, not 0.0)."""
    return "0" if x == 0 else f"{100 * x:.1f}" if x >= 0.01 else f"{100 * x:.2g}"


def pct(p: dict) -> str:
    return f"{p['k']}/{p['n']} = {percent(p['value'])} % [{percent(p['ci_low'])}, {percent(p['ci_high'])}]"


def share_text(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    if s["ci_low"] is None:
        return f"{format_fixed(s['mean'])} (1 seed)"
    return f"{format_fixed(s['mean'])} [{format_fixed(s['ci_low'])}, {format_fixed(s['ci_high'])}]"


def analyse(run_dir, max_pairs: int, seed: int) -> dict:
    """One run: fit, held-out reverse accuracy (all candidates, held-out answers only), forward DLA and localize."""
    run = load_run(run_dir)
    behaviour = evaluate(run.model, run.facts, [SPLIT, FORWARD])
    b = behaviour[SPLIT]
    k, n, m = int(b.correct.sum()), b.n, int(b.n_candidates[0])
    among, n_answers = held_out_answer_accuracy(run.model, run.facts, run.tokenizer)
    pairs = make_prompt_pairs(run.facts, FORWARD, run.tokenizer, max_pairs=max_pairs, seed=seed)
    pairs = pairs.to(next(run.model.parameters()).device)
    dla = direct_logit_attribution(run.model, pairs).aggregate("component")
    total = float(dla.total.mean())
    by_kind = {kind: sum(float(v) for v, k_ in zip(dla.mean(), dla.kinds) if k_ == kind) for kind in set(dla.kinds)}
    attention = by_kind.get("attn", 0.0)
    mlp = by_kind.get("mlp", 0.0)
    embeddings = sum(v for kind, v in by_kind.items() if kind not in ("attn", "mlp"))
    located = localize(run.model, pairs, target=TARGET)
    chosen = [s.component for s in located.chosen]
    return dict(
        forward_accuracy=float(behaviour[FORWARD].correct.double().mean()), n_candidates=m,
        accuracy=proportion(k, n), chance=1 / m,
        among_held_out_answers=proportion(int(among.sum()), len(among)), held_out_answer_candidates=n_answers,
        dla=dict(total=total, attention=attention, mlp=mlp, embeddings=embeddings,
                 attention_share=attention / total, mlp_share=mlp / total, embeddings_share=embeddings / total,
                 n_pairs=len(pairs)),
        localize=dict(recovered=located.recovered, reached=located.reached, n_chosen=len(chosen),
                      attention_sites=sum(c != "mlp_out" for c in chosen),
                      mlp_sites=sum(c == "mlp_out" for c in chosen),
                      chosen=[s.label(pairs.labels) for s in located.chosen]),
    )


def main() -> None:
    p = parser("capacity", __doc__.splitlines()[0])
    p.add_argument("--max-pairs", type=int, default=100, help="forward prompt pairs for DLA and localize")
    p.add_argument("--tiers", type=seed_tier, nargs="+", default=list(SEED_TIERS), metavar="GFLOP:SEEDS",
                   help="seeds per cell by the GFLOP upper bound of its step budget, in increasing order (default "
                        + " ".join(f"{g}:{n}" for g, n in SEED_TIERS) + "); a costlier cell is not run")
    args = p.parse_args()
    tiers = sorted(args.tiers)
    study = Study("capacity", "Capacity: the curse across depth, width and number of facts, and what carries the "
                              "forward fact past the OV rank", args)
    layers, d_models, sizes = ((QUICK_LAYERS, QUICK_D_MODELS, QUICK_N_PAIRS) if study.quick
                               else (LAYERS, D_MODELS, N_PAIRS))
    study.log("planning: parameter counts and cost per cell")
    plan, specs = [], []
    for n_pairs, n_layers, d_model in itertools.product(sizes, layers, d_models):
        facts = seed_experiment(n_pairs, held_out_direction="forward", seed=0)
        tokenizer = tokenizer_for(facts)
        config = config_for_data(model_config(n_layers, d_model, 0), facts, tokenizer)
        budget = STEP_BUDGET.get(n_pairs, STEP_BUDGET[200])
        training = study.training_config(0, max_steps=budget, eval_every=EVAL_EVERY.get(n_pairs, 50))
        params = parameter_count(config, tokenizer)
        gflop = 6 * params * training.batch_size * config.n_ctx * training.max_steps / 1e9
        cell = dict(n_pairs=n_pairs, n_layers=n_layers, d_model=d_model, n_heads=N_HEADS, d_head=d_model // N_HEADS,
                    ov_rank_per_layer=N_HEADS * (d_model // N_HEADS), ov_rank_total=n_layers * d_model,
                    parameters=params, step_budget=training.max_steps, eval_every=training.eval_every,
                    gflop_upper_bound=gflop, seeds=list(seeds_for(gflop, study.seeds, tiers)))
        plan.append(cell)
        for seed in cell["seeds"]:
            specs.append(study.spec(f"N{n_pairs}-L{n_layers}-d{d_model}-seed{seed}",
                                    seed_experiment(n_pairs, held_out_direction="forward", seed=seed), seed,
                                    model_config=model_config(n_layers, d_model, seed), max_steps=budget,
                                    eval_every=EVAL_EVERY.get(n_pairs, 50)))
    specs.sort(key=lambda s: next(c["gflop_upper_bound"] for c in plan if s.name.startswith(
        f"N{c['n_pairs']}-L{c['n_layers']}-d{c['d_model']}-")))  # cheap first: Ray starts them in this order
    run_dirs = dict(zip((s.name for s in specs), study.train_all(specs)))
    runs = {r["run"]: r for r in study.run_log}

    per_cell = []
    for cell in plan:
        prefix = f"N{cell['n_pairs']}-L{cell['n_layers']}-d{cell['d_model']}"
        records = []
        for seed in cell["seeds"]:
            name = f"{prefix}-seed{seed}"
            study.log(f"  analysing {name}")
            record = dict(seed=seed, steps=runs[name]["steps"], fitted=runs[name]["fitted"],
                          **analyse(run_dirs[name], args.max_pairs, seed))
            records.append(record)
        if records:
            fitted = [r for r in records if r["fitted"]]
            cell.update(
                label=prefix, per_seed=records, n_fitted=len(fitted),
                steps_to_fit=[r["steps"] if r["fitted"] else None for r in records],
                pooled_accuracy=proportion(sum(r["accuracy"]["k"] for r in records),
                                           sum(r["accuracy"]["n"] for r in records)),
                pooled_among_held_out_answers=proportion(sum(r["among_held_out_answers"]["k"] for r in records),
                                                         sum(r["among_held_out_answers"]["n"] for r in records)),
                chance=sum(r["chance"] for r in records) / len(records),
                chance_among_held_out_answers=sum(1 / r["held_out_answer_candidates"] for r in records) / len(records),
                attention_share=over_seeds([r["dla"]["attention_share"] for r in records]),
                mlp_share=over_seeds([r["dla"]["mlp_share"] for r in records]),
                embeddings_share=over_seeds([r["dla"]["embeddings_share"] for r in records]),
                localize_attention_sites=sum(r["localize"]["attention_sites"] for r in records),
                localize_mlp_sites=sum(r["localize"]["mlp_sites"] for r in records),
                localize_recovered=over_seeds([r["localize"]["recovered"] for r in records]),
            )
        per_cell.append(cell)
    run_cells = [c for c in per_cell if c["seeds"]]
    skipped = [c for c in per_cell if not c["seeds"]]
    fewer = [c for c in run_cells if len(c["seeds"]) < len(study.seeds)]

    # figures --------------------------------------------------------------------------------------
    fig = go.Figure()
    for n_pairs in sizes:
        cells = [c for c in run_cells if c["n_pairs"] == n_pairs]
        fig.add_scatter(x=[c["label"] for c in cells for _ in c["per_seed"]], mode="markers", name=f"N={n_pairs} seed",
                        y=[100 * r["accuracy"]["value"] for c in cells for r in c["per_seed"]], opacity=0.6)
        fig.add_scatter(
            x=[c["label"] for c in cells], y=[100 * c["pooled_accuracy"]["value"] for c in cells], mode="markers",
            marker=dict(symbol="line-ew-open", size=14), name=f"N={n_pairs} pooled (Clopper-Pearson)",
            error_y=dict(type="data", symmetric=False,
                         array=[100 * (c["pooled_accuracy"]["ci_high"] - c["pooled_accuracy"]["value"]) for c in cells],
                         arrayminus=[100 * (c["pooled_accuracy"]["value"] - c["pooled_accuracy"]["ci_low"])
                                     for c in cells]))
        fig.add_scatter(x=[c["label"] for c in cells], y=[100 * c["chance"] for c in cells], mode="lines",
                        line=dict(dash="dot"), name=f"N={n_pairs} chance 1/M")
    fig.update_layout(title="Held-out reverse accuracy among all candidates per cell (points: seeds; bars: pooled "
                            "k of n, exact 95 % interval)", yaxis_title="accuracy (%)", xaxis_tickangle=-60)
    study.figure(fig, "reverse_accuracy", "Held-out reverse accuracy among the M candidates per cell: every seed "
                                          "(points), the pooled count over seeds with its exact Clopper-Pearson "
                                          "interval (bars) and chance 1/M (dotted).", width=14)

    fig = go.Figure()
    for n_layers in layers:
        cells = [c for c in run_cells if c["n_layers"] == n_layers]
        for key, symbol in (("attention_share", "circle"), ("mlp_share", "x")):
            fig.add_scatter(x=[c["n_pairs"] / c["ov_rank_per_layer"] for c in cells for _ in c["per_seed"]],
                            y=[r["dla"][key] for c in cells for r in c["per_seed"]], mode="markers",
                            marker=dict(symbol=symbol), name=f"{n_layers} layer(s): {key.split('_')[0]}")
    fig.add_vline(x=1, line_dash="dot")
    fig.update_layout(title="Direct logit attribution of forward facts: share of attention and of the MLPs against "
                            "facts per OV rank of a layer", xaxis=dict(type="log", title="facts / (n_heads x d_head)"),
                      yaxis_title="share of the logit difference")
    study.figure(fig, "dla_share_vs_ov_rank", "Share of the forward logit difference written directly by attention "
                                              "(circles) and by the MLPs (crosses), every seed, against the number of "
                                              "facts over one layer's OV rank (dotted: equal).", width=12)

    # table and findings ---------------------------------------------------------------------------
    rows = []
    for c in run_cells:
        rows.append([
            c["n_pairs"], c["n_layers"], c["d_model"], c["ov_rank_per_layer"], len(c["seeds"]),
            f"{c['n_fitted']}/{len(c['seeds'])}",
            " ".join("-" if s is None else str(s) for s in c["steps_to_fit"]) + f" (budget {c['step_budget']})",
            pct(c["pooled_accuracy"]), f"{100 * c['chance']:.2f} %",
            " ".join(f"{r['accuracy']['k']}/{r['accuracy']['n']}" for r in c["per_seed"]),
            pct(c["pooled_among_held_out_answers"]), f"{100 * c['chance_among_held_out_answers']:.2f} %",
            share_text(c["attention_share"]), share_text(c["mlp_share"]), share_text(c["embeddings_share"]),
            f"{c['localize_attention_sites']} / {c['localize_mlp_sites']}", share_text(c["localize_recovered"]),
        ])
    results_table = table(
        ["N", "layers", "d_model", "OV rank / layer", "seeds", "fitted", "steps to fit per seed",
         "held-out reverse acc. (pooled, CP 95 %)", "chance", "per seed k/n", "among held-out answers (pooled)",
         "chance there", "DLA attention share [t]", "DLA MLP share [t]", "DLA embeddings share [t]",
         "localize sites attn / MLP", "localize recovered [t]"], rows)
    if skipped:
        results_table += ["", "Not run (cost above the last seed tier):", ""]
        results_table += table(["N", "layers", "d_model", "GFLOP upper bound of the budget"],
                               [[c["n_pairs"], c["n_layers"], c["d_model"], f"{c['gflop_upper_bound']:,.0f}"]
                                for c in skipped])

    all_records = [r for c in run_cells for r in c["per_seed"]]
    k = sum(r["accuracy"]["k"] for r in all_records)
    n = sum(r["accuracy"]["n"] for r in all_records)
    above = [c["label"] for c in run_cells if c["pooled_accuracy"]["ci_low"] > c["chance"]]
    above_answers = [c["label"] for c in run_cells
                     if c["pooled_among_held_out_answers"]["ci_low"] > c["chance_among_held_out_answers"]]
    k_answers = sum(r["among_held_out_answers"]["k"] for r in all_records)
    n_answers = sum(r["among_held_out_answers"]["n"] for r in all_records)

    def fitted_seeds(past: bool) -> list[dict]:
        """Every fitted seed's record in the cells with more facts than one layer's OV rank (or at most as many)."""
        return [r for c in run_cells if (c["n_pairs"] > c["ov_rank_per_layer"]) == past
                for r in c["per_seed"] if r["fitted"]]

    def mean_of(records, *path):
        values = [r[path[0]][path[1]] for r in records]
        return format_fixed(sum(values) / len(values)) if values else "n/a"

    rank_lines = []
    for past, words in ((True, "more facts than one layer's OV rank"), (False, "at most that many")):
        records = fitted_seeds(past)
        rank_lines.append(
            f"{words} ({len(records)} fitted runs): attention {mean_of(records, 'dla', 'attention_share')}, MLPs "
            f"{mean_of(records, 'dla', 'mlp_share')}; localize chose "
            f"{sum(r['localize']['attention_sites'] for r in records)} attention and "
            f"{sum(r['localize']['mlp_sites'] for r in records)} MLP sites")
    by_shape = {(c["n_layers"], c["d_model"], c["n_pairs"]): c["attention_share"]["mean"] for c in run_cells}
    growth = []
    for small, large in zip(sizes, sizes[1:]):
        shapes = [(L, d) for L in layers for d in d_models if (L, d, small) in by_shape and (L, d, large) in by_shape]
        rises = sum(by_shape[L, d, large] > by_shape[L, d, small] for L, d in shapes)
        growth.append(f"from {small} to {large} pairs it rises in {rises} of the {len(shapes)} shapes run at both")

    findings = [
        f"Held-out reverse accuracy among all candidates, pooled over every cell and seed: {pct(proportion(k, n))}; "
        f"cells whose pooled exact interval lies above chance: {', '.join(above) if above else 'none'} (of "
        f"{len(run_cells)} run).",
        f"Among the held-out answers only: pooled {pct(proportion(k_answers, n_answers))}; cells whose pooled exact "
        f"interval lies above that chance: {', '.join(above_answers) if above_answers else 'none'}.",
        "Fitted (every trained split at 100 % and p >= 0.99 within the step budget): "
        + ", ".join(f"{c['label']} {c['n_fitted']}/{len(c['seeds'])}" for c in run_cells if c["n_fitted"] < len(
            c["seeds"])) + " did not fit in every seed; the others fitted in every seed." if any(
            c["n_fitted"] < len(c["seeds"]) for c in run_cells) else "Every run fitted within its step budget.",
        "Who carries the forward fact, means over fitted runs of the DLA share of the forward logit difference, "
        "with " + "; with ".join(rank_lines) + ".",
        "Attention's mean DLA share per shape (layers, d_model) against the number of facts: "
        + "; ".join(growth) + ".",
    ]
    notes = [
        f"Seeds per cell by the FLOP upper bound of its step budget: tiers {[list(t) for t in tiers]} (GFLOP, "
        "seeds), chosen so that the study trains in about an hour on this 2-core machine shared with other work; "
        "the bound is of the whole budget, so early-stopped cells cost less than it says.",
        "Cells with fewer than every seed: " + (", ".join(f"{c['label']} ({len(c['seeds'])}: "
                                                          f"{c['gflop_upper_bound']:,.0f} GFLOP)" for c in fewer)
                                                 or "none") + ".",
        "Not run: " + (", ".join(f"{c['n_pairs']} pairs L{c['n_layers']} d{c['d_model']} "
                                 f"({c['gflop_upper_bound']:,.0f} GFLOP)" for c in skipped) or "none") + ".",
        f"Step budget by number of pairs: {STEP_BUDGET}; evaluations every {EVAL_EVERY} steps (steps to fit are "
        "multiples of it).",
        "Accuracy among the held-out answers is computed in the study (held_out_answer_accuracy, as the 2x2 study "
        "did); "
        "revinterp.evaluation did not yet report it when this ran.",
        "DLA shares are of the direct contributions to the final residual stream: an MLP that writes what attention "
        "brought counts as MLP.",
    ]
    study.finish(config=dict(layers=list(layers), d_models=list(d_models), n_pairs=list(sizes), n_heads=N_HEADS,
                             d_mlp="4 x d_model", data="seed_experiment(N, held_out_direction='forward')",
                             step_budget=STEP_BUDGET, eval_every=EVAL_EVERY, seed_tiers=tiers,
                             max_pairs=args.max_pairs, localize_target=TARGET),
                 per_seed=per_cell, aggregates=dict(pooled_accuracy=proportion(k, n), above_chance=above),
                 results_table=results_table, findings=findings, notes=notes,
                 intervals="Accuracies: exact 95 % Clopper-Pearson intervals (per seed, and pooled k of n over seeds); "
                           "other figures over seeds: every seed's value and Student's t interval (none for one seed).")


if __name__ == "__main__":
    main()
