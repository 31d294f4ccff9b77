"""Shared helpers of the studies in ``analyses/``: arguments, training runs, intervals, JSON, figures, summaries.

Every study script builds a :class:`Study` from its command line, trains every run it needs at once through
:meth:`Study.train_all` (Ray tasks of :func:`revinterp.sweep.train_cells`, one CPU and one torch thread each, into
the run store shared by the studies, ``analyses/results/_runs/``, not committed: a run of the same facts, model and
training configuration is trained once and reused by every study), and ends with :meth:`Study.finish`, which
writes

- ``<out>/results.json``: one object with the configuration, the seeds, the per-seed numbers and the aggregates
  (each with its 95 % Student's t interval over seeds, :func:`ci`);
- ``<out>/*.png``: the figures (:func:`revinterp.viz.static.save_png` of plotly figures);
- ``<out>/summary.md``: the command that regenerates it, the configuration, the seeds, the figures and the
  findings, every number of which is formatted from the results.

Seeds: seed ``s`` fixes the data (the generator's ``seed``), the initial weights (``ModelConfig.seed``) and the
batch order (``TrainingConfig.seed``), as ``revinterp train --seed s`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from revinterp.models import MODEL_PRESETS, CheckpointError, default_device
from revinterp.stats import Estimate, bootstrap_ci, clopper_pearson, t_interval
from revinterp.training import TRAINING_PRESETS, TrainingConfig, train, versions
from revinterp.viz.static import save_png

ANALYSES = Path(__file__).resolve().parent
RUN_STORE = ANALYSES / "results" / "_runs"
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
QUICK_PRESET = "tiny"
QUICK_MAX_STEPS = 400
TIMING_FILE = "analyses_timing.json"


# == command line =================================================================================
def parser(study: str, description: str) -> argparse.ArgumentParser:
    """The options every study shares: ``--seeds``, ``--out``, ``--preset`` and ``--quick``."""
    p = argparse.ArgumentParser(prog=f"analyses/{study}.py", description=description)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"seeds (default {' '.join(map(str, DEFAULT_SEEDS))}; with --quick "
                        f"{' '.join(map(str, QUICK_SEEDS))})")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default analyses/results/{study})")
    p.add_argument("--preset", default="default", choices=sorted(MODEL_PRESETS),
                   help="model and training preset (default: default)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: the {QUICK_PRESET!r} preset, 2 seeds, small data, runs in a temporary folder")
    p.add_argument("--run-store", type=Path, default=None,
                   help="the run store shared by the studies (default analyses/results/_runs; with --quick "
                        "<out>/_runs)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to train on (HOST:PORT; default RAY_ADDRESS, else a local cluster of every "
                        "core)")
    return p


# == intervals and verdicts =======================================================================
def ci(values: Sequence[float] | torch.Tensor) -> Estimate:
    """Mean over seeds (one value per seed) with Student's 95 % t interval (:func:`revinterp.stats.t_interval`; a
    percentile bootstrap over five seeds under-covers); the interval is NaN with fewer than two finite values."""
    values = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        mean = finite[0] if finite else math.nan
        return Estimate(mean, math.nan, math.nan, len(finite))
    return t_interval(finite)


def est(e: Estimate | dict, digits: int = 3, percent: bool = False) -> str:
    """``"0.957 [0.949, 0.966]"`` (or in percent) from an Estimate or its JSON form."""
    mean, low, high = (e.mean, e.low, e.high) if isinstance(e, Estimate) else (e["mean"], e["ci_low"], e["ci_high"])
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if percent:
        return f"{100 * mean:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{mean:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def exact(k: int, n: int) -> str:
    """``k/n = x % [low, high]`` with the exact Clopper-Pearson interval (:func:`revinterp.stats.clopper_pearson`)."""
    e = clopper_pearson(k, n)
    return f"{k}/{n} = {100 * e.mean:.1f} % [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def versus(e: Estimate | dict, reference: float) -> str:
    """Where an interval lies against a reference value: ``"above"``, ``"below"`` or ``"indistinguishable from"``."""
    low, high = (e.low, e.high) if isinstance(e, Estimate) else (e["ci_low"], e["ci_high"])
    if low > reference:
        return "above"
    if high < reference:
        return "below"
    return "indistinguishable from"


def rank_versus(e: Estimate | dict, chance_rank: float) -> str:
    """A mean rank against the chance rank (higher rank = worse): ``"worse than"``, ``"better than"`` or
    ``"indistinguishable from"``."""
    side = versus(e, chance_rank)
    return {"above": "worse than", "below": "better than"}.get(side, side)


def jsonable(obj):
    """Plain JSON values: Estimates as ``{mean, ci_low, ci_high, n}``, tensors as lists, NaN as null."""
    if isinstance(obj, Estimate):
        return jsonable(obj.to_dict())
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1) + "\n")
    os.replace(tmp, path)


PNG_LIMIT = 150_000  # bytes; larger figures (dense heatmaps) are stored with a 64-colour palette


def shrink_png(path: Path) -> None:
    """Re-save a large PNG with an adaptive 64-colour palette (dense heatmaps compress badly in full colour)."""
    if path.stat().st_size <= PNG_LIMIT:
        return
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    tmp = path.with_name(f".{path.name}.tmp")
    small.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


SEED_INTERVALS = ("Intervals over seeds are 95 % Student's t intervals (`common.ci`) unless marked as over examples or "
                  "exact (Clopper-Pearson).")


# == the study ====================================================================================
@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run a study needs: its name in the study's log, the facts, and the model and training
    configuration (the run's directory in the store is named by the hash of all three, not by ``name``)."""

    name: str
    facts: object  # revinterp.data.FactSet
    model: object  # revinterp.models.ModelConfig
    training: TrainingConfig


