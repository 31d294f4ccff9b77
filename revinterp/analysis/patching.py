"""Activation patching over layers, positions, components and heads, with an exact fast path.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") runs the
model on one prompt while replacing one activation (a *site*) with its value from another run, and
reads how the answer moves. With clean/corrupted prompt pairs (:class:`PromptPairs`: the prompts
differ only in the subject) there are two directions (Heimersheim & Nanda 2024, "How to use and
interpret activation patching"; Zhang & Nanda 2024, "Towards Best Practices of Activation
Patching"):

- **denoising**: clean activations patched into the corrupted run. A site that restores the
  answer is *sufficient* (together with what it can reach) to carry the fact.
- **noising**: corrupted activations patched into the clean run. A site whose patch destroys the
  answer is *necessary*.

Every result is normalized the same way in both directions (:attr:`PatchingResult.normalized`)::

    normalized = (mean patched - mean corrupted) / (mean clean - mean corrupted)

so 0 is the corrupted run and 1 the clean run: denoising effects rise from 0, noising effects fall
from 1 (1 - normalized is the share of the effect a noising patch destroys).

Components (the residual stream is patched *before* each block, ``resid_pre``, and *after* it,
``resid_post``; ``resid_post`` of the last layer is the final residual. TransformerLens's
``resid_mid`` is left out on purpose: on the native bridge its hook is the input of ``ln2``, so a
patch there changes the MLP's input but not the residual stream that flows past the MLP):

================== ============================= ==================================================
component          site axes                     what is patched
================== ============================= ==================================================
resid_pre          layer, pos                    residual stream entering block ``layer``
resid_post         layer, pos                    residual stream leaving block ``layer``
attn_out           layer, pos                    attention output of the layer
mlp_out            layer, pos                    MLP output of the layer
head_out           layer, head                   one head's output (``hook_z``), all positions
head_out_by_pos    layer, pos, head              one head's output at one position
q, k, v            layer, head                   one head's query / key / value, all positions
q_by_pos, ...      layer, pos, head              ... at one position (also ``k_by_pos``, ``v_by_pos``)
pattern            layer, head                   one head's attention pattern, every destination
pattern_by_pos     layer, pos, head              one head's attention pattern row at destination pos
================== ============================= ==================================================

Two methods give the same numbers (tested to 1e-5): ``"transformer_lens"`` calls
``transformer_lens.patching.get_act_patch_*`` (one full forward per site), ``"fast"`` (default)
starts each patched forward at the patched layer from the receiving run's cached activations:
positions before the patched one keep their cached keys and values, the last layer computes the
answer position only and only it is unembedded; sites whose two activations are identical, or that
cannot reach the answer position (a causal model's last layer reads only the answer's own query),
are exactly the unpatched run and are not computed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from revinterp.analysis.metrics import METRICS, metric_values
from revinterp.analysis.prompts import PromptPairs
from revinterp.stats import Estimate, bootstrap_ci, normalized_ci

DIRECTIONS = ("denoising", "noising")
METHODS = ("fast", "transformer_lens")
DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class _Component:
    stage: str  # the activation: hook name stem and stage of the forward
    axes: tuple[str, ...]
    tl_function: str  # in transformer_lens.patching ("" -> generic_activation_patch)


COMPONENTS: dict[str, _Component] = {
    "resid_pre": _Component("resid_pre", ("layer", "pos"), "get_act_patch_resid_pre"),
    "resid_post": _Component("resid_post", ("layer", "pos"), ""),
    "attn_out": _Component("attn_out", ("layer", "pos"), "get_act_patch_attn_out"),
    "mlp_out": _Component("mlp_out", ("layer", "pos"), "get_act_patch_mlp_out"),
    "head_out": _Component("z", ("layer", "head"), "get_act_patch_attn_head_out_all_pos"),
    "head_out_by_pos": _Component("z", ("layer", "pos", "head"), "get_act_patch_attn_head_out_by_pos"),
    "q": _Component("q", ("layer", "head"), "get_act_patch_attn_head_q_all_pos"),
    "k": _Component("k", ("layer", "head"), "get_act_patch_attn_head_k_all_pos"),
    "v": _Component("v", ("layer", "head"), "get_act_patch_attn_head_v_all_pos"),
    "q_by_pos": _Component("q", ("layer", "pos", "head"), "get_act_patch_attn_head_q_by_pos"),
    "k_by_pos": _Component("k", ("layer", "pos", "head"), "get_act_patch_attn_head_k_by_pos"),
    "v_by_pos": _Component("v", ("layer", "pos", "head"), "get_act_patch_attn_head_v_by_pos"),
    "pattern": _Component("pattern", ("layer", "head"), "get_act_patch_attn_head_pattern_all_pos"),
    "pattern_by_pos": _Component("pattern", ("layer", "pos", "head"), "get_act_patch_attn_head_pattern_by_pos"),
}
"""Every component :func:`patch_sweep` can patch, with its site axes (see the module docstring)."""

SWEEP_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head_out_by_pos")
"""The full sweep: residual stream, attention and MLP outputs per layer x position, heads per layer x position."""

# Order of the activations inside a block; the fast forward enters a block at its site's stage.
_STAGE_ORDER = {
    "resid_pre": 0, "q": 1, "k": 1, "v": 1, "pattern": 2, "z": 3, "attn_out": 4, "mlp_out": 5, "resid_post": 6,
}
_HEAD_STAGES = ("q", "k", "v", "z", "pattern")


def _hook_name(stage: str, layer: int) -> str:
    if stage in _HEAD_STAGES:
        return f"blocks.{layer}.attn.hook_{stage}"
    return f"blocks.{layer}.hook_{stage}"


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """One patchable activation: a component at a layer, and a position and/or head where it has those axes."""

    component: str
    layer: int
    pos: int | None = None
    head: int | None = None

    def label(self, labels: Sequence[str] = ()) -> str:
        """E.g. ``"mlp_out L0 @subject"`` or ``"head_out_by_pos L1H2 @->"``."""
        where = f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        if self.pos is not None:
            where += f" @{labels[self.pos] if self.pos < len(labels) else self.pos}"
        return f"{self.component} {where}"


@dataclass(frozen=True)
class PatchingResult:
    """Per-example patched metric for every site of one component.

    ``values[*site, i]`` is the metric of example ``i`` with that site patched; ``clean`` and
    ``corrupted`` are the unpatched runs' metrics. In the denoising direction the patched run is
    the corrupted one (its unpatched value is ``corrupted``), in the noising direction the clean
    one. See the module docstring for the normalization.

    Example:
        >>> result = patch_sweep(model, pairs, "resid_pre")                  # doctest: +SKIP
        >>> result.normalized                                                # [layer, pos]  # doctest: +SKIP
        >>> print(result.summary())                                          # doctest: +SKIP
    """

    values: Float[Tensor, "*site batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    axes: tuple[str, ...]
    component: str
    direction: str
    metric: str
    labels: tuple[str, ...]
    method: str = "fast"

    def __post_init__(self):
        if self.values.ndim != len(self.axes) + 1:
            raise ValueError(f"values have {self.values.ndim} axes; expected the site axes {self.axes} and batch")

    @property
    def n(self) -> int:
        return self.values.shape[-1]

    @property
    def unpatched(self) -> Float[Tensor, " batch"]:
        """The metric of the run that is patched (``corrupted`` when denoising, ``clean`` when noising)."""
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def gap(self) -> float:
        """``mean clean - mean corrupted``: the normalization's denominator."""
        return (self.clean.double().mean() - self.corrupted.double().mean()).item()

    @property
    def mean(self) -> Float[Tensor, "*site"]:
        """Mean patched metric per site."""
        return self.values.mean(-1)

    @property
    def effect(self) -> Float[Tensor, "*site"]:
        """Mean change the patch makes: mean patched - mean unpatched, in metric units."""
        return self.values.mean(-1) - self.unpatched.mean()

    @property
    def normalized(self) -> Float[Tensor, "*site"]:
        """``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` per site (a ratio of means)."""
        corrupted = self.corrupted.mean()
        return (self.values.mean(-1) - corrupted) / (self.clean.mean() - corrupted)

    @property
    def normalized_per_example(self) -> Float[Tensor, "*site batch"]:
        """``(patched_i - corrupted_i) / (clean_i - corrupted_i)``: unstable where an example's own gap is small."""
        return (self.values - self.corrupted) / (self.clean - self.corrupted)

    def sites(self) -> list[Site]:
        """Every site, in the order of ``values.reshape(-1, batch)``."""
        shape = self.values.shape[:-1]
        out = []
        for index in itertools.product(*map(range, shape)):
            named = dict(zip(self.axes, index))
            out.append(Site(self.component, named["layer"], named.get("pos"), named.get("head")))
        return out

    def site_labels(self) -> list[str]:
        """:meth:`Site.label` of every site, in :meth:`sites` order."""
        return [site.label(self.labels) for site in self.sites()]

    def estimates(
        self, *, normalized: bool = True, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
    ) -> list[Estimate]:
        """Mean per site with its percentile-bootstrap interval over examples, in :meth:`sites` order.

        ``normalized=True``: :attr:`normalized` with a paired bootstrap of the ratio of means
        (examples resampled, patched, clean and corrupted means recomputed per resample), so a site
        that reproduces the clean or the corrupted run on every example gets exactly [1, 1] or
        [0, 0]. ``normalized=False``: the mean patched metric (:func:`revinterp.stats.bootstrap_ci`).
        """
        flat = self.values.reshape(-1, self.n)
        if normalized:
            return normalized_ci(flat, self.clean, self.corrupted, confidence=confidence,
                                    n_resamples=n_resamples, seed=seed)
        return [
            bootstrap_ci(row, n_resamples=n_resamples, confidence=confidence, seed=seed) for row in flat.double().cpu()
        ]

    def ci(
        self, *, normalized: bool = True, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
    ) -> tuple[Float[Tensor, "*site"], Float[Tensor, "*site"]]:
        """Lower and upper bootstrap bounds per site (see :meth:`estimates`), shaped like :attr:`mean`."""
        est = self.estimates(normalized=normalized, confidence=confidence, n_resamples=n_resamples, seed=seed)
        shape = self.values.shape[:-1]
        low = torch.tensor([e.low for e in est], dtype=torch.float64).reshape(shape)
        high = torch.tensor([e.high for e in est], dtype=torch.float64).reshape(shape)
        return low, high

    def top(self, k: int = 5, *, by: str = "abs") -> list[tuple[Site, float]]:
        """The ``k`` sites with the largest normalized effect (``by="abs"``: largest change from the
        unpatched run in either direction; ``"max"``: highest normalized value)."""
        norm = self.normalized.flatten()
        score = (norm - self.normalized_unpatched).abs() if by == "abs" else norm
        order = torch.argsort(score, descending=True, stable=True)[:k].tolist()
        sites = self.sites()
        return [(sites[i], norm[i].item()) for i in order]

    @property
    def normalized_unpatched(self) -> float:
        """Normalized value of the unpatched run: 0 when denoising, 1 when noising."""
        return 0.0 if self.direction == "denoising" else 1.0

    def to_frame(self, *, per_example: bool = False, confidence: float = 0.95):
        """One row per site: axes, position label, mean, effect, normalized and its interval.

        ``per_example=True``: long form, one row per (site, example) with the patched, clean and
        corrupted metric.
        """
        import pandas as pd

        sites = self.sites()
        if per_example:
            import numpy as np

            n_sites = len(sites)
            return pd.DataFrame(dict(
                component=self.component,
                layer=np.repeat([s.layer for s in sites], self.n),
                pos=pd.array(np.repeat([s.pos for s in sites], self.n), dtype="Int64"),
                head=pd.array(np.repeat([s.head for s in sites], self.n), dtype="Int64"),
                example=np.tile(np.arange(self.n), n_sites),
                value=self.values.reshape(n_sites, self.n).flatten().cpu().numpy(),
                clean=np.tile(self.clean.cpu().numpy(), n_sites),
                corrupted=np.tile(self.corrupted.cpu().numpy(), n_sites),
            ))
        est = self.estimates(confidence=confidence)
        mean, effect = self.mean.flatten().cpu(), self.effect.flatten().cpu()
        rows = []
        for s, (site, e) in enumerate(zip(sites, est)):
            rows.append(dict(
                component=self.component, direction=self.direction, metric=self.metric, layer=site.layer,
                pos=site.pos, pos_label=self.labels[site.pos] if site.pos is not None else None, head=site.head,
                mean=float(mean[s]), effect=float(effect[s]), normalized=e.mean, ci_low=e.low, ci_high=e.high,
                n=self.n,
            ))
        return pd.DataFrame(rows)

    def plot(self):
        """Plotly heatmap of the normalized effect: layers x positions (labelled with the prompt's
        position labels), layers x heads, or one layers x positions panel per head."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        norm = self.normalized.detach().cpu().numpy()
        layers = [f"L{i}" for i in range(norm.shape[0])]
        positions = [f"{p}: {lab}" for p, lab in enumerate(self.labels)]
        heat = dict(colorscale="RdBu", zmid=self.normalized_unpatched, colorbar=dict(title="normalized"))
        title = f"{self.component} patching ({self.direction}, {self.metric}; n={self.n})"
        if self.axes == ("layer", "pos", "head"):
            n_heads = norm.shape[2]
            fig = make_subplots(
                rows=1, cols=n_heads, shared_yaxes=True, subplot_titles=[f"H{h}" for h in range(n_heads)]
            )
            for h in range(n_heads):
                fig.add_trace(
                    go.Heatmap(z=norm[:, :, h], x=positions, y=layers, showscale=h == 0, zmin=norm.min(),
                               zmax=norm.max(), **heat),
                    row=1, col=h + 1,
                )
        else:
            x = positions if self.axes[1] == "pos" else [f"H{h}" for h in range(norm.shape[1])]
            fig = go.Figure(go.Heatmap(z=norm, x=x, y=layers, **heat))
            fig.update_xaxes(title_text=self.axes[1])
        fig.update_yaxes(title_text="layer", autorange="reversed")
        fig.update_layout(title=title)
        return fig

    def summary(self, k: int = 5) -> str:
        """Baselines and the ``k`` sites of largest effect with 95 % intervals."""
        clean, corrupted = bootstrap_ci(self.clean), bootstrap_ci(self.corrupted)
        lines = [
            f"{self.component} activation patching, {self.direction}, metric {self.metric}, {self.n} prompt pairs",
            f"clean {clean}   corrupted {corrupted}   (normalized: 0 = corrupted, 1 = clean)",
        ]
        sites = self.sites()
        est = self.estimates()
        for site, _ in self.top(k):
            e = est[sites.index(site)]
            lines.append(f"  {site.label(self.labels):<32} {e}")
        return "\n".join(lines)


# -- the sweep -----------------------------------------------------------------------------------
def patch_sweep(
    model,
    pairs: PromptPairs,
    component: str,
    *,
    direction: str = "denoising",
    metric: str = "logit_diff",
    method: str = "fast",
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_trivial: bool = True,
    progress: bool = False,
) -> PatchingResult:
    """Patch every site of ``component`` (see :data:`COMPONENTS`) and keep the per-example metric.

    Activation patching (Meng et al. 2022; conventions of Heimersheim & Nanda 2024 and Zhang &
    Nanda 2024, see the module docstring): ``direction="denoising"`` patches clean activations
    into the corrupted run, ``"noising"`` corrupted activations into the clean run.

    Args:
        model: an eval-mode TransformerLens bridge (``model.eval()``).
        pairs: clean/corrupted prompt pairs (at least 2), on the model's device.
        component: one of :data:`COMPONENTS`.
        direction: ``"denoising"`` or ``"noising"``.
        metric: one of :data:`revinterp.analysis.metrics.METRICS`, read at the last position.
        method: ``"fast"`` (exact, reuses cached activations) or ``"transformer_lens"``
            (``transformer_lens.patching.get_act_patch_*``); they agree to 1e-5.
        batch_size: prompts per chunk of the fast path (bounds its memory).
        skip_trivial: fast path only; ``False`` also recomputes sites whose patch is a no-op
            (identical activations) or cannot reach the answer, for verification.
        progress: show a progress bar over sites (fast path).

    Example:
        >>> pairs = make_prompt_pairs(run.facts, "forward_seen", run.tokenizer)   # doctest: +SKIP
        >>> patch_sweep(run.model, pairs, "mlp_out").normalized                  # doctest: +SKIP
    """
    return patch_sweeps(
        model, pairs, (component,), direction=direction, metric=metric, method=method, batch_size=batch_size,
        skip_trivial=skip_trivial, progress=progress,
    )[component]


def patch_sweeps(
    model,
    pairs: PromptPairs,
    components: Sequence[str] = SWEEP_COMPONENTS,
    *,
    direction: str = "denoising",
    metric: str = "logit_diff",
    method: str = "fast",
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_trivial: bool = True,
    progress: bool = False,
) -> dict[str, PatchingResult]:
    """:func:`patch_sweep` for several components at once (the fast path caches both runs once).

    The default is the full sweep :data:`SWEEP_COMPONENTS`.
    """
    components = tuple(components)
    _check_inputs(model, pairs, components, direction, metric)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive number of prompts per chunk")
    with torch.no_grad():
        if method == "transformer_lens":
            return _sweeps_transformer_lens(model, pairs, components, direction, metric)
        return _sweeps_fast(model, pairs, components, direction, metric, batch_size, skip_trivial, progress)


def _check_inputs(model, pairs: PromptPairs, components: tuple[str, ...], direction: str, metric: str) -> None:
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; expected one of {tuple(COMPONENTS)}")
        if model.cfg.attn_only and COMPONENTS[component].stage == "mlp_out":
            raise ValueError(f"component {component!r}: the model is attention-only (it has no MLP)")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    _check_model_and_pairs(model, pairs)


def _check_model_and_pairs(model, pairs: PromptPairs) -> None:
    training = [name or "<model>" for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(
            f"the model is in train mode (model.training={model.training}; e.g. {training[0]}); "
            "expected eval mode: call model.eval() before patching"
        )
    if len(pairs) < 2:
        raise ValueError(f"got {len(pairs)} prompt pair(s); expected at least 2 (intervals need several examples)")
    device = _model_device(model)
    if pairs.clean.device != device:
        raise ValueError(
            f"prompt pairs are on device {pairs.clean.device} but the model is on {device}; "
            f"expected the same device (use pairs.to({str(device)!r}))"
        )


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _runs(pairs: PromptPairs, direction: str) -> tuple[Tensor, Tensor]:
    """(receiving tokens, source tokens): the run that is patched, and the run the patch comes from."""
    if direction == "denoising":
        return pairs.corrupted, pairs.clean
    return pairs.clean, pairs.corrupted


def _sweeps_transformer_lens(model, pairs: PromptPairs, components: tuple[str, ...], direction: str,
                             metric: str) -> dict[str, PatchingResult]:
    import transformer_lens.patching as tl_patching

    receiving, source = _runs(pairs, direction)
    ca, cb = pairs.clean_answer, pairs.corrupted_answer
    per_example = lambda logits: metric_values(metric, logits[:, -1], ca, cb)  # noqa: E731
    clean = per_example(model(pairs.clean))
    corrupted = per_example(model(pairs.corrupted))
    _, source_cache = model.run_with_cache(source)
    out = {}
    for component in components:
        spec = COMPONENTS[component]
        # resid_post has no get_act_patch_* helper
        fn = getattr(tl_patching, spec.tl_function) if spec.tl_function else _tl_resid_post(tl_patching)
        values = fn(model, receiving, source_cache, per_example, reduce="none").values
        if component == "pattern_by_pos":  # TransformerLens orders it [layer, head, dest_pos]
            values = values.permute(0, 2, 1, 3)
        out[component] = PatchingResult(
            values=values.contiguous(), clean=clean, corrupted=corrupted, axes=spec.axes, component=component,
            direction=direction, metric=metric, labels=pairs.labels, method="transformer_lens",
        )
    return out


def _tl_resid_post(tl_patching):
    return partial(
        tl_patching.generic_activation_patch, patch_setter=tl_patching.layer_pos_patch_setter,
        activation_name="resid_post", index_axis_names=("layer", "pos"),
    )


# -- the fast exact path -------------------------------------------------------------------------
def _sweeps_fast(model, pairs: PromptPairs, components: tuple[str, ...], direction: str, metric: str,
                 batch_size: int, skip_trivial: bool, progress: bool) -> dict[str, PatchingResult]:
    _check_fast_supported(model)
    receiving, source = _runs(pairs, direction)
    n, n_pos = pairs.clean.shape
    cfg = model.cfg
    shapes = {"layer": cfg.n_layers, "pos": n_pos, "head": cfg.n_heads}
    sites = {c: list(itertools.product(*(range(shapes[a]) for a in COMPONENTS[c].axes))) for c in components}
    device = _model_device(model)
    values = {c: torch.empty(len(sites[c]), n, device=device) for c in components}
    unpatched = torch.empty(n, device=device)
    from_source = torch.empty(n, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(map(len, sites.values())) * -(-n // batch_size), desc="patching", unit="site",
                   leave=False)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        ca, cb = pairs.clean_answer[rows], pairs.corrupted_answer[rows]
        tail = _TailForward(model, receiving[rows], source[rows])
        base = metric_values(metric, tail.receiving_logits, ca, cb)
        unpatched[rows] = base
        from_source[rows] = metric_values(metric, tail.source_logits, ca, cb)
        for c in components:
            spec = COMPONENTS[c]
            for s, index in enumerate(sites[c]):
                named = dict(zip(spec.axes, index))
                positions = (named["pos"],) if "pos" in named else tuple(range(n_pos))
                logits = tail.patched_logits(spec.stage, named["layer"], positions, named.get("head"), skip_trivial)
                values[c][s, rows] = base if logits is None else metric_values(metric, logits, ca, cb)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    clean, corrupted = (from_source, unpatched) if direction == "denoising" else (unpatched, from_source)
    return {
        c: PatchingResult(
            values=values[c].reshape(*(shapes[a] for a in COMPONENTS[c].axes), n), clean=clean, corrupted=corrupted,
            axes=COMPONENTS[c].axes, component=c, direction=direction, metric=metric, labels=pairs.labels,
            method="fast",
        )
        for c in components
    }


def _check_fast_supported(model) -> None:
    cfg = model.cfg
    unsupported = []
    attention = type(model.blocks[0].attn.original_component).__name__
    if attention != "NativeAttention":  # the fast path reuses NativeAttention's arithmetic
        unsupported.append(f"{attention} attention (only TransformerBridge.boot_native models)")
    if cfg.n_key_value_heads not in (None, cfg.n_heads):
        unsupported.append(f"n_key_value_heads={cfg.n_key_value_heads}")
    if cfg.attn_scores_soft_cap > 0 or cfg.output_logits_soft_cap > 0:
        unsupported.append("soft caps")
    if cfg.attention_dir != "causal":
        unsupported.append(f"attention_dir={cfg.attention_dir!r}")
    if unsupported:
        raise ValueError(f"method='fast' does not support {', '.join(unsupported)}; use method='transformer_lens'")


class _TailForward:
    """Forward passes that start at a patched site and end at the answer position's logits.

    Holds the receiving run's activations (the run that is patched) and the source run's (where
    the patched values come from). A patch at layer ``l`` and first position ``p0`` leaves every
    position before ``p0`` and every layer before ``l`` as cached (the model is causal), so only
    positions ``p0..answer`` of layers ``l..L-1`` are recomputed, with the cached keys and values
    of the earlier positions; the last layer computes the answer position only.

    The arithmetic is the native bridge's own (its norm, MLP, final norm and unembedding modules;
    its attention's linear maps, scale, mask, softmax and rotary tables), on contiguous inputs:
    matrix products of strided slices round differently. Both runs are recorded by the same
    arithmetic from the bridge's embeddings (``stop_at_layer=0``), which is cheaper than a hooked
    ``run_with_cache``; the tests hold every activation and logit to TransformerLens's.
    """

    def __init__(self, model, receiving: Tensor, source: Tensor):
        cfg = model.cfg
        self.model = model
        self.n_layers, self.n_heads, self.d_head = cfg.n_layers, cfg.n_heads, cfg.d_head
        self.attn_only = bool(cfg.attn_only)
        self.n_pos = receiving.shape[1]
        self.answer = self.n_pos - 1
        attn = model.blocks[0].attn.original_component
        self.scale = attn.scale
        self.rotary = attn.rotary
        self.mask = attn.causal_mask[: self.n_pos, : self.n_pos]
        self.receiving_logits, self.receiving = self._record(receiving)
        self.source_logits, self.source = self._record(source)
        # keys as the attention reads them (after the rotary map, if any)
        self.keys = [self._rope(k, list(range(self.n_pos))) for k in self.receiving["k"]]
        self._changed: dict[tuple[str, int], Tensor] = {}

    def _record(self, tokens: Tensor) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Last-position logits and every activation of an unpatched run, ``acts[stage][layer]``."""
        x = self.model(tokens, stop_at_layer=0)  # embeddings: resid_pre of block 0
        n = x.shape[0]
        rows = list(range(self.n_pos))
        acts: dict[str, list[Tensor]] = {stage: [] for stage in _STAGE_ORDER}
        acts["resid_mid"] = []
        for li in range(self.n_layers):
            blk = self.model.blocks[li]
            attn = blk.attn.original_component
            h = blk.ln1(x)
            q = attn.q.original_component(h).view(n, self.n_pos, self.n_heads, self.d_head)
            k = attn.k.original_component(h).view(n, self.n_pos, self.n_heads, self.d_head)
            v = attn.v.original_component(h).view(n, self.n_pos, self.n_heads, self.d_head)
            pattern = self._pattern(self._rope(q, rows), self._rope(k, rows), rows)
            z = torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2).contiguous()
            attn_out = attn.o.original_component(z.view(n, self.n_pos, -1))
            mid = x + attn_out
            for stage, value in zip(("resid_pre", "q", "k", "v", "pattern", "z", "attn_out", "resid_mid"),
                                    (x, q, k, v, pattern, z, attn_out, mid)):
                acts[stage].append(value)
            if self.attn_only:
                x = mid
            else:
                mlp_out = blk.mlp(blk.ln2(mid))
                acts["mlp_out"].append(mlp_out)
                x = mid + mlp_out
            acts["resid_post"].append(x)
        logits = self.model.unembed(self.model.ln_final(x[:, -1:].contiguous()))[:, -1].contiguous()
        return logits, acts

    # which positions (and heads) a patch changes at all
    def changed(self, stage: str, layer: int) -> Bool[Tensor, " pos *head"]:
        key = (stage, layer)
        if key not in self._changed:
            differs = self.receiving[stage][layer] != self.source[stage][layer]
            if stage == "pattern":  # [batch, head, dest, src] -> [dest, head]
                mask = differs.any(dim=3).any(dim=0).T
            elif stage in _HEAD_STAGES:  # [batch, pos, head, d_head] -> [pos, head]
                mask = differs.any(dim=3).any(dim=0)
            else:
                mask = differs.flatten(2).any(dim=2).any(dim=0)
            self._changed[key] = mask.cpu()
        return self._changed[key]

    def patched_logits(
        self, stage: str, layer: int, positions: tuple[int, ...], head: int | None, skip_trivial: bool
    ) -> Float[Tensor, "batch d_vocab"] | None:
        """Answer-position logits with ``stage`` at ``layer`` patched from the source run at
        ``positions`` (and ``head``); ``None`` when the patch leaves the answer exactly unpatched."""
        if skip_trivial:
            changed = self.changed(stage, layer)
            changed = changed[:, head] if head is not None else changed
            last_layer_reads_only_answer = layer == self.n_layers - 1 and stage not in ("resid_pre", "k", "v")
            positions = tuple(
                p for p in positions if bool(changed[p]) and (p == self.answer or not last_layer_reads_only_answer)
            )
            if not positions:
                return None
        return self._forward_from(stage, layer, positions, head)

    def _patch(self, tensor: Tensor, stage: str, layer: int, rows: list[int], positions: tuple[int, ...],
               head: int | None) -> Tensor:
        """``tensor`` (the receiving run's ``stage`` at positions ``rows``) with the source run's values
        at ``positions`` and ``head``."""
        index = [i for i, p in enumerate(rows) if p in positions]
        if not index:
            return tensor
        source = self.source[stage][layer]
        at = [rows[i] for i in index]
        tensor = tensor.clone()
        if stage == "pattern":
            tensor[:, head, index] = source[:, head, at]
        elif head is not None:
            tensor[:, index, head] = source[:, at, head]
        else:
            tensor[:, index] = source[:, at]
        return tensor

    def _rope(self, x: Tensor, rows: list[int]) -> Tensor:
        """Queries or keys ``[batch, pos, head, d_head]`` at positions ``rows`` after the rotary map
        (NativeRotary.apply_rope's arithmetic, element for element); unchanged without rotary."""
        if self.rotary is None:
            return x
        r = self.rotary
        xh = x.transpose(1, 2)
        cos = r.cos_cached[rows].to(x.dtype)
        sin = r.sin_cached[rows].to(x.dtype)
        x_rot, x_pass = xh[..., : r.rotary_dim], xh[..., r.rotary_dim:]
        x_rot = x_rot * cos + r._rotate_half(x_rot) * sin
        out = torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot
        return out.transpose(1, 2)

    def _pattern(self, q: Tensor, keys: Tensor, rows: list[int]) -> Tensor:
        """Attention pattern ``[batch, head, len(rows), pos]`` of queries at positions ``rows`` (a
        range) over every key (NativeAttention's arithmetic)."""
        scores = torch.matmul(q.transpose(1, 2), keys.transpose(1, 2).transpose(-2, -1)) / self.scale
        mask = self.mask[rows[0]:rows[-1] + 1]
        return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1).masked_fill(mask, 0.0)

    def _forward_from(self, stage: str, layer: int, positions: tuple[int, ...], head: int | None) -> Tensor:
        """Answer logits with the patch applied: blocks ``layer..L-1`` on positions ``p0..answer``.

        In each block only the rows that can differ are computed: the norm, queries, keys and values
        of the rows whose input differs from the receiving run (``dirty``; the others are cached),
        and the rest of the block for the rows the changed keys and values reach. A patch after the
        keys and values (query, pattern, head output, attention or MLP output, block output) changes
        only its own positions in its block; the last block computes the answer position only.
        """
        rec, answer = self.receiving, self.answer
        n = rec["resid_pre"][0].shape[0]
        p0, p1 = min(positions), max(positions) + 1
        x = None  # residual stream at positions p0..answer entering the block
        dirty = (p0, p1)  # positions [lo, hi) of x that differ from the receiving run
        for li in range(layer, self.n_layers):
            blk = self.model.blocks[li]
            attn = blk.attn.original_component
            entry = _STAGE_ORDER[stage] if li == layer else 0
            if li == self.n_layers - 1:
                lo, hi = answer, answer + 1
            elif li == layer and stage not in ("resid_pre", "k", "v"):
                lo, hi = p0, p1  # the patch changes these rows of this block only
            else:
                lo, hi = p0, answer + 1
            rows = list(range(lo, hi))  # positions whose block output is computed

            def patched(t: Tensor, at: list[int], s: str, _l: int = li) -> Tensor:
                return self._patch(t, s, _l, at, positions, head) if _l == layer and s == stage else t

            if entry == 0:
                if x is None:
                    x = patched(rec["resid_pre"][li][:, p0:].contiguous(), list(range(p0, answer + 1)), "resid_pre")
                d_lo, d_hi = dirty
                h = blk.ln1(x[:, d_lo - p0:d_hi - p0].contiguous())
                k = attn.k.original_component(h).view(n, d_hi - d_lo, self.n_heads, self.d_head)
                v = attn.v.original_component(h).view(n, d_hi - d_lo, self.n_heads, self.d_head)
                keys = _splice(self.keys[li], self._rope(k, list(range(d_lo, d_hi))), d_lo)
                values = _splice(rec["v"][li], v, d_lo)
                q_lo, q_hi = max(lo, d_lo), min(hi, d_hi)  # queries that change
                q = rec["q"][li][:, lo:hi]
                if q_lo < q_hi:
                    h_q = h[:, q_lo - d_lo:q_hi - d_lo].contiguous()
                    q_new = attn.q.original_component(h_q).view(n, q_hi - q_lo, self.n_heads, self.d_head)
                    q = _splice(q, q_new, q_lo - lo)
                x_rows = x[:, lo - p0:hi - p0]
            else:
                x_rows = rec["resid_pre"][li][:, lo:hi]
                if entry == 1:
                    q = patched(rec["q"][li][:, lo:hi].contiguous(), rows, "q")
                    tail = list(range(p0, answer + 1))
                    k = patched(rec["k"][li][:, p0:].contiguous(), tail, "k")
                    keys = torch.cat([self.keys[li][:, :p0], self._rope(k, tail)], dim=1)
                    values = patched(rec["v"][li].clone(), list(range(self.n_pos)), "v")
            if entry <= 1:
                pattern = self._pattern(self._rope(q.contiguous(), rows), keys, rows)
            elif entry == 2:
                pattern = patched(rec["pattern"][li][:, :, lo:hi].contiguous(), rows, "pattern")
                values = rec["v"][li]
            if entry <= 2:
                z = torch.matmul(pattern, values.transpose(1, 2)).transpose(1, 2)
            elif entry == 3:
                z = patched(rec["z"][li][:, lo:hi].contiguous(), rows, "z")
            if entry <= 3:
                attn_out = attn.o.original_component(z.reshape(n, len(rows), -1))
            elif entry == 4:
                attn_out = patched(rec["attn_out"][li][:, lo:hi].contiguous(), rows, "attn_out")
            if entry <= 4:
                out = x_rows + attn_out
            elif entry <= 5:
                out = rec["resid_mid"][li][:, lo:hi].contiguous()
            if entry <= 5 and not self.attn_only:
                mlp_out = blk.mlp(blk.ln2(out)) if entry < 5 else rec["mlp_out"][li][:, lo:hi]
                out = out + patched(mlp_out, rows, "mlp_out")
            elif entry == 6:
                out = patched(rec["resid_post"][li][:, lo:hi].contiguous(), rows, "resid_post")
            # the next block's input: computed rows, and the receiving run's block output elsewhere
            x = out if (lo, hi) == (p0, answer + 1) else _splice(rec["resid_post"][li][:, p0:], out, lo - p0)
            dirty = (lo, hi)
        return self.model.unembed(self.model.ln_final(out))[:, -1].contiguous()


