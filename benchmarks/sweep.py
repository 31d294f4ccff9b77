"""Sweep benchmark: a grid of cells through the sweep engine (Ray tasks) against the same cells one after another.

Measures, on this machine:

1. **Sequential**: the grid's cells run one after another in this process, each through
   ``revinterp.sweep.run_cell`` (``revinterp.pipeline.train_and_evaluate``, then ``analyze`` with ``--analyze``),
   on ``--threads`` torch threads (default 1, the command line's default for the small presets; each Ray task
   runs on one thread too).
2. **Ray start-up**: ``ray.init`` of a local cluster of ``--num-cpus`` CPUs (default all cores), timed alone.
3. **Sweep**: ``revinterp.sweep.run_sweep`` of the same grid on that cluster, into another directory: includes
   the start of the worker processes (each imports torch and TransformerLens), the tasks, and the gathering of
   the table, summary and report.

Figures: the wall seconds of each, ``speedup = sequential / sweep`` (Ray's start-up excluded: a cluster is started
once per sweep, or joined) and ``speedup_with_start = sequential / (start-up + sweep)``; and whether every cell's
``behaviour.json`` and ``model.safetensors`` are identical between the two (they should be: same seeds, one thread
each). The grid: ``--cells`` seeds of one configuration, preset ``--preset`` (tiny or default), ``--n-pairs``
pairs, exactly ``--steps`` steps (early stopping off, so every cell does the same work), behaviour only unless
``--analyze``.

Run from the repository root (venv active), on an otherwise idle machine::

    python benchmarks/sweep.py                        # 8 tiny cells, 400 steps each
    python benchmarks/sweep.py --preset default --steps 300 --json bench-sweep.json
    python benchmarks/sweep.py --quick                # 4 small cells, a check that it runs (figures meaningless)

``--json PATH`` also writes every figure, with the machine, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def grid_of(args) -> dict:
    return {"grid": {"preset": args.preset, "n_pairs": args.n_pairs, "max_steps": args.steps, "early_stop": False,
                     "seed": list(range(args.cells))},
            "sweep": {"analyze": args.analyze, "max_pairs": args.max_pairs}}


def run_sequential(grid: dict, out: Path, threads: int) -> float:
    import torch

    from revinterp import sweep

    g = sweep.Grid.from_mapping(grid)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for cell in g.cells():
            sweep.run_cell(cell, out / sweep.RUNS_DIR / cell.name, analyze=g.analyze, max_pairs=g.max_pairs)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)


def identical(a: Path, b: Path, names: list[str]) -> bool:
    from revinterp import sweep

    return all((a / sweep.RUNS_DIR / n / f).read_bytes() == (b / sweep.RUNS_DIR / n / f).read_bytes()
               for n in names for f in ("behaviour.json", "model.safetensors"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=8, help="cells (seeds) in the grid (default 8)")
    parser.add_argument("--preset", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--n-pairs", type=int, default=200, help="pairs of the seed experiment (default 200)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per cell (default 400)")
    parser.add_argument("--analyze", action="store_true", help="also run the analyses in every cell")
    parser.add_argument("--max-pairs", type=int, default=50, help="prompt pairs per split with --analyze")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the sequential runs (default 1)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default all cores)")
    parser.add_argument("--quick", action="store_true", help="4 cells of 20 pairs and 30 steps: a check that it runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.n_pairs, args.steps, args.preset = 4, 20, 30, "tiny"
    if args.cells < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--cells, --steps and --threads must be positive")

    import ray

    from revinterp import sweep

    grid = grid_of(args)
    names = [c.name for c in sweep.Grid.from_mapping(grid).cells()]
    figures = {
        "grid": grid, "cells": args.cells, "preset": args.preset, "n_pairs": args.n_pairs, "steps": args.steps,
        "analyze": args.analyze, "quick": args.quick, "sequential_threads": args.threads,
        "ray_version": package_version("ray"), "torch_version": package_version("torch"),
        "revinterp_version": package_version("revinterp"), "python_version": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load_average(),
    }
    print(f"revinterp sweep benchmark: {args.cells} cells, preset {args.preset!r}, seed_experiment({args.n_pairs}), "
          f"{args.steps} steps each{', analysed' if args.analyze else ', behaviour only'}; {os.cpu_count()} CPUs, "
          f"ray {figures['ray_version']}, load average {figures['load_average_1min_at_start']}")
    if (figures["load_average_1min_at_start"] or 0) > 0.5:
        print("note: the machine is busy: other processes lower and scatter every figure; rerun when it is idle")
    with tempfile.TemporaryDirectory(prefix="revinterp-bench-sweep-") as tmp:
        tmp = Path(tmp)
        figures["sequential_seconds"] = run_sequential(grid, tmp / "sequential", args.threads)
        print(f"  sequential, one process, {args.threads} thread(s): {figures['sequential_seconds']:8.1f} s")
        if ray.is_initialized():
            ray.shutdown()
        start = time.perf_counter()
        sweep.connect(num_cpus=args.num_cpus)
        figures["ray_start_seconds"] = time.perf_counter() - start
        figures["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        try:
            start = time.perf_counter()
            result = sweep.run_sweep(grid, tmp / "sweep", progress=False)
            figures["sweep_seconds"] = time.perf_counter() - start
        finally:
            ray.shutdown()
        figures["failed"] = {name: s.error for name, s in result.failed.items()}
        figures["cell_seconds"] = {name: s.seconds for name, s in result.status.items()}
        figures["identical"] = not figures["failed"] and identical(tmp / "sequential", tmp / "sweep", names)
    figures["speedup"] = figures["sequential_seconds"] / figures["sweep_seconds"]
    figures["speedup_with_start"] = figures["sequential_seconds"] / (figures["sweep_seconds"]
                                                                     + figures["ray_start_seconds"])
    figures["load_average_1min_at_end"] = load_average()
    print(f"  Ray start-up (ray.init, {figures['ray_cpus']} CPUs):        {figures['ray_start_seconds']:8.1f} s")
    print(f"  sweep on Ray (workers' start included):     {figures['sweep_seconds']:8.1f} s   "
          f"cells: " + ", ".join(f"{s:.1f}" for s in figures["cell_seconds"].values() if s is not None))
    print(f"  speedup sequential / sweep:                 {figures['speedup']:8.2f}x   "
          f"(with Ray's start-up: {figures['speedup_with_start']:.2f}x)")
    print(f"  results identical (behaviour.json, model.safetensors): {figures['identical']}"
          + (f"; failed: {figures['failed']}" if figures["failed"] else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if figures["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
