"""Scale: cost of every stage against the number of facts, from 200 to 100,000 pairs, on one thread.

For each size (seed-experiment pairs: 200, 2,000, 20,000, 100,000; ``--max-pairs`` stops earlier), in a fresh
interpreter (so that peak memory is the size's own), on one torch thread, the ``default`` architecture:

====================  ===================================================================================
generate              ``seed_experiment(n)``
encode                ``tokenizer_for`` + ``encode_statements`` of every statement (O(1) token lookups)
prompt_pairs          ``make_prompt_pairs(facts, "forward_seen", ...)`` of every forward-seen statement
train_steps           ``--train-steps`` training steps (batch 64, answer-only loss, AdamW) through
                      ``revinterp.training.plain_model``: the softmax over the vocabulary is facts x vocab
training_evaluation   ``revinterp.evaluation.answer_scores`` of every trained statement (training's fit check)
evaluate              ``revinterp.evaluation.evaluate`` of every split (full-vocabulary candidate scores)
sweep                 the exact patching sweep (``patch_sweeps``, logit difference, every site of
                      ``SWEEP_COMPONENTS``) of every forward-seen prompt pair
attribution           ``attribution_patch_components`` of the same pairs
dla                   ``direct_logit_attribution`` of ``--analysis-pairs`` pairs, as the pipeline bounds it
====================  ===================================================================================

Per stage: wall and CPU seconds (``time.process_time``), analytic FLOPs (multiply-adds x 2 of the matrix
products: per token and block ``2 (4 d^2 + 2 d d_mlp) + 4 n_ctx d``, the unembedding ``2 d V`` per unembedded
position (evaluation unembeds the answer position only: the training check one forward, ``evaluate`` a
teacher-forced and a candidate forward per statement), a backward twice a forward; the sweep counts one tail
forward per site and pair, the readout ``4 d``),
the achieved FLOP rate, and the peak RSS during the stage (sampled every 5 ms from ``/proc/self/statm``); every
stage is run once untimed on 12 pairs first (first calls import and initialise lazily); the cheap stages
(generate, encode, prompt_pairs) keep the least CPU of ``--repeats`` runs. Between
successive sizes, the growth exponent ``log(cpu_2 / cpu_1) / log(n_2 / n_1)`` of each stage. The model is
untrained (its weights do not change the cost).

    python benchmarks/scale.py --max-pairs 20000 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIZES = (200, 2_000, 20_000, 100_000)
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


QUIET = []  # non-empty while warming up: stages are measured but not printed


class Stage:
    """Wall, CPU and the peak RSS (sampled) of one block of work."""

    def __init__(self, name: str, figures: dict, flops: float | None = None, silent: bool = False):
        self.name, self.figures, self.flops, self.silent = name, figures, flops, silent

    def __enter__(self):
        self.peak, self.running = rss_bytes(), True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        cpu, wall = time.process_time() - self.cpu, time.perf_counter() - self.wall
        self.running = False
        self.sampler.join()
        self.figures[self.name] = {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_bytes": self.peak,
                                   "flops": self.flops,
                                   "gflop_per_cpu_second": None if self.flops is None else self.flops / cpu / 1e9}
        if not (QUIET or self.silent):
            print_stage(self.name, self.figures[self.name])


def print_stage(name: str, f: dict) -> None:
    print(f"  {name:<20} {f['wall_seconds']:8.2f} s wall {f['cpu_seconds']:8.2f} s CPU  peak RSS "
          f"{f['peak_rss_bytes'] / 2**30:6.2f} GiB"
          + ("" if f["flops"] is None
             else f"  {f['flops'] / 1e9:10.1f} GFLOP  {f['gflop_per_cpu_second']:6.1f} GFLOP/s")
          + (f"  (least of {f['repeats']})" if f.get("repeats", 1) > 1 else ""), flush=True)


def least_of(repeats: int, name: str, figures: dict, work):
    """``work()`` run ``repeats`` times, keeping the figures of the run that took the least CPU (as ``timeit`` advises:
    the minimum is the run least disturbed by the rest of the machine; the cheap stages take tens of milliseconds at
    2,000 pairs, where one disturbance would move a growth exponent by a tenth). Returns the last run's result."""
    best = None
    for _ in range(repeats):
        trial: dict = {}
        with Stage(name, trial, silent=True):
            result = work()
        if best is None or trial[name]["cpu_seconds"] < best["cpu_seconds"]:
            best = trial[name]
    figures[name] = {**best, "repeats": repeats}
    if not QUIET:
        print_stage(name, figures[name])
    return result


