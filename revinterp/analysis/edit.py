"""The causal test of a missing entry: write it into the storage head, with a placebo and measured specificity.

If a held-out reverse question fails only because the entry ``B -> A`` is missing (the routing brings the subject's
information to the answer position, :mod:`revinterp.analysis.storage`), then writing that entry where seen reverse
facts are stored should restore the answer. The write is a rank-one update of the storage head's value map, as ROME
(Meng et al. 2022) edits an MLP::

    W_V <- W_V + (C^-1 k) c^T / (k^T C^-1 k)

- key ``k``: the subject's representation at the read site, ``ln1(x_subject)`` of the head's layer on the held-out
  prompt; ``C``: the second moment of the keys of every subject of the relation (plus a small ridge), so that the
  update fires for this key and little for the others;
- value ``c``: the change of the head's value along ``W_O^h u_o`` (the direction that raises the answer ``o`` over
  the relation's candidates, :mod:`revinterp.analysis.storage`), scaled so that the new entry equals the mean entry
  of the seen-reverse statements: the size the training gave to the entries that exist.

The placebo is the same update with ``c`` replaced by a random vector of the same norm. The edit is estimated from
seen statements only (the scale) and the held-out prompt's own key; it is applied to a deep copy (the caller's model
is never modified) for a random half of the held-out statements (``edited``); the other half (``untouched``), the
forward statements and the seen reverse statements measure specificity: their answers before and after, measured.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.storage import _readout, head_entries, storage
from revinterp.data import FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import unpack_run
from revinterp.stats import Estimate, bootstrap_ci, clopper_pearson

__all__ = ["EditResult", "GroupOutcome", "answer_scores", "insert_missing_entries"]


@dataclass(frozen=True)
class GroupOutcome:
    """Answers of one group of statements before and after the edit (and after the placebo).

    ``rank``: 1 + candidates scored above the answer; ``margin``: answer logit minus the best other candidate's."""

    name: str
    statements: tuple[Statement, ...]
    rank_before: Int[Tensor, " n"]
    rank_after: Int[Tensor, " n"]
    rank_placebo: Int[Tensor, " n"]
    margin_before: Float[Tensor, " n"]
    margin_after: Float[Tensor, " n"]
    margin_placebo: Float[Tensor, " n"]

    def accuracy(self, which: str = "after") -> Estimate:
        """Top-1 accuracy among the candidates, Clopper-Pearson 95 % interval."""
        rank = getattr(self, f"rank_{which}")
        return clopper_pearson(int((rank == 1).sum()), len(rank))

    def margin_change(self, which: str = "after") -> Estimate:
        return bootstrap_ci((getattr(self, f"margin_{which}") - self.margin_before).double())

    def to_numbers(self) -> dict:
        out = {"n": len(self.statements)}
        for which in ("before", "after", "placebo"):
            out[f"accuracy_{which}"] = self.accuracy(which).to_dict()
            out[f"mean_rank_{which}"] = float(getattr(self, f"rank_{which}").double().mean())
            out[f"margin_{which}"] = float(getattr(self, f"margin_{which}").double().mean())
        out["margin_change_after"] = self.margin_change("after").to_dict()
        out["margin_change_placebo"] = self.margin_change("placebo").to_dict()
        return out