class Study:
    """One study's output folder, its runs, its figures and its summary."""

    def __init__(self, name: str, title: str, args: argparse.Namespace):
        torch.set_num_threads(1)  # steadier on a shared 2-core machine
        self.name, self.title, self.args = name, title, args
        self.quick = bool(args.quick)
        self.seeds = tuple(args.seeds) if args.seeds else (QUICK_SEEDS if self.quick else DEFAULT_SEEDS)
        self.preset = QUICK_PRESET if self.quick else args.preset
        default_out = ANALYSES / "results" / name
        self.out = Path(args.out) if args.out else (
            Path(tempfile.mkdtemp(prefix=f"revinterp-{name}-quick-")) if self.quick else default_out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs = self.out / "runs"
        self.store = Path(getattr(args, "run_store", None) or (self.out / "_runs" if self.quick else RUN_STORE))
        self.address = getattr(args, "address", None)
        self.figures: list[tuple[str, str]] = []
        self.run_log: list[dict] = []
        self.started = time.time()
        script = Path(sys.argv[0]).name
        self.command = " ".join(["python", f"analyses/{script}", *map(shlex.quote, sys.argv[1:])])
        self.log(f"{name}: seeds {list(self.seeds)}, preset {self.preset!r}, output {self.out}")

    # -- configuration ---------------------------------------------------------------------------
    def model_config(self, seed: int):
        return dataclasses.replace(MODEL_PRESETS[self.preset], seed=seed)

    def training_config(self, seed: int, **overrides) -> TrainingConfig:
        """The preset's training configuration with ``seed``; ``--quick`` caps the steps at
        :data:`QUICK_MAX_STEPS` (a smoke test need not fit)."""
        config = dataclasses.replace(TRAINING_PRESETS[self.preset], seed=seed, **overrides)
        if self.quick and config.max_steps > QUICK_MAX_STEPS:
            config = dataclasses.replace(config, max_steps=QUICK_MAX_STEPS)
        return config

    def size(self, full: int, quick: int) -> int:
        """A data size: ``full`` normally, ``quick`` with ``--quick``."""
        return quick if self.quick else full

    # -- runs ------------------------------------------------------------------------------------
    def spec(self, name: str, facts, seed: int, *, model_config=None, **training_overrides) -> RunSpec:
        """The run ``name`` on ``facts`` with seed ``seed``: the study's model configuration (or ``model_config``)
        and its training configuration with ``training_overrides`` (as :meth:`train` trains it)."""
        return RunSpec(name, facts, model_config if model_config is not None else self.model_config(seed),
                       self.training_config(seed, **training_overrides))

    def train_all(self, specs: Sequence[RunSpec]) -> list[Path]:
        """Train every run of ``specs`` as Ray tasks in the shared run store (:func:`revinterp.sweep.train_cells`:
        runs of the same facts and configuration, from this study or another, are trained once and reused;
        interrupted ones resume; one CPU and one torch thread per run, so the weights equal those of
        :meth:`train`) and return their run directories, in the order given. Each run is logged as by
        :meth:`train`; a run that fails every attempt raises :class:`revinterp.sweep.CellsFailedError`."""
        from revinterp import sweep
        from revinterp.training import read_history

        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names {sorted({n for n in names if names.count(n) > 1})} are given twice; "
                             "expected one name per run")
        cells = [sweep.fact_set_cell(s.facts, s.model, s.training) for s in specs]
        t0 = time.time()
        self.log(f"  training {len(cells)} runs on Ray in {self.store} ...")
        status = sweep.train_cells(cells, self.store, address=self.address, progress=False)
        run_dirs = []
        for spec, cell in zip(specs, cells):
            run_dir = self.store / sweep.RUNS_DIR / cell.name
            timing = run_dir / TIMING_FILE  # how long the run took to train, kept beside it for later invocations
            reused = status[cell.name].reused
            if not reused:  # a reused run keeps the time its first training recorded (unknown if it recorded none)
                timing.write_text(json.dumps({"train_seconds": round(status[cell.name].seconds, 1), "reused": False}))
            seconds = json.loads(timing.read_text())["train_seconds"] if timing.is_file() else None
            last = read_history(run_dir)[-1]
            self.run_log.append(dict(run=spec.name, seed=spec.training.seed, steps=last["step"],
                                     fitted=bool(last["fitted"]), seconds=None if reused else seconds,
                                     train_seconds=seconds, reused=reused, cell=cell.name))
            run_dirs.append(run_dir)
        n_reused = sum(s.reused for s in status.values())
        self.log(f"  {len(cells)} runs ready ({n_reused} reused) in {time.time() - t0:.0f} s: "
                 + ", ".join(f"{r['run']} {r['steps']} steps{'' if r['fitted'] else ' NOT fitted'}"
                             for r in self.run_log[-len(cells):]))
        return run_dirs

    def on_ray(self, function, calls: Sequence[tuple]) -> list:
        """``[function(*args) for args in calls]``, one Ray task per call (one CPU and one torch thread each; the
        cluster of :meth:`train_all`, or a local one), in the order given. ``function`` travels to the workers by
        value when it is defined in the study's script."""
        import ray

        from revinterp.sweep import connect

        @ray.remote(num_cpus=1)
        def task(*args):
            torch.set_num_threads(1)
            return function(*args)

        if not calls:
            return []
        started = connect(self.address)
        try:
            return ray.get([task.remote(*args) for args in calls])
        finally:
            if started:
                ray.shutdown()

    def analyze_all(self, run_dirs: Sequence[Path]) -> None:
        """Every analysis stage of the pipeline (:func:`revinterp.pipeline.analyze`, the verdict included) of the runs
        not analysed yet, one Ray task each (:meth:`on_ray`)."""
        from revinterp.results import ResultsError, load_results

        def analysed(run_dir: Path) -> bool:
            try:
                load_results(run_dir)
            except ResultsError:
                return False
            return True

        def analyse(run_dir: str) -> None:
            from revinterp.pipeline import analyze

            analyze(run_dir, device="cpu", progress=False)

        todo = [d for d in run_dirs if not analysed(d)]
        if todo:
            t0 = time.time()
            self.on_ray(analyse, [(str(d),) for d in todo])
            self.log(f"  analysed {len(todo)} runs on Ray in {time.time() - t0:.0f} s")

    def train(self, name: str, facts, seed: int, *, model_config=None, **training_overrides):
        """Train (or reuse a finished run of exactly this configuration) into ``<out>/runs/<name>``.

        Returns the run directory. A run directory holding another configuration is replaced.
        """
        run_dir = self.runs / name
        model_config = model_config if model_config is not None else self.model_config(seed)
        training_config = self.training_config(seed, **training_overrides)
        t0 = time.time()
        reused = (run_dir / "model.safetensors").is_file()
        try:
            result = train(facts, model_config, training_config, run_dir, resume=run_dir.exists(), progress=False)
        except CheckpointError as e:
            self.log(f"  {name}: replacing a run of another configuration ({str(e)[:80]}...)")
            shutil.rmtree(run_dir)
            reused = False
            result = train(facts, model_config, training_config, run_dir, progress=False)
        seconds = time.time() - t0
        timing = run_dir / TIMING_FILE  # how long the run took to train, kept beside it for later invocations
        if not reused or not timing.is_file():
            timing.write_text(json.dumps({"train_seconds": round(seconds, 1), "reused": reused}))
        train_seconds = json.loads(timing.read_text())["train_seconds"]
        self.run_log.append(dict(run=name, seed=seed, steps=result.steps, fitted=result.fitted,
                                 seconds=round(seconds, 1), train_seconds=train_seconds, reused=reused))
        self.log(f"  trained {name}: {result.steps} steps, {'fitted' if result.fitted else 'NOT fitted'}, "
                 f"{seconds:.0f} s")
        return run_dir

    def log(self, message: str) -> None:
        print(f"[{time.time() - getattr(self, 'started', time.time()):7.0f} s] {message}", flush=True)

    # -- figures ---------------------------------------------------------------------------------
    def figure(self, fig, name: str, caption: str, **size) -> str:
        """Save the plotly figure ``fig`` as ``<out>/<name>.png`` and list it in the summary."""
        file = f"{name}.png"
        save_png(fig, self.out / file, **size)
        shrink_png(self.out / file)
        self.figures.append((file, caption))
        return file

    # -- output ----------------------------------------------------------------------------------
    def finish(self, *, config: dict, per_seed, aggregates: dict, results_table: list[str], findings: list[str],
               notes: Sequence[str] = (), intervals: str = SEED_INTERVALS) -> None:
        """Write ``results.json`` and ``summary.md``; ``intervals`` says in the summary which intervals it shows."""
        seconds = time.time() - self.started
        n_reused = sum(r["reused"] for r in self.run_log)
        train_seconds = sum(r["train_seconds"] for r in self.run_log if r["train_seconds"] is not None)
        n_untimed = sum(r["train_seconds"] is None for r in self.run_log)
        environment = {**versions(), "git_commit": git_commit(), "device": str(default_device()),
                       "torch_threads": torch.get_num_threads()}
        results = {
            "study": self.name, "title": self.title, "command": self.command, "quick": self.quick,
            "environment": environment,
            "preset": self.preset, "seeds": list(self.seeds), "configuration": config, "per_seed": per_seed,
            "aggregates": aggregates, "runs": self.run_log, "wall_seconds": round(seconds, 1),
            "train_seconds_first_trained": round(train_seconds, 1),
            "figures": [f for f, _ in self.figures],
        }
        write_json(self.out / "results.json", results)
        lines = [
            f"# {self.title}", "",
            f"Regenerate with `{self.command}` (from the repository root; {seconds / 60:.1f} min wall clock on this "
            f"2-core machine for this invocation, {len(self.run_log)} training runs"
            + (f", {n_reused} of them reused from an earlier invocation" if n_reused else "")
            + f"; training the runs took {train_seconds / 60:.1f} min in all when they were first trained"
            + (f", {n_untimed} of them untimed (trained by an interrupted invocation)" if n_untimed else "")
            + f"). Numbers: `results.json`. {intervals}", "",
        ]
        if self.quick:
            lines += ["**Smoke test (`--quick`): tiny preset, small data. Not a result.**", ""]
        lines += ["## Configuration", ""]
        lines += [f"- {key}: {_short(value)}" for key, value in config.items()]
        lines += [f"- preset: `{self.preset}`; seeds: {' '.join(map(str, self.seeds))} (each seed fixes data, "
                  "initial weights and batch order)",
                  "- environment: " + ", ".join(f"{k} {v}" for k, v in environment.items() if v is not None), ""]
        if notes:
            lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        lines += ["## Results", "", *results_table, ""]
        if self.figures:
            lines += ["## Figures", ""]
            for file, caption in self.figures:
                lines += [f"![{file}]({file})", "", caption, ""]
        lines += ["## What the numbers show", "", *[f"- {f}" for f in findings], ""]
        (self.out / "summary.md").write_text("\n".join(lines))
        self.log(f"wrote {self.out / 'results.json'} and {self.out / 'summary.md'} ({seconds:.0f} s)")


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``+changes`` when the tree differs from it), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "revinterp", "analyses"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def _short(value) -> str:
    text = json.dumps(jsonable(value))
    return f"`{text}`"


