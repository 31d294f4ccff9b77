"""Attribution patching against the exact sweep: speed per site, and how well it agrees.

Measures, in one process, on the same prompt pairs (every forward fact of the run):

1. the full denoising sweep (``resid_pre``, ``attn_out``, ``mlp_out`` per layer x position, heads per
   layer x position) three ways: attribution patching (``attribution_patch_components``: one forward and one
   backward pass), the exact fast path (``patch_sweeps``), and TransformerLens's ``get_act_patch_*``;
   the ratios of their times (medians of ``--repeats`` runs) and the cost per site;
2. attribution patching's agreement with the exact sweep (``attribution_agreement`` over every site of the
   four components together): Spearman rank correlation, top-5 recall, calibration slope (estimate regressed
   on exact effect) and the sites where they disagree most.

With ``--scale`` it repeats the timing on a larger, untrained model (the ``deep`` preset, 4 layers d_model
256, on natural-language prompts of two-token entities: 7 positions), where the per-site ratio grows: the
cost of attribution patching does not grow with the number of sites, the exact sweep's does. Agreement is
only measured on the trained run (an untrained model has nothing to agree on).

Run from the repository root (venv active)::

    python benchmarks/attribution_patching.py --run runs/default-seed0 --scale --json attribution.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens shows a bar per sweep

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from patching import (  # noqa: E402
    METRIC,
    fast_sweep,
    forward_fact_pairs,
    load_average,
    load_or_train,
    timed,
    transformer_lens_sweep,
)

from revinterp.analysis.agreement import attribution_agreement  # noqa: E402
from revinterp.analysis.attribution_patching import attribution_patch_components  # noqa: E402
from revinterp.analysis.patching import patch_sweeps  # noqa: E402
from revinterp.analysis.sites import SWEEP_COMPONENTS  # noqa: E402
from revinterp.io import atomic_write_text  # noqa: E402


def attribution_sweep(model, pairs) -> dict:
    return attribution_patch_components(model, pairs, SWEEP_COMPONENTS, metric=METRIC)


def time_methods(model, pairs, repeats: int) -> dict:
    """Median seconds of the three ways to sweep (after one untimed warm-up each)."""
    methods = {"attribution": attribution_sweep, "fast": fast_sweep, "transformer_lens": transformer_lens_sweep}
    times = {name: [] for name in methods}
    for fn in methods.values():
        fn(model, pairs)
    for _ in range(repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn, model, pairs)[0])
    n_sites = sum(
        model.cfg.n_layers * pairs.clean.shape[1] * (model.cfg.n_heads if c == "head_out_by_pos" else 1)
        for c in SWEEP_COMPONENTS
    )
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "n_prompts": len(pairs), "prompt_length": pairs.clean.shape[1], "n_sites": n_sites,
        "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
        **{f"{name}_seconds": med[name] for name in med},
        **{f"{name}_ms_per_site": 1e3 * med[name] / n_sites for name in med},
        "fast_over_attribution": med["fast"] / med["attribution"],
        "transformer_lens_over_attribution": med["transformer_lens"] / med["attribution"],
        "transformer_lens_over_fast": med["transformer_lens"] / med["fast"],
    }


def agreement(model, pairs) -> dict:
    estimates = attribution_sweep(model, pairs)
    exact = patch_sweeps(model, pairs, SWEEP_COMPONENTS, metric=METRIC)
    est = torch.cat([estimates[c].effect.flatten() for c in SWEEP_COMPONENTS])
    ref = torch.cat([(exact[c].values - exact[c].unpatched).mean(-1).flatten() for c in SWEEP_COMPONENTS])
    labels = [label for c in SWEEP_COMPONENTS for label in estimates[c].site_labels()]
    a = attribution_agreement(est.cpu(), ref.cpu(), labels=labels, k=5)
    return {"agreement": a.to_dict(), "agreement_summary": a.summary()}


def scaled_model_pairs(device):
    """An untrained deep-preset model on natural-language prompts of two-token entities."""
    from revinterp.analysis.prompts import make_prompt_pairs
    from revinterp.data import seed_experiment
    from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for

    facts = seed_experiment(200, tokens_per_entity=2, template="natural", seed=0)
    tokenizer = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["deep"], facts, tokenizer), tokenizer, device).eval()
    return model, make_prompt_pairs(facts, "forward_seen", tokenizer).to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: train a default-preset run in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the median is reported")
    parser.add_argument("--scale", action="store_true", help="also time a larger untrained model (deep preset)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--device", help="torch device (default: revinterp.models.default_device())")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from revinterp.models import default_device

    device = torch.device(args.device) if args.device else default_device()
    with tempfile.TemporaryDirectory() as workdir:
        run = load_or_train(args.run, device, Path(workdir))
    pairs = forward_fact_pairs(run.facts, run.tokenizer, device)
    figures = {"device": str(device), "threads": torch.get_num_threads(), "load_average_at_start": load_average(),
               "metric": METRIC, "components": list(SWEEP_COMPONENTS),
               "trained": time_methods(run.model, pairs, args.repeats)}
    figures["trained"].update(agreement(run.model, pairs))
    if args.scale:
        model, scaled_pairs = scaled_model_pairs(device)
        figures["scaled_untrained_deep"] = time_methods(model, scaled_pairs, args.repeats)
    figures["load_average_at_end"] = load_average()

    for name, f in ((k, v) for k, v in figures.items() if isinstance(v, dict)):
        print(f"\n{name}: {f['n_layers']} layers, d_model {f['d_model']}, {f['n_prompts']} prompt pairs of "
              f"{f['prompt_length']} tokens, {f['n_sites']} sites (median of {args.repeats})")
        for method in ("attribution", "fast", "transformer_lens"):
            print(f"  {method:<18}{1e3 * f[f'{method}_seconds']:9.1f} ms  {f[f'{method}_ms_per_site']:8.3f} ms/site")
        print(f"  exact fast / attribution          {f['fast_over_attribution']:7.1f}x")
        print(f"  TransformerLens / attribution     {f['transformer_lens_over_attribution']:7.1f}x  (goal >= 50x)")
        if "agreement_summary" in f:
            print("  agreement with the exact sweep: " + f["agreement_summary"].replace("\n", "\n    "))
    print(f"\nload average: {figures['load_average_at_start']} at the start, {figures['load_average_at_end']} "
          "at the end (timings on a shared machine swing with it)")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