@dataclass(frozen=True)
class EditResult:
    """The outcome per group (``edited``, ``untouched`` held-out statements, ``forward``, ``reverse_seen``)."""

    heads: tuple[tuple[int, int], ...]
    groups: dict[str, GroupOutcome]
    target_entry: dict[tuple[int, int], float]
    n_candidates: int

    @property
    def restored(self) -> bool:
        """The edit answers at least half the edited statements where the model answered fewer, the placebo answers
        fewer than half, and the edit's margin gain lies above the placebo's (bootstrap intervals apart)."""
        g = self.groups["edited"]
        before, after, placebo = g.accuracy("before"), g.accuracy("after"), g.accuracy("placebo")
        return (after.mean >= 0.5 > before.mean and placebo.mean < 0.5
                and g.margin_change("after").low > g.margin_change("placebo").high)

    def to_numbers(self) -> dict:
        return {"heads": [f"L{a}H{b}" for a, b in self.heads],
                "target_entry": {f"L{a}H{b}": v for (a, b), v in self.target_entry.items()},
                "n_candidates": self.n_candidates, "restored": self.restored,
                **{name: g.to_numbers() for name, g in self.groups.items()}}

    def to_frame(self):
        import pandas as pd

        rows = []
        for name, g in self.groups.items():
            for i, s in enumerate(g.statements):
                rows.append(dict(group=name, statement=f"{s.subject} {s.relation} {s.object}", split=s.split,
                                 rank_before=int(g.rank_before[i]), rank_after=int(g.rank_after[i]),
                                 rank_placebo=int(g.rank_placebo[i]), margin_before=float(g.margin_before[i]),
                                 margin_after=float(g.margin_after[i]), margin_placebo=float(g.margin_placebo[i])))
        return pd.DataFrame(rows)

    def summary(self) -> str:
        heads = ", ".join(f"L{a}H{b} (to {v:.3g})" for (a, b), v in self.target_entry.items())
        lines = [f"rank-one insertion into the values of {heads} (entries scaled to the seen-reverse mean); accuracy "
                 f"among {self.n_candidates} candidates, Clopper-Pearson 95%"]
        for name, g in self.groups.items():
            lines.append(f"  {name:<12} n={len(g.statements):<4} before {g.accuracy('before')}  after "
                         f"{g.accuracy('after')}  placebo {g.accuracy('placebo')}  margin change after "
                         f"{g.margin_change('after')}, placebo {g.margin_change('placebo')}")
        lines.append("  restored: " + ("yes (the placebo is not)" if self.restored else "no"))
        return "\n".join(lines)

    def plot(self):
        import plotly.graph_objects as go

        from revinterp.stats import error_bars

        fig = go.Figure()
        for which in ("before", "after", "placebo"):
            est = [g.accuracy(which) for g in self.groups.values()]
            fig.add_bar(x=list(self.groups), y=[e.mean for e in est], name=which, error_y=error_bars(est))
        fig.update_layout(title="inserting the missing entry: accuracy per group (Clopper-Pearson 95%)",
                          yaxis=dict(title="accuracy", range=[0, 1.05]), barmode="group")
        return fig


def answer_scores(model, facts: FactSet, statements: Sequence[Statement], tokenizer) -> tuple[Tensor, Tensor]:
    """(rank among the relation's candidates, ties counted against the answer; answer logit minus the best other
    candidate's) per statement."""
    encoded = encode_statements(facts, statements, tokenizer)
    device = next(model.parameters()).device
    ranks, margins = [], []
    with torch.no_grad():
        logits = model(encoded.tokens.to(device))
    for i, s in enumerate(statements):
        row = logits[i, int(encoded.prompt_lengths[i]) - 1]
        ids = torch.tensor([encode_words(tokenizer, o.split())[0] for o in facts.candidates(s.relation)],
                           device=device)
        answer = encode_words(tokenizer, s.object.split())[0]
        a = row[answer]
        others = row[ids][ids != answer]
        ranks.append(int((others >= a).sum()) + 1)  # ties count against the answer
        margins.append(float(a - others.max()) if others.numel() else float(a))
    return torch.tensor(ranks), torch.tensor(margins)


def _keys(model, facts, statements, tokenizer, layer: int) -> Tensor:
    """``ln1(x_subject)`` of block ``layer`` per statement: the head's read site."""
    encoded = encode_statements(facts, statements, tokenizer)
    tokens = encoded.tokens[:, : int(encoded.prompt_lengths[0])].to(next(model.parameters()).device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == f"blocks.{layer}.ln1.hook_out")
    return cache[f"blocks.{layer}.ln1.hook_out"][:, 1]


