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
   machine, other processes' load lowers some runs). ``torch.set_num_threads`` is left at its default.

2. **Time to fit** the ``default`` preset end to end: ``revinterp.training.train(facts,
   MODEL_PRESETS["default"], TRAINING_PRESETS["default"], <temp dir>, progress=False)``, including model
   boot, periodic evaluation and checkpoint writes. Reports wall seconds, the steps to the stop and
   whether the run was fitted.

Run from the repository root (venv active)::

    python benchmarks/training.py                      # device: revinterp.models.default_device()
    python benchmarks/training.py --device cpu --repeats 7 --steps 100 --json bench.json

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
        start = time.perf_counter()
        result = train(facts, MODEL_PRESETS[PRESET], TRAINING_PRESETS[PRESET], Path(tmp) / "run",
                       device=device, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
    return {
        "fit_seconds": seconds,
        "fit_steps": result.steps,
        "fitted": result.fitted,
        "fit_max_steps": TRAINING_PRESETS[PRESET].max_steps,
        "fit_steps_per_s": result.steps / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model; the median is reported")
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per model before timing")
    parser.add_argument("--device", help="torch device (default: revinterp.models.default_device())")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be positive, --warmup non-negative")
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
    print(f"  {figures['fit_seconds']:.1f} s wall, {figures['fit_steps']} of {figures['fit_max_steps']} steps "
          f"({figures['fit_steps_per_s']:.1f} steps/s with evaluation and checkpoints), "
          f"fitted: {figures['fitted']}")
    print(f"  load average at the end: {figures['load_average_1min_at_end']} (this benchmark included)")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