BEHAVIOUR_METRICS = ("accuracy", "mean_rank", "logprob_candidates", "probability")


def behaviour_over_seeds(behaviours: Sequence, metrics: Sequence[str] = BEHAVIOUR_METRICS) -> dict[str, dict]:
    """Per split: each metric's mean over seeds with a 95 % interval over seeds (``evaluation.over_seeds``),
    whether the split is trained, its size per seed, the chance baselines and the mean over seeds of each seed's
    accuracy interval over examples."""
    from revinterp.data import SPLITS
    from revinterp.evaluation import over_seeds

    out = {}
    for split, values in over_seeds(behaviours, metrics).items():
        rows = [b[split].metrics() for b in behaviours]

        def mean(key: str, index: int | None = None, rows=rows) -> float:
            return sum(r[key] if index is None else r[key][index] for r in rows) / len(rows)

        out[split] = {
            **values, "trained": SPLITS[split], "n_per_seed": [r["n"] for r in rows],
            "chance_accuracy": mean("chance_accuracy"), "chance_mean_rank": mean("chance_mean_rank"),
            "uniform_logprob_candidates": mean("uniform_logprob_candidates"),
            "mean_example_accuracy_ci": [mean("accuracy_ci", 0), mean("accuracy_ci", 1)],
        }
    return out


