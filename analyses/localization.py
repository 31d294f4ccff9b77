"""Study 5: where the forward fact is stored, causally, over seeds.

    python analyses/localization.py
    python analyses/localization.py --quick

On the default seed-experiment run of each seed, with clean/corrupted prompt pairs of ``forward_seen``
(``<bos> a_i ->`` against another subject of the split; metric: logit difference clean answer - corrupted answer):

- full activation-patching sweeps (``patching.patch_sweeps``: resid_pre, attn_out, mlp_out per layer x position, each
  head per layer x position), denoising and noising, normalized (0 = corrupted run, 1 = clean run);
- ``localize.localize(target=0.8)``: sites ranked by their own denoising effect and restored *together* until 80 % of
  the clean logit difference is recovered; the recovered fraction with its interval over examples, per seed and over
  seeds, and which sites were chosen;
- direct logit attribution (``dla.direct_logit_attribution``) per head, attention block and MLP;
- attribution patching (``attribution_patching.attribution_patch_components``) against the exact sweeps
  (``agreement.attribution_agreement``): Spearman rank correlation, top-k recall and calibration slope, per
  component and pooled over every site, denoising and noising.

Head indices are arbitrary across seeds (any head can take a role), so head-level results are summarized per seed
(the top head and its share) and aggregated over seeds at the level of layers, positions and components.
"""

from __future__ import annotations

from collections import Counter

import plotly.graph_objects as go
import torch
from common import Study, ci, est, head_heatmap, parser, table, versus

from revinterp.analysis.agreement import attribution_agreement
from revinterp.analysis.attribution_patching import attribution_patch_components
from revinterp.analysis.dla import direct_logit_attribution
from revinterp.analysis.localize import localize
from revinterp.analysis.logit_lens import logit_lens
from revinterp.analysis.patching import PATCH_DIRECTIONS, patch_sweeps
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.analysis.sites import SWEEP_COMPONENTS
from revinterp.data import seed_experiment
from revinterp.models import load_run
from revinterp.stats import error_bars

SPLIT = "forward_seen"
AGREEMENT_K = 5
# make_prompt_pairs pairs each prompt with another by a random cyclic shift drawn from its seed; with the default seed
# 0 and the 140 forward_seen prompts of the 200-pair seed experiment the shift is always 70 = n/2, so the pairing is a
# set of swaps, and for a swap pairing the mean noising effect is exactly minus the mean denoising effect (the
# logit difference is antisymmetric in the two answers). A seed-dependent pairing seed keeps noising informative.
PAIR_SEED_OFFSET = 1


def site_values(result) -> dict[str, float]:
    """Normalized effect per site label."""
    return {site.label(result.labels): value
            for site, value in zip(result.sites(), result.normalized.flatten().tolist())}


def agreement_or_none(estimate, exact):
    """Agreement of attribution patching with the exact sweep of one component; None where fewer than two sites are
    non-trivial (e.g. a one-layer model's residual stream)."""
    try:
        return estimate.agreement_with(exact, k=AGREEMENT_K)
    except ValueError:
        return None


