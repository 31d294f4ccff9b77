"""Where an association is stored: each path's share of the answer, and each head's QK reading, per split.

For a statement ``s r o`` with prompt ``<bos> s r`` the answer is read at the last position. Two measurements:

- **path shares** (measured, :mod:`revinterp.analysis.edges`): the effect on the answer's logit difference of each
  sender's write *directly* into the logits (the edge ``sender -> logits`` at the answer position, path patching on
  clean/corrupted pairs of the split): the direct path (``embed``, the relation token's own ``W_E W_U``, which cannot
  store a subject's fact), each head and each MLP. ``share = edge effect / (clean - corrupted)``.
- **entries** (weights applied to the model's own activations): head ``(l, h)``'s write from the subject position,
  ``e_h(s, o) = attn_h(answer -> subject) * (v_h(s) W_O^h) . u_o`` with ``v_h(s)`` the head's value at the subject
  (``ln1(x_s) W_V^h + b_V^h``) and ``u_o`` the read-out of ``o`` (``W_U[:, o]`` times the final LayerNorm weight,
  centred over the relation's candidate answers); its *effect* is ``e_h(s, o)`` minus the mean of ``e_h(s, o')`` over
  the answers ``o'`` of the other statements of the split (the ``"split"`` baseline of
  :mod:`revinterp.analysis.weights`).
  For a one-layer model ``v_h(s) W_O^h u_o`` is the ``W_E W_OV W_U`` entry of Zhu et al. (2024), up to the LayerNorm
  scales. The *attention* ``attn_h(answer -> subject)`` is the QK reading: whether the routing brings the subject to
  the answer position.

The *storage head* is the head whose mean entry effect on a seen split is largest (with a bootstrap interval over
facts; none when no interval lies above zero); the *storage heads* are every head whose interval lies above zero.
Entries are in logit units before the final LayerNorm's division by its scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.edges import Edge, Node, edge_sweep
from revinterp.analysis.prompts import make_prompt_pairs
from revinterp.data import FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import unpack_run
from revinterp.stats import Estimate, bootstrap_ci

STORAGE_SPLITS = ("forward_seen", "reverse_seen", "forward_only", "reverse_held_out")

__all__ = ["STORAGE_SPLITS", "SplitStorage", "Storage", "head_entries", "storage"]


@dataclass(frozen=True)
class SplitStorage:
    """One split's measurements (see the module docstring).

    Attributes:
        statements: the statements, in order.
        effect: ``[layer, head, statement]`` entry effect of each head from the subject position.
        attention: ``[layer, head, statement]`` attention from the answer position to the subject.
        pattern: ``[layer, head, dest, src]`` mean attention pattern over the split's prompts.
        path_labels: the senders whose direct effect on the logits is measured (``embed``, heads, MLPs).
        path_effect: ``[sender, pair]`` change of the logit difference by the edge ``sender -> logits`` (denoising);
            ``None`` when the split has fewer than two pairs.
        gap: mean clean minus corrupted logit difference over those pairs.
    """

    split: str
    statements: tuple[Statement, ...]
    effect: Float[Tensor, "layer head statement"]
    attention: Float[Tensor, "layer head statement"]
    pattern: Float[Tensor, "layer head dest src"]
    path_labels: tuple[str, ...]
    path_effect: Float[Tensor, "sender pair"] | None
    gap: float

    def head_estimate(self, layer: int, head: int) -> Estimate:
        return bootstrap_ci(self.effect[layer, head].double())

    def shares(self) -> dict[str, float]:
        """Each sender's direct share of the clean-corrupted gap (NaN-free: empty when not measured)."""
        if self.path_effect is None or self.gap == 0:
            return {}
        return {label: float(v) / self.gap for label, v in zip(self.path_labels, self.path_effect.mean(-1))}


