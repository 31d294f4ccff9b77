"""Saved analysis results of a run: what :mod:`revinterp.pipeline` writes and :mod:`revinterp.viz.report` reads.

Each analysis stage of a run directory is one JSON file, ``RUN_DIR/analysis/<stage>.json``::

    {"results_version": 1, "stage": "forward",
     "numbers": {...},                                  # what the stage measured, as plain JSON values
     "figures": [{"name", "title", "caption", "spec"}], # spec: a plotly figure ({"data": [...], "layout": {...}})
     "views": [{"name", "title", "caption", "element", "props"}]}  # circuitsvis views: a component and its props

plus ``RUN_DIR/analysis/run.json`` (``{"results_version", "title", "config"}``). Everything is validated on
load (:class:`ResultsError` names the file, the field and what was expected); names are lowercase identifiers and
views are data (a circuitsvis component and its props), never HTML, so a tampered file can neither inject markup
nor make the report read another file. JSON is written without NaN or infinities (``allow_nan=False``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from revinterp.io import atomic_write_text

RESULTS_VERSION = 1
ANALYSIS_DIR = "analysis"
RUN_INFO = "run.json"
STAGES = ("behaviour", "forward", "reverse", "missing", "dynamics", "verdict")
"""The analysis stages, in the order a reader asks: does the curse appear, where is the forward fact, why is
there no reverse path, what exactly is missing on a held-out reverse prompt, how did it evolve, and what the
evidence supports (the verdict, computed from the others' numbers)."""

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ResultsError(ValueError):
    """A run directory without saved analyses, or saved analyses that are malformed or of another version."""


@dataclass(frozen=True)
class Figure:
    """A plotly figure as JSON data (``spec``), with its title and caption."""

    name: str
    title: str
    spec: dict
    caption: str = ""


VIEW_ELEMENTS = ("AttentionHeads",)
"""The circuitsvis components a view may name."""


@dataclass(frozen=True)
class View:
    """A circuitsvis view as data: the component (``element``, e.g. ``"AttentionHeads"``) and its props (the
    keyword arguments of ``circuitsvis.attention.attention_heads`` in circuitsvis's camelCase, tensors as lists)."""

    name: str
    title: str
    element: str
    props: dict
    caption: str = ""


@dataclass
class StageResult:
    """What one analysis stage measured (``numbers``) and its figures and views."""

    stage: str
    numbers: dict = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    views: list[View] = field(default_factory=list)

    def figure(self, name: str, title: str, figure, caption: str = "") -> None:
        """Add a plotly figure (anything with ``to_json()``)."""
        self.figures.append(Figure(name, title, json.loads(figure.to_json()), caption))


def dumps(data) -> str:
    """JSON text of ``data``; non-finite numbers are an error, naming where they are."""
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError:
        raise ResultsError(f"non-finite number in the results at {_first_non_finite(data)}; expected finite values "
                           "(a diverged model or an undefined ratio must be reported, not saved as a number)") from None


def _first_non_finite(data, where: str = "") -> str:
    if isinstance(data, float) and not math.isfinite(data):
        return where or "<top>"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return ""


def save_stage(run_dir: str | Path, result: StageResult) -> Path:
    """Write ``RUN_DIR/analysis/<stage>.json`` atomically."""
    _check_name(result.stage, "stage", STAGES)
    for item in (*result.figures, *result.views):
        _check_name(item.name, "figure or view name")
    data = {
        "results_version": RESULTS_VERSION, "stage": result.stage, "numbers": result.numbers,
        "figures": [{"name": f.name, "title": f.title, "caption": f.caption, "spec": f.spec} for f in result.figures],
        "views": [{"name": v.name, "title": v.title, "caption": v.caption, "element": v.element, "props": v.props}
                  for v in result.views],
    }
    path = Path(run_dir) / ANALYSIS_DIR / f"{result.stage}.json"
    atomic_write_text(path, dumps(data))
    return path


def save_run_info(run_dir: str | Path, title: str, config: dict) -> Path:
    """Write ``RUN_DIR/analysis/run.json``: the report's title and the run's configuration."""
    path = Path(run_dir) / ANALYSIS_DIR / RUN_INFO
    atomic_write_text(path, dumps({"results_version": RESULTS_VERSION, "title": title, "config": config}))
    return path


def load_results(run_dir: str | Path) -> tuple[dict, dict[str, StageResult]]:
    """``(run info, {stage: StageResult})`` of a run's saved analyses, validated."""
    out = Path(run_dir) / ANALYSIS_DIR
    info_path = out / RUN_INFO
    if not info_path.is_file():
        raise ResultsError(f"{run_dir}: no saved analyses ({info_path}); run 'revinterp analyze {run_dir}' first")
    info = _read(info_path)
    _expect(info, info_path, {"results_version": int, "title": str, "config": dict})
    stages = {}
    for stage in STAGES:
        path = out / f"{stage}.json"
        if not path.is_file():
            raise ResultsError(f"{path}: missing; run 'revinterp analyze {run_dir}' again")
        stages[stage] = _load_stage(path, stage)
    return info, stages


def _load_stage(path: Path, stage: str) -> StageResult:
    data = _read(path)
    _expect(data, path, {"results_version": int, "stage": str, "numbers": dict, "figures": list, "views": list})
    if data["stage"] != stage:
        raise ResultsError(f"{path}: field 'stage' is {data['stage']!r}; expected {stage!r}")
    figures, views = [], []
    for i, f in enumerate(data["figures"]):
        where = f"{path}: figures[{i}]"
        _expect(f, where, {"name": str, "title": str, "caption": str, "spec": dict})
        _check_name(f["name"], f"{where}.name")
        if not isinstance(f["spec"].get("data"), list) or not isinstance(f["spec"].get("layout", {}), dict):
            raise ResultsError(f"{where}.spec: expected a plotly figure {{'data': [...], 'layout': {{...}}}}")
        figures.append(Figure(f["name"], f["title"], f["spec"], f["caption"]))
    for i, v in enumerate(data["views"]):
        where = f"{path}: views[{i}]"
        _expect(v, where, {"name": str, "title": str, "caption": str, "element": str, "props": dict})
        _check_name(v["name"], f"{where}.name")
        if v["element"] not in VIEW_ELEMENTS:
            raise ResultsError(f"{where}.element is {v['element']!r}; expected one of {VIEW_ELEMENTS}")
        views.append(View(v["name"], v["title"], v["element"], v["props"], v["caption"]))
    return StageResult(stage, data["numbers"], figures, views)


def _read(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ResultsError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: holds a {type(data).__name__}; expected a JSON object")
    if data.get("results_version") != RESULTS_VERSION:
        raise ResultsError(f"{path}: results of version {data.get('results_version')!r}; this revinterp reads "
                           f"version {RESULTS_VERSION}: run 'revinterp analyze' again")
    return data


def _expect(data, where, fields: dict[str, type]) -> None:
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: holds a {type(data).__name__}; expected a JSON object")
    for name, kind in fields.items():
        if name not in data:
            raise ResultsError(f"{where}: no field {name!r}; expected one ({kind.__name__})")
        if not isinstance(data[name], kind) or isinstance(data[name], bool) and kind is int:
            raise ResultsError(f"{where}: field {name!r} is a {type(data[name]).__name__}; expected {kind.__name__}")


def _check_name(name: str, what: str, allowed: tuple[str, ...] | None = None) -> None:
    if allowed is not None and name not in allowed:
        raise ResultsError(f"{what} {name!r}: expected one of {allowed}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ResultsError(f"{what} {name!r}: expected a lowercase identifier ({NAME.pattern})")


def skipped_analyses(stages: dict[str, StageResult]) -> list[tuple[str, str]]:
    """``("stage.analysis", reason)`` for every analysis of the saved stages that did not run, in stage order."""
    return [(f"{name}.{key}", value["skipped"]["reason"]) for name, stage in stages.items()
            for key, value in stage.numbers.items() if isinstance(value, dict) and "skipped" in value]
