"""The ``revinterp`` command: train on relational facts, evaluate per split, analyze, report.

Heavy modules (torch, TransformerLens) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from revinterp.io import json_text

PRESETS = ("tiny", "default", "deep")
DIRECTIONS = ("random", "forward", "reverse")


class DeprecatedAlias(argparse.Action):
    """An option kept under an old name: it warns (FutureWarning, shown by default) and sets the new option."""

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated and will be removed; use --{self.dest.replace('_', '-')} "
                      "(same values)", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def scratch_count(text: str) -> int:
    """``--scratch-tokens K``: a whole number >= 0 (refused while parsing, before any heavy import)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0 (scratch tokens before every "
                                         "answer; 0: none)")
    return int(text)


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (default: the seed experiment of Zhu et al. 2024)")
    g.add_argument("--data", choices=("seed", "chain", "graph"), default="seed",
                   help="generated facts: 'seed' (A_i -> B_i, B_i <- A_i), 'chain' (x -> y, y -> z, x ~> z) or "
                        "'graph' (a random knowledge graph: every entity in several facts)")
    g.add_argument("--facts", type=Path, metavar="FILE",
                   help="read facts from a CSV or JSONL file (columns subject, relation, object, inverse) "
                        "instead of generating them")
    g.add_argument("--n-pairs", type=int, default=200,
                   help="facts to generate (pairs for 'seed', chains for 'chain', entities for 'graph'); default 200")
    g.add_argument("--both-fraction", type=float, default=0.7,
                   help="fraction of facts trained in both directions; the rest are trained one way (default 0.7); "
                        "for 'chain', the fraction of composed facts x ~> z that are trained")
    g.add_argument("--trained-direction", choices=DIRECTIONS, default="random",
                   help="which direction of a one-way fact is trained (the other is held out): chosen at random per "
                        "fact (the seed experiment), always the forward (the reverse is held out), or always the "
                        "reverse")
    g.add_argument("--held-out-direction", choices=DIRECTIONS, dest="trained_direction", action=DeprecatedAlias,
                   default=argparse.SUPPRESS, help="deprecated spelling of --trained-direction (same values)")
    g.add_argument("--tokens-per-entity", type=int, default=1, help="tokens per entity name (default 1)")
    g.add_argument("--relations", type=int, default=1,
                   help="named relations with inverses (parent_of/child_of ...); 1 gives '->' and '<-'; "
                        "'graph' uses at least 3")
    g.add_argument("--template", choices=("symbolic", "natural"), default="symbolic",
                   help="'symbolic' (relation token) or 'natural' (English phrase, e.g. 'is the parent of')")
    g.add_argument("--shared-tokens", action="store_true",
                   help="draw multi-token entities of both alphabets from one token pool (starvation control)")
    g.add_argument("--attributes", type=int, default=0, metavar="N",
                   help="give every entity an unrelated trained fact 'e lives_in c_k' with N shared values "
                        "(starvation control; 0 = off)")
    g.add_argument("--feed", choices=("none", "subject", "answer", "both"), default="none",
                   help="the 2x2 starvation design: feed every entity as an input ('e lives_in c_k', N = --attributes "
                        "or 8 values), as a training target ('h_k has_member e', a fresh subject each), both, or "
                        "none (default)")
    g.add_argument("--mitigation", choices=("none", "reverse_token", "reverse_entity", "permute", "identity_bridge"),
                   default="none",
                   help="add a mitigation's training statements: reverse training by token or by entity "
                        "(Golovneva et al. 2024), semantic-unit permutation (Guo et al. 2024), identity-bridge "
                        "statements 'x r x'; the held-out questions stay the same")
    g.add_argument("--scratch-tokens", type=scratch_count, default=0, metavar="K",
                   help="K tokens '[scratch]' between the relation and the answer of every statement (0 = none, the "
                        "default); with --mitigation they are added after it, to its statements too")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training (override the preset)")
    g.add_argument("--preset", choices=(*PRESETS, "auto"), default="default",
                   help="tiny: 1 layer d64 (seconds); default: 2 layers d128 (about a minute); deep: 4 layers d256; "
                        "auto: sized from the facts (tiny up to 150 trained statements, default up to 2,500, else "
                        "deep; at least 100 epochs of steps)")
    g.add_argument("--attn-only", action="store_true", help="attention-only blocks (no MLPs)")
    g.add_argument("--positional", choices=("standard", "rotary"), help="learned absolute or rotary positions")
    g.add_argument("--norm", choices=("LN", "LNPre", "RMS", "RMSPre", "none"), help="normalization type")
    g.add_argument("--steps", type=int, help="maximum training steps")
    g.add_argument("--lr", type=float, help="AdamW learning rate (seed: 0.01)")
    g.add_argument("--batch-size", type=int, help="batch size (seed: 64)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (torch default 0.01)")
    g.add_argument("--schedule", choices=("constant", "cosine", "linear"), help="learning-rate schedule")
    g.add_argument("--loss", choices=("answer", "sequence"),
                   help="cross-entropy on the answer tokens only (seed) or on the whole sequence")
    g.add_argument("--objective", choices=("next_token", "mlm_u", "masked_causal", "blank_infilling"),
                   help="what is predicted (revinterp.objectives): next token (seed); MLM-U, a uniform masking rate "
                        "with bidirectional attention (Kitouni et al. 2024); a masked entity predicted after the "
                        "rest under causal attention (Coda-Forno et al. 2026); blank infilling (Lv et al. 2023)")
    g.add_argument("--no-early-stop", action="store_true",
                   help="train all steps instead of stopping once every trained split is fitted "
                        "(accuracy 100%% and mean p(answer) >= 0.99)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revinterp",
        description="Train small hooked transformers on relational facts and measure the reversal curse.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and print its behaviour per split",
                       description="Train a model from scratch, write a run directory, and print accuracy per "
                                   "split with 95%% bootstrap intervals beside chance (1/M for M candidates).")
    add_run_options(t)

    r = sub.add_parser("run", help="the whole pipeline: train, evaluate, analyze, write report.html",
                       description="Train (or resume), evaluate, run every analysis and write a self-contained "
                                   "report.html into the run directory. With several --seeds, one run per seed "
                                   "through the sweep engine ('revinterp sweep') and a summary over seeds with "
                                   "every seed's value and a t interval.")
    add_run_options(r)
    r.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="several seeds: a sweep in --out (default runs/PRESET), one run per seed in "
                        "runs/seedSEED-HASH, as Ray tasks on this machine's cores (RAY_ADDRESS: a cluster)")
    r.add_argument("--max-pairs", type=int, default=200, help="prompt pairs per split in the patching analyses")

    e = sub.add_parser("eval", help="evaluate a run directory per split",
                       description="Evaluate a trained run on every split of its facts.")
    e.add_argument("run_dir", type=Path, help="a run directory written by 'revinterp train'")
    e.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint file instead of the final weights")
    add_output_options(e)

    a = sub.add_parser("analyze", help="run the analyses on a trained run and write its report",
                       description="Run every analysis of the report on a trained run (patching, attribution, "
                                   "effective weights, probes, gradients, starvation, dynamics), save them under "
                                   "RUN_DIR/analysis/ and write RUN_DIR/report.html.")
    a.add_argument("run_dir", type=Path, help="a run directory written by 'revinterp train' or 'revinterp run'")
    a.add_argument("--max-pairs", type=int, default=200, help="prompt pairs per split in the patching analyses")
    add_output_options(a)

    p = sub.add_parser("report", help="rebuild report.html from saved analyses (no training, no analysis)",
                       description="Rebuild RUN_DIR/report.html from RUN_DIR/analysis/ without running a model; on "
                                   "the directory of 'revinterp run --seeds' (a sweep), rebuild its table, summary "
                                   "over seeds and report.html.")
    p.add_argument("run_dir", type=Path, help="a run directory analysed by 'revinterp analyze' or 'revinterp run', or "
                                              "the --out of 'revinterp run --seeds'")
    p.add_argument("--json", action="store_true", help="print the report's path as JSON")
    add_sweep_commands(sub)
    return parser


