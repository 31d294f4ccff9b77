"""Direct logit attribution, the logit lens, and attribution patching with its agreement with exact patching.

Three gradient-free or one-gradient views of where a relational fact's answer comes from, read at the last
prompt position (the one that predicts the answer) of :class:`~revinterp.analysis.prompts.PromptPairs`:

- **Direct logit attribution** (DLA; Elhage et al. 2021, "A Mathematical Framework for Transformer
  Circuits"; Wang et al. 2022, IOI). The residual stream before the unembedding is a sum of the
  embeddings' and every head's and MLP's outputs; with the final LayerNorm scale frozen at its value
  on the prompt, the logit is linear in them::

      logit[a] - logit[a'] = sum_c  ln_final(x_c) . (W_U[:, a] - W_U[:, a'])  +  b_U[a] - b_U[a']

  The sum is exact on a compatibility-mode copy of the model (final LayerNorm weights folded into
  ``W_U``, biases into ``b_U``); the caller's model is never modified.
- **Logit lens** (nostalgebraist 2020, "interpreting GPT: the logit lens"): the residual stream before
  each layer and after the last one, read through ``ln_final`` and the unembedding; the answer's
  log-probability and rank at each depth.
- **Attribution patching** (Nanda 2023, "Attribution patching: activation patching at industrial
  scale"; Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery"): the first
  order Taylor estimate of activation patching at every site from one forward and one backward pass::

      metric(patched at site) ~ metric(base) + grad_a metric(base) . (a_source - a_base)

  Denoising patches clean activations into the corrupted run (base = corrupted, source = clean);
  noising patches corrupted ones into the clean run. Values are in the units of the exact sweep
  (the patched metric, not the change), so the two can be compared site by site;
  :func:`attribution_agreement` reports how well they agree (rank correlation, top-k recall,
  calibration slope). Measured on the 2-layer model it ranks sites well and underestimates their
  effects: treat it as a ranking, not an effect size.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.metrics import METRICS, metric_values, normalize
from revinterp.analysis.prompts import PromptPairs
from revinterp.evaluation import model_device
from revinterp.stats import bootstrap_ci, error_bars

DLA_TARGETS = ("logit_diff", "answer")
DEFAULT_COMPONENTS = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos")
"""The components of the full exact sweep (:data:`revinterp.analysis.patching.SWEEP_COMPONENTS` and ``head_out``)."""
COMPONENTS = (*DEFAULT_COMPONENTS, "resid_post", "q", "k", "v", "q_by_pos", "k_by_pos", "v_by_pos", "pattern",
              "pattern_by_pos")
"""Every component attribution patching estimates, named and laid out as in :mod:`revinterp.analysis.patching`."""
DIRECTIONS = ("denoising", "noising")

# Hook patched for each component, and the axes of its site grid (before the batch axis).
_COMPONENT_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "head_out": "blocks.{layer}.attn.hook_z",
    "head_out_by_pos": "blocks.{layer}.attn.hook_z",
    **{f"{qkv}{by}": f"blocks.{{layer}}.attn.hook_{qkv}" for qkv in "qkv" for by in ("", "_by_pos")},
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "pattern_by_pos": "blocks.{layer}.attn.hook_pattern",
}
COMPONENT_AXES: dict[str, tuple[str, ...]] = {
    **{c: ("layer", "pos") for c in ("resid_pre", "resid_post", "attn_out", "mlp_out")},
    **{c: ("layer", "head") for c in ("head_out", "q", "k", "v", "pattern")},
    **{c: ("layer", "pos", "head") for c in ("head_out_by_pos", "q_by_pos", "k_by_pos", "v_by_pos",
                                             "pattern_by_pos")},
}


# == direct logit attribution =====================================================================
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
            title=f"Direct logit attribution of the {what}; total {self.total.mean().item():.2f}, "
                  f"unembedding bias {self.unembed_bias.mean().item():.2f} (mean of {self.values.shape[1]})",
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
    sum exactly to the logit difference; ``model`` is left untouched.

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
    from transformer_lens.tools.analysis import direct_logit_attribution as tl_direct_logit_attribution

    if target not in DLA_TARGETS:
        raise ValueError(f"target={target!r}: expected one of {DLA_TARGETS}")
    _check_inputs(model, pairs, "direct_logit_attribution")
    analysed = copy.deepcopy(model)
    if not getattr(analysed, "compatibility_mode", False):
        analysed.enable_compatibility_mode()
    analysed.eval()
    pairs = pairs.to(model_device(model))
    batch = torch.arange(len(pairs), device=pairs.clean.device)
    incorrect = pairs.corrupted_answer if target == "logit_diff" else None
    with torch.no_grad():
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
    block_rows = dict(zip(blocks.labels, blocks.attribution))
    head_rows = dict(zip(heads.labels, heads.attribution))
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


# == logit lens ===================================================================================
@dataclass(frozen=True)
class LogitLensResult:
    """The answer's log-probability and rank when the residual stream is read early, per example.

    Row ``l < n_layers`` reads ``resid_pre`` of layer ``l`` (row 0: the embeddings alone); the last row
    reads the final residual stream and reproduces the model's own output.

    Attributes:
        logprob: ``log softmax(unembed(ln_final(resid)))[answer]``.
        rank: 1 + the number of vocabulary tokens with a strictly larger logit (1 = top prediction).
        labels: ``"L0 resid_pre"``, ..., ``"final"``.
        answers: the answer token per example.
        statements: the statements, one per example (empty when not known).
    """

    logprob: Float[Tensor, "layer batch"]
    rank: Int[Tensor, "layer batch"]
    labels: tuple[str, ...]
    answers: Int[Tensor, " batch"]
    statements: tuple = ()

    @property
    def accuracy(self) -> Float[Tensor, " layer"]:
        """Fraction of examples whose answer is the top prediction at each depth."""
        return (self.rank == 1).double().mean(-1)

    def to_frame(self):
        """One row per (depth, example): ``depth, stage, example, logprob, probability, rank``."""
        import pandas as pd

        n_layers, n = self.logprob.shape
        logprob = self.logprob.detach().cpu()
        return pd.DataFrame({
            "depth": [d for d in range(n_layers) for _ in range(n)],
            "stage": [label for label in self.labels for _ in range(n)],
            "example": list(range(n)) * n_layers,
            "logprob": logprob.flatten().tolist(),
            "probability": logprob.exp().flatten().tolist(),
            "rank": self.rank.cpu().flatten().tolist(),
        })

    def plot(self):
        """Plotly lines over depth: mean answer log-probability (95 % bootstrap band) and top-1 accuracy."""
        from plotly.subplots import make_subplots

        estimates = [bootstrap_ci(row) for row in self.logprob.detach().cpu()]
        x = list(self.labels)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("answer log-probability", "answer is top-1"))
        fig.add_scatter(x=x + x[::-1], y=[e.high for e in estimates] + [e.low for e in estimates][::-1],
                        fill="toself", line=dict(width=0), opacity=0.3, name="95% CI", row=1, col=1)
        fig.add_scatter(x=x, y=[e.mean for e in estimates], mode="lines+markers", name="mean log p", row=1, col=1)
        fig.add_scatter(x=x, y=self.accuracy.tolist(), mode="lines+markers", name="accuracy", row=1, col=2)
        fig.update_yaxes(range=[0, 1.05], row=1, col=2)
        fig.update_layout(title=f"Logit lens at the answer position ({self.logprob.shape[1]} examples)")
        return fig

    def summary(self) -> str:
        lines = [f"logit lens ({self.logprob.shape[1]} examples): mean log p(answer), top-1 accuracy, median rank"]
        for i, label in enumerate(self.labels):
            lines.append(
                f"  {label:<14}{str(bootstrap_ci(self.logprob[i].detach().cpu())):<28}"
                f"{100 * self.accuracy[i].item():6.1f}%{self.rank[i].median().item():>8}"
            )
        return "\n".join(lines)


def logit_lens(
    model,
    pairs_or_tokens: PromptPairs | Int[Tensor, "batch pos"],
    answers: Int[Tensor, " batch"] | None = None,
) -> LogitLensResult:
    """The answer's log-probability and rank read from the residual stream before every layer and at the end.

    Each ``resid_pre`` and the final ``resid_post`` at the last position go through the model's
    ``ln_final`` (statistics recomputed for that stream) and unembedding (nostalgebraist 2020, "the
    logit lens"), via :func:`transformer_lens.tools.analysis.logit_lens`. The final row equals the
    model's own log-probabilities.

    Args:
        model: a ``TransformerBridge`` in eval mode (no compatibility mode needed).
        pairs_or_tokens: prompt pairs (their clean prompts are read) or a ``[batch, pos]`` token tensor.
        answers: answer token per prompt; default the pairs' clean answers (required with tokens).

    Example:
        >>> lens = logit_lens(run.model, pairs)           # doctest: +SKIP
        >>> lens.accuracy                                 # doctest: +SKIP
    """
    from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

    statements: tuple = ()
    if isinstance(pairs_or_tokens, PromptPairs):
        _check_inputs(model, pairs_or_tokens, "logit_lens")
        tokens, statements = pairs_or_tokens.clean, pairs_or_tokens.statements
        answers = pairs_or_tokens.clean_answer if answers is None else answers
    else:
        tokens = pairs_or_tokens
        _require_eval(model, "logit_lens")
        if answers is None:
            raise ValueError("logit_lens got a token tensor but no answers; expected one answer token per prompt")
    if answers.shape != (tokens.shape[0],):
        raise ValueError(f"answers have shape {tuple(answers.shape)}; expected ({tokens.shape[0]},), one per prompt")
    device = model_device(model)
    with torch.no_grad():
        lens = tl_logit_lens(model, tokens.to(device), targets=answers.to(device), return_type="log_probs")
    labels = tuple(f"L{label.split('_')[0]} resid_pre" if label.endswith("_pre") else "final" for label in lens.labels)
    return LogitLensResult(
        logprob=lens.values[..., 0].detach(), rank=lens.rank_trajectory() + 1, labels=labels,
        answers=answers.detach(), statements=statements,
    )


# == attribution patching =========================================================================
@dataclass(frozen=True)
class AttributionPatchingResult:
    """Attribution-patching estimates of activation patching, in the units of the exact sweep.

    ``values[*site, b]`` estimates the metric of example ``b`` when the site is patched: the unpatched
    run's metric plus ``grad . (a_source - a_unpatched)``. The patched run is the corrupted one for
    denoising (its unpatched value is ``corrupted``) and the clean one for noising. Field and property
    names follow :class:`revinterp.analysis.patching.PatchingResult`, so the two read alike.

    Attributes:
        values: estimated patched metric per site and example; site axes named by ``axes``.
        clean: the metric on the clean prompts.
        corrupted: the metric on the corrupted prompts.
        axes: the names of the site axes, e.g. ``("layer", "pos")``.
        component: one of :data:`COMPONENTS`.
        direction: ``"denoising"`` or ``"noising"``.
        metric: one of :data:`revinterp.analysis.metrics.METRICS`.
        labels: the position labels of the prompts (e.g. ``("<bos>", "subject", "->")``).
        method: ``"attribution"``.
    """

    values: Float[Tensor, "*site batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    axes: tuple[str, ...]
    component: str
    direction: str
    metric: str
    labels: tuple[str, ...]
    method: str = "attribution"

    def __post_init__(self):
        if self.values.ndim != len(self.axes) + 1:
            raise ValueError(f"values have {self.values.ndim} axes; expected the site axes {self.axes} and batch")

    @property
    def n(self) -> int:
        return self.values.shape[-1]

    @property
    def unpatched(self) -> Float[Tensor, " batch"]:
        """The metric of the run that is patched: corrupted (denoising) or clean (noising)."""
        return self.corrupted if self.direction == "denoising" else self.clean

    @property
    def mean(self) -> Float[Tensor, "*site"]:
        """Mean estimated patched metric per site."""
        return self.values.mean(-1)

    @property
    def effect(self) -> Float[Tensor, "*site"]:
        """Mean estimated change the patch makes: mean of patched - unpatched, in metric units (exactly 0 where
        the patch changes nothing)."""
        return (self.values - self.unpatched).mean(-1)

    @property
    def normalized(self) -> Float[Tensor, "*site"]:
        """``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` per site: 0 = corrupted, 1 = clean."""
        return normalize(self.values.mean(-1), self.clean.mean(), self.corrupted.mean())

    @property
    def normalized_per_example(self) -> Float[Tensor, "*site batch"]:
        """``(patched_i - corrupted_i) / (clean_i - corrupted_i)``."""
        return normalize(self.values, self.clean, self.corrupted)

    def site_labels(self) -> list[str]:
        """One name per site in the order of ``values.reshape(-1, batch)``, as ``Site.label`` of the patching
        module writes them: ``"resid_pre L0 @subject"``, ``"head_out L1H2"``, ``"head_out_by_pos L0H3 @->"``."""
        names = []
        for index in itertools.product(*map(range, self.values.shape[:-1])):
            site = dict(zip(self.axes, index))
            name = f"{self.component} L{site['layer']}" + (f"H{site['head']}" if "head" in site else "")
            if "pos" in site:
                name += f" @{self.labels[site['pos']]}"
            names.append(name)
        return names

    def agreement_with(self, exact, *, k: int = 5) -> Agreement:
        """:func:`attribution_agreement` of these estimates with an exact sweep over the same sites.

        Args:
            exact: the exact sweep's result (anything with ``.values``, e.g. a ``PatchingResult``) or its
                ``values`` tensor ``[*site, batch]`` of patched metrics on the same pairs.
            k: for the top-k recall and the disagreement list.
        """
        exact_values = exact if isinstance(exact, Tensor) else exact.values
        if exact_values.shape != self.values.shape:
            raise ValueError(
                f"exact values have shape {tuple(exact_values.shape)}; expected {tuple(self.values.shape)} "
                f"({self.component}: {self.axes} x batch)"
            )
        exact_effect = (exact_values.to(self.values.device) - self.unpatched).mean(-1)
        return attribution_agreement(self.effect, exact_effect, labels=self.site_labels(), k=k)

    def to_frame(self):
        """One row per (site, example): the site axes, ``pos_label``, ``example``, ``value``, ``clean``,
        ``corrupted`` and ``method``."""
        import pandas as pd

        shape = tuple(self.values.shape)
        index = torch.tensor(list(itertools.product(*map(range, shape))))
        frame = pd.DataFrame(index[:, :-1].numpy(), columns=list(self.axes))
        frame.insert(0, "component", self.component)
        if "pos" in self.axes:
            frame.insert(frame.columns.get_loc("pos") + 1, "pos_label", [self.labels[p] for p in frame["pos"]])
        examples = index[:, -1]
        frame["example"] = examples.numpy()
        frame["value"] = self.values.detach().cpu().flatten().numpy()
        frame["clean"] = self.clean.detach().cpu()[examples].numpy()
        frame["corrupted"] = self.corrupted.detach().cpu()[examples].numpy()
        frame["method"] = self.method
        return frame

    def plot(self):
        """Plotly heatmap of the normalized estimate per site: layers x positions or heads; for
        ``head_out_by_pos`` one row per head."""
        import plotly.graph_objects as go

        norm = self.normalized.detach().cpu()
        n_layers = norm.shape[0]
        positions = [f"{p}: {label}" for p, label in enumerate(self.labels)]
        if self.axes == ("layer", "pos", "head"):
            z = norm.permute(0, 2, 1).reshape(-1, norm.shape[1])
            y = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(norm.shape[2])]
            x = positions
        else:
            z, y = norm, [f"L{layer}" for layer in range(n_layers)]
            x = positions if self.axes[1] == "pos" else [f"H{h}" for h in range(norm.shape[1])]
        fig = go.Figure(go.Heatmap(
            z=z.tolist(), x=x, y=y, colorscale="RdBu", zmid=0.0 if self.direction == "denoising" else 1.0,
            colorbar=dict(title="normalized"),
        ))
        fig.update_layout(
            title=f"{self.component} attribution patching ({self.direction}, {self.metric}; n={self.n}): "
                  "first-order estimate, 0 = corrupted, 1 = clean",
            yaxis=dict(autorange="reversed"),
        )
        return fig

    def summary(self, k: int = 5) -> str:
        """Baselines and the ``k`` sites of largest estimated effect (in metric units and normalized)."""
        effect, norm, names = self.effect.flatten(), self.normalized.flatten(), self.site_labels()
        lines = [
            f"{self.component} attribution patching, {self.direction}, metric {self.metric}, {self.n} prompt pairs",
            f"clean {self.clean.mean().item():.3f}   corrupted {self.corrupted.mean().item():.3f}   "
            "largest estimated effects (change, normalized):",
        ]
        for i in effect.abs().argsort(descending=True)[:k].tolist():
            lines.append(f"  {names[i]:<32}{effect[i].item():+9.3f}{norm[i].item():+8.2f}")
        return "\n".join(lines)


def attribution_patch(
    model,
    pairs: PromptPairs,
    component: str,
    *,
    metric: str = "logit_diff",
    direction: str = "denoising",
) -> AttributionPatchingResult:
    """Attribution patching: a first-order estimate of activation patching at every site of ``component``.

    For each site (layer x position, layer x head or layer x position x head) and example, estimates
    the metric after patching the source run's activation into the base run as
    ``metric(base) + grad_a metric(base) . (a_source - a_base)`` (Nanda 2023, "Attribution patching:
    activation patching at industrial scale"; Syed et al. 2023). Denoising: base = corrupted, source =
    clean; noising: the reverse. Needs one source forward and one base forward and backward for all
    sites. The metric is summed over the batch before the backward pass; examples do not interact, so
    the gradient of the sum is every example's own gradient. Gradients are captured with backward
    hooks (``retain_grad`` does not work at every bridge hook), and no parameter's ``.grad`` is touched.

    Heads are patched at ``attn.hook_z``, as TransformerLens's ``get_act_patch_attn_head_out_*`` do.
    The estimate is exact where the metric is linear in the activation (e.g. the logit difference in
    the last layer's attention output of a model without normalization and MLPs); elsewhere use
    :func:`attribution_agreement` against an exact sweep before trusting it. Where the base run is
    saturated the gradient vanishes and so does the estimate: noising with ``metric="logprob"`` on a
    fitted model (clean p(answer) ~ 1, where log p is flat) estimates ~0 at every site (measured
    Spearman -0.07 against exact patching on the default preset, -0.2 on the tiny one); use
    ``"logit_diff"`` there.

    Args:
        model: a ``TransformerBridge`` in eval mode.
        pairs: the prompt pairs.
        component: one of :data:`COMPONENTS`: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out``
            ([layer, pos]); ``head_out``, ``q``, ``k``, ``v``, ``pattern`` ([layer, head], all positions at once);
            ``head_out_by_pos``, ``q_by_pos``, ``k_by_pos``, ``v_by_pos``, ``pattern_by_pos`` ([layer, pos,
            head]; for the pattern, pos is the destination row).
        metric: ``"logit_diff"`` or ``"logprob"`` (:mod:`revinterp.analysis.metrics`).
        direction: ``"denoising"`` or ``"noising"``.

    Returns:
        An :class:`AttributionPatchingResult` with ``values [*site, batch]``.

    Example:
        >>> est = attribution_patch(run.model, pairs, "resid_pre")          # doctest: +SKIP
        >>> est.values.shape                                                # doctest: +SKIP
        torch.Size([2, 3, 140])
    """
    return attribution_patch_components(model, pairs, (component,), metric=metric, direction=direction)[component]


def attribution_patch_components(
    model,
    pairs: PromptPairs,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    *,
    metric: str = "logit_diff",
    direction: str = "denoising",
) -> dict[str, AttributionPatchingResult]:
    """:func:`attribution_patch` for several components from the same single forward and backward pass.

    ``components`` defaults to :data:`DEFAULT_COMPONENTS` (the full exact sweep's); any of :data:`COMPONENTS` may be
    given. ``mlp_out`` is skipped silently on attention-only models when ``components`` is the default.
    """
    components = tuple(components)
    if not components:
        raise ValueError("components is empty; expected at least one of " + ", ".join(COMPONENTS))
    for component in components:
        if component not in COMPONENTS:
            raise ValueError(f"component={component!r}: expected one of {COMPONENTS}")
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    _check_inputs(model, pairs, "attribution_patch")
    if model.cfg.attn_only and "mlp_out" in components:
        if components != DEFAULT_COMPONENTS:
            raise ValueError("component 'mlp_out': the model is attention-only (attn_only=True) and has no MLP")
        components = tuple(c for c in components if c != "mlp_out")

    pairs = pairs.to(model_device(model))
    source, base = (pairs.clean, pairs.corrupted) if direction == "denoising" else (pairs.corrupted, pairs.clean)
    n_layers = model.cfg.n_layers
    hook_names = list(dict.fromkeys(
        _COMPONENT_HOOKS[c].format(layer=layer) for c in components for layer in range(n_layers)
    ))
    score = partial(metric_values, metric, clean_answer=pairs.clean_answer, corrupted_answer=pairs.corrupted_answer)

    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=hook_names)
        source_metric = score(source_logits[:, -1])
    base_acts, base_grads = _forward_backward(model, base, hook_names, score)
    base_metric = base_acts.pop("metric")

    results = {}
    with torch.no_grad():
        clean_metric, corrupted_metric = (
            (source_metric, base_metric) if direction == "denoising" else (base_metric, source_metric)
        )
        # Per-site first-order change, summed over the last axis: [batch, pos, (head)] per layer, or for the pattern
        # [batch, head, destination] (summed over the source positions of each destination's row).
        change = {name: (base_grads[name] * (source_cache[name] - base_acts[name])).sum(-1) for name in hook_names}
        for component in components:
            per_layer = [change[_COMPONENT_HOOKS[component].format(layer=layer)] for layer in range(n_layers)]
            if component in ("head_out", "q", "k", "v"):
                per_layer = [c.sum(1) for c in per_layer]  # every position of the head at once
            elif component == "pattern":
                per_layer = [c.sum(-1) for c in per_layer]  # every destination row at once
            elif component == "pattern_by_pos":
                per_layer = [c.transpose(1, 2) for c in per_layer]  # [batch, destination, head]
            sites = torch.stack(per_layer)  # [layer, batch, ...]
            sites = sites.movedim(1, -1)  # [layer, ..., batch]
            results[component] = AttributionPatchingResult(
                values=(base_metric + sites).detach(), clean=clean_metric.detach(),
                corrupted=corrupted_metric.detach(), axes=COMPONENT_AXES[component], component=component,
                direction=direction, metric=metric, labels=pairs.labels,
            )
    return results


def _forward_backward(model, tokens: Int[Tensor, "batch pos"], hook_names: list[str], score) -> tuple[dict, dict]:
    """Activations and metric gradients at ``hook_names`` from one forward and one backward pass.

    The token embedding is replaced by a detached leaf, and the gradient is taken with respect to it
    only: the backward pass visits every hook downstream (where backward hooks record the gradient)
    and leaves the model's parameters' ``.grad`` alone.
    """
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    leaf: list[Tensor] = []

    def embed_leaf(x, hook):
        leaf.append(x.detach().requires_grad_(True))
        return leaf[0]

    def save_act(x, hook, name):
        acts[name] = x.detach()

    def save_grad(g, hook, name):
        grads[name] = g.detach()

    fwd_hooks = [("hook_embed", embed_leaf)] + [(n, partial(save_act, name=n)) for n in hook_names]
    bwd_hooks = [(n, partial(save_grad, name=n)) for n in hook_names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks):
        logits = model(tokens)
        metric = score(logits[:, -1])
        torch.autograd.grad(metric.sum(), leaf[0])
    missing = [n for n in hook_names if n not in grads or n not in acts]
    if missing:
        raise RuntimeError(f"attribution_patch: no gradient was captured at {missing}; expected one at every hook")
    acts["metric"] = metric.detach()
    return acts, grads


# == agreement with exact patching ================================================================
@dataclass(frozen=True)
class Agreement:
    """How well per-site estimated effects agree with exact ones (e.g. attribution vs activation patching).

    Attributes:
        spearman: rank correlation of the effects over the compared sites (ties get average ranks).
        pearson: linear correlation over the same sites.
        top_k_recall: fraction of the ``k`` sites with the largest exact ``|effect|`` that are also among
            the ``k`` largest estimated ``|effect|``.
        k: the ``k`` used.
        slope: calibration slope, least squares ``estimate ~ intercept + slope * exact``: 1 when the
            estimate has the right size, below 1 when it underestimates.
        intercept: the intercept of that fit.
        n_sites: number of sites compared.
        n_trivial: sites left out because both effects were zero (see ``exclude_trivial``).
        disagreements: ``(site, estimate, exact)`` of the sites farthest from the calibration line
            (largest ``|estimate - intercept - slope * exact|``), worst first.
        sites: the compared sites' names, in order.
        estimates: their estimated mean effects.
        exacts: their exact mean effects.
    """

    spearman: float
    pearson: float
    top_k_recall: float
    k: int
    slope: float
    intercept: float
    n_sites: int
    n_trivial: int
    disagreements: tuple[tuple[str, float, float], ...]
    sites: tuple[str, ...] = ()
    estimates: tuple[float, ...] = ()
    exacts: tuple[float, ...] = ()

    def to_frame(self):
        """One row per compared site: ``site``, ``estimate``, ``exact`` and ``residual`` from the calibration line."""
        import pandas as pd

        frame = pd.DataFrame({"site": list(self.sites), "estimate": list(self.estimates),
                              "exact": list(self.exacts)})
        frame["residual"] = frame["estimate"] - self.intercept - self.slope * frame["exact"]
        return frame

    def plot(self):
        """Plotly scatter of estimate against exact effect per site, with the identity and the calibration line."""
        import plotly.graph_objects as go

        low, high = min(*self.exacts, *self.estimates), max(*self.exacts, *self.estimates)
        fig = go.Figure()
        fig.add_scatter(x=list(self.exacts), y=list(self.estimates), mode="markers", text=list(self.sites),
                        name="sites")
        fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="estimate = exact",
                        line=dict(dash="dot", color="black"))
        fig.add_scatter(x=[low, high], y=[self.intercept + self.slope * low, self.intercept + self.slope * high],
                        mode="lines", name=f"calibration (slope {self.slope:.2f})")
        fig.update_layout(title=f"Estimated against exact effect per site: Spearman {self.spearman:.3f}, "
                                f"top-{self.k} recall {self.top_k_recall:.2f} ({self.n_sites} sites)",
                          xaxis_title="exact effect", yaxis_title="estimated effect")
        return fig

    def summary(self) -> str:
        lines = [
            f"agreement over {self.n_sites} sites ({self.n_trivial} trivial left out): Spearman {self.spearman:.3f}, "
            f"Pearson {self.pearson:.3f}, top-{self.k} recall {self.top_k_recall:.2f}, "
            f"calibration slope {self.slope:.3f} (intercept {self.intercept:+.3f})",
            "  largest disagreements (site, estimate, exact):",
        ]
        lines += [f"    {site:<24}{est:+9.3f}{exact:+9.3f}" for site, est, exact in self.disagreements]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "spearman": self.spearman, "pearson": self.pearson, "top_k_recall": self.top_k_recall, "k": self.k,
            "slope": self.slope, "intercept": self.intercept, "n_sites": self.n_sites, "n_trivial": self.n_trivial,
            "disagreements": [list(d) for d in self.disagreements],
        }


def attribution_agreement(
    estimate_values: Float[Tensor, "*site"],
    exact_values: Float[Tensor, "*site"],
    *,
    labels: Sequence[str] | None = None,
    k: int = 5,
    exclude_trivial: bool = True,
    rtol: float = 1e-6,
) -> Agreement:
    """Agreement of estimated per-site mean effects with exact ones: rank correlation, top-k recall, calibration.

    Syed et al. (2023) and Nanda (2023) judge attribution patching by how well it ranks sites against
    activation patching; the calibration slope says whether its magnitudes can be read as effects.

    Args:
        estimate_values: mean estimated effect per site (any shape; flattened).
        exact_values: mean exact effect per site, same shape.
        labels: one name per site in flattened order (e.g. ``AttributionPatchingResult.site_labels()``);
            default ``"site {i}"``.
        k: sites for the top-k recall and the disagreement list.
        exclude_trivial: leave out sites where both effects are zero (patches that change nothing, such
            as positions where clean and corrupted tokens agree, or positions the answer cannot read);
            their tied ranks would inflate the rank correlation.
        rtol: what counts as zero, relative to the largest ``|effect|`` of either tensor.

    Returns:
        An :class:`Agreement`.
    """
    if estimate_values.shape != exact_values.shape:
        raise ValueError(
            f"estimate has shape {tuple(estimate_values.shape)} but exact {tuple(exact_values.shape)}; "
            "expected the same sites"
        )
    if k < 1:
        raise ValueError(f"k={k}: expected a positive integer")
    est = estimate_values.detach().flatten().double().cpu()
    exact = exact_values.detach().flatten().double().cpu()
    names = list(labels) if labels is not None else [f"site {i}" for i in range(est.numel())]
    if len(names) != est.numel():
        raise ValueError(f"{len(names)} labels for {est.numel()} sites; expected one label per site")
    keep = torch.ones_like(est, dtype=torch.bool)
    if exclude_trivial:
        atol = rtol * max(est.abs().max().item(), exact.abs().max().item())
        keep = (est.abs() > atol) | (exact.abs() > atol)
    n_trivial = int((~keep).sum())
    est, exact = est[keep], exact[keep]
    names = [n for n, kept in zip(names, keep.tolist()) if kept]
    n = est.numel()
    if n < 2:
        raise ValueError(f"{n} non-trivial site(s) to compare; expected at least 2")
    k = min(k, n)
    top_exact = set(exact.abs().argsort(descending=True)[:k].tolist())
    top_est = set(est.abs().argsort(descending=True)[:k].tolist())
    x_centred = exact - exact.mean()
    var = (x_centred**2).sum().item()
    slope = (x_centred * (est - est.mean())).sum().item() / var if var > 0 else math.nan
    intercept = est.mean().item() - slope * exact.mean().item()
    off = (est - intercept - slope * exact).abs()
    worst = off.argsort(descending=True)[:k].tolist() if not math.isnan(slope) else []
    return Agreement(
        spearman=_pearson(_average_ranks(est), _average_ranks(exact)), pearson=_pearson(est, exact),
        top_k_recall=len(top_exact & top_est) / k, k=k, slope=slope, intercept=intercept, n_sites=n,
        n_trivial=n_trivial, disagreements=tuple((names[i], est[i].item(), exact[i].item()) for i in worst),
        sites=tuple(names), estimates=tuple(est.tolist()), exacts=tuple(exact.tolist()),
    )


def _average_ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks 1..n, tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def _pearson(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return (x * y).sum().item() / denom if denom > 0 else math.nan


# == input checks =================================================================================
def _require_eval(model, operation: str) -> None:
    if any(module.training for module in model.modules()):
        raise ValueError(f"{operation} needs the model in eval mode; it is in train mode (call model.eval() first)")


def _check_inputs(model, pairs: PromptPairs, operation: str) -> None:
    if not isinstance(pairs, PromptPairs):
        raise ValueError(f"{operation}: pairs is a {type(pairs).__name__}; expected PromptPairs (make_prompt_pairs)")
    _require_eval(model, operation)
    n_ctx = model.cfg.n_ctx
    if pairs.clean.shape[1] > n_ctx:
        raise ValueError(f"{operation}: prompts have {pairs.clean.shape[1]} positions; the model's n_ctx is {n_ctx}")
    d_vocab = model.cfg.d_vocab
    for name in ("clean", "corrupted", "clean_answer", "corrupted_answer"):
        t = getattr(pairs, name)
        if t.min() < 0 or t.max() >= d_vocab:
            raise ValueError(f"{operation}: pairs.{name} has token ids outside [0, {d_vocab}) (the model's d_vocab)")
