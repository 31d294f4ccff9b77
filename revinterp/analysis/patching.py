"""Activation patching over layers, positions, components and heads: the sweep API.

Activation patching (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") runs the
model on one prompt while replacing one activation (a *site*, :class:`~revinterp.analysis.sites.Site`)
with its value from another run, and reads how the answer moves. With clean/corrupted prompt pairs
(:class:`~revinterp.analysis.prompts.PromptPairs`: the prompts differ only in the subject) a
``"denoising"`` patch restores a clean activation in the corrupted run (is the site sufficient?) and a
``"noising"`` patch puts a corrupted activation into the clean run (is it necessary?); every result is
a :class:`~revinterp.analysis.effects.SiteEffects`, normalized to 0 for the corrupted run and 1 for the
clean one (Heimersheim & Nanda 2024; Zhang & Nanda 2024; see :mod:`revinterp.analysis.effects`). The
patchable components and their site axes are listed in :mod:`revinterp.analysis.sites`.

Two methods give the same numbers (tested to 1e-5): ``"transformer_lens"`` calls
``transformer_lens.patching.get_act_patch_*`` (one full forward per site), ``"fast"`` (default) starts
each patched forward at the patched site from the receiving run's cached activations
(:mod:`revinterp.analysis.fast_patching`). :func:`joint_patch` patches several sites at once;
:func:`revinterp.analysis.localize.localize` builds on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.checks import check_choice, check_model_and_pairs
from revinterp.analysis.effects import SiteEffects, receiving_and_source
from revinterp.analysis.fast_patching import AnswerReadout, fast_sweeps, residual_before_final_norm
from revinterp.analysis.metrics import METRICS, metric_values
from revinterp.analysis.prompts import PromptPairs
from revinterp.analysis.sites import COMPONENTS, SWEEP_COMPONENTS, Site, check_components

PATCH_DIRECTIONS = ("denoising", "noising")
"""Denoising: clean activations patched into the corrupted run; noising: corrupted ones into the clean run."""
PATCH_METHODS = ("fast", "transformer_lens")
"""The fast exact path (:mod:`revinterp.analysis.fast_patching`) or TransformerLens's ``get_act_patch_*``."""
DEFAULT_BATCH_SIZE = 1024


# -- the sweep ---------------------------------------------------------------------------------------
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
) -> SiteEffects:
    """Patch every site of ``component`` (:data:`~revinterp.analysis.sites.COMPONENTS`), keeping the per-example metric.

    Activation patching (Meng et al. 2022; conventions of Heimersheim & Nanda 2024 and Zhang &
    Nanda 2024, see the module docstring): ``direction="denoising"`` patches clean activations
    into the corrupted run, ``"noising"`` corrupted activations into the clean run.

    Args:
        model: an eval-mode TransformerLens bridge (``model.eval()``).
        pairs: clean/corrupted prompt pairs (at least 2), on the model's device.
        component: one of :data:`~revinterp.analysis.sites.COMPONENTS`.
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
) -> dict[str, SiteEffects]:
    """:func:`patch_sweep` for several components at once (the fast path caches both runs once).

    The default is the full sweep :data:`~revinterp.analysis.sites.SWEEP_COMPONENTS`.
    """
    components = check_components(model, components)
    _check_run(model, pairs, direction, metric, "patch_sweeps")
    check_choice("method", method, PATCH_METHODS)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive number of prompts per chunk")
    with torch.no_grad():
        if method == "transformer_lens":
            return _sweeps_transformer_lens(model, pairs, components, direction, metric)
        return fast_sweeps(model, pairs, components, direction, metric, batch_size, skip_trivial, progress)


def _check_run(model, pairs: PromptPairs, direction: str, metric: str, operation: str) -> None:
    check_choice("direction", direction, PATCH_DIRECTIONS)
    check_choice("metric", metric, METRICS)
    check_model_and_pairs(model, pairs, operation)


def _sweeps_transformer_lens(model, pairs: PromptPairs, components: tuple[str, ...], direction: str,
                             metric: str) -> dict[str, SiteEffects]:
    import transformer_lens.patching as tl_patching

    receiving, source = receiving_and_source(pairs, direction)
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
        out[component] = SiteEffects(
            values=values.contiguous(), clean=clean, corrupted=corrupted, axes=spec.axes, component=component,
            direction=direction, metric=metric, labels=pairs.labels, method="transformer_lens",
        )
    return out


def _tl_resid_post(tl_patching):
    return partial(
        tl_patching.generic_activation_patch, patch_setter=tl_patching.layer_pos_patch_setter,
        activation_name="resid_post", index_axis_names=("layer", "pos"),
    )


# -- several sites at once --------------------------------------------------------------------------
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
    corrupted prompt (downstream activations are recomputed, not frozen); noising the reverse. No sites:
    the unpatched run.
    """
    if sites:
        check_components(model, tuple(dict.fromkeys(s.component for s in sites)))
    _check_run(model, pairs, direction, metric, "joint_patch")
    receiving, source = receiving_and_source(pairs, direction)
    by_hook: dict[str, list[Site]] = {}
    for site in sites:
        by_hook.setdefault(site.hook_name, []).append(site)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=lambda name: name in by_hook)

        def restore(activation, hook, name: str):
            # bound by name: hook.name is the canonical name, not the alias the hook was added under
            activation = activation.clone()
            for site in by_hook[name]:
                activation[site.index] = cache[name][site.index]
            return activation

        hooks = [(name, partial(restore, name=name)) for name in by_hook]
        with model.hooks(fwd_hooks=hooks):
            residual = residual_before_final_norm(model, receiving)
        return AnswerReadout(model).of_residual(model, metric, residual, pairs.clean_answer, pairs.corrupted_answer)