def _splice(cached: Tensor, new: Tensor, start: int) -> Tensor:
    """``cached`` with rows ``start .. start + len(new)`` (dimension 1) replaced by ``new``."""
    return torch.cat([cached[:, :start], new, cached[:, start + new.shape[1]:]], dim=1)


# -- joint patches and localization --------------------------------------------------------------
def joint_patch(
    model,
    pairs: PromptPairs,
    sites: Sequence[Site],
    *,
    direction: str = "denoising",
    metric: str = "logit_diff",
) -> Float[Tensor, " batch"]:
    """Per-example metric with every site in ``sites`` patched at once (one hooked forward).

    Denoising: the sites get the clean run's activations and the rest of the model runs on the
    corrupted prompt (downstream activations are recomputed, not frozen); noising the reverse.
    """
    _check_inputs(model, pairs, tuple({s.component for s in sites}), direction, metric)
    receiving, source = _runs(pairs, direction)
    by_hook: dict[str, list[Site]] = {}
    for site in sites:
        by_hook.setdefault(_hook_name(COMPONENTS[site.component].stage, site.layer), []).append(site)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=lambda name: name in by_hook)

        def restore(activation, hook, name: str):
            # bound by name: hook.name is the canonical name, not the alias the hook was added under
            activation = activation.clone()
            for site in by_hook[name]:
                index = _site_index(site)
                activation[index] = cache[name][index]
            return activation

        hooks = [(name, partial(restore, name=name)) for name in by_hook]
        logits = model.run_with_hooks(receiving, fwd_hooks=hooks)
        return metric_values(metric, logits[:, -1], pairs.clean_answer, pairs.corrupted_answer)


