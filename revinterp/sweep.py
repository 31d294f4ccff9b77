"""Grids of pipeline runs as Ray tasks: one cell per configuration, resumable, gathered into one table.

A *grid* names values for fields of the fact set, the model, the training and the seed; every combination is a
*cell*, and each cell is one run of the pipeline (:func:`revinterp.pipeline.train_and_evaluate`, then
:func:`revinterp.pipeline.analyze` unless the grid is behaviour only) executed as a Ray task. Ray does the
scheduling, the retries and the resource accounting: a local cluster sized to the machine's cores by default
(``ray.init(num_cpus=os.cpu_count())``), one CPU and one torch thread per task; ``address=`` (or ``RAY_ADDRESS``)
joins an existing cluster, whose nodes must see the sweep directory at the same path (a shared file system).

A sweep directory::

    OUT/sweep.json            the grid and its cells (a restart with another grid is refused)
    OUT/status.json           per cell: done / failed (with its error) / pending, seconds, whether it was reused
    OUT/runs/<cell>/          each cell's run directory (revinterp.pipeline), named by the hash of its configuration
    OUT/logs/<cell>.attempts  one line per attempt of the cell (pid, time)
    OUT/table.{csv,jsonl,parquet}  one row per cell: configuration fields and figures (Parquet with pyarrow)
    OUT/summary.{json,csv}    figures over seeds: every seed's value, mean and Student's t interval
    OUT/sweep_report.html     the self-contained sweep report (:mod:`revinterp.viz.sweep_report`)

A cell's directory name is ``seed<S>-<hash>``, the hash being the first 12 hex digits of the SHA-256 of the
canonical JSON (sorted keys, no spaces) of its full configuration: every fact option (a user fact file by the
SHA-256 of its content), the whole :class:`~revinterp.models.ModelConfig` and
:class:`~revinterp.training.TrainingConfig` and the seed. A finished cell (its ``sweep_cell.json`` marker written
last, for the same configuration and analysis settings, with ``behaviour.json`` and, when analysed, every
``analysis/*.json``) is reused; an interrupted one resumes from ``checkpoints/last.safetensors``
(:func:`revinterp.training.train` with ``resume=True`` continues bitwise identically); a failed one is retried by Ray
(``max_retries``, ``retry_exceptions``) and then reported with its error while the other cells finish.

Example:
    >>> from revinterp.sweep import Grid, run_sweep                                     # doctest: +SKIP
    >>> grid = Grid.from_mapping({"grid": {"preset": "tiny", "n_pairs": 40, "seed": [0, 1, 2, 3, 4],
    ...                                    "mitigation": ["none", "reverse_entity"]}})  # doctest: +SKIP
    >>> result = run_sweep(grid, "sweeps/mitigations")                                  # doctest: +SKIP
    >>> result.to_frame()[["cell", "facts.mitigation", "behaviour.reverse_held_out.accuracy"]]  # doctest: +SKIP

``import revinterp.sweep`` imports neither ray nor torch: they are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from revinterp.rundir import LOCK_FILE  # stdlib only: one writer per run directory, and per sweep directory

SWEEP_VERSION = 1
SWEEP_FILE = "sweep.json"
STATUS_FILE = "status.json"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
CELL_FILE = "sweep_cell.json"
TABLE_CSV, TABLE_JSONL, TABLE_PARQUET = "table.csv", "table.jsonl", "table.parquet"
SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"
REPORT_FILE = "sweep_report.html"
HASH_DIGITS = 12
CONFIDENCE = 0.95
DEFAULT_RETRIES = 2
PRESETS = ("tiny", "default", "deep")

FACT_DEFAULTS: dict[str, object] = {
    "data": "seed", "facts": None, "n_pairs": 200, "both_fraction": 0.7, "trained_direction": "random",
    "tokens_per_entity": 1, "relations": 1, "template": "symbolic", "shared_tokens": False, "attributes": 0,
    "feed": "none", "mitigation": "none", "scratch_tokens": 0,
}
"""The fact options of a cell and their defaults: those of ``revinterp run`` (``--n-pairs`` is ``n_pairs`` ...).
``scratch_tokens`` (k tokens ``[scratch]`` before every answer, :func:`revinterp.data.with_scratch_tokens`) is applied
last, after the mitigation, so that the augmented statements get them before their answer too."""

FACT_OMITTED_AT_DEFAULT = {"scratch_tokens": 0}
"""Fact options added after sweeps were first run: left out of a cell's configuration while at this default, so the
hash (the run directory's name) of every earlier cell stays as it was (as :data:`revinterp.models.OMITTED_AT_DEFAULT`
for the model and training)."""

FACT_CHOICES = {"data": ("seed", "chain", "graph"), "trained_direction": ("random", "forward", "reverse"),
                "template": ("symbolic", "natural"), "feed": ("none", "subject", "answer", "both"),
                "mitigation": ("none", "reverse_token", "reverse_entity", "permute", "identity_bridge")}

IGNORED_FACT_OPTIONS = {
    "facts": ("n_pairs", "tokens_per_entity", "relations", "template", "shared_tokens"),
    "chain": ("trained_direction", "tokens_per_entity", "relations", "template", "shared_tokens"),
    "graph": ("tokens_per_entity", "shared_tokens"),
}
"""Fact options each source does not use (as ``revinterp run``): a value other than the default is an error."""

ALIASES = {"held_out_direction": "trained_direction", "steps": "max_steps", "norm": "normalization_type",
           "positional": "positional_embedding_type", "seeds": "seed", "presets": "preset"}
"""Other names a grid may use for a field (those of the ``revinterp run`` options)."""

DERIVED_MODEL_FIELDS = ("d_vocab", "n_ctx")  # set from the data by revinterp.models.config_for_data
SWEEP_OPTIONS = {"analyze": True, "max_pairs": 200, "report": False}
"""Settings of the ``[sweep]`` table (not axes): run the analyses (False: behaviour only), prompt pairs per split
in the patching analyses, write each run's ``report.html``."""


class SweepError(ValueError):
    """A grid, cluster address or sweep directory that cannot be used; raised before any cell starts."""


# -- fields -----------------------------------------------------------------------------------------------------
def model_fields() -> dict[str, object]:
    """The :class:`~revinterp.models.ModelConfig` fields a grid may set, with their defaults."""
    from revinterp.models import ModelConfig

    return {f.name: f.default for f in fields(ModelConfig) if f.name not in (*DERIVED_MODEL_FIELDS, "seed")}


def training_fields() -> dict[str, object]:
    """The :class:`~revinterp.training.TrainingConfig` fields a grid may set, with their defaults."""
    from revinterp.training import TrainingConfig

    return {f.name: f.default for f in fields(TrainingConfig) if f.name != "seed"}


def known_fields() -> dict[str, str]:
    """Every field a grid may name, with its group: ``"facts"``, ``"model"``, ``"training"``, ``"preset"``,
    ``"seed"``."""
    known = {name: "facts" for name in FACT_DEFAULTS}
    known.update({name: "model" for name in model_fields()})
    known.update({name: "training" for name in training_fields()})
    known.update(preset="preset", seed="seed")
    return known


def _kind(value) -> str:
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def coerce(name: str, value, *, base: Path | None = None):
    """``value`` as field ``name`` takes it (ints stay ints, numbers become floats where the field is a float,
    ``"none"`` is None for the normalization), or :class:`SweepError` naming the value and what was expected."""
    group = known_fields().get(name)
    if group is None:
        raise SweepError(unknown_field_message(name))

    def bad(expected: str):
        return SweepError(f"grid field {name!r}: value {value!r} ({_kind(value)}) cannot be used; expected {expected}")

    if name == "preset":
        if value not in PRESETS:
            raise bad(f"one of {PRESETS}")
        return value
    if name == "facts":
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise bad("the path of a fact file (CSV or JSONL)")
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return str(path.resolve())
    if name == "normalization_type":
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        if not isinstance(value, str):
            raise bad("one of 'LN', 'LNPre', 'RMS', 'RMSPre', 'none'")
        return value
    if name == "betas":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)):
            raise bad("a pair of numbers [beta1, beta2] (in a grid axis, a list of pairs: [[0.9, 0.999], ...])")
        return [float(b) for b in value]
    if name == "scratch_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a whole number >= 0 (scratch tokens before every answer; 0: none)")
        return value
    default = {**FACT_DEFAULTS, **model_fields(), **training_fields(), "seed": 0}[name]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string" + (f", one of {FACT_CHOICES[name]}" if name in FACT_CHOICES else ""))
        if name in FACT_CHOICES and value not in FACT_CHOICES[name]:
            raise bad(f"one of {FACT_CHOICES[name]}")
        return value
    raise bad(f"a value like {default!r}")  # pragma: no cover (every field has a typed default)