def add_sweep_commands(sub) -> None:
    s = sub.add_parser("sweep", help="a grid of runs as Ray tasks, resumable, gathered into one table and a report",
                       description="Run every cell of a grid (seeds, presets, model, data and training fields) as "
                                   "a Ray task: train, evaluate and, unless --behaviour-only, analyze. Cells are "
                                   "named by the hash of their configuration; a finished cell is reused, an "
                                   "interrupted one resumed, a failed one retried and reported. Writes OUT/table.csv "
                                   "(and .jsonl, .parquet), OUT/summary.json (every seed's value, mean and t "
                                   "interval over seeds) and OUT/sweep_report.html. Exit code 1 when a cell failed.")
    s.add_argument("out", type=Path, help="the sweep directory: new, or one this grid wrote (resumed)")
    s.add_argument("--grid", type=Path, metavar="FILE.toml",
                   help="a TOML grid: [grid] field = value or [values], optional [sweep] analyze, max_pairs, report")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2",
                   help="set a grid field (repeatable; replaces the file's): a fact option (n_pairs, mitigation, "
                        "trained_direction ...), a model or training field (d_model, lr, weight_decay, max_steps ...)")
    s.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="the seed axis (same as --set seed=...)")
    s.add_argument("--preset", nargs="+", choices=PRESETS, help="the preset axis (default: 'default')")
    s.add_argument("--behaviour-only", action="store_true", help="train and evaluate only, no analyses")
    s.add_argument("--max-pairs", type=int, help="prompt pairs per split in the patching analyses (default 200)")
    s.add_argument("--reports", action="store_true", help="also write each run's report.html")
    s.add_argument("--address", help="join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto; default "
                                     "RAY_ADDRESS, else a local cluster of this machine's cores)")
    s.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the local cluster (default: all cores)")
    s.add_argument("--retries", type=int, default=2, help="Ray retries per failed cell (default 2)")
    s.add_argument("--device", help="torch device of the runs (default: cuda if available, else cpu)")
    s.add_argument("--dry-run", action="store_true",
                   help="list the cells, their run directories and an estimated cost; start no Ray, run nothing")
    s.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: time a few training steps of each model here to estimate seconds")
    s.add_argument("--json", action="store_true", help="print the outcome (or the dry run) as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sweep-report", help="rebuild a sweep's table, summary and report (no training)",
                       description="Gather OUT/table.*, OUT/summary.* and OUT/sweep_report.html again from the run "
                                   "directories of a sweep, without running a model.")
    p.add_argument("out", type=Path, help="a sweep directory written by 'revinterp sweep'")
    p.add_argument("--json", action="store_true", help="print the written files as JSON")


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_data_options(p)
    add_model_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the facts, the initial weights and the data order")
    p.add_argument("--out", type=Path, help="run directory to create (default runs/PRESET-seedSEED)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (a finished run is kept as it is); "
                        "without it an existing --out is refused, never overwritten")
    add_output_options(p)


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads (default 1: the tiny and default models are too small to gain from "
                        "more, and threads fighting over busy cores cost several times the CPU; torch's own default "
                        "for --preset deep)")
    p.add_argument("--json", action="store_true", help="print the per-split metrics as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")




