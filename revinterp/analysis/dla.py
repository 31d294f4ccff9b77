"""Direct logit attribution: which parts of the model write the answer's logit, read at the last position.

The residual stream before the unembedding is a sum of the embeddings' and every head's and MLP's outputs
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"); with the final LayerNorm scale
frozen at its value on the prompt, the logit is linear in them (the logit-difference form from Wang et al.
2022, IOI)::

    logit[a] - logit[a'] = sum_c  ln_final(x_c) . (W_U[:, a] - W_U[:, a'])  +  b_U[a] - b_U[a']

The sum is exact on a compatibility-mode copy of the model (final LayerNorm weights folded into ``W_U``,
biases into ``b_U``); the caller's model is never modified. It says who writes the answer *directly*, not
who causes it: a part can matter only through later ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.checks import check_choice, check_model_and_pairs
from revinterp.analysis.prompts import PromptPairs
from revinterp.evaluation import LOGIT_ELEMENTS, model_device
from revinterp.stats import bootstrap_ci, error_bars, format_fixed

DLA_TARGETS = ("logit_diff", "answer")


@dataclass(frozen=True)
class DirectLogitAttributionResult:
    """Per-example direct logit attribution of the answer at the last position of the clean prompts.

    ``values[i, b]`` is what part ``labels[i]`` writes along the answer's unembedding direction in
    example ``b``. Identity: ``values.sum(0) + unembed_bias == total`` (to float precision).

    Attributes:
        values: contribution of each part, per example.
        labels: part names: ``"embed"``, ``"pos_embed"``, ``"L{l}H{h}"`` (a head), ``"L{l} attn bias"``
            (the attention output bias ``b_O``, which carries the folded value biases), ``"L{l} mlp"``;
            or coarser ones after :meth:`aggregate`.
        kinds: the kind of each part (``embed``, ``pos_embed``, ``head``, ``attn_bias``, ``mlp``, ``attn``,
            ``layer``, ``embeddings``).
        layers: the layer of each part; -1 for the embeddings.
        unembed_bias: ``b_U[a] - b_U[a']`` (``b_U[a]`` for ``target="answer"``), which no part writes.
        total: the decomposed quantity from the model: the logit difference clean answer minus
            corrupted answer, or, for ``target="answer"``, the answer's logit centred over the
            vocabulary (``logit[a] - mean_v logit[v]``, the only part of a logit a softmax sees;
            compatibility mode centres the unembedding).
        target: ``"logit_diff"`` or ``"answer"``.
        unit: ``"head"`` (finest), ``"component"`` or ``"layer"``.
        statements: the clean statements, one per example (empty when the pairs carry none).
    """

    values: Float[Tensor, "part batch"]
    labels: tuple[str, ...]
    kinds: tuple[str, ...]
    layers: tuple[int, ...]
    unembed_bias: Float[Tensor, " batch"]
    total: Float[Tensor, " batch"]
    target: str
    unit: str = "head"
    statements: tuple = ()

    @property
    def residual(self) -> Float[Tensor, " batch"]:
        """``total - values.sum(0) - unembed_bias``: zero up to float error when the decomposition is exact."""
        return self.total - self.values.sum(0) - self.unembed_bias

    def mean(self) -> Float[Tensor, " part"]:
        return self.values.mean(-1)

    def aggregate(self, unit: str) -> DirectLogitAttributionResult:
        """The same attribution summed into coarser parts; the identity with ``total`` still holds.

        Args:
            unit: ``"component"`` (embed, pos_embed, one attention and one MLP part per layer, the
                heads and ``b_O`` summed into ``"L{l} attn"``) or ``"layer"`` (``"embeddings"`` and
                ``"L{l}"`` = attention + MLP of layer l).
        """
        if unit not in ("component", "layer"):
            raise ValueError(f"unit={unit!r}: expected 'component' or 'layer'")
        groups: dict[str, tuple[str, int, list[int]]] = {}
        for i, (kind, layer) in enumerate(zip(self.kinds, self.layers)):
            if unit == "layer":
                key, new_kind = ("embeddings", "embeddings") if layer < 0 else (f"L{layer}", "layer")
            elif kind in ("head", "attn_bias", "attn"):
                key, new_kind = f"L{layer} attn", "attn"
            elif kind in ("embeddings", "layer"):
                raise ValueError(f"a result at unit={self.unit!r} cannot be split into unit={unit!r}")
            else:
                key, new_kind = self.labels[i], kind
            groups.setdefault(key, (new_kind, layer, []))[2].append(i)
        values = torch.stack([self.values[rows].sum(0) for _, _, rows in groups.values()])
        return DirectLogitAttributionResult(
            values=values, labels=tuple(groups), kinds=tuple(k for k, _, _ in groups.values()),
            layers=tuple(layer for _, layer, _ in groups.values()), unembed_bias=self.unembed_bias,
            total=self.total, target=self.target, unit=unit, statements=self.statements,
        )

    def to_frame(self):
        """One row per (example, part): ``example, part, kind, layer, value`` plus the example's ``total``."""
        import pandas as pd

        n_parts, n = self.values.shape
        values = self.values.detach().cpu()
        return pd.DataFrame({
            "example": [b for _ in range(n_parts) for b in range(n)],
            "part": [p for p in self.labels for _ in range(n)],
            "kind": [k for k in self.kinds for _ in range(n)],
            "layer": [layer for layer in self.layers for _ in range(n)],
            "value": values.flatten().tolist(),
            "total": self.total.detach().cpu().repeat(n_parts).tolist(),
        })

    def plot(self):
        """Plotly bars: mean contribution of each part with 95 % bootstrap intervals over examples."""
        import plotly.graph_objects as go

        estimates = [bootstrap_ci(row) for row in self.values.detach().cpu()]
        fig = go.Figure()
        for kind in dict.fromkeys(self.kinds):
            rows = [i for i, k in enumerate(self.kinds) if k == kind]
            fig.add_bar(
                x=[self.labels[i] for i in rows], y=[estimates[i].mean for i in rows], name=kind,
                error_y=error_bars([estimates[i] for i in rows]),
            )
        what = "logit difference (clean - corrupted answer)" if self.target == "logit_diff" else "answer logit"
        fig.update_layout(
            title=f"Direct logit attribution of the {what}; total {format_fixed(self.total.mean().item())}, "
                  f"unembedding bias {format_fixed(self.unembed_bias.mean().item())} (mean of {self.values.shape[1]})",
            xaxis_title="part", yaxis_title="contribution (mean, 95% CI)",
        )
        return fig

    def summary(self, k: int = 5) -> str:
        """The mean total, the ``k`` largest parts by mean absolute contribution, and the decomposition error."""
        mean = self.mean()
        order = mean.abs().argsort(descending=True)[:k].tolist()
        lines = [
            f"direct logit attribution of {self.target} ({self.values.shape[1]} examples, unit {self.unit}): "
            f"mean total {self.total.mean().item():.3f} = parts {mean.sum().item():.3f} "
            f"+ unembedding bias {self.unembed_bias.mean().item():.3f} "
            f"(max |error| {self.residual.abs().max().item():.1e})",
        ]
        lines += [f"  {self.labels[i]:<16}{bootstrap_ci(self.values[i].detach().cpu())}" for i in order]
        return "\n".join(lines)


def direct_logit_attribution(
    model, pairs: PromptPairs, *, target: str = "logit_diff"
) -> DirectLogitAttributionResult:
    """Direct logit attribution of the answer at the last clean-prompt position, per example.

    Decomposes the final residual stream into the token and positional embeddings, every head, every
    attention output bias and every MLP (``ActivationCache.decompose_resid`` and ``stack_head_results``
    through :func:`transformer_lens.tools.analysis.direct_logit_attribution`), each dotted with the
    unembedding direction of the answer (minus that of the corrupted prompt's answer for
    ``target="logit_diff"``) after the final LayerNorm scale of the prompt (Elhage et al. 2021; the
    logit-difference form from Wang et al. 2022, IOI). Runs on a compatibility-mode deep copy, where
    the final LayerNorm is folded into the unembedding, so the parts plus the unembedding-bias term
    sum exactly to the logit difference; ``model`` is left untouched. Prompts go through in chunks whose logits
    hold at most :data:`revinterp.evaluation.LOGIT_ELEMENTS` numbers (memory O(chunk x vocabulary)).

    Args:
        model: a ``TransformerBridge`` in eval mode.
        pairs: the prompt pairs; the clean prompts are analysed.
        target: ``"logit_diff"`` (clean answer minus corrupted answer) or ``"answer"`` (the answer's
            logit, centred over the vocabulary).

    Returns:
        A :class:`DirectLogitAttributionResult` at head granularity; ``.aggregate("component")`` and
        ``.aggregate("layer")`` sum it per attention/MLP block and per layer.

    Example:
        >>> from revinterp.models import load_run                                  # doctest: +SKIP
        >>> run = load_run("runs/seed0")                                           # doctest: +SKIP
        >>> pairs = make_prompt_pairs(run.facts, "forward_seen", run.tokenizer)    # doctest: +SKIP
        >>> print(direct_logit_attribution(run.model, pairs).aggregate("component").summary())  # doctest: +SKIP
    """
    check_choice("target", target, DLA_TARGETS)
    check_model_and_pairs(model, pairs, "direct_logit_attribution", min_pairs=1, same_device=False)
    analysed = copy.deepcopy(model)
    if not getattr(analysed, "compatibility_mode", False):
        analysed.enable_compatibility_mode()
    analysed.eval()
    pairs = pairs.to(model_device(model))
    # chunks of prompts whose logits hold at most LOGIT_ELEMENTS numbers: memory O(chunk x vocabulary)
    step = max(1, LOGIT_ELEMENTS // (pairs.clean.shape[1] * analysed.cfg.d_vocab))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(pairs), step):
            rows = list(range(start, min(start + step, len(pairs))))
            chunks.append(_chunk_attribution(analysed, pairs.select(rows), target))
    blocks_labels, heads_labels = chunks[0][0], chunks[0][2]
    blocks_attribution, heads_attribution, total, unembed_bias = (
        torch.cat([c[i] for c in chunks], dim=-1) for i in (1, 3, 4, 5))
    block_rows = dict(zip(blocks_labels, blocks_attribution))
    head_rows = dict(zip(heads_labels, heads_attribution))
    parts: list[tuple[str, str, int, Tensor]] = []
    for name in ("embed", "pos_embed"):
        if name in block_rows:
            parts.append((name, name, -1, block_rows[name]))
    n_heads = model.cfg.n_heads
    for layer in range(model.cfg.n_layers):
        layer_heads = [head_rows[f"L{layer}H{h}"] for h in range(n_heads)]
        parts += [(f"L{layer}H{h}", "head", layer, row) for h, row in enumerate(layer_heads)]
        # attn_out = sum of head results + b_O, so the bias's share is what the heads leave over.
        bias = block_rows[f"{layer}_attn_out"] - torch.stack(layer_heads).sum(0)
        parts.append((f"L{layer} attn bias", "attn_bias", layer, bias))
        if f"{layer}_mlp_out" in block_rows:
            parts.append((f"L{layer} mlp", "mlp", layer, block_rows[f"{layer}_mlp_out"]))
    return DirectLogitAttributionResult(
        values=torch.stack([row for *_, row in parts]).detach(),
        labels=tuple(p[0] for p in parts), kinds=tuple(p[1] for p in parts), layers=tuple(p[2] for p in parts),
        unembed_bias=unembed_bias.detach(), total=total.detach(), target=target, statements=pairs.statements,
    )


def _chunk_attribution(analysed, pairs: PromptPairs, target: str) -> tuple:
    """Block and head attributions (labels, values [part, batch]), the total and the bias term of one chunk."""
    from transformer_lens.tools.analysis import direct_logit_attribution as tl_direct_logit_attribution

    batch = torch.arange(len(pairs), device=pairs.clean.device)
    incorrect = pairs.corrupted_answer if target == "logit_diff" else None
    logits, cache = analysed.run_with_cache(pairs.clean)
    last = logits[:, -1]
    tl_dla = partial(
        tl_direct_logit_attribution, analysed, answer_tokens=pairs.clean_answer, incorrect_tokens=incorrect,
        cache=cache, pos=-1,
    )
    blocks, heads = tl_dla(unit="component"), tl_dla(unit="head")
    b_U = analysed.b_U
    if target == "logit_diff":
        total = last[batch, pairs.clean_answer] - last[batch, pairs.corrupted_answer]
        unembed_bias = b_U[pairs.clean_answer] - b_U[pairs.corrupted_answer]
    else:
        total = last[batch, pairs.clean_answer]
        unembed_bias = b_U[pairs.clean_answer]
    return blocks.labels, blocks.attribution, heads.labels, heads.attribution, total, unembed_bias
