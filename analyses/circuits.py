"""Study: the forward circuit's faithfulness and what a held-out reverse question lacks, over seeds.

    python analyses/circuits.py
    python analyses/circuits.py --quick

On the default seed-experiment run of each seed (200 pairs, reverse held out):

- ``circuit.find_circuit`` on the ``forward_seen`` prompt pairs (logit difference, denoising): edges ranked by edge
  attribution and pruned by backward elimination on a discovery half, faithfulness (ablate-outside, corrupted and
  mean replacements) measured on the other half. Reported: the held-out recovery of the 10-edge circuit, the number
  of edges the smallest circuit reaching 90 % on the discovery half needs (and its held-out recovery), and edge
  attribution's agreement with exact path patching;
- ``missing.what_is_missing``: the storage heads (seen-reverse entries above zero), per split the storage heads'
  attention to the subject (the QK reading), their summed entry and the routing-versus-storage verdict, and the
  rank-one insertion of the missing entries (edited held-out accuracy before, after and with the placebo; margin
  change after and with the placebo; specificity on forward and seen-reverse accuracy).

Over seeds: every seed's value and the mean with a t interval over seeds (``revinterp.stats.t_interval``).
"""

from __future__ import annotations

from collections import Counter

from common import Study, est, parser, table

from revinterp.analysis.circuit import find_circuit
from revinterp.analysis.missing import what_is_missing
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.data import seed_experiment
from revinterp.models import load_run
from revinterp.stats import t_interval

SPLIT = "forward_seen"
MAX_EDGES = 10
TARGET = 0.9


def over_seeds(values):
    """The mean with a t interval over seeds, or None with fewer than two finite values."""
    finite = [v for v in values if v is not None]
    return t_interval(finite) if len(finite) >= 2 else None


def show(values, digits: int = 3) -> str:
    return ", ".join("n/a" if v is None else f"{v:.{digits}g}" for v in values)


