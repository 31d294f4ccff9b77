"""The main job's cost: ``revinterp run`` on the default preset, CPU seconds per stage.

Runs the command in this process (``revinterp.cli.main(["run", "--out", <temp dir>, "--quiet", ...])``, the seed
experiment of 200 pairs at the ``default`` preset, one torch thread as the command sets it) with a CPU clock
(``time.process_time``, this process's user + system time) around each stage:

- ``imports``: the command's heavy imports (torch, TransformerLens's bridge), timed apart before the run;
- ``facts``: ``revinterp.cli.make_facts``; ``training``: ``revinterp.training.train``; ``evaluation``:
  ``revinterp.evaluation.evaluate`` (every call: after training and inside the behaviour stage);
- every analysis stage of ``revinterp.pipeline.analyze`` (``behaviour_stage``, ``forward_stage``, ...), and
  ``report``: ``revinterp.viz.report.write_report``;
- within the stages, the analyses themselves (``patch_sweeps``, ``gradient_step_effects``, ...), listed apart.

Prints the table and the total against the goal (<= 30 s CPU), the wall time and the peak RSS; ``--json PATH``
writes them as one JSON object. The machine's load is printed: other processes inflate wall time, not CPU time
(though a loaded machine's caches still slow the CPU figures somewhat).

    python benchmarks/main_job.py --json main_job.json
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

GOAL_CPU_SECONDS = 30.0
ANALYSES = {  # module -> functions timed inside the stages
    "revinterp.analysis.patching": ("patch_sweeps",),
    "revinterp.analysis.localize": ("localize",),
    "revinterp.analysis.dla": ("direct_logit_attribution",),
    "revinterp.analysis.logit_lens": ("logit_lens",),
    "revinterp.analysis.circuit": ("find_circuit",),
    "revinterp.analysis.interventions": ("compare_splits",),
    "revinterp.analysis.weights": ("effective_weights", "effective_weights_over_training"),
    "revinterp.analysis.probes": ("probe_answer_identity",),
    "revinterp.analysis.interchange": ("subspace_interchange",),
    "revinterp.analysis.gradients": ("gradient_step_effects",),
    "revinterp.analysis.starvation": ("starvation_report",),
    "revinterp.analysis.missing": ("what_is_missing",),
    "revinterp.analysis.dynamics": ("behaviour_dynamics",),
}


class Clock:
    """CPU seconds per label, of the outermost call of each wrapped function (recursion not double counted)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.active: set[str] = set()

    def wrap(self, module, name: str, label: str) -> None:
        original = getattr(module, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if label in self.active:
                return original(*args, **kwargs)
            self.active.add(label)
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.active.discard(label)
                self.seconds[label] = self.seconds.get(label, 0.0) + time.process_time() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(module, name, timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default", help="the preset to run (default: default)")
    parser.add_argument("--n-pairs", type=int, default=200, help="seed-experiment pairs (default 200)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    import torch  # noqa: F401  (timed: the command's heavy imports)
    import transformer_lens.model_bridge  # noqa: F401

    import revinterp.cli as cli
    import revinterp.evaluation
    import revinterp.pipeline as pipeline
    import revinterp.training
    import revinterp.viz.report
    from revinterp.results import STAGES

    imports = time.process_time() - start_cpu
    clock = Clock()
    clock.wrap(cli, "make_facts", "facts")
    clock.wrap(revinterp.training, "train", "training")
    clock.wrap(revinterp.evaluation, "evaluate", "evaluation")
    stages = [f"{name}_stage" for name in STAGES if hasattr(pipeline, f"{name}_stage")]
    for name in stages:
        clock.wrap(pipeline, name, name)
    clock.wrap(revinterp.viz.report, "write_report", "report")
    analyses = []
    for module_name, names in ANALYSES.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                clock.wrap(module, name, name)
                analyses.append(name)

    with tempfile.TemporaryDirectory(prefix="revinterp-main-job-") as tmp:
        code = cli.main(["run", "--preset", args.preset, "--n-pairs", str(args.n_pairs), "--out",
                         str(Path(tmp) / "run"), "--quiet", "--device", "cpu"])
    if code != 0:
        raise SystemExit(f"revinterp run exited {code}")
    total_cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes

    top = {"imports": imports, **{k: clock.seconds.get(k, 0.0) for k in ("facts", "training")}}
    top.update({name: clock.seconds.get(name, 0.0) for name in stages})
    top["report"] = clock.seconds.get("report", 0.0)
    outside_stages = clock.seconds.get("evaluation", 0.0)  # the evaluation after training (not in a stage)
    figures = {
        "command": f"revinterp run --preset {args.preset} --n-pairs {args.n_pairs} --quiet --device cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_start": load,
        "cpu_seconds_total": total_cpu,
        "wall_seconds": wall,
        "peak_rss_bytes": peak_rss,
        "goal_cpu_seconds": GOAL_CPU_SECONDS,
        "stages_cpu_seconds": top,
        "evaluation_cpu_seconds_all_calls": outside_stages,
        "evaluation_calls": clock.calls.get("evaluation", 0),
        "analyses_cpu_seconds": {name: clock.seconds[name] for name in analyses if name in clock.seconds},
        "other_cpu_seconds": total_cpu - sum(top.values()),
    }
    print(f"{figures['command']}: {total_cpu:.1f} s CPU (goal <= {GOAL_CPU_SECONDS:.0f}), {wall:.1f} s wall, "
          f"peak RSS {peak_rss / 2**30:.2f} GiB, {figures['torch_threads']} torch thread(s), load average at "
          f"start {load:.1f}")
    print("CPU seconds per stage:")
    for name, seconds in top.items():
        print(f"  {name:<20} {seconds:7.2f}")
    print(f"  {'(rest)':<20} {figures['other_cpu_seconds']:7.2f}")
    print(f"evaluate(): {outside_stages:.2f} s CPU over {figures['evaluation_calls']} calls (in training's and the "
          "behaviour stage's figures)")
    print("analyses within the stages (CPU seconds):")
    for name, seconds in sorted(figures["analyses_cpu_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<32} {seconds:7.2f}  ({clock.calls[name]} calls)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
