"""Study: the seed code's recipe beside revinterp on the seed's own split, and the gap between them measured.

    python analyses/seed_code_comparison.py               # training seeds 0-4, 3,600 steps
    python analyses/seed_code_comparison.py --quick       # smoke test

Data: the seed generator's own draw at its default seed 1234 (:func:`revinterp.baselines.seed_recipe.seed_code_facts`:
200 pairs, 140 trained both ways, 60 one way with the held-out direction drawn per pair), the same for every run;
a run's seed fixes its initial weights and batch order only.

Runs, each for the same number of optimiser steps (the seed's 600 epochs of 6 batches: 3,600 steps) and never
stopped early:

- *seed code*: the seed paper's recipe (:mod:`revinterp.baselines.seed_recipe`, re-implemented in plain PyTorch:
  GPT-2 at 2 layers, d 128, 4 heads, dropout 0.1, GPT-2 initialisation std 0.02, untied unembedding, no BOS, a
  vocabulary of 802 of which 400 tokens no statement uses, AdamW lr 0.01, batch 64);
- one controlled change at a time towards revinterp's model: no unused tokens, a BOS token, dropout 0,
  TransformerLens's initialisation (std 0.8 / sqrt(d_model));
- all four changes together;
- *tied*: the seed recipe with its unembedding tied to the token embedding (plain GPT-2's default, which the seed's
  model class loses; not a revinterp setting);
- *revinterp*: ``revinterp.training.train`` at the ``default`` preset on the same facts (TransformerLens's
  ``NativeModel`` behind a ``TransformerBridge``).

Measured per run: the held-out mean log p(answer) over the vocabulary, over all 60 held-out statements (the seed's
validation curve), after every epoch (seed recipe) or every 50 steps (revinterp); held-out accuracy; the first step
at which every trained split is fitted. Each change's effect is the paired difference from the seed code at the
last step (same training seed), with a 95 % t interval over seeds; what the four changes leave of the gap to
revinterp is the difference revinterp minus all four, also paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time

import plotly.graph_objects as go
import torch
from common import Study, ci, est, exact, parser, table, write_json

from revinterp.baselines.seed_recipe import SEED_CODE_SEED, SeedRecipe, seed_code_facts
from revinterp.stats import error_bars

STEPS = 3600
CHANGES = {  # name: (what changes, SeedRecipe overrides given the fact set's unused tokens and d_model)
    "no unused tokens": ("400 unused vocabulary rows removed", lambda unused, d: {"unused_tokens": 0}),
    "BOS": ("a BOS token before every statement", lambda unused, d: {"bos": True}),
    "no dropout": ("dropout 0.1 -> 0", lambda unused, d: {"dropout": 0.0}),
    "TransformerLens init": ("initialisation std 0.02 -> 0.8 / sqrt(d_model)",
                             lambda unused, d: {"initializer_range": 0.8 / math.sqrt(d)}),
}
ALL_FOUR = "all four changes"
TIED = "tied"
SEED_CODE = "seed code"
REVINTERP = "revinterp"


def recipes(facts, model_config, steps: int, seed: int) -> dict[str, SeedRecipe]:
    """Every seed-recipe variant of the study at the architecture of ``model_config``."""
    unused, d = facts.source["unused_tokens"], model_config.d_model
    base = SeedRecipe(n_layers=model_config.n_layers, d_model=d, n_heads=model_config.n_heads, unused_tokens=unused,
                      max_steps=steps, stop_when_fitted=False, seed=seed)
    out = {SEED_CODE: base}
    combined = {}
    for name, (_, overrides) in CHANGES.items():
        out[name] = dataclasses.replace(base, **overrides(unused, d))
        combined.update(overrides(unused, d))
    out[ALL_FOUR] = dataclasses.replace(base, **combined)
    out[TIED] = dataclasses.replace(base, tied_embeddings=True)
    return out


def train_recipes(study: Study, facts, jobs: dict[tuple[str, int], SeedRecipe]) -> dict[tuple[str, int], dict]:
    """Train every seed-recipe run of ``jobs`` as a Ray task (one CPU and one torch thread each), writing each run's
    record to the run store (``seed_recipe/<hash>.json``, by fact set and recipe) as it finishes, for later
    invocations."""
    import ray

    from revinterp.sweep import connect

    manifest = json.dumps(facts.to_manifest(), sort_keys=True)
    folder = study.store / "seed_recipe"
    folder.mkdir(parents=True, exist_ok=True)

    def path(recipe: SeedRecipe):
        key = hashlib.sha256((manifest + json.dumps(dataclasses.asdict(recipe), sort_keys=True)).encode())
        return folder / f"{key.hexdigest()[:16]}.json"

    @ray.remote(num_cpus=1)
    def task(recipe: SeedRecipe) -> dict:
        from revinterp.baselines.seed_recipe import train_seed_recipe

        torch.set_num_threads(1)
        result = train_seed_recipe(facts, recipe, device="cpu")
        return {"steps": result.steps, "epochs": result.epochs, "cpu_seconds": round(result.cpu_seconds, 1),
                "history": result.history}

    todo = {job: recipe for job, recipe in jobs.items() if not path(recipe).is_file()}
    if todo:
        t0 = time.time()
        study.log(f"  training {len(todo)} seed-recipe runs on Ray ...")
        started = connect(study.address)
        try:
            pending = {task.remote(recipe): recipe for recipe in todo.values()}
            while pending:  # each run's record written as it finishes: an interrupted invocation keeps them
                (done,), _ = ray.wait(list(pending), num_returns=1)
                write_json(path(pending.pop(done)), ray.get(done))
        finally:
            if started:
                ray.shutdown()
        study.log(f"  {len(todo)} seed-recipe runs in {time.time() - t0:.0f} s")
    return {job: json.loads(path(recipe).read_text()) for job, recipe in jobs.items()}


def held_out_curve(history: list[dict], sizes: dict[str, int]) -> tuple[list[int], list[float], list[float]]:
    """Steps, the mean log p(answer) over every held-out statement (split means weighted by their sizes) and the
    held-out accuracy, from a training history."""
    total = sum(sizes.values())
    steps, logprob, accuracy = [], [], []
    for record in history:
        splits = record["splits"]
        steps.append(record["step"])
        logprob.append(sum(splits[name]["log_probability"] * n for name, n in sizes.items()) / total)
        accuracy.append(sum(splits[name]["accuracy"] * n for name, n in sizes.items()) / total)
    return steps, logprob, accuracy


def first_fitted(history: list[dict]) -> int | None:
    return next((record["step"] for record in history if record["fitted"]), None)


def main() -> None:
    p = parser("seed_code_comparison", __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default {STEPS}; --quick 120)")
    args = p.parse_args()
    study = Study("seed_code_comparison", "The seed code's recipe beside revinterp on the seed's own split", args)
    steps = args.steps or study.size(STEPS, 120)
    facts = seed_code_facts(SEED_CODE_SEED)
    held_out = {name: len(facts.split(name)) for name in facts.split_names if not facts.split(name)[0].trained}
    n_held_out = sum(held_out.values())

    run_dirs = study.train_all([study.spec(f"{REVINTERP}-seed{seed}", facts, seed, max_steps=steps, early_stop=False)
                                for seed in study.seeds])
    model_config = study.model_config(0)
    jobs = {(name, seed): recipe for seed in study.seeds
            for name, recipe in recipes(facts, model_config, steps, seed).items()}
    records = train_recipes(study, facts, jobs)

    from revinterp.models import load_run
    from revinterp.training import read_history

    settings = recipes(facts, model_config, steps, 0)  # the variants' settings (the seed aside)
    variants = [*settings, REVINTERP]
    vocab = {name: len(facts.vocabulary()) + recipe.bos + recipe.unused_tokens for name, recipe in settings.items()}
    vocab[REVINTERP] = load_run(run_dirs[0]).model.cfg.d_vocab
    per_seed = {name: [] for name in variants}
    for seed, run_dir in zip(study.seeds, run_dirs):
        histories = {name: records[(name, seed)]["history"] for name in variants if name != REVINTERP}
        histories[REVINTERP] = read_history(run_dir)
        for name, history in histories.items():
            curve_steps, logprob, accuracy = held_out_curve(history, held_out)
            if curve_steps[-1] != steps:
                raise RuntimeError(f"{name}, seed {seed}: the last record is at step {curve_steps[-1]}; expected "
                                   f"{steps}")
            per_seed[name].append(dict(seed=seed, steps=curve_steps, held_out_logprob=logprob,
                                       held_out_accuracy=accuracy, final_logprob=logprob[-1],
                                       final_accuracy=accuracy[-1], held_out_hits=round(accuracy[-1] * n_held_out),
                                       first_fitted=first_fitted(history),
                                       final_splits=history[-1]["splits"]))

    def final(name: str) -> list[float]:
        return [r["final_logprob"] for r in per_seed[name]]

    def paired(a: str, b: str):
        return ci([x - y for x, y in zip(final(a), final(b))])

    aggregates = {
        "final_logprob": {name: ci(final(name)) for name in variants},
        "uniform_logprob": {name: -math.log(v) for name, v in vocab.items()},
        "held_out_hits": {name: [sum(r["held_out_hits"] for r in per_seed[name]), n_held_out * len(study.seeds)]
                          for name in variants},
        "first_fitted": {name: [r["first_fitted"] for r in per_seed[name]] for name in variants},
        "effect_vs_seed_code": {name: paired(name, SEED_CODE) for name in variants if name != SEED_CODE},
        "gap_revinterp_minus_seed_code": paired(REVINTERP, SEED_CODE),
        "residual_revinterp_minus_all_four": paired(REVINTERP, ALL_FOUR),
        "sum_of_single_changes": ci([sum(per_seed[c][i]["final_logprob"] - per_seed[SEED_CODE][i]["final_logprob"]
                                         for c in CHANGES) for i in range(len(study.seeds))]),
    }

    # figures
    fig = go.Figure()
    for name in variants:
        rows = per_seed[name]
        curve = torch.tensor([r["held_out_logprob"] for r in rows]).mean(0)
        fig.add_scatter(x=rows[0]["steps"], y=curve.tolist(), mode="lines", name=name)
    for name in (SEED_CODE, REVINTERP):
        fig.add_hline(y=aggregates["uniform_logprob"][name], line_dash="dot",
                      annotation_text=f"uniform over {vocab[name]} ({name})")
    fig.update_layout(title=f"Held-out mean log p(answer) over training: mean over {len(study.seeds)} seeds",
                      xaxis_title="optimiser step", yaxis_title="mean log p(answer), held-out statements")
    study.figure(fig, "held_out_logprob_curves",
                 f"Held-out mean log p(answer) over the vocabulary ({n_held_out} held-out statements) against the "
                 f"step, mean over {len(study.seeds)} training seeds, for each run; dotted: the uniform "
                 "log-probability of each vocabulary.")
    effects = [n for n in variants if n != SEED_CODE]
    fig = go.Figure(go.Bar(x=effects, y=[aggregates["effect_vs_seed_code"][n].mean for n in effects],
                           error_y=error_bars([aggregates["effect_vs_seed_code"][n] for n in effects])))
    fig.update_layout(title=f"Change in held-out mean log p(answer) at step {steps} against the seed code "
                            "(paired over seeds, 95 % t interval)", yaxis_title="difference in mean log p")
    study.figure(fig, "effects", f"Each run's held-out mean log p(answer) at step {steps} minus the seed code's with "
                                 "the same training seed: mean and 95 % t interval over seeds.")

    # summary
    def hits(name: str) -> str:
        return exact(*aggregates["held_out_hits"][name])

    def fitted(name: str) -> str:
        at = aggregates["first_fitted"][name]
        return ("never" if all(s is None for s in at) else
                ", ".join("-" if s is None else str(s) for s in at))

    rows = [[name, vocab[name], f"{aggregates['uniform_logprob'][name]:.2f}",
             est(aggregates["final_logprob"][name]),
             "-" if name == SEED_CODE else est(aggregates["effect_vs_seed_code"][name]), hits(name), fitted(name)]
            for name in variants]
    results_table = table(["run", "vocabulary", "uniform log p", f"held-out mean log p at step {steps}",
                           "minus the seed code (paired)", "held-out hits, pooled over seeds [Clopper-Pearson]",
                           "first step fitted, per seed"], rows)

    def side(e) -> str:
        if not math.isfinite(e.low):
            return "without an interval"
        if e.low > 0:
            return "raises it"
        if e.high < 0:
            return "lowers it"
        return "leaves it within an interval that includes zero"

    gap, residual = aggregates["gap_revinterp_minus_seed_code"], aggregates["residual_revinterp_minus_all_four"]
    total_single, effect = aggregates["sum_of_single_changes"], aggregates["effect_vs_seed_code"]
    largest = max(CHANGES, key=lambda c: abs(aggregates["effect_vs_seed_code"][c].mean))
    findings = [
        f"At step {steps}, the held-out mean log p(answer) is {est(aggregates['final_logprob'][SEED_CODE])} for the "
        f"seed code (uniform {aggregates['uniform_logprob'][SEED_CODE]:.2f}) and "
        f"{est(aggregates['final_logprob'][REVINTERP])} for revinterp (uniform "
        f"{aggregates['uniform_logprob'][REVINTERP]:.2f}): revinterp minus the seed code {est(gap)}.",
        *[f"{name} ({CHANGES[name][0]}): {est(effect[name])}; it {side(effect[name])}"
          + (f" ({effect[name].mean / gap.mean:.0%} of the gap's mean)" if gap.mean else "") + "."
          for name in CHANGES],
        f"The largest single change is {largest!r}. The four single effects sum to {est(total_single)}; all four "
        f"together give {est(aggregates['effect_vs_seed_code'][ALL_FOUR])}"
        + (" (the changes interact: the sum's interval excludes the joint effect's mean)"
           if not total_single.low <= aggregates["effect_vs_seed_code"][ALL_FOUR].mean <= total_single.high else "")
        + ".",
        f"What the four changes leave of the gap (revinterp minus all four): {est(residual)}; it {side(residual)}"
        + ("; the remaining differences of the two models are named in revinterp.baselines.seed_recipe (separate "
           "q, k, v; exact against tanh GELU; TransformerLens's unused special tokens; batch order)"
           if residual.low > 0 or residual.high < 0 else "") + ".",
        f"Tying the unembedding to the token embedding (GPT-2's default, not the seed code's model): "
        f"{est(aggregates['effect_vs_seed_code'][TIED])} against the seed code, held-out hits {hits(TIED)} against "
        f"{hits(SEED_CODE)} untied.",
    ]
    base = dataclasses.asdict(settings[SEED_CODE])
    config = {"facts": facts.source, "held_out_statements": held_out, "steps": steps, SEED_CODE: base,
              "changed settings": {name: {k: v for k, v in dataclasses.asdict(r).items() if v != base[k]}
                                   for name, r in settings.items() if name != SEED_CODE},
              "revinterp_model": dataclasses.asdict(model_config)}
    notes = [f"Data are the seed generator's split at seed {SEED_CODE_SEED} for every run; the listed seeds are "
             "training seeds (initial weights and batch order).",
             "The seed code itself is not run: its recipe is re-implemented in revinterp.baselines.seed_recipe "
             "(tested against Hugging Face's GPT2LMHeadModel), whose docstring names what differs."]
    study.finish(config=config, per_seed=per_seed, aggregates=aggregates, results_table=results_table,
                 findings=findings, notes=notes)


if __name__ == "__main__":
    main()