def main() -> None:
    p = parser("circuits", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs of the seed experiment (default 200; --quick 40)")
    args = p.parse_args()
    study = Study("circuits", "The forward circuit and the missing entry", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    per_seed = []
    run_dirs = study.train_all([study.spec(f"seed{seed}", seed_experiment(n_pairs, seed=seed), seed)
                                for seed in study.seeds])
    for seed, run_dir, log in zip(study.seeds, run_dirs, study.run_log):
        run = load_run(run_dir)
        pairs = make_prompt_pairs(run.facts, SPLIT, run.tokenizer).to(next(run.model.parameters()).device)
        circuit = find_circuit(run.model, pairs, max_edges=MAX_EDGES, target=TARGET, seed=seed)
        record = dict(seed=seed, run=log, circuit=circuit.to_numbers(),
                      recovered_at_max_edges=circuit.recovered("corrupted").mean,
                      recovered_at_max_edges_mean_replacement=circuit.recovered("mean").mean,
                      edges_for_target=len(circuit.target_edges) or None,
                      target_held_out=(circuit.target_evaluation.estimate().mean
                                       if circuit.target_evaluation is not None else None))
        try:
            missing = what_is_missing(run, seed=seed)
        except ValueError as error:  # no storage head
            record["missing"] = None
            record["missing_error"] = str(error)
        else:
            record["missing"] = missing.to_numbers()
        per_seed.append(record)
        if seed == study.seeds[0]:
            study.figure(circuit.plot(), f"circuit_seed{seed}",
                         f"Seed {seed}: the {len(circuit.edges)}-edge circuit found on {circuit.n_discovery} discovery "
                         f"pairs (edge width ~ edge attribution).", width=10)
            if record["missing"] is not None:
                for name, fig in missing.figures().items():
                    study.figure(fig, f"{name}_seed{seed}", f"Seed {seed}: {name} (what_is_missing; 95 % intervals "
                                                            "over facts, Clopper-Pearson for accuracies).")

    # aggregates over seeds ----------------------------------------------------------------------
    def column(key):
        return [r[key] for r in per_seed]

    with_missing = [r for r in per_seed if r["missing"] is not None]
    splits = list(with_missing[0]["missing"]["splits"]) if with_missing else []

    def missing_value(r, *path):
        value = r["missing"]
        for key in path:
            if value is None or key not in value:
                return None
            value = value[key]
        return value

    insertion = {
        name: [missing_value(r, "insertion", "edited", *path) for r in per_seed] for name, path in (
            ("accuracy_before", ("accuracy_before", "mean")), ("accuracy_after", ("accuracy_after", "mean")),
            ("accuracy_placebo", ("accuracy_placebo", "mean")),
            ("margin_change_after", ("margin_change_after", "mean")),
            ("margin_change_placebo", ("margin_change_placebo", "mean")),
            ("margin_before", ("margin_before",)), ("margin_after", ("margin_after",)))}
    specificity = {g: [missing_value(r, "insertion", g, "accuracy_after", "mean") for r in per_seed]
                   for g in ("forward", "reverse_seen", "untouched")}
    per_split = {s: {"attention": [missing_value(r, "splits", s, "attention_to_subject") for r in per_seed],
                     "entry": [missing_value(r, "splits", s, "entry") for r in per_seed],
                     "verdicts": [missing_value(r, "splits", s, "verdict") for r in per_seed]} for s in splits}
    aggregates = dict(
        interval_method="t interval over seeds (revinterp.stats.t_interval), every seed's value kept",
        recovered_at_max_edges=over_seeds(column("recovered_at_max_edges")),
        recovered_at_max_edges_mean_replacement=over_seeds(column("recovered_at_max_edges_mean_replacement")),
        edges_for_target=over_seeds(column("edges_for_target")),
        target_held_out=over_seeds(column("target_held_out")),
        attribution_spearman=over_seeds([r["circuit"]["attribution_spearman"] for r in per_seed]),
        insertion={k: over_seeds(v) for k, v in insertion.items()},
        restored=[missing_value(r, "insertion", "restored") for r in per_seed],
        specificity={g: over_seeds(v) for g, v in specificity.items()},
        per_split={s: {"attention": over_seeds(v["attention"]), "entry": over_seeds(v["entry"]),
                       "verdicts": dict(Counter(x for x in v["verdicts"] if x))} for s, v in per_split.items()},
        storage_heads=[missing_value(r, "storage_heads") for r in per_seed],
    )

    def cell(estimate):
        return "n/a" if estimate is None else est(estimate)

    results_table = table(
        ["quantity", "mean [95 % t interval over seeds]", "per seed"],
        [[f"held-out recovery, {MAX_EDGES}-edge circuit (corrupted)", cell(aggregates["recovered_at_max_edges"]),
          show(column("recovered_at_max_edges"))],
         [f"held-out recovery, {MAX_EDGES}-edge circuit (mean)",
          cell(aggregates["recovered_at_max_edges_mean_replacement"]),
          show(column("recovered_at_max_edges_mean_replacement"))],
         [f"edges for {TARGET:.0%} on the discovery half", cell(aggregates["edges_for_target"]),
          show(column("edges_for_target"))],
         ["  its held-out recovery (corrupted)", cell(aggregates["target_held_out"]), show(column("target_held_out"))],
         ["edge attribution vs exact, Spearman", cell(aggregates["attribution_spearman"]),
          show([r["circuit"]["attribution_spearman"] for r in per_seed])],
         *[[f"{s}: storage heads' attention to the subject", cell(aggregates["per_split"][s]["attention"]),
            show(per_split[s]["attention"])] for s in splits],
         *[[f"{s}: storage heads' summed entry", cell(aggregates["per_split"][s]["entry"]),
            show(per_split[s]["entry"])] for s in splits],
         *[[f"insertion, edited: {k.replace('_', ' ')}", cell(aggregates["insertion"][k]), show(v)]
           for k, v in insertion.items()],
         *[[f"after the insertion, {g} accuracy", cell(aggregates["specificity"][g]), show(v)]
           for g, v in specificity.items()]])
    findings = [
        f"Faithfulness on held-out pairs: the {MAX_EDGES}-edge circuit found on the discovery half recovers "
        f"{cell(aggregates['recovered_at_max_edges'])} of the clean logit difference on the other half (corrupted "
        f"replacement; per seed {show(column('recovered_at_max_edges'))}); reaching {TARGET:.0%} on the discovery half "
        f"takes {show(column('edges_for_target'))} edges per seed, which recover {show(column('target_held_out'))} "
        "held out.",
        *[f"{s}: verdicts " + ", ".join(f"{v} ({n} of {len(per_seed)} seeds)"
                                        for v, n in aggregates["per_split"][s]["verdicts"].items()) for s in splits],
        f"Insertion of the missing entries: edited held-out accuracy {show(insertion['accuracy_before'])} before, "
        f"{show(insertion['accuracy_after'])} after, {show(insertion['accuracy_placebo'])} with the placebo (per "
        f"seed); margin change {cell(aggregates['insertion']['margin_change_after'])} against the placebo's "
        f"{cell(aggregates['insertion']['margin_change_placebo'])}; restored per seed: {aggregates['restored']}. An "
        "insertion that raises the margin without restoring the answer says the entry is not the only thing missing "
        "(answer-side starvation, the held-out answer's unembedding only ever pushed down, is the untested "
        "alternative).",
    ]
    if len(with_missing) < len(per_seed):
        findings.append(f"{len(per_seed) - len(with_missing)} seed(s) had no storage head: "
                        + "; ".join(r.get("missing_error", "") for r in per_seed if r["missing"] is None))
    config = dict(generator="seed_experiment", n_pairs=n_pairs, split=SPLIT, metric="logit_diff",
                  max_edges=MAX_EDGES, target=TARGET, model=study.model_config(0), training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings, intervals="Intervals over seeds are 95 % Student's t intervals "
                                              "(revinterp.stats.t_interval), every seed's value shown; accuracies "
                                              "over examples have exact Clopper-Pearson intervals.")


if __name__ == "__main__":
    main()
