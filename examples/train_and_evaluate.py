"""Train the `tiny` model on the seed experiment and print its behaviour per split (the reversal curse).

    python examples/train_and_evaluate.py [--pairs 40] [--seed 0] [--out RUN_DIR]

Without --out the run goes to a temporary directory that is removed at the end.
"""

import argparse
import tempfile
from pathlib import Path

from revinterp.data import seed_experiment
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--pairs", type=int, default=40, help="facts a_i -> b_i to generate (default 40)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", type=Path, help="run directory to create (default: a temporary one)")
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    run_dir = args.out or Path(tmp) / "run"
    facts = seed_experiment(args.pairs, seed=args.seed)
    result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, device="cpu", progress=False)
    print(f"run {run_dir}: {result.steps} steps, {'fitted' if result.fitted else 'NOT fitted'}")
    behaviour = evaluate(result.model, facts)
    print(behaviour.summary())
    held_out = behaviour["reverse_held_out"]
    print(f"held-out reverse accuracy {held_out.accuracy} against chance {held_out.chance_accuracy:.3f}")
