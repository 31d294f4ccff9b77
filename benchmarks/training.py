"""Training-speed benchmark: the TransformerBridge against the plain model it wraps, and one end-to-end fit.

Measures, in one process, on one device:

1. **Training throughput** (steps/s) of the project's own training step, ``revinterp.training.batch_loss``
   (answer-only cross-entropy) followed by ``zero_grad``, ``backward``, an AdamW step (``TrainingConfig``
   defaults: lr 0.01, weight decay 0.01, betas (0.9, 0.999)) and ``loss.item()``, as
   ``revinterp.training.train`` does each step. Data: ``seed_experiment(200)`` train statements, batches of
   64 rows drawn from per-epoch shuffles (prepared before timing, the same batches for both models).
   Two models of the ``default`` preset (2 layers, d_model 128, 4 heads, d_mlp 512):

   - *bridge*: ``revinterp.models.build_model`` (a TransformerLens 4 ``TransformerBridge.boot_native``);
   - *plain*: TransformerLens's own ``NativeModel`` (the plain ``nn.Module`` that ``boot_native`` wraps:
     embeddings, pre-LN blocks, final LN, unembed), initialised the same way, so the two start with the
     same weights and compute the same logits (checked; the difference is printed). The ratio therefore
     isolates what the bridge's wrapping and hooks cost.

   Each model gets ``--warmup`` untimed steps, then ``--repeats`` timed runs of ``--steps`` steps,
   alternating bridge and plain; the figure is the median run (the best run is reported too: on a shared
   machine, other processes' load lowers some runs). Everything runs on one torch thread (``--threads``).

2. **Time to fit** the ``default`` preset end to end: ``revinterp.training.train(facts,
   MODEL_PRESETS["default"], TRAINING_PRESETS["default"], <temp dir>, progress=False)``, including model
   boot, periodic evaluation and checkpoint writes. Reports CPU and wall seconds, the steps to the stop and
   whether the run was fitted.

3. With ``--against-seed-recipe``: time to fit against the seed paper's recipe
   (:mod:`revinterp.baselines.seed_recipe`: HF-GPT-2-like model at 2 layers, d 128, 4 heads, lr 0.01, batch 64,
   its loop, re-implemented in plain PyTorch; its docstring names what differs), on the same facts, alternating
   the two ``--fit-repeats`` times in this process; the figure is the median CPU seconds of each and their ratio
   (goal <= 0.5). Both fits run in a warm process: the one-time imports are measured apart, each in a fresh
   interpreter (``transformer_lens.model_bridge``, which revinterp's model needs, against
   ``transformers.models.gpt2.modeling_gpt2``, which the seed code imports), and reported beside the ratio.

Run from the repository root (venv active)::

    python benchmarks/training.py                      # device: revinterp.models.default_device()
    python benchmarks/training.py --device cpu --repeats 7 --steps 100 --json bench.json
    python benchmarks/training.py --against-seed-recipe --fit-repeats 3 --json bench.json

``--json PATH`` also writes every figure, with the machine (torch and TransformerLens versions, threads,
device), as one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from revinterp.data import encode_statements, seed_experiment
from revinterp.models import MODEL_PRESETS, build_model, config_for_data, default_device, tokenizer_for
from revinterp.training import TRAINING_PRESETS, TrainingConfig, batch_loss, train

N_PAIRS = 200
BATCH_SIZE = 64
PRESET = "default"


def plain_model(config, device: torch.device) -> torch.nn.Module:
    """TransformerLens's plain ``NativeModel`` for ``config``, initialised exactly as ``boot_native`` does."""
    from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

    cfg = copy.deepcopy(config.bridge_config())  # NativeModel writes resolved defaults back into its cfg
    with torch.random.fork_rng(devices=[]):
        model = NativeModel(cfg)
        initialize_native_model(model, cfg)
    return model.to(device).train()


def make_batches(data, n_batches: int, batch_size: int, device: torch.device) -> list:
    """``n_batches`` full batches, taken in order from successive seeded shuffles (as ``train`` draws them)."""
    n = len(data)
    if n < batch_size:
        raise ValueError(f"{n} training statements: fewer than one batch of {batch_size}")
    per_epoch = n // batch_size
    batches = []
    epoch = 0
    while len(batches) < n_batches:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(per_epoch):
            batches.append(data.select(order[i * batch_size:(i + 1) * batch_size]).to(device))
        epoch += 1
    return batches[:n_batches]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One model with its AdamW optimizer, stepping through a fixed cycle of batches."""

    def __init__(self, model: torch.nn.Module, training: TrainingConfig, batches: list, device: torch.device):
        self.model = model
        self.training = training
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=training.lr, betas=training.betas, weight_decay=training.weight_decay,
        )
        self.batches = batches
        self.device = device
        self.i = 0
        self.last_loss = float("nan")

    def run(self, steps: int) -> float:
        """Take ``steps`` training steps; returns their wall seconds."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
            loss = batch_loss(self.model, batch, self.training.loss)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.last_loss = loss.item()
        synchronize(self.device)
        return time.perf_counter() - start


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the CPU skew every figure)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def warn_if_busy(load: float | None) -> None:
    if load is not None and load > 0.5:
        print(f"note: the machine is busy (load average {load:.1f}): other processes lower and scatter every "
              "figure; compare the best runs, or rerun when it is idle")


