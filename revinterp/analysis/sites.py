"""The patchable components of a model and their sites: one registry for every analysis that patches.

A *component* is a kind of activation (the residual stream entering a block, one head's output, ...); a
*site* is one place of it: a component at a layer, and a position and/or head where it has those axes.
Exact activation patching (:mod:`revinterp.analysis.patching`), its fast path
(:mod:`revinterp.analysis.fast_patching`) and attribution patching
(:mod:`revinterp.analysis.attribution_patching`) all read their hooks and site grids from
:data:`COMPONENTS`, so a site means the same activation in each, and :attr:`Site.hook_name` with
:attr:`Site.index` says exactly which activation that is::

    _, cache = model.run_with_cache(tokens)
    cache[site.hook_name][site.index]          # [batch, ...]: what a patch at ``site`` replaces

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
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """How one component is patched.

    Attributes:
        name: the component's name, the key in :data:`COMPONENTS`.
        stage: the activation (``resid_pre``, ``q``, ``k``, ``v``, ``pattern``, ``z``, ``attn_out``,
            ``mlp_out``, ``resid_post``); the fast path enters a block at this stage.
        axes: the site axes, e.g. ``("layer", "pos", "head")``.
        hook: the hook-name template, formatted with the layer (:meth:`hook_name`).
        tl_function: the ``transformer_lens.patching`` function that sweeps this component
            (``""``: ``generic_activation_patch`` on ``resid_post``, which has none).
    """

    name: str
    stage: str
    axes: tuple[str, ...]
    hook: str
    tl_function: str

    def hook_name(self, layer: int) -> str:
        """The hook of this component at ``layer``, e.g. ``"blocks.0.attn.hook_z"``."""
        return self.hook.format(layer=layer)


def _component(name: str, stage: str, axes: tuple[str, ...], tl_function: str) -> Component:
    in_attention = stage in ("q", "k", "v", "z", "pattern")
    hook = f"blocks.{{layer}}.attn.hook_{stage}" if in_attention else f"blocks.{{layer}}.hook_{stage}"
    return Component(name, stage, axes, hook, tl_function)


_LAYER_POS, _LAYER_HEAD, _LAYER_POS_HEAD = ("layer", "pos"), ("layer", "head"), ("layer", "pos", "head")

COMPONENTS: dict[str, Component] = {c.name: c for c in (
    _component("resid_pre", "resid_pre", _LAYER_POS, "get_act_patch_resid_pre"),
    _component("resid_post", "resid_post", _LAYER_POS, ""),
    _component("attn_out", "attn_out", _LAYER_POS, "get_act_patch_attn_out"),
    _component("mlp_out", "mlp_out", _LAYER_POS, "get_act_patch_mlp_out"),
    _component("head_out", "z", _LAYER_HEAD, "get_act_patch_attn_head_out_all_pos"),
    _component("head_out_by_pos", "z", _LAYER_POS_HEAD, "get_act_patch_attn_head_out_by_pos"),
    _component("q", "q", _LAYER_HEAD, "get_act_patch_attn_head_q_all_pos"),
    _component("k", "k", _LAYER_HEAD, "get_act_patch_attn_head_k_all_pos"),
    _component("v", "v", _LAYER_HEAD, "get_act_patch_attn_head_v_all_pos"),
    _component("q_by_pos", "q", _LAYER_POS_HEAD, "get_act_patch_attn_head_q_by_pos"),
    _component("k_by_pos", "k", _LAYER_POS_HEAD, "get_act_patch_attn_head_k_by_pos"),
    _component("v_by_pos", "v", _LAYER_POS_HEAD, "get_act_patch_attn_head_v_by_pos"),
    _component("pattern", "pattern", _LAYER_HEAD, "get_act_patch_attn_head_pattern_all_pos"),
    _component("pattern_by_pos", "pattern", _LAYER_POS_HEAD, "get_act_patch_attn_head_pattern_by_pos"),
)}
"""Every patchable component by name, with its stage, site axes, hook and TransformerLens function (see the
module docstring)."""

SWEEP_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head_out_by_pos")
"""The full sweep: residual stream, attention and MLP outputs per layer x position, heads per layer x position."""

ATTRIBUTION_DEFAULT_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos")
"""What attribution patching estimates by default: the full sweep (:data:`SWEEP_COMPONENTS`) and ``head_out``."""


@dataclass(frozen=True)
class Site:
    """One patchable activation: a component at a layer, and a position and/or head where it has those axes.

    ``pos`` is the destination position for ``pattern_by_pos``. :attr:`hook_name` and :attr:`index` name the
    activation: ``cache[site.hook_name][site.index]`` is what a patch at this site replaces.
    """

    component: str
    layer: int
    pos: int | None = None
    head: int | None = None

    def __post_init__(self):
        axes = component_spec(self.component).axes
        for axis, value in (("pos", self.pos), ("head", self.head)):
            if (axis in axes) != (value is not None):
                raise ValueError(
                    f"Site({self.component!r}, layer={self.layer}, pos={self.pos}, head={self.head}): "
                    f"{self.component} has the site axes {axes}; expected {axis} "
                    + ("to be given" if axis in axes else "to be None")
                )

    @property
    def hook_name(self) -> str:
        """The hook whose activation this site patches, e.g. ``"blocks.0.attn.hook_z"``."""
        return COMPONENTS[self.component].hook_name(self.layer)

    @property
    def index(self) -> tuple:
        """The index of this site into its hook's activation, batch axis first: ``(:, pos)`` for the residual
        stream and block outputs ``[batch, pos, d_model]``; ``(:, pos, head)`` or ``(:, :, head)`` for the
        per-head ``[batch, pos, head, d_head]``; ``(:, head, dest)`` or ``(:, head)`` for the pattern
        ``[batch, head, dest, src]``."""
        every = slice(None)
        if COMPONENTS[self.component].stage == "pattern":
            return (every, self.head) if self.pos is None else (every, self.head, self.pos)
        pos = every if self.pos is None else self.pos
        return (every, pos) if self.head is None else (every, pos, self.head)

    def label(self, labels: Sequence[str] = ()) -> str:
        """E.g. ``"mlp_out L0 @subject"`` or ``"head_out_by_pos L1H2 @->"``."""
        where = f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        if self.pos is not None:
            where += f" @{labels[self.pos] if self.pos < len(labels) else self.pos}"
        return f"{self.component} {where}"


_TIME = {"resid_pre": 0, "attn_out": 1, "z": 1, "mlp_out": 2, "resid_post": 2}
"""When a site's activation is in the residual stream of its position, in half-blocks: ``2 layer + this``."""