def measure_size(n_pairs: int, train_steps: int, analysis_pairs: int, stages: set[str], repeats: int = 1) -> dict:
    import torch

    torch.set_num_threads(1)
    from revinterp.analysis.attribution_patching import attribution_patch_components
    from revinterp.analysis.dla import direct_logit_attribution
    from revinterp.analysis.patching import patch_sweeps
    from revinterp.analysis.prompts import make_prompt_pairs
    from revinterp.analysis.sites import SWEEP_COMPONENTS
    from revinterp.data import encode_statements, seed_experiment
    from revinterp.evaluation import answer_scores, evaluate
    from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for
    from revinterp.training import TrainingConfig, batch_loss, plain_model

    figures: dict = {}
    facts = least_of(repeats, "generate", figures, lambda: seed_experiment(n_pairs))

    def encode():
        tokenizer = tokenizer_for(facts)
        return tokenizer, encode_statements(facts, facts.statements, tokenizer)

    tokenizer, encoded = least_of(repeats, "encode", figures, encode)
    config = config_for_data(MODEL_PRESETS["default"], facts, tokenizer)
    d, d_mlp, V, ctx, L = config.d_model, config.d_mlp, config.d_vocab, config.n_ctx, config.n_layers
    block = L * (2 * (4 * d * d + 2 * d * d_mlp) + 4 * ctx * d)  # FLOPs per token through the blocks
    seq = encoded.tokens.shape[1]
    pairs = least_of(repeats, "prompt_pairs", figures, lambda: make_prompt_pairs(facts, "forward_seen", tokenizer))
    model = build_model(config, tokenizer, "cpu")
    train_data = encode_statements(facts, facts.train, tokenizer)
    if "train_steps" in stages:
        training = TrainingConfig()
        plain = plain_model(model.train())
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, foreach=True)
        batches = [train_data.select(torch.randint(len(train_data), (64,), generator=torch.Generator()
                                                   .manual_seed(i))) for i in range(train_steps)]
        with Stage("train_steps", figures, flops=3 * train_steps * 64 * seq * (block + 2 * d * V)):
            for batch in batches:
                loss = batch_loss(plain, batch, "answer")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    if "training_evaluation" in stages:
        with torch.no_grad(), Stage("training_evaluation", figures,
                                    flops=len(train_data) * (seq * block + 2 * d * V)):
            answer_scores(plain_model(model), train_data, vocab_size=V)
    if "evaluate" in stages:
        # the teacher-forced pass (every position through the blocks) and the candidate pass (the prompt's), each
        # unembedding the answer position only
        with torch.no_grad(), Stage("evaluate", figures,
                                    flops=len(encoded) * ((2 * seq - 1) * block + 2 * 2 * d * V)):
            evaluate(model, facts)
    n_sites = sum(L * pairs.clean.shape[1] * (config.n_heads if c == "head_out_by_pos" else 1)
                  for c in SWEEP_COMPONENTS)
    if "sweep" in stages:
        with Stage("sweep", figures, flops=len(pairs) * (2 * pairs.clean.shape[1] * (block + 4 * d)
                                                         + n_sites * (block / L + 4 * d))):
            patch_sweeps(model, pairs, SWEEP_COMPONENTS, metric="logit_diff")
    if "attribution" in stages:
        with Stage("attribution", figures, flops=len(pairs) * pairs.clean.shape[1] * 4 * block):
            attribution_patch_components(model, pairs)
    if "dla" in stages:
        bounded = pairs.select(list(range(min(analysis_pairs, len(pairs)))))
        with Stage("dla", figures, flops=len(bounded) * bounded.clean.shape[1] * (block + 2 * d * V)):
            direct_logit_attribution(model, bounded)
    return {"n_pairs": n_pairs, "n_statements": len(facts.statements), "n_trained": len(train_data),
            "d_vocab": V, "n_prompt_pairs": len(pairs), "n_sweep_sites": n_sites, "stages": figures}


