"""Effective-weight asymmetry: the token-to-next-token logit maps that the reversal-curse theory tracks.

Zhu et al. (2024), "Towards a Theoretical Understanding of the 'Reversal Curse' via Training Dynamics", explain the
curse through *effective weights*: the map ``Y`` from a context token to next-token logits. Training on ``A_i -> B_i``
raises ``Y[A_i, B_i]``; nothing raises ``Y[B_i, A_i]`` unless ``B_i <- A_i`` is trained, so the held-out reverse entry
stays where it started. This module reads those maps off a trained transformer, three ways:

- ``path="direct"``: the direct path (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits")::

      Y_direct = W_E W_U                  (the token's own contribution to the logits at its own position)

- ``path="ov"``: each head's OV path, one map per head ``(l, h)``::

      Y_OV[l, h] = W_E W_V[l, h] W_O[l, h] W_U

  This is what head ``(l, h)`` adds to the logits at the last prompt position *when it attends to the subject token*
  with weight 1; the head's actual attention weight from the last prompt position to the subject on each prompt is
  kept in :attr:`EffectiveWeights.attention`. For layers above 0 it is the virtual path that skips the earlier layers.
- ``path="end_to_end"``: the whole model, measured: ``Y_r[x, :] = logits(<bos> x r)[-1]`` for every subject ``x`` of
  relation ``r``. For a deeper model this is the only map that is exact.

With the answer-only loss of the seed, nothing is trained at the subject's own position, so the direct path cannot
store a fact for these prompts: it is a control (expected and measured: no effect). Positional embeddings and biases
add the same vector to every row of a block (up to the per-row LayerNorm scale) and are left out of the maps.

LayerNorm. The direct and OV maps are read from a compatibility-mode deep copy (``enable_compatibility_mode``: every
LayerNorm weight folded into the next matrix, biases into biases, writing weights and ``W_U`` centred), where each
LayerNorm is exactly ``x -> x / scale(x)`` with a positive per-position scalar ``scale``. That scalar is the one
nonlinearity left. ``scale="none"`` omits it (pure weight products); a positive factor per row changes neither the
sign of a row-baselined effect nor which column wins a row. ``scale="prompts"`` applies it as a linear approximation
measured on the prompts ``<bos> x r``: row ``x`` of the direct map is divided by the final LayerNorm's scale at the
subject's position (where the direct path of ``x`` is read), and row ``x`` of head ``(l, h)``'s OV map is multiplied by
the head's attention to the subject and divided by ``ln1``'s scale at the subject and the final scale at the last
position: the head's actual contribution from the subject token in a one-layer model. The caller's model is never
modified.

Every row is centred over the whole vocabulary (a softmax sees only differences within a row; compatibility mode
centres ``W_U``). The maps are restricted to the entity blocks: for each relation ``r``, rows are its subjects and
columns its objects, ordered so that each statement ``s r o`` lies on the diagonal (one-to-one relations). For a
statement ``(s, r, o)`` the *entry* is ``Y[s, o]`` and its *effect* is the entry minus a baseline of non-fact entries of
the same block:

- ``baseline="row"``: ``Y[s, o] - mean_{o' : (s, r, o') no fact} Y[s, o']``, what a softmax over the row sees. For a
  held-out statement it mixes two things: the missing pair-specific entry, and the push-down of an answer that is
  never trained as an answer of ``r`` (the answer side of the "embedding starvation" of the design notes), which
  makes the effect negative;
- ``baseline="split"`` (default): the same row mean over the answers ``o'`` of the other statements of the same split
  only, so that the answers compared share their training history (a held-out answer against other held-out
  answers). This is the pair-specific effect the theory speaks of: zero when nothing ties ``s`` to ``o`` in particular.

Forward entries are ``Y[A_i, B_i]`` (relation ``->``), reverse entries ``Y[B_i, A_i]`` (relation ``<-``), grouped by the
statement's split; the per-split means come with bootstrap intervals over facts (:func:`revinterp.stats.bootstrap_ci`),
and :meth:`EffectiveWeights.asymmetry` gives one number per map: over the one-way facts, the trained direction's
effect minus the held-out direction's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.checkpoints import as_loaded_run, iter_checkpoints
from revinterp.data import SPLITS, FactSet, Statement
from revinterp.data.tokenizer import encode_words
from revinterp.evaluation import model_device
from revinterp.models import LoadedRun, unpack_run
from revinterp.stats import Estimate, bootstrap_ci, error_bars

PATHS = ("direct", "ov", "end_to_end")
SCALES = ("none", "prompts")
BASELINES = ("split", "row")

__all__ = [
    "BASELINES", "PATHS", "SCALES", "EffectiveWeights", "EffectiveWeightsDynamics", "effective_weights",
    "effective_weights_over_training",
]


@dataclass(frozen=True)
class EffectiveWeights:
    """Effective-weight entries of every statement, one row per map component (the direct path, a head, the model).

    Attributes:
        path: ``"direct"``, ``"ov"`` or ``"end_to_end"``.
        labels: one name per component: ``("direct",)``, ``("L0H0", "L0H1", ...)`` or ``("end_to_end",)``.
        statements: the statements whose entries are kept, in block order (split, then fact).
        entry: ``Y[subject, object]`` per component and statement (row centred over the vocabulary).
        row_baseline: mean of the non-fact entries of the statement's row in its block.
        split_baseline: mean of the non-fact entries of the statement's row in the columns of the answers of the other
            statements of its split (the row baseline where the split has a single statement).
        attention: for ``path="ov"``, each head's attention weight from the last prompt position to the subject on
            the statement's prompt; ``None`` for the other paths.
        blocks: per relation, the entity block of every component, ``[component, subject, object]``.
        block_rows: per relation, the subjects (rows of its block).
        block_columns: per relation, the objects (columns of its block).
        scale: ``"none"`` or ``"prompts"`` (how the LayerNorm scales were treated; see the module docstring).
        step: the training step of the weights, when known.
    """

    path: str
    labels: tuple[str, ...]
    statements: tuple[Statement, ...]
    entry: Float[Tensor, "component statement"]
    row_baseline: Float[Tensor, "component statement"]
    split_baseline: Float[Tensor, "component statement"]
    attention: Float[Tensor, "component statement"] | None
    blocks: dict[str, Float[Tensor, "component _ _"]]
    block_rows: dict[str, tuple[str, ...]]
    block_columns: dict[str, tuple[str, ...]]
    scale: str = "none"
    step: int | None = None

    @property
    def splits(self) -> list[str]:
        """The splits present among the statements, in :data:`revinterp.data.SPLITS` order."""
        present = {s.split for s in self.statements}
        return [name for name in SPLITS if name in present]

    def component_index(self, component: int | str) -> int:
        if isinstance(component, str):
            if component not in self.labels:
                raise KeyError(f"component {component!r}: expected one of {list(self.labels)}")
            return self.labels.index(component)
        if not -len(self.labels) <= component < len(self.labels):
            raise IndexError(f"component {component}: this result has {len(self.labels)} ({list(self.labels)})")
        return component

    def effect(self, baseline: str = "split") -> Float[Tensor, "component statement"]:
        """Entry minus its baseline: ``"split"`` (``Y[s, o]`` minus the row's mean over the other answers of the same
        split) or ``"row"`` (minus the row's mean over every non-fact column of the block)."""
        if baseline == "row":
            return self.entry - self.row_baseline
        if baseline == "split":
            return self.entry - self.split_baseline
        raise ValueError(f"baseline={baseline!r}: expected one of {BASELINES}")

    def estimate(self, split: str, component: int | str = 0, *, baseline: str = "split") -> Estimate:
        """Mean effect over the statements of ``split`` with a 95 % bootstrap interval over facts."""
        rows = [k for k, s in enumerate(self.statements) if s.split == split]
        if not rows:
            raise KeyError(f"split {split!r} has no statements here; present: {self.splits}")
        return bootstrap_ci(self.effect(baseline)[self.component_index(component), rows].detach().cpu())

    def asymmetry_values(self, component: int | str = 0, *, baseline: str = "split") -> Float[Tensor, " fact"]:
        """Per one-way fact (one direction trained, the other held out): trained effect minus held-out effect."""
        effect = self.effect(baseline)[self.component_index(component)]
        trained: dict[int, float] = {}
        held_out: dict[int, float] = {}
        for k, s in enumerate(self.statements):
            (trained if s.trained else held_out)[s.fact] = effect[k].item()
        facts = [f for f in held_out if f in trained]
        return torch.tensor([trained[f] - held_out[f] for f in facts], dtype=torch.float64)

    def asymmetry(self, component: int | str = 0, *, baseline: str = "split") -> Estimate:
        """The asymmetry statistic: mean over one-way facts of (trained-direction effect - held-out-direction
        effect), with a 95 % bootstrap interval over those facts."""
        values = self.asymmetry_values(component, baseline=baseline)
        if values.numel() == 0:
            raise ValueError("no one-way fact (one direction trained, the other held out) among the statements")
        return bootstrap_ci(values)

    def _rows_by_relation(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for k, s in enumerate(self.statements):
            rows.setdefault(s.relation, []).append(k)
        return rows

    def to_frame(self):
        """One row per (component, statement): split, subject, relation, object, fact, entry, the baselines, both
        effects and (OV path) the head's attention to the subject."""
        import pandas as pd

        n_components, n = self.entry.shape
        data = {
            "component": [c for c in self.labels for _ in range(n)],
            "split": [s.split for s in self.statements] * n_components,
            "trained": [s.trained for s in self.statements] * n_components,
            "subject": [s.subject for s in self.statements] * n_components,
            "relation": [s.relation for s in self.statements] * n_components,
            "object": [s.object for s in self.statements] * n_components,
            "fact": [s.fact for s in self.statements] * n_components,
        }
        for name in ("entry", "row_baseline", "split_baseline"):
            data[name] = getattr(self, name).detach().cpu().flatten().tolist()
        for baseline in BASELINES:
            data[f"effect_{baseline}"] = self.effect(baseline).detach().cpu().flatten().tolist()
        if self.attention is not None:
            data["attention"] = self.attention.detach().cpu().flatten().tolist()
        frame = pd.DataFrame(data)
        frame.insert(0, "path", self.path)
        if self.step is not None:
            frame.insert(0, "step", self.step)
        return frame

    def plot(self, component: int | str = 0, relation: str | None = None, *, baseline: str = "split"):
        """Plotly figure: the entity block of one relation (pairs on the diagonal, rows and columns ordered by split)
        beside the mean effect per split with 95 % bootstrap intervals."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        c = self.component_index(component)
        relation = relation if relation is not None else next(iter(self.blocks))
        if relation not in self.blocks:
            raise KeyError(f"relation {relation!r}: expected one of {list(self.blocks)}")
        block = self.blocks[relation][c].detach().cpu()
        splits = self.splits
        estimates = [self.estimate(split, c, baseline=baseline) for split in splits]
        fig = make_subplots(
            rows=1, cols=2, column_widths=[0.55, 0.45],
            subplot_titles=(f"Y[subject, object], relation {relation} (pairs on the diagonal)",
                            f"effect ({baseline} baseline), mean and 95% CI"),
        )
        limit = block.abs().max().item()
        fig.add_trace(go.Heatmap(
            z=block.tolist(), x=list(self.block_columns[relation]), y=list(self.block_rows[relation]),
            colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit, colorbar=dict(x=0.5, len=0.9),
        ), row=1, col=1)
        # names as ticks only where they can be read; the hover always names the subject and the object
        readable = len(self.block_columns[relation]) <= 30 and len(self.block_rows[relation]) <= 30
        fig.data[-1].hovertemplate = "subject %{y}<br>object %{x}<br>Y %{z:.3g}<extra></extra>"
        fig.update_xaxes(title_text="object", showticklabels=readable, tickangle=-60, automargin=True, row=1, col=1)
        fig.update_yaxes(title_text="subject", showticklabels=readable, automargin=True, autorange="reversed",
                         row=1, col=1)
        fig.add_trace(go.Bar(
            x=splits, y=[e.mean for e in estimates], showlegend=False,
            marker_color=["#1f77b4" if SPLITS[s] else "#d62728" for s in splits],
            error_y=error_bars(estimates),
        ), row=1, col=2)
        fig.update_layout(title=f"Effective weights, {self.path} path, {self.labels[c]} (scale {self.scale})"
                                + (f", step {self.step}" if self.step is not None else ""))
        return fig

    def summary(self, *, baseline: str = "split") -> str:
        """Per component: the mean effect per split with its 95 % interval, and the asymmetry statistic."""
        splits = self.splits
        lines = [f"effective weights, {self.path} path (scale {self.scale}, {baseline} baseline, "
                 f"{len(self.statements)} statements"
                 + (f", step {self.step}" if self.step is not None else "") + "): mean effect [95% CI]"]
        for c, label in enumerate(self.labels):
            parts = [f"{split} {self.estimate(split, c, baseline=baseline)}" for split in splits]
            if self.asymmetry_values(c, baseline=baseline).numel():
                parts.append(f"asymmetry {self.asymmetry(c, baseline=baseline)}")
            if self.attention is not None:
                parts.append("attention to subject " + ", ".join(
                    f"{relation} {self.attention[c, rows].mean().item():.2f}"
                    for relation, rows in self._rows_by_relation().items()))
            lines.append(f"  {label:<11}" + "; ".join(parts))
        return "\n".join(lines)


def single_token_entities(statements: Iterable[Statement]) -> bool:
    """Whether every subject and object of ``statements`` (e.g. ``facts.statements``) is one token (word): the
    effective-weight maps are token-to-token and need it."""
    return all(len(s.subject.split()) == 1 and len(s.object.split()) == 1 for s in statements)


@torch.no_grad()
def effective_weights(
    model_or_run,
    facts: FactSet | None = None,
    *,
    path: str = "direct",
    scale: str = "none",
    splits: Sequence[str] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    tokenizer=None,
    step: int | None = None,
) -> EffectiveWeights:
    """Effective-weight entries ``Y[subject, object]`` of every statement, from the weights or the whole model.

    The maps (Zhu et al. 2024, effective weights; Elhage et al. 2021, direct and OV paths)::

        direct:      Y = W_E W_U
        ov:          Y[l, h] = W_E W_V[l, h] W_O[l, h] W_U          (head (l, h) attending to the subject)
        end_to_end:  Y_r[x, :] = logits(<bos> x r)[-1]              (the model on every prompt of relation r)

    each row centred over the vocabulary, restricted to the entity blocks and compared with the non-fact entries of
    the same block (see the module docstring, also for the LayerNorm treatment).

    Runs without autograd: no graph is built for any map.

    Args:
        model_or_run: a :class:`~revinterp.models.LoadedRun` (``effective_weights(run)``), or a
            ``TransformerBridge`` with its ``facts``; it is not modified (the direct and OV maps use a
            compatibility-mode copy).
        facts: the fact set the model was trained on (only with a model, not with a run); its entities must be
            single tokens.
        path: ``"direct"``, ``"ov"`` or ``"end_to_end"``.
        scale: ``"none"`` or ``"prompts"`` (direct and OV paths only; LayerNorm scales and, for OV, the attention to
            the subject, measured on the prompts).
        splits: keep the statements of these splits (default every split); blocks and baselines always use every
            statement of the relation.
        heads: for ``path="ov"``, the ``(layer, head)`` pairs to read (default every head).
        tokenizer: default the run's, or ``model.tokenizer``.
        step: the training step of the weights, recorded in the result.

    Returns:
        An :class:`EffectiveWeights` with one component per map (one per head for ``path="ov"``).

    Example:
        >>> from revinterp.models import load_run                                        # doctest: +SKIP
        >>> run = load_run("runs/seed0")                                                 # doctest: +SKIP
        >>> ew = effective_weights(run, path="end_to_end")                               # doctest: +SKIP
        >>> ew.estimate("reverse_held_out"), ew.asymmetry()                              # doctest: +SKIP
    """
    if path not in PATHS:
        raise ValueError(f"path={path!r}: expected one of {PATHS}")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: expected one of {SCALES}")
    if path == "end_to_end" and scale != "none":
        raise ValueError("scale='prompts' applies to the direct and OV paths; the end-to-end map is exact already")
    if heads is not None and path != "ov":
        raise ValueError(f"heads={heads!r} given for path={path!r}; heads select OV maps (path='ov')")
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    keep = set(splits) if splits is not None else None
    if keep is not None and (unknown := keep - set(SPLITS)):
        raise ValueError(f"unknown splits {sorted(unknown)}; expected names from {list(SPLITS)}")
    blocks_spec = _entity_blocks(facts)
    device = model_device(model)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if path == "ov":
        heads = list(heads) if heads is not None else [(lay, h) for lay in range(n_layers) for h in range(n_heads)]
        for lay, h in heads:
            if not (0 <= lay < n_layers and 0 <= h < n_heads):
                raise ValueError(f"head ({lay}, {h}): expected layer < {n_layers} and head < {n_heads}")
        labels = tuple(f"L{lay}H{h}" for lay, h in heads)
    else:
        labels = (path,)

    analysed = None
    if path != "end_to_end":
        analysed = copy.deepcopy(model)
        if not getattr(analysed, "compatibility_mode", False):
            analysed.enable_compatibility_mode()
        analysed.eval()

    blocks: dict[str, Tensor] = {}
    attention_rows: dict[str, Tensor] = {}
    for relation, (subjects, objects, _) in blocks_spec.items():
        prompts, subject_pos = _prompts(facts, tokenizer, relation, subjects, device)
        if path == "end_to_end":
            maps, attention = _centre(model(prompts)[:, -1].float())[None], None
        else:
            maps, attention = _weight_maps(analysed, path, scale, heads, prompts, subject_pos)
        blocks[relation] = maps[:, :, _token_ids(tokenizer, objects, device)].float()
        if attention is not None:
            attention_rows[relation] = attention

    statements, values = [], {name: [] for name in ("entry", "row", "split", "attention")}
    for relation, (subjects, objects, rel_statements) in blocks_spec.items():
        block = blocks[relation]
        rows = torch.tensor([subjects.index(s.subject) for s in rel_statements], device=device)
        cols = torch.tensor([objects.index(s.object) for s in rel_statements], device=device)
        is_fact = torch.zeros(len(subjects), len(objects), dtype=torch.bool, device=device)
        is_fact[rows, cols] = True
        other = (~is_fact).float()
        row_mean = (block * other).sum(-1) / other.sum(-1).clamp(min=1)  # [component, subject]
        chosen = [k for k, s in enumerate(rel_statements) if keep is None or s.split in keep]
        if not chosen:
            continue
        r, c = rows[chosen], cols[chosen]
        statements += [rel_statements[k] for k in chosen]
        values["entry"].append(block[:, r, c])
        values["row"].append(row_mean[:, r])
        values["split"].append(_split_baseline(block, other, rows, cols, rel_statements, chosen, row_mean))
        if relation in attention_rows:
            values["attention"].append(attention_rows[relation][:, r])
    if not statements:
        raise ValueError(f"no statement of splits {sorted(keep)}; the fact set has {facts.split_names}")
    cat = {name: torch.cat(v, dim=1).detach().cpu() for name, v in values.items() if v}
    return EffectiveWeights(
        path=path, labels=labels, statements=tuple(statements), entry=cat["entry"], row_baseline=cat["row"],
        split_baseline=cat["split"], attention=cat.get("attention"),
        blocks={rel: b.detach().cpu() for rel, b in blocks.items()},
        block_rows={rel: tuple(spec[0]) for rel, spec in blocks_spec.items()},
        block_columns={rel: tuple(spec[1]) for rel, spec in blocks_spec.items()},
        scale=scale, step=step,
    )


# == over training ================================================================================
@dataclass(frozen=True)
class EffectiveWeightsDynamics:
    """Effective weights at each checkpoint of a run (Zhu et al. 2024: forward entries grow, held-out reverse entries
    stay at their initial values).

    Attributes:
        steps: the training step of each checkpoint.
        results: the :class:`EffectiveWeights` at each step (same statements, same order).
    """

    steps: tuple[int, ...]
    results: tuple[EffectiveWeights, ...]

    def change_from_initial(self, component: int | str = 0) -> Float[Tensor, "step statement"]:
        """``Y[s, o](t) - Y[s, o](first checkpoint)`` per statement (raw entries, not effects)."""
        c = self.results[0].component_index(component)
        entries = torch.stack([r.entry[c] for r in self.results])
        return entries - entries[0]

    def estimates(self, split: str, component: int | str = 0, *, baseline: str = "split") -> list[Estimate]:
        return [r.estimate(split, component, baseline=baseline) for r in self.results]

    def to_frame(self):
        """The frames of every checkpoint, stacked (a ``step`` column tells them apart)."""
        import pandas as pd

        return pd.concat([r.to_frame() for r in self.results], ignore_index=True)

    def plot(self, component: int | str = 0, *, baseline: str = "split"):
        """Plotly lines: mean effect per split over training steps with 95 % bootstrap bands."""
        import plotly.graph_objects as go

        fig = go.Figure()
        x = list(self.steps)
        for split in self.results[0].splits:
            est = self.estimates(split, component, baseline=baseline)
            fig.add_scatter(x=x + x[::-1], y=[e.high for e in est] + [e.low for e in est][::-1], fill="toself",
                            line=dict(width=0), opacity=0.2, showlegend=False, hoverinfo="skip")
            fig.add_scatter(x=x, y=[e.mean for e in est], mode="lines+markers", name=split,
                            line=dict(dash="solid" if SPLITS[split] else "dash"))
        label = self.results[0].labels[self.results[0].component_index(component)]
        fig.update_layout(title=f"Effective-weight effects over training ({self.results[0].path} path, {label}, "
                                f"{baseline} baseline)", xaxis_title="training step", yaxis_title="mean effect")
        return fig

    def summary(self, component: int | str = 0, *, baseline: str = "split") -> str:
        first, last = self.results[0], self.results[-1]
        c = first.component_index(component)
        change = self.change_from_initial(c)[-1]
        lines = [f"effective weights over training ({first.path} path, {first.labels[c]}, {baseline} baseline), "
                 f"steps {self.steps[0]} -> {self.steps[-1]}: effect first -> last [95% CI]; entry change"]
        for split in first.splits:
            rows = [k for k, s in enumerate(first.statements) if s.split == split]
            lines.append(f"  {split:<18}{first.estimate(split, c, baseline=baseline)} -> "
                         f"{last.estimate(split, c, baseline=baseline)}; change {bootstrap_ci(change[rows])}")
        return "\n".join(lines)


def effective_weights_over_training(
    run: str | Path | LoadedRun,
    *,
    checkpoints: Sequence[int] | None = None,
    device=None,
    **kwargs,
) -> EffectiveWeightsDynamics:
    """:func:`effective_weights` at every weight snapshot of a run (or the steps in ``checkpoints``).

    Args:
        run: a run directory written by :func:`revinterp.training.train`, or a loaded run (its model is left as
            it is: the checkpoints go into a separate one, :func:`~revinterp.analysis.checkpoints.iter_checkpoints`).
        checkpoints: training steps to read (default every snapshot, from step 0).
        device: where to load the model (default the loaded run's device, or
            :func:`revinterp.models.default_device`).
        **kwargs: passed to :func:`effective_weights` (``path``, ``scale``, ``splits``, ``heads``).

    Example:
        >>> dyn = effective_weights_over_training("runs/seed0", path="end_to_end")   # doctest: +SKIP
        >>> print(dyn.summary())                                                      # doctest: +SKIP
    """
    run = as_loaded_run(run, device=device)
    results = [effective_weights(model, run.facts, tokenizer=run.tokenizer, step=step, **kwargs)
               for step, model in iter_checkpoints(run, checkpoints, device=device)]
    return EffectiveWeightsDynamics(steps=tuple(r.step for r in results), results=tuple(results))


# == helpers ======================================================================================
def _weight_maps(
    analysed, path: str, scale: str, heads: Sequence[tuple[int, int]] | None, prompts: Int[Tensor, "row pos"],
    subject_pos: int,
) -> tuple[Float[Tensor, "component row d_vocab"], Float[Tensor, "component row"] | None]:
    """The direct or OV maps of the prompts' subjects, rows centred, on a compatibility-mode model; for the OV path
    also each head's attention from the last position to the subject."""
    subjects = prompts[:, subject_pos]
    cache = None
    if scale == "prompts" or path == "ov":
        _, cache = analysed.run_with_cache(prompts)
    if path == "direct":
        maps = _centre(analysed.W_E[subjects] @ analysed.W_U)[None]
        if scale == "prompts":
            maps = maps / _ln_scale(cache, "ln_final", subject_pos)[None, :, None]
        return maps, None
    device = prompts.device
    layers = torch.tensor([lay for lay, _ in heads], device=device)
    head_index = torch.tensor([h for _, h in heads], device=device)
    W_V = analysed.W_V[layers, head_index]  # [component, d_model, d_head]
    W_O = analysed.W_O[layers, head_index]  # [component, d_head, d_model]
    maps = _centre(torch.einsum("xd,cde,cef->cxf", analysed.W_E[subjects], W_V, W_O) @ analysed.W_U)
    attention = torch.stack([cache[f"blocks.{lay}.attn.hook_pattern"][:, h, -1, subject_pos] for lay, h in heads])
    if scale == "prompts":
        ln1 = torch.stack([_ln_scale(cache, f"blocks.{lay}.ln1", subject_pos) for lay, _ in heads])
        final = _ln_scale(cache, "ln_final", prompts.shape[1] - 1)
        maps = maps * (attention / (ln1 * final[None]))[..., None]
    return maps, attention


def _entity_blocks(facts: FactSet) -> dict[str, tuple[list[str], list[str], list[Statement]]]:
    """Per relation: subjects (rows), objects (columns) and statements, ordered by split then fact so that
    each statement of a one-to-one relation lies on the diagonal."""
    order = {name: i for i, name in enumerate(SPLITS)}
    blocks: dict[str, tuple[list[str], list[str], list[Statement]]] = {}
    for relation in facts.relations:
        statements = sorted((s for s in facts.statements if s.relation == relation),
                            key=lambda s: (order[s.split], s.fact))
        if not statements:
            continue
        if not single_token_entities(statements):
            s, entity = next((s, e) for s in statements for e in (s.subject, s.object) if len(e.split()) != 1)
            raise ValueError(
                f"entity {entity!r} of statement {s}: effective weights are token-to-token maps; "
                "expected single-token entities"
            )
        subjects = list(dict.fromkeys(s.subject for s in statements))
        objects = list(dict.fromkeys(s.object for s in statements))
        blocks[relation] = (subjects, objects, statements)
    if not blocks:
        raise ValueError("the fact set has no statements")
    return blocks


def _split_baseline(
    block: Float[Tensor, "component row col"],
    other: Float[Tensor, "row col"],
    rows: Int[Tensor, " statement"],
    cols: Int[Tensor, " statement"],
    statements: Sequence[Statement],
    chosen: Sequence[int],
    row_mean: Float[Tensor, "component row"],
) -> Float[Tensor, "component chosen"]:
    """Per chosen statement: mean of its row over the non-fact columns answering other statements of its split
    (the row mean where there are none)."""
    out = row_mean[:, rows[list(chosen)]].clone()
    by_split: dict[str, list[int]] = {}
    for j, s in enumerate(statements):
        by_split.setdefault(s.split, []).append(j)
    for i, k in enumerate(chosen):
        same = cols[by_split[statements[k].split]].unique()
        weight = other[rows[k], same]
        if weight.sum() > 0:
            out[:, i] = (block[:, rows[k], same] * weight).sum(-1) / weight.sum()
    return out


def _token_ids(tokenizer, words: Sequence[str], device) -> Int[Tensor, " n"]:
    return torch.tensor(encode_words(tokenizer, words), device=device)


def _prompts(facts: FactSet, tokenizer, relation: str, subjects: Sequence[str], device
             ) -> tuple[Int[Tensor, "n pos"], int]:
    """The prompts ``<bos> x r`` of ``relation`` for every subject, and the subject's position in them."""
    template = facts.relations[relation].template.partition("{object}")[0].split()
    if "{subject}" not in template:
        raise ValueError(f"relation {relation!r}: template {facts.relations[relation].template!r} has no "
                         "whitespace-separated '{subject}'")
    rows = [[tokenizer.bos_token_id, *encode_words(tokenizer, facts.relations[relation].prompt_words(s))]
            for s in subjects]
    return torch.tensor(rows, device=device), 1 + template.index("{subject}")


def _centre(logits: Float[Tensor, "*batch d_vocab"]) -> Float[Tensor, "*batch d_vocab"]:
    return logits - logits.mean(-1, keepdim=True)


def _ln_scale(cache, layer_norm: str, position: int) -> Float[Tensor, " batch"]:
    """A LayerNorm's scale at ``position`` on every prompt; 1 for a model without normalization."""
    name = f"{layer_norm}.hook_scale"
    if name not in cache:
        batch = next(iter(cache.values())).shape[0]
        return torch.ones(batch, device=next(iter(cache.values())).device)
    return cache[name][:, position, 0]