def _site_index(site: Site) -> tuple:
    every = slice(None)
    if COMPONENTS[site.component].stage == "pattern":  # [batch, head, dest, src]
        return (every, site.head) if site.pos is None else (every, site.head, site.pos)
    pos = every if site.pos is None else site.pos
    return (every, pos) if site.head is None else (every, pos, site.head)


def _covered(site: Site, chosen: Sequence[Site]) -> bool:
    """A head's output at (layer, pos) is already restored when the whole attention output there is."""
    return site.component == "head_out_by_pos" and any(
        c.component == "attn_out" and c.layer == site.layer and c.pos == site.pos for c in chosen
    )


@dataclass(frozen=True)
class Localization:
    """Where the clean answer is carried: sites ranked by their own denoising effect, and the
    smallest prefix of that ranking whose joint restoration recovers ``target`` of the clean metric.

    ``curve[k - 1]`` is the normalized metric (0 corrupted, 1 clean) *measured* by patching the
    first ``k`` chosen sites together into the corrupted run; ``joint`` is the per-example metric
    of the final set.
    """

    sites: tuple[Site, ...]
    effects: Float[Tensor, " site"]
    effects_low: Float[Tensor, " site"]
    effects_high: Float[Tensor, " site"]
    chosen: tuple[Site, ...]
    curve: Float[Tensor, " step"]
    joint: Float[Tensor, " batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    target: float
    metric: str
    labels: tuple[str, ...]

    @property
    def recovered(self) -> float:
        """Normalized metric measured with every chosen site restored (0 when none is chosen)."""
        return float(self.curve[-1]) if len(self.chosen) else 0.0

    @property
    def reached(self) -> bool:
        return self.recovered >= self.target

    def recovered_ci(self, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
        """:attr:`recovered` with a paired bootstrap interval over examples (ratio of means resampled)."""
        return normalized_ci(self.joint[None], self.clean, self.corrupted, confidence=confidence,
                                n_resamples=n_resamples, seed=seed)[0]

    def to_frame(self):
        """One row per ranked site: its own effect with interval, and (for chosen sites) the joint
        recovery once it is added."""
        import pandas as pd

        step = {site: k for k, site in enumerate(self.chosen)}
        rows = []
        for rank, site in enumerate(self.sites):
            k = step.get(site)
            rows.append(dict(
                rank=rank, site=site.label(self.labels), component=site.component, layer=site.layer, pos=site.pos,
                head=site.head, effect=float(self.effects[rank]), ci_low=float(self.effects_low[rank]),
                ci_high=float(self.effects_high[rank]), chosen=k is not None,
                joint_recovered=float(self.curve[k]) if k is not None else None,
            ))
        return pd.DataFrame(rows)

    def plot(self):
        """Plotly line: recovered fraction vs number of restored sites, with the target marked."""
        import plotly.graph_objects as go

        x = list(range(len(self.chosen) + 1))
        y = [0.0, *self.curve.tolist()]
        text = ["(none)", *(s.label(self.labels) for s in self.chosen)]
        fig = go.Figure(go.Scatter(x=x, y=y, mode="lines+markers", text=text, hovertemplate="%{text}: %{y:.3f}"))
        fig.add_hline(y=self.target, line_dash="dash", annotation_text=f"target {self.target:g}")
        fig.update_layout(
            title=f"Joint restoration of the top sites ({self.metric}, n={len(self.clean)})",
            xaxis_title="sites restored (in order of own effect)", yaxis_title="recovered fraction (normalized)",
        )
        return fig

    def summary(self) -> str:
        est = self.recovered_ci()
        lines = [
            f"localization ({self.metric}, {len(self.clean)} prompt pairs): {len(self.chosen)} site(s) recover "
            f"{est} of the clean effect (target {self.target:g}, {'reached' if self.reached else 'NOT reached'})",
        ]
        for k, site in enumerate(self.chosen):
            rank = self.sites.index(site)
            lines.append(
                f"  +{site.label(self.labels):<32} own {self.effects[rank]:.3f} "
                f"[{self.effects_low[rank]:.3f}, {self.effects_high[rank]:.3f}]  joint {self.curve[k]:.3f}"
            )
        return "\n".join(lines)


def localize(
    model,
    pairs: PromptPairs,
    *,
    target: float = 0.8,
    components: Sequence[str] = ("attn_out", "mlp_out", "head_out_by_pos"),
    metric: str = "logit_diff",
    max_sites: int | None = None,
    method: str = "fast",
) -> Localization:
    """Rank sites by their own denoising effect and restore them greedily until ``target`` is recovered.

    Causal localization in the sense of Meng et al. (2022) and Heimersheim & Nanda (2024): every
    site of ``components`` is ranked by its normalized denoising effect (clean activation patched
    into the corrupted run; bootstrap intervals over examples); sites with a positive effect are
    then added in that order, and after each addition all chosen sites are restored *together*
    (:func:`joint_patch`) and the recovered fraction is measured, until it reaches ``target`` (or
    the candidates, or ``max_sites``, run out). A head's output at a (layer, position) whose whole
    attention output is already chosen is skipped (it is restored already).

    Args:
        model: an eval-mode bridge.
        pairs: clean/corrupted prompt pairs.
        target: recovered fraction to reach, in (0, 1].
        components: components whose sites are candidates (:data:`COMPONENTS`).
        metric: the metric (:data:`revinterp.analysis.metrics.METRICS`).
        max_sites: stop after this many sites.
        method: how the single-site sweeps are computed (:func:`patch_sweep`).

    Example:
        >>> loc = localize(run.model, pairs, target=0.8)                       # doctest: +SKIP
        >>> loc.recovered, [s.label(pairs.labels) for s in loc.chosen]         # doctest: +SKIP
    """
    if not 0 < target <= 1:
        raise ValueError(f"target={target}: expected a fraction in (0, 1]")
    if max_sites is not None and max_sites < 1:
        raise ValueError(f"max_sites={max_sites}: expected at least 1")
    sweeps = patch_sweeps(model, pairs, components, metric=metric, method=method)
    sites: list[Site] = []
    estimates: list[Estimate] = []
    for result in sweeps.values():
        sites += result.sites()
        estimates += result.estimates()
    order = sorted(range(len(sites)), key=lambda i: -estimates[i].mean)
    sites = [sites[i] for i in order]
    estimates = [estimates[i] for i in order]
    first = next(iter(sweeps.values()))
    clean, corrupted = first.clean, first.corrupted
    gap = clean.double().mean() - corrupted.double().mean()
    chosen: list[Site] = []
    curve: list[float] = []
    joint = corrupted
    for site, est in zip(sites, estimates):
        if est.mean <= 0 or (max_sites is not None and len(chosen) >= max_sites):
            break
        if _covered(site, chosen):
            continue
        chosen.append(site)
        joint = joint_patch(model, pairs, chosen, metric=metric)
        curve.append(((joint.double().mean() - corrupted.double().mean()) / gap).item())
        if curve[-1] >= target:
            break
    return Localization(
        sites=tuple(sites),
        effects=torch.tensor([e.mean for e in estimates], dtype=torch.float64),
        effects_low=torch.tensor([e.low for e in estimates], dtype=torch.float64),
        effects_high=torch.tensor([e.high for e in estimates], dtype=torch.float64),
        chosen=tuple(chosen), curve=torch.tensor(curve, dtype=torch.float64), joint=joint, clean=clean,
        corrupted=corrupted, target=target, metric=metric, labels=pairs.labels,
    )
