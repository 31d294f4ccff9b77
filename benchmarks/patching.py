"""Exact activation-patching benchmark: revinterp's fast path against TransformerLens's ``get_act_patch_*``.

Measures, in one process, on one device, the full exact denoising sweep of a trained model over its
*forward facts* (every ``forward_seen`` and ``forward_only`` statement as a clean/corrupted prompt pair,
built by ``make_prompt_pairs`` per split and concatenated), per-example logit differences kept:

- residual stream (``resid_pre``), attention output and MLP output per layer x position, and every
  head's output per layer x position x head (``revinterp.analysis.sites.SWEEP_COMPONENTS``);
- **fast**: ``patch_sweeps(model, pairs, SWEEP_COMPONENTS)`` end to end (both cached runs included);
- **TransformerLens**: ``run_with_cache`` of the clean prompts, then ``get_act_patch_resid_pre``,
  ``get_act_patch_attn_out``, ``get_act_patch_mlp_out`` and ``get_act_patch_attn_head_out_by_pos``
  with ``reduce="none"`` and the same per-example metric, inside ``torch.no_grad()`` (TransformerLens's
  progress bars are disabled through ``TQDM_DISABLE`` so they cost nothing).

Each method gets ``--warmup`` untimed runs, then ``--repeats`` timed runs, alternating fast and
TransformerLens; the figures are the medians (the best run of each is reported too, since other
processes on a shared machine only ever add time). Reported: both times, their ratio (goal >= 5x),
the largest absolute difference between the two methods' per-example values over every site, and relative to
the largest value (goal <= 1e-6: the fast path reads the metric from the two answer columns of the unembedding,
which rounds differently from the full unembedding), and how many sites the fast path had to compute at all.

The model is ``--run`` (a run directory written by ``revinterp.training.train``), or, without it, a
fresh ``default``-preset run trained on ``seed_experiment(200)`` in a temporary directory.

Run from the repository root (venv active)::

    python benchmarks/patching.py --run /tmp/run_default
    python benchmarks/patching.py --run /tmp/run_default --repeats 9 --json bench_patching.json
    python benchmarks/patching.py --run /tmp/run_default --threads 1     # steadier on a shared, busy machine

On a 2-core machine shared with other jobs, two intra-op threads make every small tensor operation wait
for a busy core and single runs vary tenfold; ``--threads 1`` gives steady figures (compare the load
averages printed at the start and end).

``--json PATH`` also writes every figure, with the machine (torch and TransformerLens versions,
threads, device, load average), as one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (TransformerLens shows a bar per sweep)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from revinterp.analysis.metrics import metric_values  # noqa: E402
from revinterp.analysis.patching import patch_sweeps  # noqa: E402
from revinterp.analysis.prompts import PromptPairs, make_prompt_pairs  # noqa: E402
from revinterp.analysis.sites import SWEEP_COMPONENTS  # noqa: E402
from revinterp.io import atomic_write_text  # noqa: E402

FORWARD_SPLITS = ("forward_seen", "forward_only")
TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "head_out_by_pos": "get_act_patch_attn_head_out_by_pos",
}
METRIC = "logit_diff"


def forward_fact_pairs(facts, tokenizer, device) -> PromptPairs:
    """Prompt pairs for every forward statement: one ``make_prompt_pairs`` per split, concatenated."""
    parts = [make_prompt_pairs(facts, split, tokenizer) for split in FORWARD_SPLITS if len(facts.split(split)) >= 2]
    labels = {p.labels for p in parts}
    if len(labels) != 1:
        raise ValueError(f"forward splits have different position labels {sorted(labels)}; cannot concatenate")
    pairs = PromptPairs(
        clean=torch.cat([p.clean for p in parts]), corrupted=torch.cat([p.corrupted for p in parts]),
        clean_answer=torch.cat([p.clean_answer for p in parts]),
        corrupted_answer=torch.cat([p.corrupted_answer for p in parts]), labels=parts[0].labels,
        statements=sum((p.statements for p in parts), ()),
        corrupted_statements=sum((p.corrupted_statements for p in parts), ()), split="+".join(FORWARD_SPLITS),
    )
    return pairs.to(device)


def tile(pairs: PromptPairs, times: int) -> PromptPairs:
    """``pairs`` repeated ``times`` times (to measure the sweep on more prompts)."""
    if times == 1:
        return pairs
    return replace(
        pairs, clean=pairs.clean.repeat(times, 1), corrupted=pairs.corrupted.repeat(times, 1),
        clean_answer=pairs.clean_answer.repeat(times), corrupted_answer=pairs.corrupted_answer.repeat(times),
        statements=pairs.statements * times, corrupted_statements=pairs.corrupted_statements * times,
    )


def fast_sweep(model, pairs: PromptPairs) -> dict[str, torch.Tensor]:
    return {c: r.values for c, r in patch_sweeps(model, pairs, SWEEP_COMPONENTS, metric=METRIC).items()}


def transformer_lens_sweep(model, pairs: PromptPairs) -> dict[str, torch.Tensor]:
    import transformer_lens.patching as tl_patching

    ca, cb = pairs.clean_answer, pairs.corrupted_answer
    metric = lambda logits: metric_values(METRIC, logits[:, -1], ca, cb)  # noqa: E731
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(pairs.clean)
        return {
            c: getattr(tl_patching, TL_FUNCTIONS[c])(model, pairs.corrupted, clean_cache, metric, reduce="none").values
            for c in SWEEP_COMPONENTS
        }


def timed(fn, *args) -> tuple[float, dict]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


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


def load_or_train(run_dir: Path | None, device, workdir: Path):
    from revinterp.models import load_run

    if run_dir is None:
        from revinterp.data import seed_experiment
        from revinterp.models import MODEL_PRESETS
        from revinterp.training import TRAINING_PRESETS, train

        run_dir = workdir / "run"
        start = time.perf_counter()
        result = train(seed_experiment(200), MODEL_PRESETS["default"], TRAINING_PRESETS["default"], run_dir,
                       device=device, progress=False)
        print(f"trained a default-preset run in {time.perf_counter() - start:.0f} s "
              f"({result.steps} steps, fitted: {result.fitted}) at {run_dir}")
    return load_run(run_dir, device=device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run directory (default: train a default-preset run in a temp dir)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per method; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing")
    parser.add_argument("--tile", type=int, default=1, help="repeat the prompt pairs this many times")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--device", help="torch device (default: revinterp.models.default_device())")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.tile < 1:
        parser.error("--repeats and --tile must be positive, --warmup non-negative")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from revinterp.models import default_device

    device = torch.device(args.device) if args.device else default_device()
    with tempfile.TemporaryDirectory() as workdir:
        run = load_or_train(args.run, device, Path(workdir))
    model = run.model
    pairs = tile(forward_fact_pairs(run.facts, run.tokenizer, device), args.tile)
    cfg = model.cfg
    n_sites = sum(
        cfg.n_layers * pairs.clean.shape[1] * (cfg.n_heads if c == "head_out_by_pos" else 1) for c in SWEEP_COMPONENTS
    )
    figures = {
        "run": str(args.run) if args.run else "trained default preset (temporary)",
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab,
        "n_prompts": len(pairs), "prompt_length": pairs.clean.shape[1], "position_labels": list(pairs.labels),
        "components": list(SWEEP_COMPONENTS), "n_sites": n_sites, "metric": METRIC,
        "device": str(device), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__, "transformer_lens_version": package_version("transformer-lens"),
        "python_version": platform.python_version(), "load_average_1min_at_start": load_average(),
        "repeats": args.repeats, "warmup": args.warmup,
    }
    print(f"revinterp patching benchmark: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads; "
          f"{len(pairs)} forward-fact prompt pairs of {pairs.clean.shape[1]} tokens {pairs.labels}; "
          f"{n_sites} sites ({', '.join(SWEEP_COMPONENTS)})")
    print(f"device {device}, torch {figures['torch_version']}, "
          f"transformer-lens {figures['transformer_lens_version']}, {figures['threads']} threads, "
          f"{figures['cpu_count']} CPUs, load average {figures['load_average_1min_at_start']}")

    for _ in range(args.warmup):
        fast_sweep(model, pairs)
        transformer_lens_sweep(model, pairs)
    fast_times, tl_times = [], []
    fast_values = tl_values = None
    for _ in range(args.repeats):
        t, fast_values = timed(fast_sweep, model, pairs)
        fast_times.append(t)
        t, tl_values = timed(transformer_lens_sweep, model, pairs)
        tl_times.append(t)
    max_diff = max((fast_values[c] - tl_values[c]).abs().max().item() for c in SWEEP_COMPONENTS)
    scale = max(1.0, max(tl_values[c].abs().max().item() for c in SWEEP_COMPONENTS))
    bit_identical = all(torch.equal(fast_values[c], tl_values[c]) for c in SWEEP_COMPONENTS)
    results = patch_sweeps(model, pairs, SWEEP_COMPONENTS, metric=METRIC)
    trivial = sum(  # sites whose values are exactly the unpatched run (skipped, or no effect at all)
        int((r.values.reshape(-1, r.n) == r.unpatched).all(dim=1).sum()) for r in results.values()
    )
    fast_median, tl_median = statistics.median(fast_times), statistics.median(tl_times)
    figures.update(
        fast_seconds=fast_median, transformer_lens_seconds=tl_median, ratio=tl_median / fast_median,
        best_ratio=min(tl_times) / min(fast_times), fast_best_seconds=min(fast_times),
        transformer_lens_best_seconds=min(tl_times), fast_runs_seconds=fast_times,
        transformer_lens_runs_seconds=tl_times,
        fast_ms_per_site=1e3 * fast_median / n_sites, transformer_lens_ms_per_site=1e3 * tl_median / n_sites,
        max_abs_diff=max_diff, max_relative_diff=max_diff / scale, bit_identical=bit_identical,
        sites_equal_to_unpatched=trivial,
        load_average_1min_at_end=load_average(),
    )
    print(f"\nfull exact denoising sweep, per-example {METRIC}; "
          f"median of {args.repeats} runs after {args.warmup} warm-up")
    print(f"  fast path (patch_sweeps)              {1e3 * fast_median:9.1f} ms   runs: "
          + ", ".join(f"{1e3 * t:.1f}" for t in fast_times))
    print(f"  TransformerLens get_act_patch_*       {1e3 * tl_median:9.1f} ms   runs: "
          + ", ".join(f"{1e3 * t:.1f}" for t in tl_times))
    print(f"  ratio TransformerLens / fast          {figures['ratio']:9.2f}x  (best run of each: "
          f"{figures['best_ratio']:.2f}x; goal >= 5x)")
    print(f"  max |fast - TransformerLens|          {max_diff:9.2e}   (relative to the largest value "
          f"{max_diff / scale:.1e}, goal <= 1e-6: the fast path reads the two answer columns, not the full "
          f"unembedding; bit-identical: {bit_identical})")
    print(f"  sites equal to the unpatched run      {trivial} of {n_sites}")
    print(f"  load average at the end: {figures['load_average_1min_at_end']}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