@dataclass(frozen=True)
class Storage:
    """:class:`SplitStorage` per split, and the storage head found on ``reference`` (a seen split)."""

    splits: dict[str, SplitStorage]
    storage_head: tuple[int, int] | None
    storage_heads: tuple[tuple[int, int], ...]
    reference: str
    pos_labels: tuple[str, ...]

    def head_label(self) -> str:
        return "none" if self.storage_head is None else f"L{self.storage_head[0]}H{self.storage_head[1]}"

    def to_frame(self):
        """One row per (split, head): mean entry effect with its interval and mean attention to the subject."""
        import pandas as pd

        rows = []
        for name, s in self.splits.items():
            n_layers, n_heads = s.effect.shape[:2]
            shares = s.shares()
            for layer in range(n_layers):
                for head in range(n_heads):
                    est = s.head_estimate(layer, head)
                    label = f"L{layer}H{head}"
                    rows.append(dict(split=name, head=label, entry_effect=est.mean, ci_low=est.low, ci_high=est.high,
                                     attention_to_subject=float(s.attention[layer, head].mean()),
                                     direct_share=shares.get(label), n=len(s.statements)))
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [f"storage head (largest entry effect on {self.reference}): {self.head_label()}; every head above "
                 "zero: " + (", ".join(f"L{a}H{b}" for a, b in self.storage_heads) or "none")]
        for name, s in self.splits.items():
            parts = []
            if self.storage_head is not None:
                layer, head = self.storage_head
                parts.append(f"entry {s.head_estimate(layer, head)}, attention to subject "
                             f"{s.attention[layer, head].mean():.2f}")
            shares = s.shares()
            if shares:
                top = sorted(shares.items(), key=lambda kv: -abs(kv[1]))[:4]
                parts.append("direct shares " + ", ".join(f"{k} {v:.2f}" for k, v in top))
            lines.append(f"  {name:<18} n={len(s.statements):<4} " + "; ".join(parts))
        return "\n".join(lines)

    def plot(self):
        """Bars: every head's mean entry effect per split, with 95 % intervals."""
        import plotly.graph_objects as go

        from revinterp.stats import error_bars

        fig = go.Figure()
        for name, s in self.splits.items():
            n_layers, n_heads = s.effect.shape[:2]
            labels = [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]
            est = [s.head_estimate(layer, head) for layer in range(n_layers) for head in range(n_heads)]
            fig.add_bar(x=labels, y=[e.mean for e in est], name=name, error_y=error_bars(est))
        fig.update_layout(title="head entries from the subject position (effect over the split baseline)",
                          yaxis_title="entry effect (logit units)", barmode="group")
        return fig

    def attention_view(self, split: str, layer: int = 0):
        """circuitsvis ``attention_heads`` of layer ``layer``'s mean pattern on ``split``'s prompts (offline HTML via
        ``.local_src``)."""
        import circuitsvis as cv

        pattern = self.splits[split].pattern[layer]
        return cv.attention.attention_heads(attention=pattern, tokens=list(self.pos_labels),
                                            attention_head_names=[f"L{layer}H{h}" for h in range(pattern.shape[0])])


def _readout(model, facts: FactSet, statements: Sequence[Statement], tokenizer) -> Tensor:
    """``[statement, d_model]``: u_o = W_U[:, o] * ln_final.w minus the mean over the relation's candidates."""
    w_u = model.unembed.original_component.weight  # [vocab, d_model]
    norm = getattr(model.ln_final, "original_component", None)
    weight = getattr(norm, "weight", None)
    scale = weight if isinstance(weight, Tensor) else torch.ones(w_u.shape[1], device=w_u.device)
    rows = []
    for s in statements:
        ids = [encode_words(tokenizer, o.split())[0] for o in facts.candidates(s.relation)]
        answer = encode_words(tokenizer, s.object.split())[0]
        rows.append((w_u[answer] - w_u[ids].mean(0)) * scale)
    return torch.stack(rows)


