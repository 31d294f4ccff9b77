"""Edge-level patching: the effect of one edge of the computational graph, sender -> receiver input.

Node-level patching (:mod:`revinterp.analysis.patching`) says *which* components matter; an edge says *how* they
talk. The residual stream is a sum of writes (Elhage et al. 2021): the embeddings, each head's ``z_h W_O^h`` and
each MLP's output. Every reader of the stream, a head's query, key or value input, an MLP's input and the
unembedding's input (the final residual at the answer position), reads that sum. An *edge* is one write as one
reader sees it, at one position::

    sender  : embed | head (l, h) | mlp l
    receiver: q/k/v input of head (l', h') | mlp l' input | logits (the final residual at the answer position)
    valid when the sender is computed before the receiver reads (l < l'; a layer's heads feed its own MLP)

Path patching (Wang et al. 2022, "Interpretability in the Wild"; Goldowsky-Dill et al. 2023, "Localizing Model
Behavior with Path Patching") patches one edge: the receiver's input becomes

    x_receiver = resid + M * (source write - receiving write)          (M = 1 on the edge's position, else 0)

and every other reader keeps the receiving run's stream; what the receiver computes then flows on as usual. This is
exactly ``transformer_lens.patching.get_act_patch_direct_path`` (which adds the source head's clean-minus-corrupted
write to one later head's split Q/K/V input at every position) generalised to every sender and receiver kind and to
single positions. That TransformerLens function does not run on the native bridge (``set_use_split_qkv_input`` is
not implemented there); it does run on a GPT-2 ``transformers`` bridge, and :func:`gpt2_bridge` builds one with the
native model's weights (same logits to about 1e-6) so that the two can be compared; the tests do.

The same masked forward with ``M`` continuous gives the first-order *edge attribution* (Syed et al. 2023, "Attribution
Patching Outperforms Automated Circuit Discovery"): ``d metric / d M`` at ``M = 0``, one backward pass for every edge
and example (``method="attribution"`` of :func:`edge_sweep`), and with ``M = 1`` outside a circuit the ablate-outside
runs of :mod:`revinterp.analysis.circuit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.checks import check_choice, check_model_and_pairs
from revinterp.analysis.effects import receiving_and_source
from revinterp.analysis.metrics import METRICS, metric_values
from revinterp.analysis.prompts import PromptPairs
from revinterp.stats import Estimate, bootstrap_ci, normalized_ci

SENDER_KINDS = ("embed", "head", "mlp")
RECEIVER_KINDS = ("q", "k", "v", "mlp", "logits")
EDGE_METHODS = ("exact", "attribution")
DIRECTIONS = ("denoising", "noising")

__all__ = [
    "DIRECTIONS", "EDGE_METHODS", "RECEIVER_KINDS", "SENDER_KINDS", "Edge", "EdgeEffects", "Node", "all_edges",
    "edge_sweep", "gpt2_bridge", "masked_logits",
]


# -- the graph ---------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Node:
    """A sender (``embed``, ``head``, ``mlp``) or a receiver input (``q``, ``k``, ``v``, ``mlp``, ``logits``)."""

    kind: str
    layer: int | None = None
    head: int | None = None

    def __post_init__(self):
        if self.kind not in SENDER_KINDS + RECEIVER_KINDS:
            raise ValueError(f"node kind {self.kind!r}: expected one of {SENDER_KINDS + RECEIVER_KINDS}")
        needs_layer = self.kind not in ("embed", "logits")
        needs_head = self.kind in ("head", "q", "k", "v")
        if needs_layer != (self.layer is not None) or needs_head != (self.head is not None):
            raise ValueError(f"Node({self.kind!r}, layer={self.layer}, head={self.head}): {self.kind} expects "
                             f"{'a layer' if needs_layer else 'no layer'} and {'a head' if needs_head else 'no head'}")

    @property
    def depth(self) -> float:
        """Order in the forward pass: embed -1, layer l's heads and q/k/v inputs 2l, its MLP 2l + 1, logits last."""
        if self.kind == "embed":
            return -1.0
        if self.kind == "logits":
            return float("inf")
        return float(2 * self.layer + (1 if self.kind == "mlp" else 0))

    @property
    def label(self) -> str:
        if self.kind in ("embed", "logits"):
            return self.kind
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        name = f"L{self.layer}H{self.head}"
        return name if self.kind == "head" else f"{name}.{self.kind}"

    @property
    def unit(self) -> str:
        """The component a receiver input belongs to (``L1H2.q`` -> ``L1H2``): where its output is a sender."""
        return self.label.split(".")[0]