STAGES = ("generate", "encode", "prompt_pairs", "train_steps", "training_evaluation", "evaluate", "sweep",
          "attribution", "dla")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pairs", type=int, default=SIZES[-1], help="stop after this size (default 100000)")
    parser.add_argument("--train-steps", type=int, default=20, help="training steps timed per size (default 20)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each cheap stage (generate, encode, prompt_pairs), least CPU kept (default 5)")
    parser.add_argument("--analysis-pairs", type=int, default=200,
                        help="prompt pairs of the DLA stage, as the pipeline's --max-pairs (default 200)")
    parser.add_argument("--skip", nargs="*", default=[], choices=STAGES, help="stages to leave out")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected at least 1 run of each cheap stage")
    stages = set(STAGES) - set(args.skip)
    if args.one is not None:
        QUIET.append(True)  # first calls import and initialise lazily: warm every stage up on a tiny fact set
        measure_size(12, 2, 4, stages)
        QUIET.clear()
        print("SCALE-JSON " + json.dumps(measure_size(args.one, args.train_steps, args.analysis_pairs, stages,
                                                              args.repeats)))
        return 0
    sizes = [n for n in SIZES if n <= args.max_pairs]
    if not sizes:
        parser.error(f"--max-pairs {args.max_pairs}: expected at least {SIZES[0]}")
    load = os.getloadavg()[0]
    print(f"scale benchmark: sizes {sizes}, one torch thread, load average at start {load:.1f}")
    results = []
    for n in sizes:
        print(f"{n:,} pairs:", flush=True)
        command = [sys.executable, __file__, "--one", str(n), "--train-steps", str(args.train_steps),
                   "--analysis-pairs", str(args.analysis_pairs), "--repeats", str(args.repeats), "--skip", *args.skip]
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(command, stdout=out, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            out.seek(0)
            text = out.read()
        print("".join(line + "\n" for line in text.splitlines() if not line.startswith("SCALE-JSON")), end="")
        if proc.returncode != 0:
            print(f"  the {n:,}-pair run failed (exit {proc.returncode}; killed for memory?); stopping here")
            break
        results.append(json.loads(text.split("SCALE-JSON ", 1)[1]))
    growth = []
    for a, b in zip(results, results[1:]):
        ratio = math.log(b["n_pairs"] / a["n_pairs"])
        growth.append({"from": a["n_pairs"], "to": b["n_pairs"], "cpu_exponent": {
            name: math.log(b["stages"][name]["cpu_seconds"] / a["stages"][name]["cpu_seconds"]) / ratio
            for name in a["stages"] if name in b["stages"] and a["stages"][name]["cpu_seconds"] > 0}})
    if growth:
        print("growth exponent of CPU time between successive sizes:")
        names = list(results[0]["stages"])
        print(f"  {'':<14}" + "".join(f"{name[:13]:>14}" for name in names))
        for g in growth:
            print(f"  {g['from']:>6}->{g['to']:<7}" + "".join(
                f"{g['cpu_exponent'].get(name, float('nan')):14.2f}" for name in names))
    figures = {"sizes": [r["n_pairs"] for r in results], "load_average_1min_at_start": load, "repeats": args.repeats,
               "load_average_1min_at_end": os.getloadavg()[0], "train_steps": args.train_steps,
               "analysis_pairs": args.analysis_pairs, "results": results, "growth": growth}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
