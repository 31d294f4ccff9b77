"""Training dynamics: any quantity evaluated over a run's saved checkpoints, as curves.

Training writes weights at log-spaced steps (:func:`revinterp.training.checkpoint_steps`);
:func:`track` loads each checkpoint in turn and applies a *measure*: a function of the model and
the facts returning named numbers, or :class:`~revinterp.stats.Estimate` values with intervals.
:func:`behaviour_dynamics` reads the periodic evaluation of ``history.jsonl`` instead (no model runs).

Example:
    >>> from revinterp.evaluation import evaluate
    >>> def held_out(model, facts):
    ...     behaviour = evaluate(model, facts, ["reverse_held_out"])
    ...     return {"held-out reverse accuracy": behaviour["reverse_held_out"].accuracy}
    >>> curves = track("runs/default-seed0", held_out)          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.checkpoints import as_loaded_run, iter_checkpoints
from revinterp.models import LoadedRun
from revinterp.stats import Estimate
from revinterp.training import list_checkpoints

Measure = Callable[[object, object], dict[str, "float | Estimate"]]


@dataclass(frozen=True)
class Dynamics:
    """Curves over training steps: ``values[name][k]`` at ``steps[k]``, with optional intervals."""

    steps: tuple[int, ...]
    values: dict[str, Float[Tensor, " step"]]
    low: dict[str, Float[Tensor, " step"]]
    high: dict[str, Float[Tensor, " step"]]

    def to_frame(self):
        import pandas as pd

        rows = []
        for name, curve in self.values.items():
            for k, step in enumerate(self.steps):
                row = {"step": step, "quantity": name, "value": curve[k].item()}
                if name in self.low:
                    row.update(ci_low=self.low[name][k].item(), ci_high=self.high[name][k].item())
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [f"{len(self.steps)} checkpoints, steps {self.steps[0]} to {self.steps[-1]}"]
        for name, curve in self.values.items():
            lines.append(f"  {name}: {curve[0].item():.3g} at step {self.steps[0]} -> {curve[-1].item():.3g} "
                         f"at step {self.steps[-1]}")
        return "\n".join(lines)

    def plot(self):
        """Lines over steps (log axis, step 0 drawn at 0.5), shaded 95 % intervals where known."""
        import plotly.graph_objects as go

        x = [max(s, 0.5) for s in self.steps]
        fig = go.Figure()
        for name, curve in self.values.items():
            if name in self.low:
                fig.add_scatter(x=x + x[::-1], y=self.high[name].tolist() + self.low[name].tolist()[::-1],
                                fill="toself", line=dict(width=0), opacity=0.2, showlegend=False, hoverinfo="skip",
                                name=name)
            fig.add_scatter(x=x, y=curve.tolist(), mode="lines+markers", name=name)
        fig.update_layout(xaxis=dict(type="log", title="training step"), title="Training dynamics")
        return fig


def collect(steps: list[int], records: list[dict[str, float | Estimate]]) -> Dynamics:
    """Stack per-step records (name -> number or Estimate) into curves."""
    names = list(dict.fromkeys(name for r in records for name in r))
    values, low, high = {}, {}, {}
    for name in names:
        entries = [r.get(name, math.nan) for r in records]
        values[name] = torch.tensor([e.mean if isinstance(e, Estimate) else float(e) for e in entries])
        if any(isinstance(e, Estimate) for e in entries):
            low[name] = torch.tensor([e.low if isinstance(e, Estimate) else math.nan for e in entries])
            high[name] = torch.tensor([e.high if isinstance(e, Estimate) else math.nan for e in entries])
    return Dynamics(steps=tuple(steps), values=values, low=low, high=high)


def track(run: str | Path | LoadedRun, measure: Measure, *, device=None, every: int = 1) -> Dynamics:
    """Apply ``measure(model, facts)`` at every ``every``-th saved checkpoint of a run (and the last).

    Args:
        run: a run directory written by :func:`revinterp.training.train`, or a loaded run (its model is left as
            it is: the checkpoints go into a separate one, :func:`~revinterp.analysis.checkpoints.iter_checkpoints`).
        measure: ``measure(model, facts) -> {name: number or Estimate}``.
        device: where to load the model (default the loaded run's device, or
            :func:`revinterp.models.default_device`).
        every: measure every ``every``-th checkpoint (the last one always).
    """
    run = as_loaded_run(run, device=device)
    steps = [step for step, _ in list_checkpoints(run.path)]
    if not steps:
        raise ValueError(f"{run.path}: no checkpoints; expected checkpoints/step_*.safetensors")
    chosen = steps[::every]
    if chosen[-1] != steps[-1]:
        chosen.append(steps[-1])
    records = [measure(model, run.facts) for _, model in iter_checkpoints(run, chosen, device=device)]
    return collect(chosen, records)


def behaviour_dynamics(run_dir: str | Path, quantity: str = "accuracy") -> Dynamics:
    """Per-split ``accuracy`` (every answer token the arg max) or ``probability`` of the answer over
    training, from the run's periodic evaluation (``history.jsonl``)."""
    from revinterp.training import read_history

    if quantity not in ("accuracy", "probability"):
        raise ValueError(f"quantity={quantity!r}: expected 'accuracy' or 'probability'")
    history = read_history(run_dir)
    if not history:
        raise ValueError(f"{run_dir}: no history.jsonl; expected a run directory written by revinterp train")
    records = [{split: m[quantity] for split, m in h["splits"].items()} for h in history]
    return collect([h["step"] for h in history], records)
