"""The ``revinterp`` command: train on relational facts, evaluate per split, analyze, report.

Heavy modules (torch, TransformerLens) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

PRESETS = ("tiny", "default", "deep")
DIRECTIONS = ("random", "forward", "reverse")


class DeprecatedAlias(argparse.Action):
    """An option kept under an old name: it warns (FutureWarning, shown by default) and sets the new option."""

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated and will be removed; use --{self.dest.replace('_', '-')} "
                      "(same values)", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


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


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training (override the preset)")
    g.add_argument("--preset", choices=PRESETS, default="default",
                   help="tiny: 1 layer d64 (seconds); default: 2 layers d128 (about a minute); deep: 4 layers d256")
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
                                   "report.html into the run directory. With several --seeds, one run directory "
                                   "per seed and a summary over seeds with bootstrap intervals.")
    add_run_options(r)
    r.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="several seeds: one run per seed under --out (default runs/PRESET), seed-SEED each")
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
                       description="Rebuild RUN_DIR/report.html from RUN_DIR/analysis/ without running a model.")
    p.add_argument("run_dir", type=Path, help="a run directory analysed by 'revinterp analyze' or 'revinterp run'")
    p.add_argument("--json", action="store_true", help="print the report's path as JSON")
    return parser


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


IGNORED_DATA_OPTIONS = {
    "facts": ("n_pairs", "tokens_per_entity", "relations", "template", "shared_tokens"),
    "chain": ("trained_direction", "tokens_per_entity", "relations", "template", "shared_tokens"),
    "graph": ("tokens_per_entity", "shared_tokens"),
}
"""Data options each fact source does not use: given with it, they are an error rather than silently ignored."""


def make_facts(args):
    from revinterp.data import (
        apply_mitigation,
        chain_experiment,
        knowledge_graph,
        load_fact_file,
        seed_experiment,
        starvation_cell,
        with_attributes,
    )

    source = "--facts" if args.facts is not None else f"--data {args.data}"
    defaults = vars(build_parser().parse_args(["train"]))
    ignored = [name for name in IGNORED_DATA_OPTIONS.get("facts" if args.facts is not None else args.data, ())
               if getattr(args, name) != defaults[name]]
    if ignored:
        names = ", ".join("--" + n.replace("_", "-") for n in ignored)
        raise ValueError(f"{names} {'is' if len(ignored) == 1 else 'are'} not used by {source}; expected only the "
                         "options that shape that data (see --help)")
    if args.facts is not None:
        facts = load_fact_file(args.facts, both_fraction=args.both_fraction,
                               held_out_direction=args.trained_direction, seed=args.seed,
                               progress=not args.quiet)
    elif args.data == "chain":
        facts = chain_experiment(args.n_pairs, composed_held_out_fraction=1 - args.both_fraction, seed=args.seed)
    elif args.data == "graph":
        facts = knowledge_graph(args.n_pairs, n_relations=max(args.relations, 3), both_fraction=args.both_fraction,
                                held_out_direction=args.trained_direction, template=args.template, seed=args.seed)
    else:
        facts = seed_experiment(
            args.n_pairs, both_fraction=args.both_fraction, held_out_direction=args.trained_direction,
            tokens_per_entity=args.tokens_per_entity, n_relations=args.relations, template=args.template,
            shared_tokens=args.shared_tokens, seed=args.seed,
        )
    if args.attributes and args.feed not in ("subject", "both"):
        facts = with_attributes(facts, n_values=args.attributes, seed=args.seed)
    if args.feed != "none":
        facts = starvation_cell(facts, feed_subject=args.feed in ("subject", "both"),
                                feed_answer=args.feed in ("answer", "both"), n_values=args.attributes or 8,
                                seed=args.seed)
    return facts if args.mitigation == "none" else apply_mitigation(facts, args.mitigation)


def configs(args):
    from dataclasses import replace

    from revinterp.models import MODEL_PRESETS
    from revinterp.training import TRAINING_PRESETS

    model = replace(MODEL_PRESETS[args.preset], seed=args.seed)
    if args.attn_only:
        model = replace(model, attn_only=True)
    if args.positional:
        model = replace(model, positional_embedding_type=args.positional)
    if args.norm:
        model = replace(model, normalization_type=None if args.norm == "none" else args.norm)
    training = replace(TRAINING_PRESETS[args.preset], seed=args.seed)
    overrides = dict(max_steps=args.steps, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                     schedule=args.schedule, loss=args.loss)
    training = replace(training, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_early_stop:
        training = replace(training, early_stop=False)
    return model, training


def show(behaviour, args, header: str, extra: dict | None = None) -> None:
    if args.json:
        print(json.dumps({**behaviour.to_dict(), **(extra or {})}, indent=1))
    else:
        print(header)
        print(behaviour.summary())


def train_and_evaluate(args, seed: int, out: Path):
    from revinterp.pipeline import train_and_evaluate as run_training

    args = argparse.Namespace(**{**vars(args), "seed": seed})
    facts = make_facts(args)
    model_config, training_config = configs(args)
    trained = run_training(facts, model_config, training_config, out, resume=args.resume, device=args.device,
                           progress=not args.quiet)
    status = "fitted" if trained.training.fitted else "NOT fitted (train longer: --steps)"
    return trained.behaviour, f"run {out}: {trained.training.steps} steps, {status}"


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
    from revinterp.evaluation import over_seeds

    root = args.out or Path("runs") / args.preset
    behaviours, reports = [], []
    for seed in seeds:
        behaviour, header = train_and_evaluate(args, seed, root / f"seed-{seed}")
        reports.append(str(analyze_and_report(root / f"seed-{seed}", args)))
        behaviours.append(behaviour)
        if not args.json:
            print(header)
    summary = over_seeds(behaviours)
    if args.json:
        print(json.dumps({"seeds": seeds, "splits": {k: {m: e.to_dict() for m, e in v.items()}
                                                      for k, v in summary.items()}, "reports": reports}, indent=1))
    else:
        print(f"over {len(seeds)} seeds (mean [95% bootstrap CI over seeds]):")
        for split, metrics in summary.items():
            print(f"  {split:<24}" + "  ".join(f"{m} {e}" for m, e in metrics.items()))
        print("reports: " + ", ".join(reports))
    return 0


def cmd_eval(args) -> int:
    from revinterp.evaluation import evaluate
    from revinterp.models import load_run

    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    behaviour = evaluate(run.model, run.facts)
    show(behaviour, args, f"run {args.run_dir}" + (f", checkpoint {args.checkpoint}" if args.checkpoint else ""))
    return 0


def cmd_analyze(args) -> int:
    from revinterp.models import read_model_config

    read_model_config(args.run_dir)  # a clear error for a directory that is not a run
    path = analyze_and_report(args.run_dir, args)
    print(json.dumps({"report": str(path)}) if args.json else f"report: {path}")
    return 0


def cmd_report(args) -> int:
    from revinterp.viz.report import write_report

    path = write_report(args.run_dir)
    print(json.dumps({"report": str(path)}) if args.json else f"report: {path}")
    return 0


def set_threads(args) -> None:
    """One torch thread unless ``--threads`` says otherwise (or the deep preset keeps torch's default)."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: expected at least 1")
    if threads is None and getattr(args, "preset", None) == "deep":
        return
    import torch

    torch.set_num_threads(threads or 1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from revinterp.data import FactFileError, UnknownWordError
    from revinterp.models import CheckpointError

    commands = {"train": cmd_train, "run": cmd_run, "eval": cmd_eval, "analyze": cmd_analyze, "report": cmd_report}
    try:
        set_threads(args)
        return commands[args.command](args)
    except (FactFileError, UnknownWordError, CheckpointError, FileExistsError, ValueError) as e:
        print(f"revinterp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
