"""Edge-patching benchmark: revinterp's path patching against TransformerLens, and edge attribution against both.

Measures, in one process, on one device, on the ``forward_seen`` prompt pairs of a trained model
(``make_prompt_pairs``; metric: logit difference clean answer - corrupted answer, denoising):

- **direct paths**: every edge from a head to a later head's query, key or value input at every position, the
  edges that ``transformer_lens.patching.get_act_patch_direct_path`` patches. revinterp: one
  ``edge_sweep(model, pairs, edges)`` over all of them on the native bridge; TransformerLens: ``run_with_cache`` of
  the clean and corrupted prompts, then one ``get_act_patch_direct_path`` per sender head and component on the
  GPT-2 bridge holding the same weights (``edges.gpt2_bridge``; TransformerLens's function does not run on the native
  bridge). Reported: both times (medians of ``--repeats`` alternating runs after ``--warmup``), their ratio, and the
  largest absolute difference between the two mean metrics over every edge (goal <= 1e-5);
- **edge attribution against exact path patching**: every edge of the graph (``edges.all_edges``, one per position),
  ``edge_sweep(..., method="attribution")`` (one backward) against ``method="exact"`` (one forward per edge): both
  times, their ratio, and the rank agreement of the attributed mean effects with the exact ones
  (``EdgeEffects.agreement_with``: Spearman over the non-trivial edges, top-k recall, calibration slope).

The model is ``--run`` (a run directory written by ``revinterp.training.train``), or, without it, a fresh
``default``-preset run trained on ``seed_experiment(200)`` in a temporary directory. ``--quick``: a two-layer
version of the ``tiny`` preset (the one-layer ``tiny`` model has no head-to-head edge) trained on
``seed_experiment(40)``, one repeat: a smoke test, not a measurement.

Run from the repository root (venv active)::

    python benchmarks/edges.py --run /tmp/run_default --threads 1
    python benchmarks/edges.py --run /tmp/run_default --repeats 5 --json bench_edges.json
    python benchmarks/edges.py --quick

On a shared, busy machine single runs vary widely: use ``--threads 1`` and compare the load averages printed at
the start and the end before quoting a time. ``--json PATH`` also writes every figure, with the machine (torch and
TransformerLens versions, threads, device, load average), as one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (TransformerLens shows a bar per sweep)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from revinterp.analysis.edges import Edge, Node, all_edges, edge_sweep, gpt2_bridge  # noqa: E402
from revinterp.analysis.metrics import metric_values  # noqa: E402
from revinterp.analysis.prompts import PromptPairs, make_prompt_pairs  # noqa: E402
from revinterp.io import atomic_write_text  # noqa: E402

SPLIT = "forward_seen"
METRIC = "logit_diff"
COMPONENTS = ("q", "k", "v")
TOP_K = 10


def direct_path_edges(cfg) -> list[Edge]:
    """Every head -> later head q/k/v edge at every position, in TransformerLens's order (sender, component,
    receiver layer, receiver head)."""
    return [Edge(Node("head", layer, head), Node(c, later, h))
            for layer in range(cfg.n_layers) for head in range(cfg.n_heads) for c in COMPONENTS
            for later in range(layer + 1, cfg.n_layers) for h in range(cfg.n_heads)]


def ours(model, pairs: PromptPairs, edges: list[Edge]) -> torch.Tensor:
    return edge_sweep(model, pairs, edges, metric=METRIC).values.mean(-1)


def transformer_lens(bridge, pairs: PromptPairs) -> torch.Tensor:
    """Mean metric per edge of :func:`direct_path_edges`, from ``get_act_patch_direct_path`` on the GPT-2 bridge."""
    import transformer_lens.patching as tl_patching

    cfg = bridge.cfg
    ca, cb = pairs.clean_answer, pairs.corrupted_answer
    metric = lambda logits: metric_values(METRIC, logits[:, -1], ca, cb).mean()  # noqa: E731
    out = []
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(pairs.clean)
        _, corrupted_cache = bridge.run_with_cache(pairs.corrupted)
        for layer in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                for c in COMPONENTS:
                    values = tl_patching.get_act_patch_direct_path(bridge, pairs.corrupted, clean_cache,
                                                                   corrupted_cache, metric, layer, head, c,
                                                                   verbose=False)
                    out += [values[later] for later in range(layer + 1, cfg.n_layers)]
    return torch.cat(out) if out else torch.empty(0)


def timed(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def alternate(a, b, repeats: int, warmup: int):
    """(times of a, times of b, last output of a, last output of b), alternating a and b."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        t, out_a = timed(a)
        times_a.append(t)
        t, out_b = timed(b)
        times_b.append(t)
    return times_a, times_b, out_a, out_b


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_or_train(run_dir: Path | None, device, workdir: Path, quick: bool):
    from revinterp.models import load_run

    if run_dir is None:
        from revinterp.data import seed_experiment
        from revinterp.models import MODEL_PRESETS
        from revinterp.training import TRAINING_PRESETS, train

        run_dir = workdir / "run"
        if quick:
            facts, model_cfg = seed_experiment(40), dataclasses.replace(MODEL_PRESETS["tiny"], n_layers=2)
            training, what = TRAINING_PRESETS["tiny"], "two-layer tiny"
        else:
            facts, model_cfg, training, what = (seed_experiment(200), MODEL_PRESETS["default"],
                                                TRAINING_PRESETS["default"], "default-preset")
        start = time.perf_counter()
        result = train(facts, model_cfg, training, run_dir, device=device, progress=False)
        print(f"trained a {what} run in {time.perf_counter() - start:.0f} s ({result.steps} steps, fitted: "
              f"{result.fitted})")
    return load_run(run_dir, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: train a default-preset run in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--device", help="torch device (default: revinterp.models.default_device())")
    parser.add_argument("--quick", action="store_true", help="smoke test: a small two-layer run, one repeat")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 0
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be positive, --warmup non-negative")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    from revinterp.models import default_device

    device = torch.device(args.device) if args.device else default_device()
    with tempfile.TemporaryDirectory() as workdir:
        run = load_or_train(args.run, device, Path(workdir), args.quick)
    model, cfg = run.model, run.model.cfg
    pairs = make_prompt_pairs(run.facts, SPLIT, run.tokenizer).to(device)
    direct = direct_path_edges(cfg)
    if not direct:
        parser.error("the model has one layer: no head-to-head edge for get_act_patch_direct_path to patch")
    every = all_edges(model, pairs.clean.shape[1])
    figures = {
        "run": str(args.run) if args.run else ("quick two-layer tiny (temporary)" if args.quick
                                               else "trained default preset (temporary)"),
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab,
        "split": SPLIT, "n_prompts": len(pairs), "prompt_length": pairs.clean.shape[1],
        "position_labels": list(pairs.labels), "metric": METRIC, "direction": "denoising",
        "n_direct_path_edges": len(direct), "n_edges": len(every),
        "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__, "transformer_lens_version": package_version("transformer-lens"),
        "python_version": platform.python_version(), "load_average_1min_at_start": load_average(),
        "repeats": args.repeats, "warmup": args.warmup,
    }
    print(f"revinterp edge benchmark: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads; "
          f"{len(pairs)} {SPLIT} prompt pairs of {pairs.clean.shape[1]} tokens {pairs.labels}")
    print(f"device {device}, torch {figures['torch_version']}, transformer-lens {figures['transformer_lens_version']}, "
          f"{figures['threads']} threads, {figures['cpu_count']} CPUs, load average "
          f"{figures['load_average_1min_at_start']}")

    bridge = gpt2_bridge(model)
    with torch.no_grad():
        bridge_logit_diff = (bridge(pairs.clean)[:, -1] - model(pairs.clean)[:, -1]).abs().max().item()
    lib_times, tl_times, lib_values, tl_values = alternate(
        lambda: ours(model, pairs, direct), lambda: transformer_lens(bridge, pairs), args.repeats, args.warmup)
    max_diff = (lib_values - tl_values).abs().max().item()
    lib_median, tl_median = statistics.median(lib_times), statistics.median(tl_times)

    exact_times, attr_times, exact, attribution = alternate(
        lambda: edge_sweep(model, pairs, every, metric=METRIC),
        lambda: edge_sweep(model, pairs, every, metric=METRIC, method="attribution"), args.repeats, args.warmup)
    agreement = attribution.agreement_with(exact, k=TOP_K)
    exact_median, attr_median = statistics.median(exact_times), statistics.median(attr_times)
    figures.update(
        gpt2_bridge_max_abs_logit_diff=bridge_logit_diff,
        direct_path_revinterp_seconds=lib_median, direct_path_transformer_lens_seconds=tl_median,
        direct_path_ratio=tl_median / lib_median, direct_path_revinterp_runs_seconds=lib_times,
        direct_path_transformer_lens_runs_seconds=tl_times, direct_path_max_abs_diff=max_diff,
        exact_seconds=exact_median, attribution_seconds=attr_median, attribution_speedup=exact_median / attr_median,
        exact_runs_seconds=exact_times, attribution_runs_seconds=attr_times,
        attribution_spearman=agreement.spearman, attribution_top_k=agreement.k,
        attribution_top_k_recall=agreement.top_k_recall, attribution_slope=agreement.slope,
        attribution_n_nontrivial_edges=agreement.n_sites, load_average_1min_at_end=load_average(),
    )
    print(f"\n{len(direct)} direct-path edges (head -> later head q/k/v, every position), mean {METRIC}; median of "
          f"{args.repeats} runs after {args.warmup} warm-up")
    print(f"  revinterp edge_sweep                  {1e3 * lib_median:9.1f} ms")
    print(f"  TransformerLens get_act_patch_direct_path (GPT-2 bridge, |logits - native| "
          f"{bridge_logit_diff:.1e}) {1e3 * tl_median:9.1f} ms")
    print(f"  ratio TransformerLens / revinterp     {figures['direct_path_ratio']:9.2f}x")
    print(f"  max |revinterp - TransformerLens|     {max_diff:9.2e}   (goal <= 1e-5)")
    print(f"\n{len(every)} edges (one per position), edge attribution against exact path patching")
    print(f"  exact edge_sweep                      {1e3 * exact_median:9.1f} ms")
    print(f"  edge attribution (one backward)       {1e3 * attr_median:9.1f} ms   "
          f"({figures['attribution_speedup']:.1f}x faster)")
    print(f"  Spearman {agreement.spearman:.3f} over {agreement.n_sites} non-trivial edges, top-{agreement.k} recall "
          f"{agreement.top_k_recall:.2f}, calibration slope {agreement.slope:.2f}")
    print(f"  load average at the end: {figures['load_average_1min_at_end']}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