def unknown_field_message(name: str) -> str:
    known = known_fields()
    close = difflib.get_close_matches(name, [*known, *ALIASES], n=1)
    groups = {}
    for field_name, group in known.items():
        groups.setdefault(group, []).append(field_name)
    listing = "; ".join(f"{group}: {', '.join(names)}" for group, names in groups.items())
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    extra = (" (d_vocab and n_ctx follow from the data)" if name in DERIVED_MODEL_FIELDS else "")
    return f"grid field {name!r} is unknown{hint}{extra}; expected one of {listing}"


# -- the grid ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """Values per field (a field with several values is an axis; every combination is a cell) and the sweep's
    settings.

    Attributes:
        values: field -> tuple of values, in the order given; fields are those of :func:`known_fields` (a fact
            option, a model or training field, ``preset``, ``seed``). Unnamed fields keep the preset's value
            (the preset defaults to ``"default"``, the seed to 0).
        analyze: run the analyses after training (False: behaviour only).
        max_pairs: prompt pairs per split in the patching analyses.
        report: also write each run's ``report.html`` (:func:`revinterp.viz.report.write_report`).
    """

    values: dict[str, tuple]
    analyze: bool = True
    max_pairs: int = 200
    report: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping, *, base: str | Path | None = None) -> Grid:
        """A grid from the TOML layout: ``{"grid": {field: value or [values]}, "sweep": {analyze, max_pairs,
        report}}``; a list is an axis, a scalar a fixed value (a pair of betas is written ``[[0.9, 0.99]]``).
        Relative fact-file paths are taken from ``base`` (the TOML file's folder), else the working directory."""
        if not isinstance(data, Mapping):
            raise SweepError(f"a grid is {_kind(data)}; expected a table with [grid] and optionally [sweep]")
        unknown = sorted(set(data) - {"grid", "sweep"})
        if unknown:
            raise SweepError(f"grid file: unknown table(s) {unknown}; expected [grid] (fields and their values) and "
                             f"optionally [sweep] (settings: {', '.join(SWEEP_OPTIONS)})")
        raw = data.get("grid", {})
        if not isinstance(raw, Mapping):
            raise SweepError(f"[grid] is {_kind(raw)}; expected a table of fields and their values")
        base = Path(base) if base is not None else None
        values: dict[str, tuple] = {}
        for given, value in raw.items():
            name = ALIASES.get(given, given)
            if name in values:
                raise SweepError(f"grid field {name!r} is given twice (as {given!r} too); expected each field once")
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if not items:
                raise SweepError(f"grid field {given!r}: an empty list; expected at least one value")
            coerced = tuple(coerce(name, item, base=base) for item in items)
            if len({canonical_json(v) for v in coerced}) != len(coerced):
                raise SweepError(f"grid field {given!r}: repeated values in {list(items)!r}; expected distinct values")
            values[name] = coerced
        settings = dict(SWEEP_OPTIONS)
        raw_settings = data.get("sweep", {})
        if not isinstance(raw_settings, Mapping):
            raise SweepError(f"[sweep] is {_kind(raw_settings)}; expected a table of settings")
        for name, value in raw_settings.items():
            if name not in SWEEP_OPTIONS:
                raise SweepError(f"[sweep] setting {name!r} is unknown; expected one of {list(SWEEP_OPTIONS)}")
            default = SWEEP_OPTIONS[name]
            if type(value) is not type(default):
                raise SweepError(f"[sweep] setting {name!r}: value {value!r} ({_kind(value)}); expected "
                                 f"{'true or false' if isinstance(default, bool) else 'a whole number'}")
            settings[name] = value
        if settings["max_pairs"] < 2:
            raise SweepError(f"[sweep] setting 'max_pairs': value {settings['max_pairs']}; expected at least 2")
        return cls(values, **settings)

    @classmethod
    def from_toml(cls, path: str | Path) -> Grid:
        """A grid from a TOML file (see :meth:`from_mapping`)."""
        tomllib = toml_module()
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepError(f"grid file {path}: no such file; expected a TOML file with a [grid] table") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SweepError(f"grid file {path}: not valid TOML ({e})") from None
        return cls.from_mapping(data, base=path.parent)

    def settings(self) -> dict:
        return {"analyze": self.analyze, "max_pairs": self.max_pairs, "report": self.report}

    @property
    def axes(self) -> dict[str, tuple]:
        """The fields with more than one value."""
        return {name: v for name, v in self.values.items() if len(v) > 1}

    def to_dict(self) -> dict:
        """The grid as plain JSON data (what ``sweep.json`` records)."""
        return {"grid": {name: list(v) for name, v in self.values.items()}, "sweep": self.settings()}

    def cells(self) -> list[Cell]:
        """Every combination of the values, the seed varying fastest; each checked (:func:`make_cell`)."""
        names = [n for n in self.values if n != "seed"] + ["seed"]
        pools = [self.values.get(n, (0,)) for n in names]
        return [make_cell(dict(zip(names, combo))) for combo in itertools.product(*pools)]


def toml_module():
    """``tomllib`` (Python 3.11+), else ``tomli`` where it is installed (Python 3.10)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover (Python 3.10)
        try:
            import tomli as tomllib
        except ImportError:
            raise SweepError("TOML grids need Python 3.11 or later (tomllib), or the tomli package") from None
    return tomllib


def canonical_json(data) -> str:
    """JSON with sorted keys, no spaces, ASCII only and no NaN: the same text for the same data."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid: fact options, model and training configuration, seed.

    ``values`` are the grid's values for this cell (what distinguishes it); :meth:`config` is its full
    configuration, whose hash names its run directory."""

    values: dict
    preset: str
    facts: dict
    model: object  # revinterp.models.ModelConfig
    training: object  # revinterp.training.TrainingConfig
    seed: int
    facts_sha256: str | None = None
    fact_set: object = field(default=None, compare=False, repr=False)  # a prebuilt FactSet (fact_set_cell)

    def config(self) -> dict:
        """The full configuration as JSON data (the fact file by its content's SHA-256)."""
        facts = {k: v for k, v in self.facts.items() if FACT_OMITTED_AT_DEFAULT.get(k, object()) != v}
        if facts.get("facts") is not None:
            facts["facts"] = f"sha256:{self.facts_sha256}"
        from revinterp.models import config_record  # settings added later, at their defaults, keep the old hashes

        return {"sweep_version": SWEEP_VERSION, "facts": facts, "model": config_record(self.model),
                "training": config_record(self.training), "seed": self.seed}

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.config()).encode()).hexdigest()[:HASH_DIGITS]

    @property
    def name(self) -> str:
        """The run directory's name: ``seed<S>-<hash of the configuration>``."""
        return f"seed{self.seed}-{self.key}"

    def label(self, exclude: Sequence[str] = ("seed",)) -> str:
        """The grid values of this cell as ``field=value`` text."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items() if k not in exclude) or "(all cells alike)"

    def record(self) -> dict:
        return {"name": self.name, "values": self.values, "preset": self.preset, "config": self.config(),
                "facts_file": self.facts.get("facts")}


def make_cell(values: Mapping) -> Cell:
    """The cell of one combination of grid values: its preset with the fields set, the seed given to the facts, the
    model and the training (as ``revinterp run --seed``). Raises :class:`SweepError` naming the value and what was
    expected when a configuration cannot be built."""
    from revinterp.models import MODEL_PRESETS
    from revinterp.training import TRAINING_PRESETS

    values = {ALIASES.get(k, k): v for k, v in values.items()}
    for name in values:
        if name not in known_fields():
            raise SweepError(unknown_field_message(name))
    values = {k: coerce(k, v) for k, v in values.items()}
    preset = values.get("preset", "default")
    seed = values.get("seed", 0)
    known = known_fields()
    facts = {**FACT_DEFAULTS, **{k: v for k, v in values.items() if known[k] == "facts"}}
    model_kw = {k: v for k, v in values.items() if known[k] == "model"}
    training_kw = {k: (tuple(v) if k == "betas" else v) for k, v in values.items() if known[k] == "training"}
    where = ", ".join(f"{k}={v!r}" for k, v in values.items())
    try:
        model = replace(MODEL_PRESETS[preset], seed=seed, **model_kw)
        training = replace(TRAINING_PRESETS[preset], seed=seed, **training_kw)
    except (ValueError, TypeError) as e:
        raise SweepError(f"cell {where}: {e}") from None
    for problem in config_problems(model, training):
        raise SweepError(f"cell {where}: {problem}")
    source = "facts" if facts["facts"] is not None else facts["data"]
    ignored = [n for n in IGNORED_FACT_OPTIONS.get(source, ()) if facts[n] != FACT_DEFAULTS[n]]
    if ignored:
        raise SweepError(f"cell {where}: {', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} not used by "
                         f"{'a fact file' if source == 'facts' else 'data=' + repr(source)}; expected only the "
                         "options that shape that data")
    sha = None
    if facts["facts"] is not None:
        if not Path(facts["facts"]).is_file():
            raise SweepError(f"cell {where}: fact file {facts['facts']} does not exist; expected a CSV or JSONL file")
        sha = file_sha256(facts["facts"])
    return Cell(values, preset, facts, model, training, seed, sha)


def fact_set_cell(facts, model, training) -> Cell:
    """The cell of a prebuilt :class:`~revinterp.data.FactSet` (a study's own data): its fact options are the
    SHA-256 of the fact set's canonical manifest (every relation, statement and split, and its source), so the same
    facts, model and training configuration always name the same run directory; its seed is the training seed."""
    from revinterp.models import ModelConfig
    from revinterp.training import TrainingConfig

    if not isinstance(model, ModelConfig) or not isinstance(training, TrainingConfig):
        raise SweepError(f"a fact-set cell takes a ModelConfig and a TrainingConfig; got {type(model).__name__} and "
                         f"{type(training).__name__}")
    for problem in config_problems(model, training):
        raise SweepError(f"fact-set cell ({facts.source}): {problem}")
    sha = hashlib.sha256(canonical_json(facts.to_manifest()).encode()).hexdigest()
    return Cell({"seed": training.seed}, "none", {"fact_set": f"sha256:{sha}"}, model, training, training.seed,
                fact_set=facts)


def config_problems(model, training) -> list[str]:
    """What the configurations' own checks do not catch but a run would fail on (or silently misuse)."""
    problems = []
    for name in ("n_layers", "d_model", "n_heads", "d_mlp"):
        if getattr(model, name) < 1:
            problems.append(f"{name}={getattr(model, name)}: expected a positive whole number")
    try:
        from transformer_lens.utilities import SUPPORTED_ACTIVATIONS

        activations = (*SUPPORTED_ACTIVATIONS, "xielu")
    except ImportError:  # pragma: no cover (another TransformerLens layout: leave it to the run)
        activations = None
    if activations is not None and model.act_fn not in activations:
        problems.append(f"act_fn={model.act_fn!r}: expected one of {tuple(activations)}")
    if not training.lr > 0:
        problems.append(f"lr={training.lr}: expected a positive learning rate")
    if training.weight_decay < 0:
        problems.append(f"weight_decay={training.weight_decay}: expected a non-negative number")
    if training.warmup_steps < 0:
        problems.append(f"warmup_steps={training.warmup_steps}: expected a non-negative whole number")
    if training.n_checkpoints < 1:
        problems.append(f"n_checkpoints={training.n_checkpoints}: expected at least 1")
    if not 0 < training.fit_probability <= 1:
        problems.append(f"fit_probability={training.fit_probability}: expected a probability in (0, 1]")
    if not all(0 <= b < 1 for b in training.betas):
        problems.append(f"betas={training.betas}: expected two numbers in [0, 1)")
    return problems


def build_facts(options: Mapping, seed: int, *, progress: bool = False):
    """The fact set of a cell's fact options (what ``revinterp run`` builds from its options, through this): the
    data, its feed or attributes, its mitigation, then its scratch tokens; ``progress`` shows a bar while a fact file
    loads."""
    from revinterp.data import (
        apply_mitigation,
        chain_experiment,
        knowledge_graph,
        load_fact_file,
        seed_experiment,
        starvation_cell,
        with_attributes,
        with_scratch_tokens,
    )

    o = {**FACT_DEFAULTS, **options}
    if o["facts"] is not None:
        facts = load_fact_file(o["facts"], both_fraction=o["both_fraction"],
                               held_out_direction=o["trained_direction"], seed=seed, progress=progress)
    elif o["data"] == "chain":
        facts = chain_experiment(o["n_pairs"], composed_held_out_fraction=1 - o["both_fraction"], seed=seed)
    elif o["data"] == "graph":
        facts = knowledge_graph(o["n_pairs"], n_relations=max(o["relations"], 3), both_fraction=o["both_fraction"],
                                held_out_direction=o["trained_direction"], template=o["template"], seed=seed)
    else:
        facts = seed_experiment(o["n_pairs"], both_fraction=o["both_fraction"],
                                held_out_direction=o["trained_direction"], tokens_per_entity=o["tokens_per_entity"],
                                n_relations=o["relations"], template=o["template"], shared_tokens=o["shared_tokens"],
                                seed=seed)
    if o["attributes"] and o["feed"] not in ("subject", "both"):
        facts = with_attributes(facts, n_values=o["attributes"], seed=seed)
    if o["feed"] != "none":
        facts = starvation_cell(facts, feed_subject=o["feed"] in ("subject", "both"),
                                feed_answer=o["feed"] in ("answer", "both"), n_values=o["attributes"] or 8, seed=seed)
    if o["mitigation"] != "none":
        facts = apply_mitigation(facts, o["mitigation"])
    return with_scratch_tokens(facts, o["scratch_tokens"]) if o["scratch_tokens"] else facts


def validate(cells: Sequence[Cell]) -> None:
    """Build every cell's fact set and data-sized model configuration; :class:`SweepError` names the first cell
    that cannot be built and why (before any cell starts)."""
    from revinterp.models import config_for_data, tokenizer_for

    names: dict[str, Cell] = {}
    built: dict[str, object] = {}
    for cell in cells:
        if cell.name in names:
            raise SweepError(f"cells {names[cell.name].label(())} and {cell.label(())} have the same configuration; "
                             "expected every combination of the grid to differ")
        names[cell.name] = cell
        key = canonical_json([cell.facts, cell.facts_sha256, cell.seed])
        if key in built:
            continue
        try:
            facts = build_facts(cell.facts, cell.seed)
            config_for_data(cell.model, facts, tokenizer_for(facts))
        except (ValueError, KeyError) as e:
            raise SweepError(f"cell {cell.label(())}: the facts cannot be built: {e}") from None
        built[key] = facts


# -- the sweep directory ----------------------------------------------------------------------------------------
def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SweepError(f"{path}: cannot be read as JSON ({e})") from None


def write_json(path: Path, data) -> None:
    from revinterp.io import atomic_write_text, json_text

    atomic_write_text(Path(path), json_text(data, indent=1, what=str(path)) + "\n")


def sweep_record(grid: Grid, cells: Sequence[Cell]) -> dict:
    return {"sweep_version": SWEEP_VERSION, **grid.to_dict(), "cells": [c.record() for c in cells]}


def check_sweep_dir(out_dir: Path, grid: Grid, cells: Sequence[Cell]) -> bool:
    """Whether ``out_dir`` already records this grid (True), is new or empty (False); :class:`SweepError` when
    it holds another grid's sweep or anything else (nothing there is touched)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"sweep directory {out_dir} is a file; expected a directory (new, or a sweep of this grid)")
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        if out_dir.is_dir() and any(p.name != LOCK_FILE for p in out_dir.iterdir()):
            raise SweepError(f"{out_dir} is not empty and holds no {SWEEP_FILE}; expected a new or empty directory, "
                             "or one written by 'revinterp sweep'")
        return False
    saved = read_json(path)
    here = sweep_record(grid, cells)
    if not isinstance(saved, dict) or saved.get("sweep_version") != SWEEP_VERSION:
        raise SweepError(f"{path}: a sweep of version {saved.get('sweep_version') if isinstance(saved, dict) else '?'}"
                         f"; this revinterp reads version {SWEEP_VERSION}: use a new directory")
    if canonical_json(saved.get("grid")) != canonical_json(here["grid"]) or \
            canonical_json(saved.get("sweep")) != canonical_json(here["sweep"]):
        raise SweepError(f"{out_dir} holds a sweep of another grid: {grid_difference(saved, here)}; expected the "
                         f"same grid to resume it (nothing was changed): use a new directory for this grid")
    if [c["name"] for c in saved.get("cells", [])] != [c["name"] for c in here["cells"]]:
        raise SweepError(f"{out_dir} holds a sweep of the same grid but other cells (a fact file's content or the "
                         "presets changed since it was written); expected the same cells: use a new directory")
    return True


def grid_difference(saved: dict, here: dict) -> str:
    out = []
    for table in ("grid", "sweep"):
        a, b = saved.get(table) or {}, here.get(table) or {}
        for name in sorted(set(a) | set(b)):
            if canonical_json(a.get(name)) != canonical_json(b.get(name)):
                was = "unset" if name not in a else json.dumps(a[name])
                now = "unset" if name not in b else json.dumps(b[name])
                out.append(f"{table}.{name} is {was} there and {now} here")
    return "; ".join(out) or "the cells differ"


def cell_marker(cell: Cell, grid: Grid) -> dict:
    return {"sweep_version": SWEEP_VERSION, "name": cell.name, "config": cell.config(),
            "analyzed": grid.analyze, "max_pairs": grid.max_pairs if grid.analyze else None,
            "report": grid.report}


def is_finished(run_dir: Path, cell: Cell, grid: Grid) -> bool:
    """Whether ``run_dir`` holds this cell, finished for this grid's settings."""
    from revinterp.pipeline import BEHAVIOUR_FILE
    from revinterp.results import ANALYSIS_DIR, RUN_INFO, STAGES

    marker = run_dir / CELL_FILE
    if not marker.is_file() or not (run_dir / BEHAVIOUR_FILE).is_file():
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if canonical_json(saved.get("config")) != canonical_json(cell.config()):
        return False
    if grid.analyze:
        if not saved.get("analyzed") or saved.get("max_pairs") != grid.max_pairs:
            return False
        analysis = run_dir / ANALYSIS_DIR
        if not all((analysis / f"{s}.json").is_file() for s in (*STAGES, Path(RUN_INFO).stem)):
            return False
    return not (grid.report and not (saved.get("report") and (run_dir / "report.html").is_file()))


# -- one cell ---------------------------------------------------------------------------------------------------
def run_cell(cell: Cell, run_dir: str | Path, *, analyze: bool = True, max_pairs: int = 200, report: bool = False,
             device=None, progress: bool = False, lock_wait: float | None = None) -> dict:
    """Run (or resume, or finish) one cell in ``run_dir``: train and evaluate, then analyse; write its
    ``sweep_cell.json`` marker last. Idempotent: a finished training is loaded, not repeated. A live writer's lock
    on ``run_dir`` is waited for up to ``lock_wait`` seconds (default :data:`LOCK_WAIT_SECONDS`; ``math.inf``: as
    long as it lives, as a shared run store does)."""
    from revinterp.pipeline import BEHAVIOUR_FILE, train_and_evaluate
    from revinterp.rundir import run_lock
    from revinterp.training import CHECKPOINT_DIR, LAST_CHECKPOINT

    start = time.perf_counter()
    run_dir = Path(run_dir)
    facts = cell.fact_set if cell.fact_set is not None else build_facts(cell.facts, cell.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    wait_for_lock(run_dir, lock_wait)
    with run_lock(run_dir):  # re-entrant: train and analyze take it again in this thread
        if not (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file() and not (run_dir / BEHAVIOUR_FILE).is_file():
            for path in run_dir.iterdir():  # stopped before its first training checkpoint: nothing to keep
                if path.name != LOCK_FILE:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        trained = train_and_evaluate(facts, cell.model, cell.training, run_dir, resume=True, device=device,
                                     progress=progress)
        if analyze:
            from revinterp.pipeline import analyze as run_analyses

            run_analyses(run_dir, device=device, progress=progress, max_pairs=max_pairs)
        if report:
            from revinterp.viz.report import write_report

            write_report(run_dir)
        grid = Grid({}, analyze=analyze, max_pairs=max_pairs, report=report)
        write_json(run_dir / CELL_FILE, cell_marker(cell, grid))
    return {"name": cell.name, "steps": trained.training.steps, "fitted": trained.training.fitted,
            "seconds": time.perf_counter() - start}


LOCK_WAIT_SECONDS = 30.0


def wait_for_lock(directory: Path, timeout: float | None = None) -> None:
    """Wait (up to ``timeout`` seconds) while a live writer holds the lock of ``directory``: after a
    driver is killed, its Ray workers notice and exit within seconds, and an immediate restart waits for them; a
    dead writer's lock is cleared (:func:`clear_stale_lock`). Past the timeout the run fails naming the holder."""
    from revinterp.rundir import holds_lock, lock_holder

    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if timeout is None else timeout)
    while not clear_stale_lock(directory) and not holds_lock(directory):
        if lock_holder(directory) is None or time.monotonic() > deadline:
            return
        time.sleep(0.25)


def clear_stale_lock(directory: Path) -> bool:
    """Remove the lock of ``directory`` when its writer was on this host and is no longer running (a killed attempt
    of this sweep; :func:`revinterp.rundir.holder_is_stale`); a live writer's lock, or one of another host, stays
    (the run then fails with :class:`revinterp.rundir.RunLockedError` naming the holder and how to clear it)."""
    from revinterp.rundir import holder_is_stale, lock_holder, lock_path

    record = lock_holder(directory)
    if not holder_is_stale(record):
        return False
    if lock_holder(directory) == record:  # still the same dead writer's
        lock_path(directory).unlink(missing_ok=True)
        return True
    return False


def _kill_when_step(run_dir: Path, step: int, marker: Path) -> None:
    """Test hook: once the cell's history reaches ``step``, end this worker process abruptly (once per marker)."""
    history = run_dir / "history.jsonl"

    def watch():
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                lines = history.read_text().splitlines()
                if lines and json.loads(lines[-1])["step"] >= step:
                    marker.write_text(f"killed by the test hook at step {json.loads(lines[-1])['step']}\n")
                    os._exit(137)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def _cell_task(cell: Cell, run_dir: str, options: dict) -> dict:
    """The Ray task of one cell: one torch thread, one attempt line in the sweep's logs, then :func:`run_cell`."""
    import torch

    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    logs = run_dir.parent.parent / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{cell.name}.attempts", "a") as f:
        f.write(f"pid {os.getpid()} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    hooks = options.get("hooks") or {}
    if cell.name in hooks.get("fail", {}):
        raise RuntimeError(hooks["fail"][cell.name])
    if cell.name in hooks.get("kill_at_step", {}):
        marker = logs / f"{cell.name}.killed"
        if not marker.exists():
            _kill_when_step(run_dir, hooks["kill_at_step"][cell.name], marker)
    return run_cell(cell, run_dir, analyze=options["analyze"], max_pairs=options["max_pairs"],
                    report=options["report"], device=options["device"], lock_wait=options.get("lock_wait"))


# -- the cluster ------------------------------------------------------------------------------------------------
def check_address(address: str, timeout: float = 5.0) -> None:
    """A quick TCP check that a ``host:port`` (or ``ray://host:port``) cluster address answers."""
    if address in ("auto", "local"):
        return
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SweepError(f"cluster address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379, what 'ray start "
                         "--head' prints), ray://HOST:PORT or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SweepError(f"cluster address {address!r}: no Ray cluster answers there ({e}); expected the address of "
                         "a running cluster's head node, or no --address for a local cluster") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one with ``num_cpus`` CPUs (default
    the machine's cores); returns whether this call started Ray (and should shut it down). An already initialised
    Ray is used as it is."""
    import logging

    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_address(address)
    if ray.is_initialized():
        return False
    if address is not None:
        if num_cpus is not None:
            raise SweepError(f"num_cpus={num_cpus} with cluster address {address!r}: a joined cluster brings its own "
                             "resources; expected one of the two")
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError ... depending on the cause
            raise SweepError(f"cluster address {address!r}: cannot join the Ray cluster ({type(e).__name__}: {e})") \
                from None
        return True
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise SweepError(f"num_cpus={num_cpus!r}: expected a whole number of at least 1")
    cpus = num_cpus or os.cpu_count() or 1
    # Ray runs its workers at niceness 15 by default: on a machine shared with other work the cells then get a few
    # percent of a core (benchmarks/sweep.py measured 0.25x against one process at load 11); 0 is a fair share.
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=256 * 1024 ** 2, _system_config={"worker_niceness": 0})
    return True


# -- the sweep --------------------------------------------------------------------------------------------------
@dataclass
class CellStatus:
    """How a cell ended in this sweep: ``done``, ``failed`` (``error`` says why) or ``pending`` (not run)."""

    status: str
    reused: bool = False
    seconds: float | None = None
    error: str | None = None
    traceback: str | None = None


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the cells, their status, the gathered table and the files written."""

    out_dir: Path
    grid: Grid
    cells: list[Cell]
    status: dict[str, CellStatus]
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, CellStatus]:
        return {name: s for name, s in self.status.items() if s.status == "failed"}

    def run_dir(self, cell: Cell) -> Path:
        return self.out_dir / RUNS_DIR / cell.name

    def to_frame(self):
        """The table as a pandas data frame (one row per cell)."""
        import pandas as pd

        return pd.DataFrame(self.rows)


def as_grid(grid) -> Grid:
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, (str, os.PathLike)):
        return Grid.from_toml(grid)
    return Grid.from_mapping(grid)


def prepare(grid, out_dir) -> tuple[Grid, list[Cell], Path]:
    """The grid, its validated cells and the absolute sweep directory; every check that needs no cluster."""
    grid = as_grid(grid)
    cells = grid.cells()
    validate(cells)
    out_dir = Path(out_dir).expanduser().resolve()
    check_sweep_dir(out_dir, grid, cells)
    return grid, cells, out_dir


def run_sweep(grid, out_dir: str | Path, *, address: str | None = None, num_cpus: int | None = None,
              retries: int = DEFAULT_RETRIES, device=None, progress: bool = True,
              _hooks: dict | None = None) -> SweepResult:
    """Run every cell of ``grid`` as a Ray task and gather the results in ``out_dir``.

    Args:
        grid: a :class:`Grid`, its mapping (the TOML layout) or the path of a TOML file.
        out_dir: the sweep directory: new, or one this grid wrote before (finished cells are reused, interrupted
            ones resumed, failed ones run again).
        address: a Ray cluster to join (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); default ``RAY_ADDRESS``,
            else a local cluster of ``num_cpus`` CPUs (default the machine's cores). An initialised Ray is used.
        retries: Ray's ``max_retries`` per cell (worker crashes and, ``retry_exceptions=True``, exceptions).
        device: torch device of the runs (default CUDA when a worker has it, else the CPU).
        progress: a progress bar over the cells.

    Raises:
        SweepError: before any cell starts: an unknown field or unusable value, an unreachable cluster, a sweep
            directory of another grid.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SweepError(f"retries={retries!r}: expected a non-negative whole number")
    grid, cells, out_dir = prepare(grid, out_dir)
    if address or os.environ.get("RAY_ADDRESS"):
        check_address(address or os.environ["RAY_ADDRESS"])
    runs = out_dir / RUNS_DIR
    status = {c.name: CellStatus("pending") for c in cells}
    todo = []
    for cell in cells:
        if is_finished(runs / cell.name, cell, grid):
            status[cell.name] = CellStatus("done", reused=True)
        else:
            todo.append(cell)
    from revinterp.rundir import RunLockedError, run_lock

    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_lock(out_dir)  # a driver killed on this host
    try:
        with run_lock(out_dir):  # one driver per sweep directory
            started = connect(address, num_cpus) if todo else False
            try:
                write_json(out_dir / SWEEP_FILE, sweep_record(grid, cells))
                write_status(out_dir, status)
                if todo:
                    execute(todo, out_dir, grid, status, retries=retries, device=device, progress=progress,
                            hooks=_hooks)
            finally:
                if started:
                    import ray

                    ray.shutdown()
            result = SweepResult(out_dir, grid, cells, status)
            gathered = write_results(out_dir)
    except RunLockedError as e:
        raise SweepError(f"sweep directory {out_dir}: {e}") from None
    result.rows, result.summary, result.files = gathered.rows, gathered.summary, gathered.files
    return result


class CellsFailedError(RuntimeError):
    """Cells of a run store that failed every attempt; ``failed`` maps each to its :class:`CellStatus`."""

    def __init__(self, failed: Mapping[str, CellStatus]):
        self.failed = dict(failed)
        super().__init__(f"{len(failed)} cell(s) failed: "
                         + "; ".join(f"{name}: {s.error}" for name, s in self.failed.items()))


def train_cells(cells: Sequence[Cell], store: str | Path, *, address: str | None = None,
                num_cpus: int | None = None, retries: int = DEFAULT_RETRIES, device=None,
                progress: bool = True) -> dict[str, CellStatus]:
    """Train and evaluate (behaviour only) ``cells`` as Ray tasks in a *run store* shared by several drivers.

    A run store is a sweep directory without a grid: ``STORE/runs/<cell>`` (named by the hash of the cell's full
    configuration, as in a sweep) and ``STORE/logs/``. Any number of callers (the studies in ``analyses/``) may
    use one store, at the same time too: a cell finished by anyone is reused, a cell another live driver is training
    is waited for (its run lock), an interrupted one is resumed. Cells of the same configuration given twice run
    once. Ray connection as :func:`run_sweep` (``address``, ``RAY_ADDRESS``, else a local cluster of ``num_cpus``;
    an initialised Ray is used as it is and left running).

    Returns:
        Every cell's :class:`CellStatus` by name (``done``; ``reused`` when it was finished before).

    Raises:
        CellsFailedError: some cells failed every attempt (the others are finished and kept).
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SweepError(f"retries={retries!r}: expected a non-negative whole number")
    from revinterp.models import config_for_data, tokenizer_for

    unique = list({c.name: c for c in cells}.values())
    for cell in unique:  # every configuration sized to its data before any cell starts
        facts = cell.fact_set if cell.fact_set is not None else build_facts(cell.facts, cell.seed)
        try:
            config_for_data(cell.model, facts, tokenizer_for(facts))
        except (ValueError, KeyError) as e:
            raise SweepError(f"cell {cell.name}: the facts cannot be built: {e}") from None
    store = Path(store).expanduser().resolve()
    grid = Grid({}, analyze=False)
    status = {c.name: CellStatus("pending") for c in unique}
    todo = []
    for cell in unique:
        if is_finished(store / RUNS_DIR / cell.name, cell, grid):
            status[cell.name] = CellStatus("done", reused=True)
        else:
            todo.append(cell)
    if todo:
        (store / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        started = connect(address, num_cpus)
        try:
            execute(todo, store, grid, status, retries=retries, device=device, progress=progress, hooks=None,
                    record=False, lock_wait=math.inf)
        finally:
            if started:
                import ray

                ray.shutdown()
    failed = {name: s for name, s in status.items() if s.status != "done"}
    if failed:
        raise CellsFailedError(failed)
    return status


def write_status(out_dir: Path, status: Mapping[str, CellStatus]) -> None:
    write_json(out_dir / STATUS_FILE, {"sweep_version": SWEEP_VERSION,
                                       "cells": {name: asdict(s) for name, s in status.items()}})


def execute(cells: Sequence[Cell], out_dir: Path, grid: Grid, status: dict[str, CellStatus], *, retries: int,
            device, progress: bool, hooks: dict | None, record: bool = True, lock_wait: float | None = None) -> None:
    """Submit the cells as Ray tasks (one CPU each) into ``out_dir/runs/`` and update ``status`` as each ends (and,
    with ``record``, ``out_dir/status.json``); failures do not stop the others."""
    import ray

    options = {"analyze": grid.analyze, "max_pairs": grid.max_pairs, "report": grid.report,
               "device": None if device is None else str(device), "hooks": hooks, "lock_wait": lock_wait}
    task = ray.remote(_cell_task).options(num_cpus=1, max_retries=retries, retry_exceptions=True)
    pending = {task.remote(cell, str(out_dir / RUNS_DIR / cell.name), options): cell for cell in cells}
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(status), initial=len(status) - len(cells), desc="sweep", unit="cell")
    seconds: list[float] = []
    failed = 0

    def show():
        if bar is not None:
            running = min(len(pending), slots)
            per_cell = f"{sum(seconds) / len(seconds):.1f}s" if seconds else "-"
            bar.set_postfix_str(f"running {running}, queued {len(pending) - running}, failed {failed}, "
                                f"{per_cell}/cell")

    show()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    out = ray.get(ref)
                    status[cell.name] = CellStatus("done", seconds=out["seconds"])
                    seconds.append(out["seconds"])
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                    status[cell.name] = CellStatus("failed", error=f"{type(cause).__name__}: {cause}".strip(),
                                                   traceback=str(e))
                    failed += 1
                except ray.exceptions.RayError as e:  # the worker died every attempt, or the task was lost
                    status[cell.name] = CellStatus("failed", error=f"{type(e).__name__}: {first_line(str(e))}",
                                                   traceback=str(e))
                    failed += 1
                if record:
                    write_status(out_dir, status)
                if bar is not None:
                    bar.update(1)
            show()
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if bar is not None:
            bar.close()


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text

# -- the table --------------------------------------------------------------------------------------------------
CONFIG_PREFIXES = ("facts.", "model.", "training.")
SUMMARY_METHOD = ("Student's t interval over seeds: mean +- t_{(1+c)/2, n-1} s / sqrt(n), s the sample standard "
                  "deviation of the per-seed values (scipy.stats.t); every seed's value is listed; no interval "
                  "for a single seed")


@dataclass
class Gathered:
    """The gathered results of a sweep directory (:func:`gather`)."""

    rows: list[dict]
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)


def dig(data, *path):
    """``data[path[0]][path[1]]...``, or None where a level is missing (a stage skipped or renamed)."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def config_columns(record: dict) -> dict:
    """A cell's configuration as flat columns: ``preset``, ``seed``, ``facts.*``, ``model.*``, ``training.*``."""
    config = record["config"]
    row = {"preset": record.get("preset"), "seed": config["seed"]}
    facts = config["facts"] if "fact_set" in config["facts"] else {**FACT_OMITTED_AT_DEFAULT, **config["facts"]}
    for group in ("facts", "model", "training"):
        for name, value in (facts if group == "facts" else config[group]).items():
            if group in ("model", "training") and name == "seed" or group == "model" and name in DERIVED_MODEL_FIELDS:
                continue
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            row[f"{group}.{name}"] = value
    if record.get("facts_file") is not None:
        row["facts.facts"] = record["facts_file"]
        row["facts.facts_sha256"] = config["facts"]["facts"].removeprefix("sha256:")
    return row


def behaviour_columns(behaviour: dict) -> dict:
    """Every behaviour figure per split: ``behaviour.<split>.<metric>``; intervals as ``_low`` / ``_high``; plus
    the exact (Clopper-Pearson) interval of the accuracy, ``accuracy_cp_low`` / ``accuracy_cp_high``."""
    from revinterp.stats import clopper_pearson

    row = {}
    for split, metrics in (behaviour.get("splits") or {}).items():
        prefix = f"behaviour.{split}."
        for name, value in metrics.items():
            if isinstance(value, list) and len(value) == 2 and name.endswith("_ci"):
                row[prefix + name[:-3] + "_ci_low"], row[prefix + name[:-3] + "_ci_high"] = value
            elif not isinstance(value, (list, dict)):
                row[prefix + name] = value
        n, accuracy = metrics.get("n"), metrics.get("accuracy")
        if isinstance(n, int) and n > 0 and isinstance(accuracy, (int, float)):
            cp = clopper_pearson(round(accuracy * n), n)
            row[prefix + "accuracy_cp_low"], row[prefix + "accuracy_cp_high"] = cp.low, cp.high
    return row


def estimate_columns(row: dict, name: str, est) -> None:
    if isinstance(est, dict) and "mean" in est:
        row[name] = est.get("mean")
        row[name + "_low"] = est.get("low", est.get("ci_low"))
        row[name + "_high"] = est.get("high", est.get("ci_high"))


def analysis_columns(stages: dict) -> dict:
    """Key mechanism figures from ``analysis/*.json`` (``analysis.<stage>.<figure>``); a figure whose stage was
    skipped (or that this revinterp's pipeline does not write) is absent."""
    row: dict = {}
    forward = stages.get("forward", {})
    row["analysis.forward.split"] = dig(forward, "prompts", "split") or dig(forward, "split")
    chosen = dig(forward, "localize", "chosen")
    if isinstance(chosen, list):
        row["analysis.forward.localize_chosen"] = "; ".join(map(str, chosen))
        row["analysis.forward.localize_n_chosen"] = len(chosen)
    estimate_columns(row, "analysis.forward.localize_recovered", dig(forward, "localize", "recovered"))
    row["analysis.forward.localize_reached"] = dig(forward, "localize", "reached")
    row["analysis.forward.logit_lens_first_majority"] = dig(forward, "logit_lens", "first_majority_top")
    row["analysis.forward.dla_total"] = dig(forward, "dla", "total")
    reverse = stages.get("reverse", {})
    for split, numbers in (dig(reverse, "interventions", "per_split") or {}).items():
        estimate_columns(row, f"analysis.reverse.total.{split}", dig(numbers, "total"))
        row[f"analysis.reverse.excludes_zero.{split}"] = dig(numbers, "excludes_zero")
        row[f"analysis.reverse.share_of_seen.{split}"] = dig(numbers, "share_of_seen")
    for split, est in (dig(reverse, "weights", "per_split") or {}).items():
        estimate_columns(row, f"analysis.reverse.weights.{split}", est)
    for split, est in (dig(reverse, "gradients", "per_split") or {}).items():
        estimate_columns(row, f"analysis.reverse.gradients.{split}", est)
    row["analysis.reverse.probes_chance"] = dig(reverse, "probes", "chance")
    for name in ("cross_val", "test"):
        row[f"analysis.reverse.probes_{name}_max_accuracy"] = dig(reverse, "probes", "sets", name, "max_accuracy")
    row["analysis.reverse.n_starved"] = dig(reverse, "starvation", "n_starved")
    for role, value in (dig(reverse, "starvation", "embed_shift") or {}).items():
        row[f"analysis.reverse.embed_shift.{role}"] = value
    missing = stages.get("missing", {})
    for split, numbers in (dig(missing, "verdict", "splits") or {}).items():
        row[f"analysis.missing.verdict.{split}"] = dig(numbers, "verdict")
    row["analysis.missing.insertion_restored"] = dig(missing, "verdict", "insertion", "restored")
    dynamics = stages.get("dynamics", {})
    for split, est in (dig(dynamics, "weights", "per_split") or {}).items():
        estimate_columns(row, f"analysis.dynamics.weights_change.{split}", est)
    return {k: v for k, v in row.items() if v is not None}


def trained_columns(run_dir: Path) -> dict:
    from revinterp.models import read_model_config
    from revinterp.training import read_history

    history = read_history(run_dir)
    if not history:
        return {}
    config = read_model_config(run_dir)
    return {"trained.steps": history[-1]["step"], "trained.fitted": bool(history[-1].get("fitted")),
            "trained.d_vocab": config.d_vocab, "trained.n_ctx": config.n_ctx}


def cell_row(out_dir: Path, record: dict, settings: dict, status: dict) -> dict:
    """One row of the table: the cell, its status, its configuration and its figures (read from its run
    directory)."""
    from revinterp.pipeline import BEHAVIOUR_FILE

    name = record["name"]
    run_dir = out_dir / RUNS_DIR / name
    row = {"cell": name, "run_dir": f"{RUNS_DIR}/{name}", "status": "pending", "error": None}
    row.update(config_columns(record))
    marker = dig(_read_optional(run_dir / CELL_FILE), "config")
    done = marker is not None and canonical_json(marker) == canonical_json(record["config"]) \
        and (run_dir / BEHAVIOUR_FILE).is_file()
    if done:
        row["status"] = "done"
    elif dig(status, name, "status") == "failed":
        row["status"], row["error"] = "failed", dig(status, name, "error")
    if not done:
        return row
    row.update(trained_columns(run_dir))
    row.update(behaviour_columns(_read_optional(run_dir / BEHAVIOUR_FILE) or {}))
    if settings.get("analyze"):
        from revinterp.results import ResultsError, load_results

        try:
            _, stages = load_results(run_dir)
            row.update(analysis_columns({name: stage.numbers for name, stage in stages.items()}))
        except ResultsError as e:
            row["error"] = f"analyses unreadable: {e}"
    return row


def _read_optional(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def gather(out_dir: str | Path) -> list[dict]:
    """The table of a sweep directory: one row per cell of its ``sweep.json``, in grid order."""
    out_dir = Path(out_dir)
    if not (out_dir / SWEEP_FILE).is_file():
        raise SweepError(f"{out_dir}: no {SWEEP_FILE}; expected a directory written by 'revinterp sweep'")
    sweep = read_json(out_dir / SWEEP_FILE)
    status = dig(_read_optional(out_dir / STATUS_FILE), "cells") or {}
    return [cell_row(out_dir, record, sweep.get("sweep", {}), status) for record in sweep.get("cells", [])]


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Every column of the rows, in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def is_figure(column: str, values: Sequence) -> bool:
    """Whether a column is a figure worth a summary over seeds: a number (not a flag, an interval bound or a
    count of statements)."""
    if not column.startswith(("behaviour.", "analysis.", "trained.")):
        return False
    if column.endswith(("_low", "_high", ".n", ".n_candidates", ".trained", ".d_vocab", ".n_ctx")):
        return False
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def group_key(row: dict) -> str:
    """The configuration of a row without its seed: cells that differ only by seed share it."""
    return canonical_json({k: v for k, v in row.items() if k == "preset" or k.startswith(CONFIG_PREFIXES)})


def summarize(rows: Sequence[dict], confidence: float = CONFIDENCE) -> dict:
    """Figures over seeds per group of cells that differ only by seed: every seed's value, the mean and
    Student's t interval (:func:`revinterp.stats.t_interval`); finished cells only."""
    from revinterp.stats import t_interval

    done = [r for r in rows if r.get("status") == "done"]
    columns = columns_of(done)
    figures = [c for c in columns if is_figure(c, [r.get(c) for r in done])]
    groups: dict[str, list[dict]] = {}
    for row in done:
        groups.setdefault(group_key(row), []).append(row)
    out = []
    for key, members in groups.items():
        entry = {"config": json.loads(key), "seeds": [r["seed"] for r in members],
                 "cells": [r["cell"] for r in members], "figures": {}}
        for column in figures:
            values = [(r["seed"], r.get(column)) for r in members
                      if isinstance(r.get(column), (int, float)) and math.isfinite(r.get(column))]
            if not values:
                continue
            figure = {"values": [{"seed": s, "value": v} for s, v in values], "n": len(values),
                      "mean": sum(v for _, v in values) / len(values), "low": None, "high": None}
            if len(values) >= 2:
                est = t_interval([float(v) for _, v in values], confidence=confidence)
                figure.update(mean=est.mean, low=est.low, high=est.high)
            else:
                figure["note"] = "one seed: no interval"
            entry["figures"][column] = figure
        out.append(entry)
    return {"method": SUMMARY_METHOD, "confidence": confidence, "grouped_by": "every configuration field but the seed",
            "groups": out}


def summary_rows(summary: dict) -> list[dict]:
    """The summary as flat rows (one per group and figure) for CSV."""
    rows = []
    for group in summary["groups"]:
        for column, figure in group["figures"].items():
            rows.append({**group["config"], "figure": column, "n_seeds": figure["n"], "mean": figure["mean"],
                         "t_low": figure["low"], "t_high": figure["high"],
                         "values": "; ".join(f"seed {v['seed']}: {v['value']!r}" for v in figure["values"]),
                         "method": "t interval over seeds" if figure["low"] is not None else "one seed"})
    return rows


def write_table(path_csv: Path, rows: Sequence[dict], *, jsonl: Path | None = None,
                parquet: Path | None = None) -> dict[str, Path]:
    """Write ``rows`` as CSV, JSON Lines and (when pyarrow is installed) Parquet, each atomically."""
    import pandas as pd

    from revinterp.io import atomic_write, atomic_write_text, json_text

    frame = pd.DataFrame(list(rows), columns=columns_of(rows))
    written = {}
    atomic_write(path_csv, lambda tmp: frame.to_csv(tmp, index=False))
    written["csv"] = path_csv
    if jsonl is not None:
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                 for r in rows]
        atomic_write_text(jsonl, "".join(json_text(r, indent=None) + "\n" for r in clean))
        written["jsonl"] = jsonl
    if parquet is not None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
            written["parquet"] = parquet
    return written


def write_results(out_dir: str | Path) -> Gathered:
    """Gather a sweep directory into its table, summary and report (no training, no analysis)."""
    out_dir = Path(out_dir)
    rows = gather(out_dir)
    summary = summarize(rows)
    files = write_table(out_dir / TABLE_CSV, rows, jsonl=out_dir / TABLE_JSONL, parquet=out_dir / TABLE_PARQUET)
    files = {f"table_{k}": v for k, v in files.items()}
    write_json(out_dir / SUMMARY_JSON, summary)
    files["summary_json"] = out_dir / SUMMARY_JSON
    files["summary_csv"] = write_table(out_dir / SUMMARY_CSV, summary_rows(summary))["csv"]
    files["report"] = write_sweep_report(out_dir, rows=rows, summary=summary)
    return Gathered(rows, summary, files)


def write_sweep_report(out_dir: str | Path, *, rows: list[dict] | None = None, summary: dict | None = None) -> Path:
    """Write ``OUT/sweep_report.html`` from the gathered results (re-gathered from disk when not given)."""
    from revinterp.io import atomic_write_text
    from revinterp.viz.sweep_report import render_sweep_report

    out_dir = Path(out_dir)
    sweep = read_json(out_dir / SWEEP_FILE)
    rows = gather(out_dir) if rows is None else rows
    summary = summarize(rows) if summary is None else summary
    status = dig(_read_optional(out_dir / STATUS_FILE), "cells") or {}
    path = out_dir / REPORT_FILE
    atomic_write_text(path, render_sweep_report(out_dir.name, sweep, rows, summary, status))
    return path


# -- dry run and cost -------------------------------------------------------------------------------------------
COST_METHOD = ("FLOPs upper bound: 6 x parameters x (batch_size x n_ctx) tokens per step x max_steps, plus "
               "2 x parameters x (statements x n_ctx) per evaluation every eval_every steps; early stopping ends "
               "most runs sooner; the analyses are not counted")
CALIBRATION_METHOD = ("seconds per training step measured here on one torch thread (answer-loss forward, backward "
                      "and AdamW on the cell's data, after 3 warm-up steps) x max_steps; an upper bound (early "
                      "stopping) that leaves out boot, evaluation, checkpoints and analyses")


def plan(grid, out_dir: str | Path | None = None, *, calibrate: bool = False, num_cpus: int | None = None) -> dict:
    """What a sweep would run, without starting Ray: every cell with its run directory, whether it is already
    finished in ``out_dir``, its parameter count and estimated cost (see :data:`COST_METHOD`; with ``calibrate``
    also measured seconds, :data:`CALIBRATION_METHOD`)."""
    from revinterp.models import config_for_data, tokenizer_for

    grid = as_grid(grid)
    cells = grid.cells()
    validate(cells)
    existing = False
    if out_dir is not None:
        out_dir = Path(out_dir).expanduser().resolve()
        existing = check_sweep_dir(out_dir, grid, cells)
    params: dict[str, int] = {}
    rates: dict[str, float] = {}
    listed = []
    for cell in cells:
        facts = build_facts(cell.facts, cell.seed)
        tokenizer = tokenizer_for(facts)
        config = config_for_data(cell.model, facts, tokenizer)
        shape = canonical_json(asdict(replace(config, seed=0)))
        if shape not in params:
            params[shape] = parameter_count(config, tokenizer)
        n = params[shape]
        t = cell.training
        flops = 6 * n * t.batch_size * config.n_ctx * t.max_steps \
            + 2 * n * len(facts.statements) * config.n_ctx * (t.max_steps // t.eval_every)
        entry = {"cell": cell.name, "run_dir": str(Path(RUNS_DIR) / cell.name), "values": cell.values,
                 "finished": bool(existing and is_finished(out_dir / RUNS_DIR / cell.name, cell, grid)),
                 "parameters": n, "max_steps": t.max_steps, "tokens_per_step": t.batch_size * config.n_ctx,
                 "gflop_upper_bound": flops / 1e9}
        if calibrate:
            rate_key = canonical_json([shape, t.batch_size, t.loss, cell.facts, cell.seed])
            if rate_key not in rates:
                rates[rate_key] = seconds_per_step(facts, config, tokenizer, t)
            entry["seconds_per_step"] = rates[rate_key]
            entry["seconds_upper_bound"] = rates[rate_key] * t.max_steps
        listed.append(entry)
    todo = [c for c in listed if not c["finished"]]
    slots = num_cpus or os.cpu_count() or 1
    out = {"grid": grid.to_dict(), "axes": {k: list(v) for k, v in grid.axes.items()}, "n_cells": len(cells),
           "n_to_run": len(todo), "cells": listed, "cost_method": COST_METHOD,
           "gflop_upper_bound": sum(c["gflop_upper_bound"] for c in todo), "slots": slots}
    if calibrate:
        total = sum(c["seconds_upper_bound"] for c in todo)
        out.update(calibration_method=CALIBRATION_METHOD, seconds_upper_bound=total,
                   wall_seconds_upper_bound=total / min(slots, max(1, len(todo))) if todo else 0.0)
    return out


def parameter_count(config, tokenizer) -> int:
    """Parameters of a model of ``config`` (booted on the CPU and counted)."""
    from revinterp.models import build_model

    model = build_model(config, tokenizer, "cpu")
    return sum(p.numel() for p in model.parameters())


def seconds_per_step(facts, config, tokenizer, training, steps: int = 10, warmup: int = 3) -> float:
    """Measured seconds per training step of ``config`` on ``facts`` on one torch thread."""
    import torch

    from revinterp.data import encode_statements
    from revinterp.models import build_model
    from revinterp.training import batch_loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(config, tokenizer, "cpu")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
        data = encode_statements(facts, facts.train, tokenizer)
        batch = data.select(torch.arange(min(len(data), training.batch_size)))
        elapsed = 0.0
        for i in range(warmup + steps):
            start = time.perf_counter()
            loss = batch_loss(model, batch, training.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()
            if i >= warmup:
                elapsed += time.perf_counter() - start
        return elapsed / steps
    finally:
        torch.set_num_threads(threads)


def format_plan(p: dict) -> str:
    """The dry run as text: one line per cell, then the totals and how the cost was estimated."""
    calibrated = "seconds_upper_bound" in p
    lines = [f"{p['n_cells']} cells ({p['n_to_run']} to run); axes: "
             + (", ".join(f"{k} = {v}" for k, v in p["axes"].items()) or "none")]
    header = f"{'run directory':<32}{'state':<10}{'params':>10}{'steps':>7}{'GFLOP<=':>10}"
    header += f"{'s/step':>9}{'s<=':>8}" if calibrated else ""
    lines += [header + "  values", "-" * (len(header) + 8)]
    for c in p["cells"]:
        line = (f"{c['run_dir']:<32}{'finished' if c['finished'] else 'to run':<10}{c['parameters']:>10,}"
                f"{c['max_steps']:>7}{c['gflop_upper_bound']:>10.1f}")
        if calibrated:
            line += f"{c['seconds_per_step']:>9.4f}{c['seconds_upper_bound']:>8.0f}"
        lines.append(line + "  " + ", ".join(f"{k}={v}" for k, v in c["values"].items()))
    lines.append(f"total to run: <= {p['gflop_upper_bound']:.1f} GFLOP ({p['cost_method']})")
    if calibrated:
        lines.append(f"measured: <= {p['seconds_upper_bound']:.0f} s of training in all, <= "
                     f"{p['wall_seconds_upper_bound']:.0f} s wall on {p['slots']} slots ({p['calibration_method']})")
    return "\n".join(lines)


# -- the command line's grid ------------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[str, list]:
    """``FIELD=V1,V2,...`` as ``(field, [values])``; each value read as a TOML value (``0.01``, ``true``,
    ``[0.9, 0.99]``), else as a string (``none``, ``reverse_entity``)."""
    tomllib = toml_module()
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not raw.strip():
        raise SweepError(f"--set {text!r}: expected FIELD=VALUE or FIELD=V1,V2,... (e.g. lr=0.01,0.003)")
    try:
        return name, list(tomllib.loads(f"v = [{raw}]")["v"])
    except tomllib.TOMLDecodeError:
        pass
    values = []
    for item in raw.split(","):
        item = item.strip()
        try:
            values.append(tomllib.loads(f"v = {item}")["v"])
        except tomllib.TOMLDecodeError:
            values.append(item)
    return name, values


def grid_from_options(grid_file: str | Path | None = None, assignments: Sequence[str] = (), *,
                      seeds: Sequence[int] | None = None, presets: Sequence[str] | None = None,
                      analyze: bool | None = None, max_pairs: int | None = None,
                      report: bool | None = None) -> Grid:
    """The grid of ``revinterp sweep``: the TOML file's, then each ``--set``, ``--seeds`` and ``--preset``
    replacing that field, and the settings given."""
    data = {"grid": {}, "sweep": {}}
    base = None
    if grid_file is not None:
        tomllib = toml_module()
        path = Path(grid_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SweepError(f"grid file {path}: no such file; expected a TOML file with a [grid] table") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SweepError(f"grid file {path}: not valid TOML ({e})") from None
        base = path.parent
        data = {"grid": dict(data.get("grid", {})), "sweep": dict(data.get("sweep", {})),
                **{k: v for k, v in data.items() if k not in ("grid", "sweep")}}
    grid = Grid.from_mapping(data, base=base)  # the file's paths from its folder; the command line's from here
    given = {}
    for text in assignments:
        name, values = parse_assignment(text)
        given[name] = values
    if seeds:
        given["seed"] = list(seeds)
    if presets:
        given["preset"] = list(presets)
    settings = grid.settings()
    for name, value in (("analyze", analyze), ("max_pairs", max_pairs), ("report", report)):
        if value is not None:
            settings[name] = value
    merged = {k: list(v) for k, v in grid.values.items()}
    for name, values in given.items():
        canonical = ALIASES.get(name, name)
        for key in [k for k in merged if ALIASES.get(k, k) == canonical]:
            del merged[key]
        merged[name] = values
    if not merged:
        raise SweepError("an empty grid; expected fields and values (--grid FILE.toml, --set FIELD=V1,V2, --seeds, "
                         "--preset)")
    return Grid.from_mapping({"grid": merged, "sweep": settings})