@dataclass(frozen=True, order=True)
class Edge:
    """One sender's write as one receiver reads it, at position ``pos`` (``None``: at every position, as
    TransformerLens's direct path patching does)."""

    sender: Node
    receiver: Node
    pos: int | None = None

    def __post_init__(self):
        if self.sender.kind not in SENDER_KINDS:
            raise ValueError(f"edge sender {self.sender.label!r}: expected a sender of kind {SENDER_KINDS}")
        if self.receiver.kind not in RECEIVER_KINDS:
            raise ValueError(f"edge receiver {self.receiver.label!r}: expected a receiver of kind {RECEIVER_KINDS}")
        if not self.sender.depth < self.receiver.depth:
            raise ValueError(f"edge {self.sender.label} -> {self.receiver.label}: the receiver reads before the "
                             "sender writes; expected a receiver in a later layer (or a layer's MLP after its heads)")

    def label(self, labels: Sequence[str] = ()) -> str:
        where = "" if self.pos is None else f" @{labels[self.pos] if self.pos < len(labels) else self.pos}"
        return f"{self.sender.label} -> {self.receiver.label}{where}"


def _senders(cfg) -> list[Node]:
    nodes = [Node("embed")]
    for layer in range(cfg.n_layers):
        nodes += [Node("head", layer, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            nodes.append(Node("mlp", layer))
    return nodes


def _receivers(cfg) -> list[Node]:
    nodes = []
    for layer in range(cfg.n_layers):
        nodes += [Node(kind, layer, h) for kind in ("q", "k", "v") for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            nodes.append(Node("mlp", layer))
    return nodes + [Node("logits")]


def check_edge(model, edge: Edge, n_pos: int) -> None:
    """``edge`` exists in ``model`` for prompts of ``n_pos`` positions; a ValueError naming what is wrong."""
    cfg = model.cfg
    for node in (edge.sender, edge.receiver):
        if node.kind == "mlp" and cfg.attn_only:
            raise ValueError(f"edge {edge.label()}: the model is attention-only (attn_only=True) and has no MLP")
        if node.layer is not None and not 0 <= node.layer < cfg.n_layers:
            raise ValueError(f"edge {edge.label()}: layer {node.layer} does not exist; the model has "
                             f"{cfg.n_layers} layer(s)")
        if node.head is not None and not 0 <= node.head < cfg.n_heads:
            raise ValueError(f"edge {edge.label()}: head {node.head} does not exist; the model has "
                             f"{cfg.n_heads} head(s) per layer")
    if edge.pos is not None and not 0 <= edge.pos < n_pos:
        raise ValueError(f"edge {edge.label()}: position {edge.pos} outside the prompts' {n_pos} positions")
    if edge.receiver.kind == "logits" and edge.pos not in (None, n_pos - 1):
        raise ValueError(f"edge {edge.label()}: the logits receiver reads the answer position {n_pos - 1} only")


def all_edges(model, n_pos: int, *, positions: str = "each") -> list[Edge]:
    """Every edge of ``model`` that can reach the answer on prompts of ``n_pos`` positions.

    ``positions="each"``: one edge per position (the logits receiver and the last layer's queries and MLP only at the
    answer position: elsewhere they cannot reach it); ``"all"``: one edge per sender and receiver, at every position.
    """
    check_choice("positions", positions, ("each", "all"))
    cfg = model.cfg
    answer, last = n_pos - 1, cfg.n_layers - 1
    edges = []
    for receiver in _receivers(cfg):
        for sender in _senders(cfg):
            if not sender.depth < receiver.depth:
                continue
            if positions == "all":
                edges.append(Edge(sender, receiver, None))
                continue
            answer_only = receiver.kind == "logits" or (receiver.layer == last and receiver.kind in ("q", "mlp"))
            for pos in ([answer] if answer_only else range(n_pos)):
                edges.append(Edge(sender, receiver, pos))
    return sorted(edges, key=lambda e: (e.receiver.depth, e.receiver, e.sender.depth, e.sender, e.pos))


# -- the masked forward -------------------------------------------------------------------------------
class _Graph:
    """A forward pass of a native bridge in which every receiver reads its own copy of the residual stream.

    ``run(tokens, replacement, mask)``: receiver ``r`` at position ``p`` reads
    ``resid + sum_s mask[b, s, r, p] * (replacement[b, p, s] - write_s)`` where ``write_s`` is sender ``s``'s write
    in this very forward; with ``mask = 0`` it is the model's own forward (the native modules' arithmetic, as
    :mod:`revinterp.analysis.fast_patching`).
    """

    def __init__(self, model):
        cfg = model.cfg
        attention = type(model.blocks[0].attn.original_component).__name__
        if attention != "NativeAttention":
            raise ValueError(f"edge patching runs on TransformerBridge.boot_native models; got {attention} attention")
        if cfg.positional_embedding_type == "rotary":
            raise ValueError("edge patching supports positional_embedding_type='standard'; got 'rotary'")
        if cfg.attention_dir not in ("causal", "bidirectional"):
            raise ValueError(f"edge patching runs causal or bidirectional attention; got attention_dir="
                             f"{cfg.attention_dir!r}")
        if cfg.n_key_value_heads not in (None, cfg.n_heads):
            raise ValueError(f"edge patching needs one key/value head per head; got n_key_value_heads="
                             f"{cfg.n_key_value_heads}")
        self.model, self.cfg = model, cfg
        self.senders, self.receivers = _senders(cfg), _receivers(cfg)
        self.sender_index = {n: i for i, n in enumerate(self.senders)}
        self.receiver_index = {n: i for i, n in enumerate(self.receivers)}
        self.H, self.dh = cfg.n_heads, cfg.d_head
        # senders written before each layer's attention reads (embed + earlier layers), and before its MLP reads
        self.n_before_attn = [1 + layer * (self.H + (0 if cfg.attn_only else 1)) for layer in range(cfg.n_layers)]

    def receiver_slice(self, layer: int) -> tuple[int, int]:
        """Indices of layer ``layer``'s q/k/v receivers (q heads, then k heads, then v heads)."""
        start = self.receiver_index[Node("q", layer, 0)]
        return start, start + 3 * self.H

    def record(self, tokens: Int[Tensor, "batch pos"]):
        """Unmasked run: (answer logits, sender writes ``[batch, pos, sender, d_model]``, the residual stream entering
        each layer and the final one)."""
        return self.run(tokens, None, None, keep=True)

    def run(self, tokens, replacement, mask, *, keep: bool = False, start: tuple | None = None):
        """Answer-position logits ``[batch, d_vocab]`` (and with ``keep`` the writes and residuals).

        ``mask``: ``[batch or 1, sender, receiver, pos]`` or ``None``; ``start=(layer, writes, resid_pre)`` begins the
        forward at ``layer`` from a recorded run whose earlier layers the mask does not touch."""
        m, cfg = self.model, self.cfg
        if start is None:
            first, x = 0, m(tokens, stop_at_layer=0)
            writes = [x]
        else:
            first, recorded, x = start
            writes = list(recorded.unbind(2))[: self.n_before_attn[first] if first < cfg.n_layers else None]
        n, n_pos = x.shape[:2]
        resid_pre = []
        for layer in range(first, cfg.n_layers):
            blk = m.blocks[layer]
            attn = blk.attn.original_component
            resid_pre.append(x)
            lo, hi = self.receiver_slice(layer)
            reads = self._reads(x, writes, replacement, mask, lo, hi)  # None or [batch, pos, 3H, d]
            if reads is None:
                h = blk.ln1(x)
                q, k, v = (getattr(attn, name).original_component(h).view(n, n_pos, self.H, self.dh)
                           for name in ("q", "k", "v"))
            else:
                h = blk.ln1(reads)  # [batch, pos, 3H, d]
                q, k, v = (self._project(getattr(attn, name).original_component, h[:, :, i * self.H:(i + 1) * self.H])
                           for i, name in enumerate(("q", "k", "v")))
            scores = torch.matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(-2, -1)) / attn.scale
            if attn.causal:  # as NativeAttention masks
                future = attn.causal_mask[:n_pos, :n_pos]
                pattern = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1).masked_fill(future, 0.0)
            else:  # bidirectional (an MLM-U model): every position attends to every position
                pattern = torch.softmax(scores, dim=-1)
            z = torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2).contiguous()  # [batch, pos, head, d_head]
            w_o = attn.o.original_component.weight.view(cfg.d_model, self.H, self.dh)
            writes += list(torch.einsum("bphe,dhe->bphd", z, w_o).unbind(2))
            mid = x + attn.o.original_component(z.view(n, n_pos, -1))
            if cfg.attn_only:
                x = mid
                continue
            index = self.receiver_index[Node("mlp", layer)]
            reads = self._reads(mid, writes, replacement, mask, index, index + 1)
            mlp_out = blk.mlp(blk.ln2(mid if reads is None else reads[:, :, 0]))
            writes.append(mlp_out)
            x = mid + mlp_out
        index = self.receiver_index[Node("logits")]
        reads = self._reads(x, writes, replacement, mask, index, index + 1)
        final = (x if reads is None else reads[:, :, 0])[:, -1:].contiguous()
        logits = m.unembed(m.ln_final(final))[:, -1]
        if keep:
            return logits, torch.stack(writes, 2), [*resid_pre, x]
        return logits

    def _reads(self, resid, writes, replacement, mask, lo: int, hi: int):
        if mask is None:
            return None
        upstream = len(writes)
        n = resid.shape[0]
        weights = mask[:, :upstream, lo:hi].expand(n, -1, -1, -1)  # [batch, sender, receiver, pos]
        if not weights.requires_grad and not bool(weights.any()):
            return None
        delta = replacement[:, :, :upstream].expand(n, -1, -1, -1) - torch.stack(writes, 2)  # [batch, pos, sender, d]
        return resid[:, :, None] + torch.einsum("bsrp,bpsd->bprd", weights, delta)

    def _project(self, linear, h):
        """Per-head projection: head ``i`` of ``linear`` applied to its own input ``h[:, :, i]``."""
        weight = linear.weight.view(self.H, self.dh, -1)
        out = torch.einsum("bphd,hed->bphe", h, weight)
        return out if linear.bias is None else out + linear.bias.view(self.H, self.dh)

    def mask_for(self, edges: Sequence[Edge], n_pos: int, value: float = 1.0, fill: float = 0.0) -> Tensor:
        """``[1, sender, receiver, pos]``: ``value`` on ``edges`` (at every position where ``pos`` is None), else
        ``fill``."""
        mask = torch.full((1, len(self.senders), len(self.receivers), n_pos), fill,
                          device=next(self.model.parameters()).device)
        for e in edges:
            s, r = self.sender_index[e.sender], self.receiver_index[e.receiver]
            mask[0, s, r, slice(None) if e.pos is None else e.pos] = value
        return mask

    def first_layer(self, edges: Sequence[Edge]) -> int:
        """The earliest layer whose receivers ``edges`` touch (``n_layers`` for the logits)."""
        layers = [self.cfg.n_layers if e.receiver.kind == "logits" else e.receiver.layer for e in edges]
        return min(layers, default=self.cfg.n_layers)


