"""Train the `tiny` model, run every analysis and write the self-contained HTML report; print its path.

    python examples/open_the_report.py [--out RUN_DIR]

The report (RUN_DIR/report.html) inlines every script and opens offline in any browser. Without --out the run
goes to a new temporary directory, which is kept so the report can be opened.
"""

import argparse
import tempfile
from pathlib import Path

from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS
from revinterp.pipeline import analyze
from revinterp.results import load_results
from revinterp.training import TRAINING_PRESETS, train
from revinterp.viz.report import write_report

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, help="run directory to create (default: a new temporary directory)")
args = parser.parse_args()

run_dir = args.out or Path(tempfile.mkdtemp(prefix="revinterp-report-")) / "run"
train(seed_experiment(40, seed=0), MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, device="cpu",
      progress=False)
analyze(run_dir, device="cpu", progress=False)  # the same as `revinterp analyze RUN_DIR`: analysis/*.json
path = write_report(run_dir)  # reads only the saved results
info, stages = load_results(run_dir)
print(f"{len(stages)} stages: " + "; ".join(f"{name} ({len(stage.figures)} figures)" for name, stage in stages.items()))
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