def nests(outer: Site, inner: Site) -> bool:
    """Whether ``inner`` lies downstream of ``outer``, so that an effect passing through ``outer`` also shows at
    ``inner``: ``inner`` is one of the heads of the attention output ``outer``, or ``inner`` reads the residual
    stream after ``outer``'s activation entered it. At time ``t`` in half-blocks (:data:`_TIME`), a site at
    position ``p`` reaches the stream of ``p`` from ``t`` on, and of every later position through the next
    attention layer (which reads the stream at ``2 l`` and writes at ``2 l + 1``); the residual stream at time ``T``
    reads what reached its position by ``T``, an attention layer ``l`` what reached any position up to its own by
    ``2 l``, an MLP what reached its position by ``2 l + 1``. So the residual stream before layer 0 at the subject
    nests every later site at the subject and after it. Sites without a position (a head over every position,
    queries, keys, values, patterns) nest in nothing here."""
    if outer == inner or outer.pos is None or inner.pos is None:
        return False
    stage_o, stage_i = COMPONENTS[outer.component].stage, COMPONENTS[inner.component].stage
    if stage_o not in _TIME or stage_i not in _TIME:
        return False
    if stage_o == "attn_out" and stage_i == "z":
        return inner.layer == outer.layer and inner.pos == outer.pos
    t_o = 2 * outer.layer + _TIME[stage_o]

    def reached(pos: int, by: int) -> bool:  # outer's activation is in the stream of ``pos`` by time ``by``
        if pos == outer.pos:
            return t_o <= by
        return pos > outer.pos and by >= t_o + (1 if t_o % 2 == 0 else 2)  # through a later attention layer

    if stage_i in ("z", "attn_out"):
        return outer.pos <= inner.pos and t_o <= 2 * inner.layer
    if stage_i == "mlp_out":
        return reached(inner.pos, 2 * inner.layer + 1)
    return reached(inner.pos, 2 * inner.layer + _TIME[stage_i])


def nested_groups(sites: Sequence[Site]) -> list[tuple[Site, ...]]:
    """``sites`` grouped so that sites nested in one another (:func:`nests`, either way, transitively) share a
    group: one effect seen at every site it passes through counts once per group. Groups keep the given order."""
    groups: list[list[Site]] = []
    for site in sites:
        touching = [g for g in groups if any(nests(site, other) or nests(other, site) for other in g)]
        merged = [s for g in touching for s in g] + [site]
        groups = [g for g in groups if all(g is not t for t in touching)] + [merged]
    order = {site: k for k, site in enumerate(sites)}
    return sorted((tuple(sorted(g, key=order.get)) for g in groups), key=lambda g: order[g[0]])


def component_spec(name: str) -> Component:
    """The :class:`Component` called ``name``; an error listing the valid names for any other."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; expected one of {tuple(COMPONENTS)}")
    return COMPONENTS[name]


def check_components(model, components: Sequence[str]) -> tuple[str, ...]:
    """``components`` as a tuple, each a known component that ``model`` has (no ``mlp_out`` on an
    attention-only model); a clear error otherwise."""
    if isinstance(components, str):
        raise ValueError(f"components={components!r} is one name; expected a sequence of names, "
                         f"e.g. ({components!r},)")
    components = tuple(components)
    if not components:
        raise ValueError(f"components is empty; expected at least one of {tuple(COMPONENTS)}")
    for name in components:
        if component_spec(name).stage == "mlp_out" and model.cfg.attn_only:
            raise ValueError(f"component {name!r}: the model is attention-only (attn_only=True) and has no MLP")
    return components


def site_shape(component: str, model, n_pos: int) -> tuple[int, ...]:
    """The size of each site axis of ``component`` on ``model`` with prompts of ``n_pos`` positions."""
    sizes = {"layer": model.cfg.n_layers, "pos": n_pos, "head": model.cfg.n_heads}
    return tuple(sizes[axis] for axis in component_spec(component).axes)


def component_sites(component: str, model, n_pos: int) -> list[Site]:
    """Every site of ``component`` on ``model`` with prompts of ``n_pos`` positions, in row-major order of
    :func:`site_shape` (the order of a result's ``values.reshape(-1, batch)``)."""
    return sites_in_grid(component, site_shape(component, model, n_pos))


def sites_in_grid(component: str, shape: Sequence[int]) -> list[Site]:
    """Every site of a ``component`` grid of ``shape`` (one size per site axis), in row-major order."""
    axes = component_spec(component).axes
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} for {component}, whose site axes are {axes}")
    sites = []
    for index in itertools.product(*map(range, shape)):
        named = dict(zip(axes, index))
        sites.append(Site(component, named["layer"], named.get("pos"), named.get("head")))
    return sites
