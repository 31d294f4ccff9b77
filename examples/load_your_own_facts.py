"""Train and evaluate on your own facts: a CSV (or JSONL) file with columns subject, relation, object, inverse.

    python examples/load_your_own_facts.py [FILE] [--out RUN_DIR]

FILE defaults to examples/family.csv. Without --out the run goes to a temporary directory.
"""

import argparse
import tempfile
from pathlib import Path

from revinterp.data import FactFileError, load_fact_file
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("file", type=Path, nargs="?", default=Path(__file__).parent / "family.csv")
parser.add_argument("--out", type=Path, help="run directory to create (default: a temporary one)")
args = parser.parse_args()

try:
    facts = load_fact_file(args.file, seed=0)
except FactFileError as error:
    raise SystemExit(f"error: {error}") from None
print(f"{args.file}: {len(facts.statements)} statements, relations {sorted(facts.relations)}")
with tempfile.TemporaryDirectory() as tmp:
    run_dir = args.out or Path(tmp) / "run"
    result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, device="cpu", progress=False)
    print(f"run {run_dir}: {result.steps} steps, {'fitted' if result.fitted else 'NOT fitted'}")
    print(evaluate(result.model, facts).summary())