def make_facts(args):
    """The fact set the data options describe (through :func:`revinterp.sweep.build_facts`, as a sweep's cells)."""
    from revinterp.sweep import FACT_DEFAULTS, IGNORED_FACT_OPTIONS, build_facts

    source = "--facts" if args.facts is not None else f"--data {args.data}"
    defaults = vars(build_parser().parse_args(["train"]))
    ignored = [name for name in IGNORED_FACT_OPTIONS.get("facts" if args.facts is not None else args.data, ())
               if getattr(args, name) != defaults[name]]
    if ignored:
        names = ", ".join("--" + n.replace("_", "-") for n in ignored)
        raise ValueError(f"{names} {'is' if len(ignored) == 1 else 'are'} not used by {source}; expected only the "
                         "options that shape that data (see --help)")
    return build_facts({name: getattr(args, name) for name in FACT_DEFAULTS}, args.seed, progress=not args.quiet)


def configs(args, facts):
    """The model and training configurations of the preset (``auto``: sized from ``facts``) and the overrides; and
    the sizing rule's text for ``auto`` (else None)."""
    from dataclasses import replace

    from revinterp.models import MODEL_PRESETS
    from revinterp.training import TRAINING_PRESETS, auto_configs

    rule = None
    if args.preset == "auto":
        model, training, rule = auto_configs(facts)
    else:
        model, training = MODEL_PRESETS[args.preset], TRAINING_PRESETS[args.preset]
    model = replace(model, seed=args.seed)
    if args.attn_only:
        model = replace(model, attn_only=True)
    if args.positional:
        model = replace(model, positional_embedding_type=args.positional)
    if args.norm:
        model = replace(model, normalization_type=None if args.norm == "none" else args.norm)
    training = replace(training, seed=args.seed)
    overrides = dict(max_steps=args.steps, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                     schedule=args.schedule, loss=args.loss, objective=args.objective)
    training = replace(training, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_early_stop:
        training = replace(training, early_stop=False)
    return model, training, rule


def show(behaviour, args, header: str, extra: dict | None = None) -> None:
    if args.json:
        print(json_text({**behaviour.to_dict(), **(extra or {})}, indent=1))
    else:
        print(header)
        print(behaviour.summary())


def train_and_evaluate(args, seed: int, out: Path):
    from revinterp.pipeline import train_and_evaluate as run_training
    from revinterp.training import format_guidance

    args = argparse.Namespace(**{**vars(args), "seed": seed})
    facts = make_facts(args)
    model_config, training_config, rule = configs(args, facts)
    trained = run_training(facts, model_config, training_config, out, resume=args.resume, device=args.device,
                           progress=not args.quiet)
    result = trained.training
    if result.guidance is not None:
        print(f"revinterp {args.command}: {format_guidance(result.guidance)}", file=sys.stderr)
    status = "fitted" if result.fitted else "NOT fitted (see the splits that missed and what helps above)"
    header = f"run {out}: {result.steps} steps, {status}"
    return trained.behaviour, header if rule is None else f"{header}\npreset auto: {rule}"


def cmd_train(args) -> int:
    out = args.out or Path("runs") / f"{args.preset}-seed{args.seed}"
    behaviour, header = train_and_evaluate(args, args.seed, out)
    show(behaviour, args, header)
    return 0


def analyze_and_report(run_dir: Path, args) -> Path:
    from revinterp.pipeline import analyze
    from revinterp.results import load_results, skipped_analyses
    from revinterp.viz.report import write_report

    analyze(run_dir, device=args.device, progress=not args.quiet, max_pairs=args.max_pairs)
    path = write_report(run_dir)
    _, stages = load_results(run_dir)
    for analysis, reason in skipped_analyses(stages):
        print(f"revinterp: {analysis} did not run: {reason}", file=sys.stderr)
    return path


def cmd_run(args) -> int:
    seeds = args.seeds or [args.seed]
    if len(seeds) == 1:
        out = args.out or Path("runs") / f"{args.preset}-seed{seeds[0]}"
        behaviour, header = train_and_evaluate(args, seeds[0], out)
        path = analyze_and_report(out, args)
        show(behaviour, args, f"{header}\nreport: {path}", {"report": str(path)})
        return 0
    return run_seeds(args, seeds)


SEED_METRICS = ("accuracy", "mean_rank", "logprob_candidates")


def seed_grid(args, seeds) -> dict:
    """The grid of ``revinterp run --seeds``: this command's options fixed, the seeds the one axis."""
    from revinterp.sweep import FACT_DEFAULTS

    grid = {}
    for name, default in FACT_DEFAULTS.items():
        value = getattr(args, name)
        if value != default:
            grid[name] = str(value) if isinstance(value, Path) else value
    grid["preset"] = args.preset
    if args.attn_only:
        grid["attn_only"] = True
    if args.positional:
        grid["positional_embedding_type"] = args.positional
    if args.norm:
        grid["normalization_type"] = args.norm
    for name, value in (("max_steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                        ("weight_decay", args.weight_decay), ("schedule", args.schedule), ("loss", args.loss),
                        ("objective", args.objective)):
        if value is not None:
            grid[name] = value
    if args.no_early_stop:
        grid["early_stop"] = False
    grid["seed"] = list(seeds)
    return {"grid": grid, "sweep": {"analyze": True, "max_pairs": args.max_pairs, "report": True}}


def run_seeds(args, seeds) -> int:
    """Several seeds through the sweep engine (:mod:`revinterp.sweep`): one cell per seed under ``--out``."""
    from revinterp.results import load_results, skipped_analyses
    from revinterp.sweep import run_sweep

    if args.preset == "auto":
        raise ValueError("--preset auto sizes one run from its facts; with --seeds expected a named preset "
                         f"({', '.join(PRESETS)})")

    root = args.out or Path("runs") / args.preset
    if root.is_dir() and any(root.iterdir()) and not args.resume:
        raise FileExistsError(f"{root} already exists; pass --resume to continue its seeds (finished ones are kept) "
                              "or choose another --out")
    result = run_sweep(seed_grid(args, seeds), root, device=args.device, progress=not args.quiet)
    reports, lines = [], []
    for cell, row in zip(result.cells, result.rows):
        if row["status"] != "done":
            continue
        run_dir = result.run_dir(cell)
        reports.append(str(run_dir / "report.html"))
        lines.append(f"run {run_dir}: {row.get('trained.steps')} steps, "
                     f"{'fitted' if row.get('trained.fitted') else 'NOT fitted (train longer: --steps)'}")
        for analysis, reason in skipped_analyses(load_results(run_dir)[1]):
            print(f"revinterp: {run_dir.name}: {analysis} did not run: {reason}", file=sys.stderr)
    figures = result.summary["groups"][0]["figures"] if result.summary["groups"] else {}
    splits: dict = {}
    for column, figure in figures.items():
        kind, split, metric = (column.split(".") + ["", ""])[:3]
        if kind == "behaviour" and metric in SEED_METRICS:
            splits.setdefault(split, {})[metric] = {
                "mean": figure["mean"], "ci_low": figure["low"], "ci_high": figure["high"], "n": figure["n"],
                "values": {str(v["seed"]): v["value"] for v in figure["values"]}}
    for name, cell in result.failed.items():
        print(f"revinterp run: seed run {root / 'runs' / name} failed: {cell.error}", file=sys.stderr)
    if args.json:
        print(json_text({"seeds": seeds, "method": result.summary["method"], "splits": splits, "reports": reports,
                          "sweep": str(result.out_dir), "failed": {k: v.error for k, v in result.failed.items()}},
                         indent=1))
    else:
        print("\n".join(lines))
        print(f"over {len(seeds)} seeds: mean [95% t interval over seeds] (every seed's value):")
        for split, metrics in splits.items():
            print(f"  {split:<24}" + "  ".join(
                f"{m} {e['mean']:.3g} [{fmt(e['ci_low'])}, {fmt(e['ci_high'])}] ("
                + ", ".join(f"{v:.3g}" for v in e["values"].values()) + ")" for m, e in metrics.items()))
        print("reports: " + ", ".join(reports))
        print(f"table: {result.files['table_csv']}, sweep report: {result.files['report']}")
    return 1 if result.failed else 0


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def cmd_sweep(args) -> int:
    from revinterp.sweep import format_plan, grid_from_options, plan, run_sweep

    if args.calibrate and not args.dry_run:
        raise ValueError("--calibrate estimates the cost of a --dry-run; expected it with --dry-run")
    grid = grid_from_options(args.grid, args.set, seeds=args.seeds, presets=args.preset,
                             analyze=False if args.behaviour_only else None, max_pairs=args.max_pairs,
                             report=True if args.reports else None)
    if args.dry_run:
        planned = plan(grid, args.out, calibrate=args.calibrate, num_cpus=args.num_cpus)
        print(json_text(planned, indent=1) if args.json else format_plan(planned))
        return 0
    result = run_sweep(grid, args.out, address=args.address, num_cpus=args.num_cpus, retries=args.retries,
                       device=args.device, progress=not args.quiet)
    for name, cell in result.failed.items():
        print(f"revinterp sweep: cell {name} failed: {cell.error}", file=sys.stderr)
    if args.json:
        print(json_text({"out": str(result.out_dir),
                          "cells": {name: {"status": s.status, "reused": s.reused, "seconds": s.seconds,
                                           "error": s.error} for name, s in result.status.items()},
                          "files": {k: str(v) for k, v in result.files.items()}}, indent=1))
    else:
        done = [s for s in result.status.values() if s.status == "done"]
        print(f"sweep {result.out_dir}: {len(result.status)} cells, {len(done)} done "
              f"({sum(s.reused for s in done)} reused), {len(result.failed)} failed")
        print(f"table: {result.files['table_csv']}\nsummary: {result.files['summary_json']}\n"
              f"report: {result.files['report']}")
    return 1 if result.failed else 0


def cmd_sweep_report(args) -> int:
    from revinterp.sweep import write_results

    files = write_results(args.out).files
    print(json_text({k: str(v) for k, v in files.items()}) if args.json else f"report: {files['report']}")
    return 0


def cmd_eval(args) -> int:
    from revinterp.evaluation import evaluate
    from revinterp.models import load_run
    from revinterp.objectives import query_model
    from revinterp.training import read_training_config

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    objective = read_training_config(args.run_dir).objective  # a masked objective asks through its query
    behaviour = evaluate(query_model(run.model, objective, run.tokenizer), run.facts, tokenizer=run.tokenizer)
    show(behaviour, args, f"run {args.run_dir}" + (f", checkpoint {args.checkpoint}" if args.checkpoint else ""))
    return 0


def cmd_analyze(args) -> int:
    from revinterp.models import read_model_config

    read_model_config(args.run_dir)  # a clear error for a directory that is not a run
    path = analyze_and_report(args.run_dir, args)
    print(json_text({"report": str(path)}) if args.json else f"report: {path}")
    return 0


def cmd_report(args) -> int:
    from revinterp.sweep import SWEEP_FILE, write_results
    from revinterp.viz.report import write_report

    if (args.run_dir / SWEEP_FILE).is_file():  # a sweep (revinterp run --seeds): its table, summary and page
        files = write_results(args.run_dir).files
        print(json_text({k: str(v) for k, v in files.items()}) if args.json else f"report: {files['report']}")
        return 0
    path = write_report(args.run_dir)
    print(json_text({"report": str(path)}) if args.json else f"report: {path}")
    return 0


def check_threads(args) -> None:
    """Refuse ``--threads`` below 1 (before any heavy import, so that the error comes at once)."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: expected at least 1")


def set_threads(args) -> None:
    """One torch thread unless ``--threads`` says otherwise (or the deep preset keeps torch's default)."""
    threads = getattr(args, "threads", None)
    if threads is None and getattr(args, "preset", None) == "deep":
        return
    import torch

    torch.set_num_threads(threads or 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_threads(args)
    except ValueError as e:
        print(f"revinterp {args.command}: error: {e}", file=sys.stderr)
        return 2
    from revinterp.data import FactFileError, UnknownWordError
    from revinterp.models import CheckpointError

    commands = {"train": cmd_train, "run": cmd_run, "eval": cmd_eval, "analyze": cmd_analyze, "report": cmd_report,
                "sweep": cmd_sweep, "sweep-report": cmd_sweep_report}
    try:
        set_threads(args)
        return commands[args.command](args)
    except (FactFileError, UnknownWordError, CheckpointError, OSError, ValueError) as e:
        # ValueError covers NonFiniteError / DivergedRunError (revinterp.models); OSError a path that cannot be
        # read or written (FileExistsError, revinterp.rundir.RunLockedError, PermissionError ...)
        print(f"revinterp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