def main() -> None:
    p = parser("localization", __doc__.splitlines()[0])
    p.add_argument("--n-pairs", type=int, default=None, help="pairs of the seed experiment (default 200; --quick 40)")
    p.add_argument("--target", type=float, default=0.8, help="recovered fraction localize must reach (default 0.8)")
    args = p.parse_args()
    study = Study("localization", "Localization of the forward fact: patching, attribution and their agreement", args)
    n_pairs = args.n_pairs or study.size(200, 40)

    per_seed = []
    run_dirs = study.train_all([study.spec(f"seed{seed}", seed_experiment(n_pairs, seed=seed), seed)
                                for seed in study.seeds])
    for seed, run_dir, log in zip(study.seeds, run_dirs, study.run_log):
        run = load_run(run_dir)
        pairs = make_prompt_pairs(run.facts, SPLIT, run.tokenizer, seed=PAIR_SEED_OFFSET + seed)
        pairs = pairs.to(next(run.model.parameters()).device)
        partner = {a.subject: b.subject for a, b in zip(pairs.statements, pairs.corrupted_statements)}
        record = dict(seed=seed, run=log, n_prompt_pairs=len(pairs), labels=pairs.labels,
                      pairing_is_involution=all(partner.get(partner[k]) == k for k in partner))
        sweeps = {direction: patch_sweeps(run.model, pairs, SWEEP_COMPONENTS, direction=direction)
                  for direction in PATCH_DIRECTIONS}
        first = sweeps["denoising"]["resid_pre"]
        record["clean_logit_diff"] = ci(first.clean)
        record["corrupted_logit_diff"] = ci(first.corrupted)
        record["normalized"] = {d: {c: site_values(r) for c, r in s.items()} for d, s in sweeps.items()}
        heads = sweeps["denoising"]["head_out_by_pos"]
        (top_head, top_value), *_ = heads.top(1, by="max")
        record["top_head"] = dict(site=top_head.label(pairs.labels), normalized=top_value)

        located = localize(run.model, pairs, target=args.target)
        record["localization"] = dict(
            recovered=located.recovered, recovered_ci=located.recovered_ci(), reached=located.reached,
            chosen=[s.label(pairs.labels) for s in located.chosen], curve=located.curve,
            chosen_components=[s.component for s in located.chosen],
        )

        dla = direct_logit_attribution(run.model, pairs)
        components = dla.aggregate("component")
        record["dla"] = dict(
            total=ci(dla.total), unembed_bias=float(dla.unembed_bias.mean()),
            max_abs_residual=float(dla.residual.abs().max()),
            heads={label: float(v) for label, v, kind in zip(dla.labels, dla.mean(), dla.kinds) if kind == "head"},
            components={label: float(v) for label, v in zip(components.labels, components.mean())},
        )
        head_means = record["dla"]["heads"]
        best = max(head_means, key=lambda k: abs(head_means[k]))
        record["dla"]["top_head"] = dict(head=best, value=head_means[best],
                                         share=head_means[best] / record["dla"]["total"].mean)

        lens = logit_lens(run.model, pairs)
        record["logit_lens_accuracy"] = dict(zip(lens.labels, lens.accuracy.tolist()))

        record["agreement"] = {}
        for direction in PATCH_DIRECTIONS:
            estimates = attribution_patch_components(run.model, pairs, SWEEP_COMPONENTS, direction=direction)
            per_component = {c: agreement_or_none(estimates[c], sweeps[direction][c]) for c in SWEEP_COMPONENTS}
            est_effect = torch.cat([estimates[c].effect.flatten().cpu() for c in SWEEP_COMPONENTS])
            exact_effect = torch.cat([sweeps[direction][c].effect.flatten().cpu() for c in SWEEP_COMPONENTS])
            names = [n for c in SWEEP_COMPONENTS for n in estimates[c].site_labels()]
            pooled = attribution_agreement(est_effect, exact_effect, labels=names, k=AGREEMENT_K)
            record["agreement"][direction] = dict(
                pooled=pooled.to_dict(),
                per_component={c: a.to_dict() if a is not None else None for c, a in per_component.items()},
                estimate=est_effect.tolist(), exact=exact_effect.tolist(), sites=names)
        per_seed.append(record)

        if seed == study.seeds[0]:
            for component, result in sweeps["denoising"].items():
                fig = result.plot() if component != "head_out_by_pos" else head_heatmap(
                    result, f"Head outputs, denoising patching (normalized logit difference; n={len(pairs)})")
                study.figure(fig, f"patch_{component}_seed{seed}",
                             f"Seed {seed}: denoising activation patching of {component} on {len(pairs)} "
                             f"{SPLIT} prompt pairs, normalized logit difference (0 corrupted, 1 clean).",
                             **({"height": 6} if component == "head_out_by_pos" else {}))
            study.figure(sweeps["noising"]["resid_pre"].plot(), f"patch_resid_pre_noising_seed{seed}",
                         f"Seed {seed}: noising patching of resid_pre (1 = clean run, 0 = corrupted).")
            study.figure(located.plot(), f"localize_seed{seed}",
                         f"Seed {seed}: recovered fraction as the top sites are restored together (target "
                         f"{args.target}).")
            study.figure(dla.plot(), f"dla_seed{seed}", f"Seed {seed}: direct logit attribution of the logit "
                                                        "difference per part, mean with 95 % intervals over examples.",
                         width=12)

    # aggregates over seeds ----------------------------------------------------------------------
    labels = per_seed[0]["labels"]
    site_agg = {d: {c: {site: ci([r["normalized"][d][c][site] for r in per_seed])
                        for site in per_seed[0]["normalized"][d][c]}
                    for c in SWEEP_COMPONENTS if c != "head_out_by_pos"}
                for d in PATCH_DIRECTIONS}
    loc = [r["localization"] for r in per_seed]
    chosen_counts = Counter(site for r in loc for site in r["chosen"])
    dla_components = {part: ci([r["dla"]["components"][part] for r in per_seed])
                      for part in per_seed[0]["dla"]["components"]}
    agreement = {d: {m: ci([r["agreement"][d]["pooled"][m] for r in per_seed])
                     for m in ("spearman", "pearson", "top_k_recall", "slope")}
                 for d in PATCH_DIRECTIONS}
    agreement_by_component = {
        d: {c: {m: ci([r["agreement"][d]["per_component"][c][m] for r in per_seed
                       if r["agreement"][d]["per_component"][c] is not None])
                for m in ("spearman", "top_k_recall", "slope")} for c in SWEEP_COMPONENTS}
        for d in PATCH_DIRECTIONS}
    aggregates = dict(
        labels=labels,
        clean_logit_diff=ci([r["clean_logit_diff"].mean for r in per_seed]),
        corrupted_logit_diff=ci([r["corrupted_logit_diff"].mean for r in per_seed]),
        normalized_sites=site_agg,
        top_head_normalized=ci([r["top_head"]["normalized"] for r in per_seed]),
        recovered=ci([r["recovered"] for r in loc]),
        n_chosen=ci([len(r["chosen"]) for r in loc]),
        all_reached=all(r["reached"] for r in loc),
        chosen_counts=dict(chosen_counts),
        dla_components=dla_components,
        dla_top_head_share=ci([r["dla"]["top_head"]["share"] for r in per_seed]),
        dla_max_abs_residual=max(r["dla"]["max_abs_residual"] for r in per_seed),
        logit_lens_accuracy={k: ci([r["logit_lens_accuracy"][k] for r in per_seed])
                             for k in per_seed[0]["logit_lens_accuracy"]},
        agreement=agreement, agreement_by_component=agreement_by_component,
    )

    # figures over seeds --------------------------------------------------------------------------
    fig = go.Figure()
    for component in ("resid_pre", "attn_out", "mlp_out"):
        values = site_agg["denoising"][component]
        names = list(values)
        fig.add_bar(x=names, y=[values[s].mean for s in names], name=component,
                    error_y=error_bars([values[s] for s in names]))
    fig.update_layout(title=f"Denoising patching per site, normalized, mean over {len(study.seeds)} seeds "
                            "(95 % CI over seeds)", yaxis_title="normalized logit difference")
    study.figure(fig, "patch_sites_over_seeds",
                 "Normalized denoising effect of every residual-stream, attention-output and MLP-output site, mean "
                 "over seeds with 95 % intervals over seeds.", width=12)
    fig = go.Figure()
    for direction in PATCH_DIRECTIONS:
        for r in per_seed:
            fig.add_scatter(x=r["agreement"][direction]["exact"], y=r["agreement"][direction]["estimate"],
                            mode="markers", name=f"{direction}, seed {r['seed']}")
    lim = max(max(map(abs, r["agreement"][d]["exact"])) for r in per_seed for d in PATCH_DIRECTIONS)
    fig.add_scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", name="estimate = exact")
    fig.update_layout(title="Attribution patching against exact patching, every site (change of the logit difference)",
                      xaxis_title="exact effect", yaxis_title="attribution-patching estimate")
    study.figure(fig, "attribution_vs_exact", "Attribution-patching estimate against the exact patched effect (change "
                                              "of the logit difference) for every site, component and seed; the line "
                                              "is estimate = exact.", width=9, height=6)
    fig = go.Figure()
    parts = list(dla_components)
    fig.add_bar(x=parts, y=[dla_components[k].mean for k in parts], name="mean over seeds",
                error_y=error_bars([dla_components[k] for k in parts]))
    fig.update_layout(title="Direct logit attribution per component, mean over seeds (95 % CI over seeds)",
                      yaxis_title="contribution to the logit difference")
    study.figure(fig, "dla_components_over_seeds", "Direct logit attribution of the clean logit difference per "
                                                   "component, mean over seeds with 95 % intervals over seeds.")

    # summary ---------------------------------------------------------------------------------------
    rows = []
    for r in per_seed:
        lr = r["localization"]
        rows.append([r["seed"], r["n_prompt_pairs"], est(lr["recovered_ci"]), len(lr["chosen"]),
                     ", ".join(lr["chosen"]), f"{r['top_head']['site']} ({r['top_head']['normalized']:.2f})",
                     f"{r['dla']['top_head']['head']} ({100 * r['dla']['top_head']['share']:.0f} %)",
                     f"{r['agreement']['denoising']['pooled']['spearman']:.3f}",
                     f"{r['agreement']['denoising']['pooled']['slope']:.2f}"])
    results_table = ["### Per seed", ""]
    results_table += table(["seed", "pairs", "recovered [95 % CI over examples]", "sites", "chosen sites",
                            "top head (normalized)", "top DLA head (share of total)", "AP Spearman (den.)",
                            "AP slope (den.)"], rows)
    results_table += ["", "### Denoising effect per site, over seeds (normalized; 0 corrupted, 1 clean)", ""]
    results_table += table(["site", "denoising [95 % CI over seeds]", "noising [95 % CI over seeds]"],
                           [[site, est(v), est(site_agg["noising"][c][site])]
                            for c in ("resid_pre", "attn_out", "mlp_out")
                            for site, v in site_agg["denoising"][c].items()])
    results_table += ["", "### Direct logit attribution per component (over seeds)", ""]
    results_table += table(["part", "contribution [95 % CI over seeds]"],
                           [[k, est(v)] for k, v in dla_components.items()])
    results_table += ["", "### Attribution patching against exact patching (pooled over every site; over seeds)", ""]
    results_table += table(["direction", "Spearman", "Pearson", f"top-{AGREEMENT_K} recall", "calibration slope"],
                           [[d, *(est(agreement[d][m]) for m in ("spearman", "pearson", "top_k_recall", "slope"))]
                            for d in PATCH_DIRECTIONS])
    results_table += ["", "Per component (Spearman / top-k recall / slope):", ""]
    results_table += table(["direction", "component", "Spearman", "top-k recall", "slope"],
                           [[d, c, *(est(agreement_by_component[d][c][m]) for m in ("spearman", "top_k_recall",
                                                                                  "slope"))]
                            for d in PATCH_DIRECTIONS for c in SWEEP_COMPONENTS])

    den = site_agg["denoising"]
    strongest = {c: max(den[c], key=lambda s, c=c: den[c][s].mean) for c in den}
    most_chosen = chosen_counts.most_common(3)
    top_dla = max(dla_components, key=lambda k: abs(dla_components[k].mean))
    involutions = sum(r["pairing_is_involution"] for r in per_seed)
    findings = [
        f"Prompt pairs: make_prompt_pairs with seed {PAIR_SEED_OFFSET} + the study seed; the pairing is a set of swaps "
        f"(clean i corrupted by j and j by i, which makes mean noising exactly minus mean denoising) in {involutions} "
        f"of {len(per_seed)} seeds.",
        f"Clean logit difference {est(aggregates['clean_logit_diff'])}, corrupted "
        f"{est(aggregates['corrupted_logit_diff'])} (means over seeds).",
        "Strongest denoising site per component (normalized, over seeds): "
        + "; ".join(f"{c}: {s} {est(den[c][s])}" for c, s in strongest.items()) + ".",
        f"The single strongest head (at any position) restores {est(aggregates['top_head_normalized'])} of the clean "
        "logit difference on its own (per-seed heads in the table: head indices differ between seeds).",
        f"Localization: restoring {est(aggregates['n_chosen'])} site(s) together recovers "
        f"{est(aggregates['recovered'])} of the clean logit difference (over seeds; target {args.target}, reached in "
        f"every seed: {aggregates['all_reached']}); the most often chosen sites: "
        + ", ".join(f"{site} ({n} of {len(per_seed)} seeds)" for site, n in most_chosen) + ".",
        f"Direct logit attribution: the largest component is {top_dla} with {est(dla_components[top_dla])} of a "
        f"total {est(ci([r['dla']['total'].mean for r in per_seed]))}; the largest single head carries "
        f"{est(aggregates['dla_top_head_share'])} of the total (decomposition error at most "
        f"{aggregates['dla_max_abs_residual']:.1e}).",
    ]
    for direction in PATCH_DIRECTIONS:
        a = agreement[direction]
        findings.append(
            f"Attribution patching ({direction}), pooled over every site: Spearman {est(a['spearman'])}, top-"
            f"{AGREEMENT_K} recall {est(a['top_k_recall'])}, calibration slope {est(a['slope'])}: it "
            + ("ranks sites well" if a["spearman"].low > 0.8 else "ranks sites only roughly")
            + (" but underestimates effects (slope below 1)" if a["slope"].high < 1 else
               " and its magnitudes are" + (" about right" if a["slope"].low <= 1 <= a["slope"].high
                                            else " overestimated")) + ".")
    lens = aggregates["logit_lens_accuracy"]
    findings.append("Logit lens (answer top-1 over the vocabulary at each depth, over seeds): "
                    + ", ".join(f"{k} {est(v, percent=True)}" for k, v in lens.items()) + ".")
    best_attn = den["attn_out"][strongest["attn_out"]]
    findings.append(
        f"Restoring {strongest['attn_out']} alone gives {est(best_attn)} ({versus(best_attn, args.target)} the "
        f"target {args.target})" + (": one attention output carries the fact to the answer position."
                                    if versus(best_attn, args.target) == "above" else "."))
    config = dict(generator="seed_experiment", n_pairs=n_pairs, split=SPLIT, metric="logit_diff",
                  prompt_pair_seed=f"{PAIR_SEED_OFFSET} + seed",
                  components=SWEEP_COMPONENTS, target=args.target, model=study.model_config(0),
                  training=study.training_config(0))
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings)


if __name__ == "__main__":
    main()
