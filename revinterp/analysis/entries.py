"""Does a mitigated model's reverse path reuse the forward entry, or store a separate one?

A mitigation (reverse training, an identity bridge, :mod:`revinterp.data.mitigations`) makes held-out reverse
questions ``b_i <-`` answerable. :mod:`revinterp.analysis.storage` says *where* the reverse path forms: the storage
heads, whose entries on the held-out reverse prompts lie above zero. This module asks whether each such head writes
the *same* thing for a fact in both directions. For fact ``i`` and head ``(l, h)``:

- the forward write ``w_f(i) = z_h(a_i ->)[answer] W_O^h`` and the reverse write ``w_r(i) = z_h(b_i <-)[answer]
  W_O^h``: what the head adds to the residual stream at the answer position;
- both projected on the unembedding difference, the span ``U`` of the read-outs ``u_o`` of every candidate answer
  of both relations (``W_U[:, o]`` times the final LayerNorm weight, centred over the candidates; what the logits
  of the answers can see): ``cos(i, j) = cos(P_U w_f(i), P_U w_r(j))``.

A head that stores one direction per fact and reads it both ways gives ``cos(i, i)`` near 1, against unrelated pairs
``cos(i, j), j != i`` (the null); two independent entries give matched cosines no larger than the null. Per fact,
``d_i = cos(i, i) - mean_{j != i} cos(i, j)`` (the pairing kept); the verdict is two one-sided tests of ``d`` against
a margin of :data:`SHARING_MARGIN` (0.1 of cosine):

- ``"shared"``: ``d`` is different from zero and positive;
- ``"distinct"``: ``d`` is equivalent to zero (matched writes are as unrelated as unrelated facts' writes);
- ``"undetermined"``: neither (too few facts, or a negative difference).

The same test runs on what the head reads: its read key at the answer position, ``kappa_h = sum_s A_h[answer, s]
k_h[s]`` (the prompt's keys weighted by the head's attention; ``kappa(a_i ->)`` forward, ``kappa(b_i <-)`` reverse),
centred over the facts of each direction. One entry reached from either entity gives matched keys (``"shared"``);
an entity-specific key per direction gives ``"distinct"``; keys that do not vary with the fact give
``"undetermined"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.storage import Storage, storage
from revinterp.data import FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import unpack_run
from revinterp.stats import Equivalence, Estimate, bootstrap_ci, equivalence_test

SHARING_MARGIN = 0.1
SHARING_VERDICTS = ("shared", "distinct", "undetermined")

__all__ = ["SHARING_MARGIN", "SHARING_VERDICTS", "EntrySharing", "HeadSharing", "entry_sharing", "head_read_keys",
           "head_writes"]


@dataclass(frozen=True)
class HeadSharing:
    """One head's forward and reverse writes per fact and the shared-versus-distinct test.

    ``cosine[i, j]``: the cosine between fact ``i``'s projected forward write and fact ``j``'s projected reverse
    write; the diagonal is matched, the rest the null."""

    head: tuple[int, int]
    cosine: Float[Tensor, "fact fact"]
    test: Equivalence
    verdict: str
    key_cosine: Float[Tensor, "fact fact"] | None
    key_test: Equivalence | None
    key_verdict: str

    @property
    def label(self) -> str:
        return f"L{self.head[0]}H{self.head[1]}"

    @property
    def matched(self) -> Tensor:
        return self.cosine.diagonal()

    @property
    def null(self) -> Tensor:
        n = self.cosine.shape[0]
        return self.cosine[~torch.eye(n, dtype=torch.bool, device=self.cosine.device)]

    def matched_estimate(self) -> Estimate:
        """Mean matched cosine with a percentile-bootstrap interval over facts."""
        return bootstrap_ci(self.matched.double())

    def null_range(self) -> tuple[float, float, float]:
        """(mean, 2.5 %, 97.5 % quantiles) of the unrelated-pair cosines."""
        null = self.null.double()
        return null.mean().item(), torch.quantile(null, 0.025).item(), torch.quantile(null, 0.975).item()

    @property
    def key_matched(self) -> Tensor | None:
        """Matched read-key cosines; None where the keys do not vary with the fact (nothing was compared)."""
        return None if self.key_cosine is None else self.key_cosine.diagonal()

    def key_null_mean(self) -> float | None:
        if self.key_cosine is None:
            return None
        n = self.key_cosine.shape[0]
        return (self.key_cosine.double().sum() - self.key_matched.double().sum()).item() / (n * (n - 1))

    def to_numbers(self) -> dict:
        mean, low, high = self.null_range()
        return {"head": self.label, "n_facts": int(self.cosine.shape[0]),
                "matched_cosine": self.matched_estimate().to_dict(), "matched_cosine_per_fact": self.matched.tolist(),
                "null_mean": mean, "null_2.5%": low, "null_97.5%": high, "difference_tost": self.test.to_dict(),
                "verdict": self.verdict,
                "key_matched_cosine": None if self.key_cosine is None else bootstrap_ci(
                    self.key_matched.double()).to_dict(),
                "key_null_mean": self.key_null_mean(),
                "key_difference_tost": None if self.key_test is None else self.key_test.to_dict(),
                "key_verdict": self.key_verdict}

    def summary(self) -> str:
        mean, low, high = self.null_range()
        keys = ("keys do not vary with the fact" if self.key_cosine is None else
                f"matched cosine {self.key_matched.double().mean().item():.3f}, unrelated {self.key_null_mean():.3f}; "
                f"matched minus null: {self.key_test.verdict}")
        return (f"{self.label}: writes: matched cosine {self.matched_estimate()} over {self.cosine.shape[0]} facts; "
                f"unrelated pairs {mean:.3f} (95% range [{low:.3f}, {high:.3f}]); matched minus null: "
                f"{self.test.verdict} (margin {SHARING_MARGIN}) -> {self.verdict}; read keys: {keys} -> "
                f"{self.key_verdict}")


@dataclass(frozen=True)
class EntrySharing:
    """The storage analysis of the forward and reverse splits and, per storage head, :class:`HeadSharing`."""

    storage: Storage
    heads: dict[tuple[int, int], HeadSharing]
    forward_statements: tuple[Statement, ...]
    reverse_statements: tuple[Statement, ...]
    reverse_split: str

    @property
    def verdict(self) -> str:
        """The write verdict of the storage head (largest entry on the reverse split); "undetermined" without one."""
        head = self.storage.storage_head
        return self.heads[head].verdict if head in self.heads else "undetermined"

    @property
    def key_verdict(self) -> str:
        """The read-key verdict of the storage head; "undetermined" without one."""
        head = self.storage.storage_head
        return self.heads[head].key_verdict if head in self.heads else "undetermined"

    def to_numbers(self) -> dict:
        return {"reverse_split": self.reverse_split, "storage_head": self.storage.head_label(),
                "storage_heads": [f"L{a}H{b}" for a, b in self.storage.storage_heads], "margin": SHARING_MARGIN,
                "verdict": self.verdict, "key_verdict": self.key_verdict,
                "heads": [h.to_numbers() for h in self.heads.values()]}

    def summary(self) -> str:
        lines = [f"forward entry reused by the reverse path? ({self.reverse_split}, {len(self.reverse_statements)} "
                 f"facts; storage head {self.storage.head_label()}) -> {self.verdict}"]
        lines += ["  " + h.summary() for h in self.heads.values()]
        return "\n".join(lines)


def _projection(model, facts: FactSet, relations: Sequence[str], tokenizer) -> Tensor:
    """``[d_model, k]`` orthonormal basis of the span of the centred read-outs of every candidate of ``relations``."""
    w_u = model.unembed.original_component.weight  # [vocab, d_model]
    norm = getattr(model.ln_final, "original_component", None)
    weight = getattr(norm, "weight", None)
    scale = weight if isinstance(weight, Tensor) else torch.ones(w_u.shape[1], device=w_u.device)
    rows = []
    for relation in relations:
        ids = [encode_words(tokenizer, o.split())[0] for o in facts.candidates(relation)]
        rows.append((w_u[ids] - w_u[ids].mean(0)) * scale)
    readout = torch.cat(rows)  # [candidates, d_model]
    u, s, _ = torch.linalg.svd(readout.T.double(), full_matrices=False)
    return u[:, s > s.max() * 1e-6].to(w_u.dtype)


def _prompt_cache(model, facts: FactSet, statements: Sequence[Statement], tokenizer, operation: str):
    """The attention activations (``hook_z``, ``hook_k``, ``hook_pattern``) of each statement's prompt (one length,
    ending at the answer)."""
    encoded = encode_statements(facts, statements, tokenizer)
    length = int(encoded.prompt_lengths[0])
    if bool((encoded.prompt_lengths != length).any()):
        raise ValueError(f"{operation} needs prompts of one length (single-token subjects and relations)")
    tokens = encoded.tokens[:, :length].to(next(model.parameters()).device)
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.rsplit(".", 1)[-1] in ("hook_z", "hook_k", "hook_pattern"))
    return cache


@torch.no_grad()
def _writes(model, cache) -> Float[Tensor, "layer head s d"]:
    return torch.stack([torch.einsum("shd,hde->hse", cache[f"blocks.{layer}.attn.hook_z"][:, -1],
                                     model.blocks[layer].attn.W_O) for layer in range(model.cfg.n_layers)])


def _read_keys(model, cache) -> Float[Tensor, "layer head s d_head"]:
    return torch.stack([torch.einsum("shp,sphd->hsd", cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1],
                                     cache[f"blocks.{layer}.attn.hook_k"]) for layer in range(model.cfg.n_layers)])


def head_writes(model, facts: FactSet, statements: Sequence[Statement], tokenizer) -> Float[Tensor, "layer head s d"]:
    """Each head's write ``z_h[answer] W_O^h`` at the answer position of each statement's prompt."""
    return _writes(model, _prompt_cache(model, facts, statements, tokenizer, "head_writes"))


def head_read_keys(model, facts: FactSet, statements: Sequence[Statement],
                   tokenizer) -> Float[Tensor, "layer head s d_head"]:
    """Each head's read key ``sum_s A_h[answer, s] k_h[s]`` at the answer position of each statement's prompt."""
    return _read_keys(model, _prompt_cache(model, facts, statements, tokenizer, "head_read_keys"))


def _matched_against_null(cosine: Tensor) -> tuple[Equivalence, str]:
    """The TOST of ``d_i = cos(i, i) - mean_{j != i} cos(i, j)`` against :data:`SHARING_MARGIN`, and its verdict."""
    n = cosine.shape[0]
    difference = cosine.diagonal() - (cosine.sum(1) - cosine.diagonal()) / (n - 1)
    test = equivalence_test(difference, SHARING_MARGIN)
    if test.verdict == "different from zero" and difference.mean() > 0:
        return test, "shared"
    return test, "distinct" if test.verdict == "equivalent to zero" else "undetermined"


def _centred_directions(x: Tensor) -> Tensor | None:
    """Unit rows of ``x`` centred over its rows; None when the rows do not vary (nothing to compare)."""
    centred = x.double() - x.double().mean(0)
    norms = centred.norm(dim=-1)
    if not bool((norms > 1e-6 * max(x.double().norm(dim=-1).max().item(), 1e-30)).all()):
        return None
    return centred / norms[:, None]


def entry_sharing(model_or_run, facts: FactSet | None = None, *, reverse_split: str = "reverse_held_out",
                  heads: Sequence[tuple[int, int]] | None = None, tokenizer=None) -> EntrySharing:
    """Whether the storage heads of ``reverse_split`` write the same direction for a fact both ways (module docstring).

    Each reverse statement ``b_i <- a_i`` of ``reverse_split`` is paired with the forward statement of its fact
    (``a_i -> b_i``, whatever its split). ``heads``: default the storage heads of ``reverse_split`` (each head whose
    entries there lie above zero, :func:`revinterp.analysis.storage.storage`).

    Example:
        >>> print(entry_sharing(mitigated_run).summary())      # doctest: +SKIP
    """
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    reverse = facts.split(reverse_split)
    if any(s.direction != "reverse" for s in reverse):
        raise ValueError(f"split {reverse_split!r} holds forward statements; expected a split of reverse statements "
                         "(reverse_held_out, reverse_seen)")
    forward_of = {s.fact: s for s in facts.statements if s.direction == "forward" and s.split != "augmented"}
    reverse = [s for s in reverse if s.fact in forward_of]
    if len(reverse) < 3:
        raise ValueError(f"split {reverse_split!r} has {len(reverse)} statement(s) with a forward statement; expected "
                         "at least 3 (the null needs unrelated pairs)")
    forward = [forward_of[s.fact] for s in reverse]
    forward_splits = sorted({s.split for s in forward})
    found = storage(model, facts, splits=[*forward_splits, reverse_split], reference=reverse_split,
                    tokenizer=tokenizer)
    chosen = [tuple(h) for h in (found.storage_heads if heads is None else heads)]
    basis = _projection(model, facts, sorted({s.relation for s in [*forward, *reverse]}), tokenizer)
    forward_cache = _prompt_cache(model, facts, forward, tokenizer, "entry_sharing")
    reverse_cache = _prompt_cache(model, facts, reverse, tokenizer, "entry_sharing")
    w_f, w_r = _writes(model, forward_cache) @ basis, _writes(model, reverse_cache) @ basis  # [layer, head, fact, k]
    k_f, k_r = _read_keys(model, forward_cache), _read_keys(model, reverse_cache)  # [layer, head, fact, d_head]
    result = {}
    for layer, h in chosen:
        f = torch.nn.functional.normalize(w_f[layer, h].double(), dim=-1)
        r = torch.nn.functional.normalize(w_r[layer, h].double(), dim=-1)
        cosine = f @ r.T  # [fact i (forward), fact j (reverse)]
        test, verdict = _matched_against_null(cosine)
        keys_f, keys_r = _centred_directions(k_f[layer, h]), _centred_directions(k_r[layer, h])
        if keys_f is None or keys_r is None:
            key_cosine, key_test, key_verdict = None, None, "undetermined"
        else:
            key_cosine = (keys_f @ keys_r.T).float()
            key_test, key_verdict = _matched_against_null(key_cosine)
        result[(layer, h)] = HeadSharing(head=(layer, h), cosine=cosine.float(), test=test, verdict=verdict,
                                         key_cosine=key_cosine, key_test=key_test, key_verdict=key_verdict)
    return EntrySharing(storage=found, heads=result, forward_statements=tuple(forward),
                        reverse_statements=tuple(reverse), reverse_split=reverse_split)