def insert_missing_entries(
    model_or_run,
    facts: FactSet | None = None,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    split: str = "reverse_held_out",
    reference: str = "reverse_seen",
    forward: str = "forward_seen",
    edit_fraction: float = 0.5,
    ridge: float = 1e-2,
    tokenizer=None,
    seed: int = 0,
) -> EditResult:
    """Insert the entries of a random ``edit_fraction`` of ``split`` into the storage head and measure (module
    docstring).

    Args:
        heads: the heads to edit, ``[(layer, head), ...]``; default every storage head found by
            :func:`revinterp.analysis.storage.storage` on ``reference`` (each head whose seen entries lie above zero,
            bootstrap interval over facts). A ValueError when the analysis finds none.

    Example:
        >>> print(insert_missing_entries(run).summary())     # doctest: +SKIP
    """
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    held_out, seen, fwd = facts.split(split), facts.split(reference), facts.split(forward)
    for name, group in ((split, held_out), (reference, seen), (forward, fwd)):
        if len(group) < 2:
            raise ValueError(f"split {name!r} has {len(group)} statement(s); expected at least 2")
    if heads is None:
        found = storage(model, facts, splits=[reference], reference=reference, tokenizer=tokenizer)
        heads = found.storage_heads
        if not heads:
            raise ValueError(f"insert_missing_entries: the storage analysis found no head whose {reference} entries "
                             "are above zero (the model stores them elsewhere, e.g. in an MLP); expected a storage "
                             "head, or pass heads=[(layer, head)]")
    heads = [tuple(x) for x in heads]
    for layer, h in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= h < model.cfg.n_heads):
            raise ValueError(f"head ({layer}, {h}): expected (layer, head) within {model.cfg.n_layers} layers and "
                             f"{model.cfg.n_heads} heads")
    order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(edit_fraction * len(held_out)))
    edited = [held_out[i] for i in sorted(order[:k])]
    untouched = [held_out[i] for i in sorted(order[k:])]

    entries, attention, _, _ = head_entries(model, facts, seen, tokenizer)
    gen = torch.Generator().manual_seed(seed + 1)
    updates, placebos, target = {}, {}, {}
    for layer, h in heads:
        updates[(layer, h)], placebos[(layer, h)], target[(layer, h)] = _rank_one(
            model, facts, tokenizer, layer, h, seen, held_out, edited, entries, attention, ridge, gen)

    groups_statements = {"edited": edited, "untouched": untouched, "forward": list(fwd), "reverse_seen": list(seen)}
    before = {g: answer_scores(model, facts, s, tokenizer) for g, s in groups_statements.items() if s}
    edited_model, placebo_model = _edited(model, updates), _edited(model, placebos)
    after = {g: answer_scores(edited_model, facts, s, tokenizer) for g, s in groups_statements.items() if s}
    placebo_scores = {g: answer_scores(placebo_model, facts, s, tokenizer) for g, s in groups_statements.items() if s}
    groups = {g: GroupOutcome(g, tuple(groups_statements[g]), before[g][0], after[g][0], placebo_scores[g][0],
                              before[g][1], after[g][1], placebo_scores[g][1]) for g in before}
    return EditResult(heads=tuple(heads), groups=groups, target_entry=target,
                      n_candidates=len(facts.candidates(edited[0].relation)))


def _rank_one(model, facts, tokenizer, layer, h, seen, held_out, edited, entries, attention, ridge, gen):
    """(update, placebo, target entry) of head ``(layer, h)``'s ``W_V`` for the ``edited`` statements."""
    # the scale: the mean entry of the seen statements (before the attention weight, which the edit leaves alone)
    seen_entry = (entries[layer, h].diagonal() / attention[layer, h].clamp_min(1e-6)).mean().item()
    keys_all = _keys(model, facts, [*seen, *held_out], tokenizer, layer)
    second = keys_all.T @ keys_all / len(keys_all)
    second = second + ridge * second.diagonal().mean() * torch.eye(second.shape[0], device=second.device)
    keys = _keys(model, facts, edited, tokenizer, layer)
    readout = _readout(model, facts, edited, tokenizer)  # [n, d]
    attn = model.blocks[layer].attn
    w_o, b_v, w_v = attn.W_O[h], attn.b_V[h], attn.W_V[h]  # [d_head, d], [d_head], [d, d_head]
    update, placebo = torch.zeros_like(w_v), torch.zeros_like(w_v)
    for key, u in zip(keys, readout):
        direction = w_o @ u  # [d_head]: raises the answer most per unit of value
        current = ((key @ w_v + b_v) @ w_o @ u).item()
        value = direction / direction.norm() * (seen_entry - current) / direction.norm()
        random = torch.randn(value.shape, generator=gen).to(value)
        random = random / random.norm() * value.norm()
        solved = torch.linalg.solve(second, key)
        update += torch.outer(solved, value) / (solved @ key)
        placebo += torch.outer(solved, random) / (solved @ key)
    return update.detach(), placebo.detach(), seen_entry


def _edited(model, updates: dict[tuple[int, int], Tensor]):
    """A deep copy of ``model`` with each ``updates[(layer, head)]`` (``[d_model, d_head]``) added to that head's
    ``W_V``, through ``state_dict`` (the bridge keeps ``W_V`` as the ``v`` linear layer ``[H * d_head, d_model]``)."""
    copied = copy.deepcopy(model)
    state = copied.state_dict()
    d_head = model.cfg.d_head
    for (layer, head), update in updates.items():
        name = f"blocks.{layer}.attn.v.weight"
        weight = state[name].clone()
        weight[head * d_head:(head + 1) * d_head] += update.T
        state[name] = weight
    copied.load_state_dict(state)
    copied.eval()
    return copied