def masked_logits(model, tokens: Int[Tensor, "batch pos"], replacement: Float[Tensor, "batch pos sender d_model"],
                  edges: Sequence[Edge], *, value: float = 1.0, fill: float = 0.0) -> Float[Tensor, "batch d_vocab"]:
    """Answer logits with ``edges`` reading ``replacement`` writes (mask ``value``) and every other edge mask
    ``fill`` (``fill=1, value=0``: everything *but* ``edges`` ablated). ``replacement`` holds one write per sender in
    the order ``embed, L0H0.., MLP0, L1H0..`` (e.g. a recorded run's, :func:`sender_writes`)."""
    graph = _Graph(model)
    for e in edges:
        check_edge(model, e, tokens.shape[1])
    with torch.no_grad():
        return graph.run(tokens, replacement, graph.mask_for(edges, tokens.shape[1], value, fill))


def sender_writes(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos sender d_model"]:
    """Every sender's write on ``tokens`` (embed + pos embed, each head's ``z_h W_O^h``, each MLP's output)."""
    with torch.no_grad():
        return _Graph(model).record(tokens)[1]


# -- results -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EdgeEffects:
    """Per-example metric with each edge patched (``method="exact"``) or its first-order estimate (``"attribution"``).

    ``values[e, i]``: the metric of example ``i`` with edge ``edges[e]`` patched; ``clean`` and ``corrupted`` the
    unpatched runs. Normalized like :class:`~revinterp.analysis.effects.SiteEffects`: 0 = corrupted, 1 = clean.
    """

    edges: tuple[Edge, ...]
    values: Float[Tensor, "edge batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    direction: str
    metric: str
    labels: tuple[str, ...]
    method: str

    def __post_init__(self):
        if self.values.shape != (len(self.edges), self.clean.shape[0]):
            raise ValueError(f"values have shape {tuple(self.values.shape)}; expected ({len(self.edges)} edges, "
                             f"{self.clean.shape[0]} examples)")
        check_choice("method", self.method, EDGE_METHODS)

    @property
    def n(self) -> int:
        return self.values.shape[1]

    @property
    def unpatched(self) -> Float[Tensor, " batch"]:
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def gap(self) -> float:
        return (self.clean.double().mean() - self.corrupted.double().mean()).item()

    @property
    def effect(self) -> Float[Tensor, " edge"]:
        """Mean change the edge's patch makes, in metric units."""
        return (self.values - self.unpatched).mean(-1)

    @property
    def normalized(self) -> Float[Tensor, " edge"]:
        """Change as a share of the clean-corrupted gap (denoising: 0 = no change, 1 = the whole gap restored;
        noising: the share destroyed is minus this)."""
        return (self.values.double().mean(-1) - self.unpatched.double().mean()) / self.gap

    def estimates(self, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> list[Estimate]:
        """:attr:`normalized` per edge with a paired percentile-bootstrap interval over examples."""
        shifted = self.values.double() - self.unpatched.double() + self.corrupted.double()
        return normalized_ci(shifted, self.clean, self.corrupted, confidence=confidence,
                             n_resamples=n_resamples, seed=seed)

    def index(self, edge: Edge) -> int:
        try:
            return self.edges.index(edge)
        except ValueError:
            raise KeyError(f"edge {edge.label(self.labels)} is not in this result") from None

    def top(self, k: int = 10) -> list[tuple[Edge, float]]:
        """The ``k`` edges of largest ``|normalized|``."""
        norm = self.normalized
        order = torch.argsort(norm.abs(), descending=True, stable=True)[:k].tolist()
        return [(self.edges[i], norm[i].item()) for i in order]

    def agreement_with(self, exact: EdgeEffects, *, k: int = 10):
        """:func:`~revinterp.analysis.agreement.attribution_agreement` of these effects with an exact sweep."""
        from revinterp.analysis.agreement import attribution_agreement

        if exact.edges != self.edges:
            raise ValueError("the exact sweep covers other edges; expected the same edges in the same order")
        return attribution_agreement(self.effect, exact.effect, labels=[e.label(self.labels) for e in self.edges],
                                     k=k)

    def to_frame(self, *, confidence: float = 0.95):
        """One row per edge: sender, receiver, pos, pos_label, effect, normalized with its interval, n."""
        import pandas as pd

        est = self.estimates(confidence=confidence)
        effect = self.effect.tolist()
        return pd.DataFrame([dict(
            edge=e.label(self.labels), sender=e.sender.label, receiver=e.receiver.label, receiver_kind=e.receiver.kind,
            pos=e.pos, pos_label=None if e.pos is None else self.labels[e.pos], method=self.method,
            direction=self.direction, metric=self.metric, effect=effect[i], normalized=est[i].mean,
            ci_low=est[i].low, ci_high=est[i].high, n=self.n,
        ) for i, e in enumerate(self.edges)])

    def summary(self, k: int = 10) -> str:
        clean, corrupted = bootstrap_ci(self.clean), bootstrap_ci(self.corrupted)
        what = "edge attribution (first-order estimate)" if self.method == "attribution" else "path patching"
        lines = [f"{what}, {self.direction}, metric {self.metric}, {len(self.edges)} edges, {self.n} prompt pairs",
                 f"clean {clean}   corrupted {corrupted}   (normalized: share of the clean-corrupted gap)"]
        est = self.estimates()
        for edge, _ in self.top(k):
            lines.append(f"  {edge.label(self.labels):<34} {est[self.index(edge)]}")
        return "\n".join(lines)

    def plot(self, *, k: int | None = 20, threshold: float = 0.0):
        """The circuit as a graph (plotly): nodes per layer (rows) and position (columns), edge width ~ |effect|.

        Shows the ``k`` largest edges with ``|normalized| > threshold`` (all with ``k=None``)."""
        return plot_edges(self.top(k if k is not None else len(self.edges)), self.labels, threshold=threshold,
                          title=f"edges ({self.method}, {self.direction}, {self.metric}; n={self.n})")


def plot_edges(weighted: Sequence[tuple[Edge, float]], labels: Sequence[str], *, threshold: float = 0.0,
               title: str = "circuit"):
    """Plotly graph of ``(edge, weight)``: a node per (component, position), rows in forward order."""
    import plotly.graph_objects as go

    weighted = [(e, w) for e, w in weighted if abs(w) > threshold]
    n_pos = len(labels)
    answer = n_pos - 1

    def coords(node: Node, pos: int, *, reading: bool) -> tuple[float, float]:
        depth = node.depth
        row = -1.0 if depth == -1 else (1e3 if depth == float("inf") else depth)
        spread = 0.0
        if node.head is not None:
            spread = (node.head + 0.5) / 8 - 0.3
        if reading and node.kind in ("q", "k", "v"):
            row -= 0.35  # a head's inputs sit just below its output
            spread += {"q": -0.06, "k": 0.0, "v": 0.06}[node.kind]
        return float(pos + spread), float(row)

    max_w = max((abs(w) for _, w in weighted), default=1.0) or 1.0
    fig = go.Figure()
    nodes: dict[tuple[float, float], str] = {}
    top_row = max([e.receiver.depth for e, _ in weighted if e.receiver.kind != "logits"] + [0]) + 1
    for e, w in weighted:
        pos = answer if e.pos is None else e.pos
        x0, y0 = coords(e.sender, pos, reading=False)
        x1, y1 = coords(e.receiver, pos, reading=True)
        if e.receiver.kind == "logits":
            y1 = top_row
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text",
                                 text=f"{e.label(labels)}: {w:.3f}", showlegend=False,
                                 line=dict(width=1 + 9 * abs(w) / max_w, color="#1f77b4" if w > 0 else "#d62728")))
        nodes[(x0, y0)] = f"{e.sender.label}@{labels[pos]}"
        nodes[(x1, y1)] = f"{e.receiver.label}@{labels[pos]}"
        # a head's output sits at the answer position, its k/v inputs at the source position
        if e.receiver.kind in ("k", "v") and pos != answer:
            out = coords(Node("head", e.receiver.layer, e.receiver.head), answer, reading=False)
            fig.add_trace(go.Scatter(x=[x1, out[0]], y=[y1, out[1]], mode="lines", showlegend=False,
                                     line=dict(width=1, dash="dot", color="#999")))
    fig.add_trace(go.Scatter(x=[p[0] for p in nodes], y=[p[1] for p in nodes], mode="markers+text",
                             text=list(nodes.values()), textposition="middle right", showlegend=False,
                             marker=dict(size=9, color="#333")))
    fig.update_xaxes(tickvals=list(range(n_pos)), ticktext=list(labels), title_text="position")
    fig.update_yaxes(title_text="layer (forward order: embed, heads, MLP, ..., logits)", showticklabels=False)
    fig.update_layout(title=title + " (blue: restores the answer, red: works against it; width ~ |effect|)")
    return fig


# -- the sweep -----------------------------------------------------------------------------------------
def edge_sweep(
    model,
    pairs: PromptPairs,
    edges: Sequence[Edge] | None = None,
    *,
    direction: str = "denoising",
    metric: str = "logit_diff",
    method: str = "exact",
    positions: str = "each",
) -> EdgeEffects:
    """Patch each edge alone (path patching) or estimate every edge at once (edge attribution).

    Args:
        model: an eval-mode native bridge (standard positional embeddings).
        pairs: clean/corrupted prompt pairs on the model's device.
        edges: the edges (default :func:`all_edges` with ``positions``).
        direction: ``"denoising"`` (the clean write into the corrupted run) or ``"noising"``.
        metric: one of :data:`revinterp.analysis.metrics.METRICS`.
        method: ``"exact"``: one forward per edge, from the receiver's layer on (earlier layers are the receiving
            run's); an edge whose two writes are equal on every example is exactly unpatched and is not run.
            ``"attribution"``: ``unpatched + d metric / d M`` at ``M = 0``, one backward for all edges (per example).

    Example:
        >>> effects = edge_sweep(run.model, pairs)              # doctest: +SKIP
        >>> print(effects.summary()); effects.plot()            # doctest: +SKIP
    """
    check_choice("direction", direction, DIRECTIONS)
    check_choice("metric", metric, METRICS)
    check_choice("method", method, EDGE_METHODS)
    check_model_and_pairs(model, pairs, "edge_sweep")
    n_pos = pairs.clean.shape[1]
    edges = tuple(all_edges(model, n_pos, positions=positions) if edges is None else edges)
    if not edges:
        raise ValueError("edges is empty; expected at least one edge (all_edges lists them)")
    for e in edges:
        check_edge(model, e, n_pos)
    graph = _Graph(model)
    receiving, source = receiving_and_source(pairs, direction)
    ca, cb = pairs.clean_answer, pairs.corrupted_answer
    with torch.no_grad():
        logits, writes, resid = graph.record(receiving)
        source_logits, source_writes, _ = graph.record(source)
    unpatched = metric_values(metric, logits, ca, cb)
    from_source = metric_values(metric, source_logits, ca, cb)
    clean, corrupted = (from_source, unpatched) if direction == "denoising" else (unpatched, from_source)
    if method == "attribution":
        values = _attribution(graph, receiving, source_writes, edges, metric, ca, cb, unpatched)
    else:
        differs = (source_writes != writes).any(-1).any(0)  # [pos, sender]
        values = torch.empty(len(edges), len(pairs), device=unpatched.device)
        with torch.no_grad():
            for i, e in enumerate(edges):
                s = graph.sender_index[e.sender]
                if not bool(differs[slice(None) if e.pos is None else e.pos, s].any()):
                    values[i] = unpatched  # the two writes are equal: the patch changes nothing
                    continue
                first = graph.first_layer([e])
                out = graph.run(receiving, source_writes, graph.mask_for([e], n_pos),
                                start=(first, writes, resid[first]))
                values[i] = metric_values(metric, out, ca, cb)
    return EdgeEffects(edges=edges, values=values.detach(), clean=clean.detach(), corrupted=corrupted.detach(),
                       direction=direction, metric=metric, labels=pairs.labels, method=method)


def _attribution(graph: _Graph, receiving, source_writes, edges, metric, ca, cb, unpatched) -> Tensor:
    n, n_pos = receiving.shape
    mask = torch.zeros(n, len(graph.senders), len(graph.receivers), n_pos, device=unpatched.device,
                       requires_grad=True)
    out = graph.run(receiving, source_writes.detach(), mask)
    # the gradient with respect to the mask only: the model's parameters' .grad stays untouched
    (grad,) = torch.autograd.grad(metric_values(metric, out, ca, cb).sum(), mask)  # [batch, sender, receiver, pos]
    values = torch.empty(len(edges), n, device=unpatched.device)
    for i, e in enumerate(edges):
        g = grad[:, graph.sender_index[e.sender], graph.receiver_index[e.receiver]]
        values[i] = unpatched + (g.sum(-1) if e.pos is None else g[:, e.pos])
    return values


# -- a TransformerLens model where its direct path patching runs -----------------------------------------
def gpt2_bridge(model):
    """A ``transformers`` GPT-2 model with ``model``'s weights, booted as a TransformerBridge, on which
    ``transformer_lens.patching.get_act_patch_direct_path`` runs (its attention has the split Q/K/V input fork that
    the native bridge lacks). Same logits as ``model`` to about 1e-6 (tested).

    Needs a LayerNorm, GELU, standard-positional, non-attention-only native model; a ValueError otherwise.
    """
    from transformer_lens import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    problems = [f"{k}={getattr(cfg, k)!r} (expected {v!r})" for k, v in
                (("normalization_type", "LN"), ("act_fn", "gelu"), ("positional_embedding_type", "standard"),
                 ("attn_only", False)) if getattr(cfg, k) != v]
    if problems:
        raise ValueError("gpt2_bridge: no GPT-2 equivalent for " + ", ".join(problems))
    tok = model.tokenizer
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
        n_inner=cfg.d_mlp, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=cfg.eps, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    sd = model.state_dict()
    new = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"],
           "transformer.ln_f.weight": sd["ln_final.weight"], "transformer.ln_f.bias": sd["ln_final.bias"],
           "lm_head.weight": sd["unembed.weight"]}
    for layer in range(cfg.n_layers):
        p, h = f"blocks.{layer}.", f"transformer.h.{layer}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            new[h + theirs + ".weight"], new[h + theirs + ".bias"] = sd[p + ours + ".weight"], sd[p + ours + ".bias"]
        new[h + "attn.c_attn.weight"] = torch.cat([sd[p + f"attn.{x}.weight"] for x in "qkv"]).T.contiguous()
        new[h + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{x}.bias"] for x in "qkv"])
        for ours, theirs in (("attn.o", "attn.c_proj"), ("mlp.in", "mlp.c_fc"), ("mlp.out", "mlp.c_proj")):
            new[h + theirs + ".weight"] = sd[p + ours + ".weight"].T.contiguous()
            new[h + theirs + ".bias"] = sd[p + ours + ".bias"]
    hf.load_state_dict(new, strict=True)
    hf.to(next(model.parameters()).device).eval()
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tok,
                                                 device=next(model.parameters()).device)
    bridge.eval()
    return bridge