def head_entries(model, facts: FactSet, statements: Sequence[Statement], tokenizer, *, subject_pos: int = 1):
    """(entries ``[layer, head, statement, statement]``: ``e_h(s_i, o_j)``, attention ``[layer, head, statement]``,
    values ``[layer, head, statement, d_head]``, mean pattern), single-token subjects at ``subject_pos``."""
    encoded = encode_statements(facts, statements, tokenizer)
    length = int(encoded.prompt_lengths[0])
    if bool((encoded.prompt_lengths != length).any()):
        raise ValueError("head_entries needs prompts of one length (single-token subjects and relations)")
    tokens = encoded.tokens[:, :length].to(next(model.parameters()).device)
    readout = _readout(model, facts, statements, tokenizer)  # [statement, d]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        entries, attention, values, patterns = [], [], [], []
        for layer in range(model.cfg.n_layers):
            v = cache[f"blocks.{layer}.attn.hook_v"][:, subject_pos]  # [statement, head, d_head]
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [statement, head, dest, src]
            attn = pattern[:, :, -1, subject_pos]  # [statement, head]
            w_o = model.blocks[layer].attn.W_O  # [head, d_head, d_model] (a live view per block)
            write = torch.einsum("shd,hde->she", v, w_o)  # [statement, head, d_model]
            e = torch.einsum("she,te->hst", write, readout) * attn.T[:, :, None]
            entries.append(e)
            attention.append(attn.T)
            values.append(v.transpose(0, 1))
            patterns.append(pattern.mean(0))
    return torch.stack(entries), torch.stack(attention), torch.stack(values), torch.stack(patterns)


def _split_effect(entries: Tensor) -> Tensor:
    """``[layer, head, statement]``: the diagonal minus the mean of the other columns of its row."""
    n = entries.shape[-1]
    diag = entries.diagonal(dim1=-2, dim2=-1)
    if n == 1:
        return diag
    return diag - (entries.sum(-1) - diag) / (n - 1)


def storage(model_or_run, facts: FactSet | None = None, *, splits: Sequence[str] | None = None,
            reference: str = "reverse_seen", tokenizer=None, max_pairs: int | None = 200) -> Storage:
    """Path shares, head entries and QK readings per split, and the storage head (see the module docstring).

    Example:
        >>> print(storage(run).summary())            # doctest: +SKIP
    """
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    present = [s for s in (splits or STORAGE_SPLITS) if facts.split(s)]
    if reference not in present:
        raise ValueError(f"reference split {reference!r} has no statements here; present: {present}")
    senders = [Node("embed")] + [Node("head", layer, h) for layer in range(model.cfg.n_layers)
                                 for h in range(model.cfg.n_heads)]
    if not model.cfg.attn_only:
        senders += [Node("mlp", layer) for layer in range(model.cfg.n_layers)]
    result, pos_labels = {}, ()
    for name in present:
        statements = facts.split(name)
        entries, attention, _, pattern = head_entries(model, facts, statements, tokenizer)
        path_effect, gap = None, 0.0
        if len(statements) >= 2:
            try:
                pairs = make_prompt_pairs(facts, name, tokenizer, max_pairs=max_pairs, max_length=model.cfg.n_ctx)
            except ValueError:
                pairs = None
            if pairs is not None and len(pairs) >= 2:
                pairs = pairs.to(next(model.parameters()).device)
                answer = pairs.answer_position
                edges = [Edge(s, Node("logits"), answer) for s in senders]
                effects = edge_sweep(model, pairs, edges)
                path_effect, gap = (effects.values - effects.corrupted).detach(), effects.gap
                pos_labels = pairs.labels
        result[name] = SplitStorage(split=name, statements=tuple(statements), effect=_split_effect(entries),
                                    attention=attention, pattern=pattern,
                                    path_labels=tuple(n.label for n in senders), path_effect=path_effect, gap=gap)
    ref = result[reference]
    means = ref.effect.mean(-1)
    layer, head = divmod(int(means.argmax()), means.shape[1])
    found = (layer, head) if ref.head_estimate(layer, head).low > 0 else None
    every = tuple((a, b) for a in range(means.shape[0]) for b in range(means.shape[1])
                  if ref.head_estimate(a, b).low > 0)
    return Storage(splits=result, storage_head=found, storage_heads=every, reference=reference,
                   pos_labels=pos_labels or ("<bos>", "subject", "relation"))