def head_heatmap(result, title: str):
    """One heatmap of a per-head patching result (axes layer, pos, head): rows ``L{l}H{h}``, columns positions, one
    colour scale for every head (the PNG export of the library's one-panel-per-head figure scales each panel on its
    own)."""
    import plotly.graph_objects as go

    norm = result.normalized.detach().cpu()  # [layer, pos, head]
    n_layers, n_pos, n_heads = norm.shape
    z = norm.permute(0, 2, 1).reshape(n_layers * n_heads, n_pos)
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=[f"{p}: {label}" for p, label in enumerate(result.labels)],
        y=[f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)], colorscale="RdBu",
        zmid=result.normalized_unpatched, colorbar=dict(title="normalized")))
    fig.update_layout(title=title, yaxis_title="head", xaxis_title="position")
    return fig


def seed_verdicts(verdicts: Sequence[dict]) -> str:
    """The saved verdicts (:mod:`revinterp.analysis.verdict`) of one setup's seeds: the common one, or how many
    seeds said what ("inconclusive: the seeds disagree")."""
    from collections import Counter

    said = Counter((v["reverse_path"], ", ".join(v["causes"]) or "none") for v in verdicts)
    if len(said) == 1:
        (path, causes), = said
        return f"reverse path {path} in every seed; causes supported: {causes}"
    return "inconclusive: the seeds disagree (" + "; ".join(f"{n} seed(s): path {p}, causes {c}"
                                                             for (p, c), n in said.most_common()) + ")"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def seed_ci_table(per_split: dict[str, dict[str, Estimate]], metrics: Sequence[tuple[str, str, bool]],
                  extra: dict[str, Sequence] | None = None) -> list[str]:
    """Rows ``split | metric [CI] ...`` from ``{split: {metric: Estimate}}``; ``metrics`` are
    ``(key, column title, percent)``; ``extra`` adds columns per split."""
    header = ["split", *[title for _, title, _ in metrics], *((extra or {}).get("_header", ()))]
    rows = []
    for split, values in per_split.items():
        row = [split, *[est(values[key], percent=percent) for key, _, percent in metrics]]
        row += list((extra or {}).get(split, ()))
        rows.append(row)
    return table(header, rows)