def machine(device: torch.device) -> dict:
    info = {
        "torch_version": torch.__version__,
        "transformer_lens_version": package_version("transformer-lens"),
        "revinterp_version": package_version("revinterp"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1min_at_start": load_average(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def measure_throughput(device: torch.device, repeats: int, steps: int, warmup: int) -> dict:
    facts = seed_experiment(N_PAIRS)
    tokenizer = tokenizer_for(facts)
    config = config_for_data(MODEL_PRESETS[PRESET], facts, tokenizer)
    training = TrainingConfig()
    data = encode_statements(facts, facts.train, tokenizer)
    batches = make_batches(data, n_batches=64, batch_size=BATCH_SIZE, device=device)

    bridge = build_model(config, tokenizer, device)
    bridge.train()
    plain = plain_model(config, device)
    with torch.no_grad():
        probe = batches[0].tokens
        logit_diff = (bridge(probe) - plain(probe)).abs().max().item()
    n_params = sum(p.numel() for p in bridge.parameters())
    if n_params != sum(p.numel() for p in plain.parameters()):
        raise RuntimeError("the bridge and the plain model have different parameter counts")

    steppers = {"bridge": Stepper(bridge, training, batches, device),
                "plain": Stepper(plain, training, batches, device)}
    for stepper in steppers.values():
        stepper.run(warmup)
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            rates[name].append(steps / stepper.run(steps))

    bridge_rate, plain_rate = statistics.median(rates["bridge"]), statistics.median(rates["plain"])
    return {
        "bridge_steps_per_s": bridge_rate,
        "plain_steps_per_s": plain_rate,
        "ratio": bridge_rate / plain_rate,
        "bridge_best_steps_per_s": max(rates["bridge"]),
        "plain_best_steps_per_s": max(rates["plain"]),
        "best_ratio": max(rates["bridge"]) / max(rates["plain"]),
        "bridge_runs_steps_per_s": rates["bridge"],
        "plain_runs_steps_per_s": rates["plain"],
        "plain_model": "transformer_lens NativeModel",
        "initial_max_abs_logit_diff": logit_diff,
        "final_loss": {name: s.last_loss for name, s in steppers.items()},
        "n_params": n_params,
        "n_train_statements": len(data),
        "seq_len": data.tokens.shape[1],
        "d_vocab": config.d_vocab,
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
    }


def measure_fit(device: torch.device) -> dict:
    facts = seed_experiment(N_PAIRS)
    with tempfile.TemporaryDirectory(prefix="revinterp-bench-") as tmp:
        synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = train(facts, MODEL_PRESETS[PRESET], TRAINING_PRESETS[PRESET], Path(tmp) / "run",
                       device=device, progress=False)
        synchronize(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "fit_seconds": seconds,
        "fit_cpu_seconds": cpu,
        "fit_steps": result.steps,
        "fitted": result.fitted,
        "fit_max_steps": TRAINING_PRESETS[PRESET].max_steps,
        "fit_steps_per_s": result.steps / seconds,
    }


def import_cpu_seconds(module: str) -> float:
    """CPU seconds of ``import module`` in a fresh interpreter (less the bare interpreter's start-up)."""
    def cpu(code: str) -> float:
        out = subprocess.run([sys.executable, "-c", f"import time\n{code}\nprint(time.process_time())"],
                             check=True, capture_output=True, text=True).stdout
        return float(out.split()[-1])

    return cpu(f"import {module}") - cpu("pass")


def measure_against_seed_recipe(device: torch.device, repeats: int) -> dict:
    from revinterp.baselines.seed_recipe import SeedRecipe, train_seed_recipe

    recipe = SeedRecipe()
    if (recipe.n_layers, recipe.d_model, recipe.n_heads) != (MODEL_PRESETS[PRESET].n_layers,
                                                              MODEL_PRESETS[PRESET].d_model,
                                                              MODEL_PRESETS[PRESET].n_heads):
        raise RuntimeError("the seed recipe and the preset must have the same architecture")
    runs = {"revinterp": [], "seed_recipe": []}
    for _ in range(repeats):
        runs["revinterp"].append(measure_fit(device))
        seed = train_seed_recipe(seed_experiment(N_PAIRS), recipe, device=device)
        runs["seed_recipe"].append({"fit_cpu_seconds": seed.cpu_seconds, "fit_seconds": seed.wall_seconds,
                                    "fit_steps": seed.steps, "fit_epochs": seed.epochs, "fitted": seed.fitted})
    cpu = {name: statistics.median(r["fit_cpu_seconds"] for r in rs) for name, rs in runs.items()}
    imports = {"revinterp": import_cpu_seconds("transformer_lens.model_bridge"),
               "seed_recipe": import_cpu_seconds("transformers.models.gpt2.modeling_gpt2")}
    return {
        "seed_recipe": {"n_layers": recipe.n_layers, "d_model": recipe.d_model, "n_heads": recipe.n_heads,
                        "lr": recipe.lr, "batch_size": recipe.batch_size, "dropout": recipe.dropout},
        "fit_runs": runs,
        "fit_cpu_seconds_median": cpu,
        "fit_steps": {name: [r["fit_steps"] for r in rs] for name, rs in runs.items()},
        "ms_cpu_per_step": {name: 1000 * cpu[name] / statistics.median(r["fit_steps"] for r in rs)
                            for name, rs in runs.items()},
        "time_to_fit_ratio": cpu["revinterp"] / cpu["seed_recipe"],
        "import_cpu_seconds": imports,
        "time_to_fit_ratio_with_imports": (cpu["revinterp"] + imports["revinterp"])
        / (cpu["seed_recipe"] + imports["seed_recipe"]),
        "fit_repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model; the median is reported")
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per model before timing")
    parser.add_argument("--device", help="torch device (default: revinterp.models.default_device())")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--against-seed-recipe", action="store_true",
                        help="also time the fit against the seed paper's recipe re-implemented in plain PyTorch")
    parser.add_argument("--fit-repeats", type=int, default=3, help="fits of each with --against-seed-recipe")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.fit_repeats < 1:
        parser.error("--repeats, --steps, --threads and --fit-repeats must be positive, --warmup non-negative")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()

    figures = {"preset": PRESET, "n_pairs": N_PAIRS, **machine(device)}
    print(f"revinterp training benchmark: preset {PRESET!r}, seed_experiment({N_PAIRS}), device {device}, "
          f"torch {figures['torch_version']}, transformer-lens {figures['transformer_lens_version']}, "
          f"{figures['threads']} threads, {figures['cpu_count']} CPUs, "
          f"load average {figures['load_average_1min_at_start']}")
    warn_if_busy(figures["load_average_1min_at_start"])

    figures.update(measure_throughput(device, args.repeats, args.steps, args.warmup))
    print(f"\nthroughput: batch {BATCH_SIZE}, seq {figures['seq_len']}, vocab {figures['d_vocab']}, "
          f"{figures['n_params']:,} params; median of {args.repeats} x {args.steps} steps "
          f"after {args.warmup} warm-up")
    print(f"  bridge (TransformerBridge.boot_native)   {figures['bridge_steps_per_s']:8.1f} steps/s   runs: "
          + ", ".join(f"{r:.1f}" for r in figures["bridge_runs_steps_per_s"]))
    print(f"  plain  (transformer_lens NativeModel)    {figures['plain_steps_per_s']:8.1f} steps/s   runs: "
          + ", ".join(f"{r:.1f}" for r in figures["plain_runs_steps_per_s"]))
    print(f"  ratio bridge / plain                     {figures['ratio']:8.3f}"
          f"   (best run of each: {figures['best_ratio']:.3f}; "
          f"initial logits differ by at most {figures['initial_max_abs_logit_diff']:.1e})")

    figures.update(measure_fit(device))
    figures["load_average_1min_at_end"] = load_average()
    print(f"\nfit: train(seed_experiment({N_PAIRS}), MODEL_PRESETS[{PRESET!r}], TRAINING_PRESETS[{PRESET!r}])")
    print(f"  {figures['fit_seconds']:.1f} s wall, {figures['fit_cpu_seconds']:.1f} s CPU, "
          f"{figures['fit_steps']} of {figures['fit_max_steps']} steps "
          f"({figures['fit_steps_per_s']:.1f} steps/s with evaluation and checkpoints), "
          f"fitted: {figures['fitted']}")
    print(f"  load average at the end: {figures['load_average_1min_at_end']} (this benchmark included)")

    if args.against_seed_recipe:
        seed = measure_against_seed_recipe(device, args.fit_repeats)
        figures["against_seed_recipe"] = seed
        cpu, steps, per_step = seed["fit_cpu_seconds_median"], seed["fit_steps"], seed["ms_cpu_per_step"]
        print(f"\ntime to fit against the seed recipe (revinterp.baselines.seed_recipe), median of "
              f"{args.fit_repeats} alternating fits, warm process:")
        for name in ("revinterp", "seed_recipe"):
            print(f"  {name:<12} {cpu[name]:6.2f} s CPU   steps {steps[name]}   {per_step[name]:.1f} ms CPU/step   "
                  f"one-time import {seed['import_cpu_seconds'][name]:.2f} s CPU")
        print(f"  ratio revinterp / seed recipe: {seed['time_to_fit_ratio']:.2f} (goal <= 0.5); with each one's "
              f"imports: {seed['time_to_fit_ratio_with_imports']:.2f}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
