"""The exact fast path of activation patching: each patched forward starts at the patched site.

:func:`fast_sweeps` gives the same numbers as ``transformer_lens.patching.get_act_patch_*`` (tested to
1e-5; :func:`revinterp.analysis.patching.patch_sweeps` with ``method="transformer_lens"``), with less work.
A patch at layer ``l`` and first position ``p0`` leaves every layer before ``l`` and every position
before ``p0`` as the receiving run had them (the model is causal), so each patched forward starts at the
patched layer from the receiving run's cached activations: positions before the patched one keep their
cached keys and values, the last layer computes the answer position only and only it is unembedded.
Sites whose two activations are identical, or that cannot reach the answer position (a causal model's
last layer reads only the answer's own query), are exactly the unpatched run and are not computed.

The metric reads the answer position's final residual (:class:`AnswerReadout`): the logit difference needs only
the two answer columns of the unembedding, ``x . (W_U[:, a] - W_U[:, a']) + b_U[a] - b_U[a']``, so a sweep costs
O(d_model) per site instead of O(d_model x vocabulary); the log-probability's normalizer ``logsumexp(x W_U + b_U)``
is computed over chunks of vocabulary columns, so memory is O(chunk) whatever the vocabulary (tested equal to the
full unembedding to 1e-6).
"""

from __future__ import annotations

import itertools

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from revinterp.analysis.effects import SiteEffects, receiving_and_source
from revinterp.analysis.metrics import metric_values
from revinterp.analysis.prompts import PromptPairs
from revinterp.analysis.sites import COMPONENTS, site_shape
from revinterp.evaluation import LOGIT_ELEMENTS, model_device

# Order of the activations inside a block; the fast forward enters a block at its site's stage.
_STAGE_ORDER = {
    "resid_pre": 0, "q": 1, "k": 1, "v": 1, "pattern": 2, "z": 3, "attn_out": 4, "mlp_out": 5, "resid_post": 6,
}
_HEAD_STAGES = ("q", "k", "v", "z", "pattern")