def probe_summary(result) -> dict:
    """Probe accuracy at the final depth and last prompt position, and the best site by cross-validated accuracy."""
    cv, test = result.cross_val_accuracy, result.test_accuracy
    d, p = cv.shape[0] - 1, cv.shape[1] - 1
    flat = int(torch.nan_to_num(cv, nan=-1).flatten().argmax())
    bd, bp = divmod(flat, cv.shape[1])
    return dict(chance=result.chance, final_cv=float(cv[d, p]), final_test=float(test[d, p]),
                final_test_ci=bootstrap_ci(result.test_correct[d, p].double().cpu()),
                best_site=f"{result.depth_labels[bd]} @{result.position_labels[bp]}", best_cv=float(cv[bd, bp]),
                best_site_test=float(test[bd, bp]), max_test=float(test.max()),
                final_control_test=float(result.control_test_accuracy[d, p]))


def intervention_record(result) -> dict:
    """Per split of a ``SplitInterventions``: pairs, total effect, per method the sites distinguishable from zero, the
    sites tested and the three largest."""
    from revinterp.analysis.interventions import INTERVENTION_METHODS

    return {s: dict(n_pairs=result.n_pairs[s], total=result.total[s],
                    distinguishable={m: len(result.distinguishable(s, m)) for m in INTERVENTION_METHODS},
                    tested={m: result.n_tested(s, m) for m in INTERVENTION_METHODS},
                    largest={m: [(e.site, e.estimate) for e in result.largest(s, m, 3)] for m in INTERVENTION_METHODS})
            for s in result.splits}