def fast_sweeps(
    model,
    pairs: PromptPairs,
    components: tuple[str, ...],
    direction: str,
    metric: str,
    batch_size: int,
    skip_trivial: bool,
    progress: bool,
) -> dict[str, SiteEffects]:
    """Every site of each of ``components`` patched (``method="fast"`` of
    :func:`revinterp.analysis.patching.patch_sweeps`, which checks the arguments); ``batch_size`` prompts
    per chunk; with ``skip_trivial`` a site whose patch cannot change the answer gets the unpatched metric
    without a forward."""
    check_fast_supported(model)
    receiving, source = receiving_and_source(pairs, direction)
    n, n_pos = pairs.clean.shape
    shapes = {c: site_shape(c, model, n_pos) for c in components}
    sites = {c: list(itertools.product(*map(range, shapes[c]))) for c in components}
    device = model_device(model)
    values = {c: torch.empty(len(sites[c]), n, device=device) for c in components}
    unpatched = torch.empty(n, device=device)
    from_source = torch.empty(n, device=device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(map(len, sites.values())) * -(-n // batch_size), desc="patching", unit="site",
                   leave=False)
    readout = AnswerReadout(model)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        ca, cb = pairs.clean_answer[rows], pairs.corrupted_answer[rows]
        tail = _TailForward(model, receiving[rows], source[rows])
        base = readout(metric, tail.receiving_final, ca, cb)
        unpatched[rows] = base
        from_source[rows] = readout(metric, tail.source_final, ca, cb)
        for c in components:
            spec = COMPONENTS[c]
            for s, index in enumerate(sites[c]):
                named = dict(zip(spec.axes, index))
                positions = (named["pos"],) if "pos" in named else tuple(range(n_pos))
                final = tail.patched_final(spec.stage, named["layer"], positions, named.get("head"), skip_trivial)
                values[c][s, rows] = base if final is None else readout(metric, final, ca, cb)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    clean, corrupted = (from_source, unpatched) if direction == "denoising" else (unpatched, from_source)
    return {
        c: SiteEffects(
            values=values[c].reshape(*shapes[c], n), clean=clean, corrupted=corrupted, axes=COMPONENTS[c].axes,
            component=c, direction=direction, metric=metric, labels=pairs.labels, method="fast",
        )
        for c in components
    }


class AnswerReadout:
    """A patching metric from the answer position's final residual ``x`` (after the final norm), without the full
    unembedding: ``logit_diff`` from the two answer columns, ``logprob`` as the answer's logit minus
    ``logsumexp(x W_U + b_U)`` over chunks of ``columns`` vocabulary columns (default: as many as keep
    rows x columns within :data:`revinterp.evaluation.LOGIT_ELEMENTS`)."""

    def __init__(self, model, columns: int | None = None):
        self.W_U, self.b_U = model.W_U.detach(), model.b_U.detach()
        self.columns = columns

    def answer_logits(self, final: Float[Tensor, "batch d_model"], answer: Tensor) -> Float[Tensor, " batch"]:
        return (final * self.W_U[:, answer].T).sum(-1) + self.b_U[answer]

    def normalizer(self, final: Float[Tensor, "batch d_model"]) -> Float[Tensor, " batch"]:
        """``logsumexp`` over the vocabulary of ``x W_U + b_U``, one chunk of columns at a time."""
        vocab = self.W_U.shape[1]
        step = self.columns or max(1, LOGIT_ELEMENTS // max(1, len(final)))
        total = None
        for start in range(0, vocab, step):
            chunk = torch.logsumexp(final @ self.W_U[:, start:start + step] + self.b_U[start:start + step], -1)
            total = chunk if total is None else torch.logaddexp(total, chunk)
        return total

    def __call__(self, metric: str, final: Float[Tensor, "batch d_model"], clean_answer: Tensor,
                 corrupted_answer: Tensor) -> Float[Tensor, " batch"]:
        if metric == "logit_diff":
            direction = self.W_U[:, clean_answer] - self.W_U[:, corrupted_answer]
            return (final * direction.T).sum(-1) + self.b_U[clean_answer] - self.b_U[corrupted_answer]
        if metric == "logprob":
            return self.answer_logits(final, clean_answer) - self.normalizer(final)
        return metric_values(metric, final, clean_answer, corrupted_answer)  # its clear error for a bad name

    def of_residual(self, model, metric: str, residual: Float[Tensor, "batch pos d_model"], clean_answer: Tensor,
                    corrupted_answer: Tensor) -> Float[Tensor, " batch"]:
        """The metric from the residual stream before the final norm (:func:`residual_before_final_norm`): the
        model's final norm at the last position, then the answer columns."""
        final = model.ln_final(residual[:, -1:].contiguous())[:, -1]
        return self(metric, final, clean_answer, corrupted_answer)


class _ReachedFinalNorm(Exception):
    """Raised by the hook that stops a forward at the final norm's input, carrying it."""

    def __init__(self, residual: Tensor):
        super().__init__("reached ln_final")
        self.residual = residual


def residual_before_final_norm(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering the final norm: the forward stops there, so the unembedding (batch x
    positions x vocabulary logits) is never computed. Hooks the caller added stay active; the result keeps its
    autograd graph."""

    def stop(residual, hook):
        raise _ReachedFinalNorm(residual)

    try:
        with model.hooks(fwd_hooks=[("ln_final.hook_in", stop)]):
            model(tokens)
    except _ReachedFinalNorm as reached:
        return reached.residual
    raise RuntimeError("the forward did not reach ln_final.hook_in; expected a model with a final norm hook")


def check_fast_supported(model) -> None:
    """A clear error where the fast path's arithmetic is not the model's (it reuses NativeAttention's)."""
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
    """Forward passes that start at a patched site and end at the answer position's final residual.

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
        self.receiving_final, self.receiving = self._record(receiving)
        self.source_final, self.source = self._record(source)
        # keys as the attention reads them (after the rotary map, if any)
        self.keys = [self._rope(k, list(range(self.n_pos))) for k in self.receiving["k"]]
        self._changed: dict[tuple[str, int], Tensor] = {}

    def _record(self, tokens: Tensor) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """The last position's final residual (after the final norm) and every activation of an unpatched run,
        ``acts[stage][layer]``."""
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
        return self.model.ln_final(x[:, -1:].contiguous())[:, -1].contiguous(), acts

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

    def patched_final(
        self, stage: str, layer: int, positions: tuple[int, ...], head: int | None, skip_trivial: bool
    ) -> Float[Tensor, "batch d_model"] | None:
        """The answer position's final residual (after the final norm) with ``stage`` at ``layer`` patched from the
        source run at ``positions`` (and ``head``); ``None`` when the patch leaves the answer exactly unpatched."""
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
        """The answer's final residual with the patch applied: blocks ``layer..L-1`` on positions ``p0..answer``.

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
        return self.model.ln_final(out)[:, -1].contiguous()


def _splice(cached: Tensor, new: Tensor, start: int) -> Tensor:
    """``cached`` with rows ``start .. start + len(new)`` (dimension 1) replaced by ``new``."""
    return torch.cat([cached[:, :start], new, cached[:, start + new.shape[1]:]], dim=1)
