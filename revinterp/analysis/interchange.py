"""Interchange interventions on a subspace that carries the answer of a reverse statement.

The causal counterpart of the answer-identity probes (:mod:`revinterp.analysis.probes`). On reverse prompts
``<bos> B_i <-`` a rank-``rank`` subspace of one activation (``blocks.{layer}.hook_{hook}`` at the subject ``B`` or
at the relation token) is found on one set of pairs, by the span of the top principal directions of the centred class
means (``method="mean_difference"``, TransformerLens's :func:`mean_difference_basis` truncated to ``rank``) or by
distributed alignment search (``method="das"``, :func:`fit_das`, Geiger et al. 2024, trained so that the interchange
from a source prompt makes the model answer the source's ``A``). It is then interchanged (Geiger et al. 2021) from a
source prompt ``<bos> B_j <-`` into a base prompt ``<bos> B_i <-`` on *other* pairs: the **interchange accuracy** is
the fraction of interchanges whose top prediction among the ``M`` candidates (every object of the relation, chance
``1 / M``) is the source's answer ``A_j``.

Sets, all disjoint in their pairs from the ones the subspace was fitted on:

- ``seen``: the half of ``split_fit`` (default ``reverse_seen``) not used to fit: the positive control, where the
  model answers every base and every source.
- ``held_out``: ``split_test`` (default ``reverse_held_out``), bases and sources both held out: what the subspace does
  where the model does not answer (the source's ``A_j`` is what it would move to, had it been computed).

Each set is measured under four interventions on the same (base, source) pairs: ``subspace``; ``placebo``
(:class:`NormMatchedPlacebo`: the same displacement norm inside a random subspace); ``random`` (an interchange of a
random subspace of the same rank, :func:`random_basis`); ``none`` (no intervention: how often the base already
answers the source's ``A``, about 0). ``kept`` is the fraction whose top prediction stays the base's own answer.

Intervals: exact Clopper-Pearson over interchange pairs. Each base is used with ``n_sources`` sources and each source
as often, so with ``n_sources > 1`` the pairs share prompts and the interval is too narrow; the default, 1, uses
every prompt once as a base and once as a source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from revinterp.data import REVERSE_HELD_OUT, REVERSE_SEEN, FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import unpack_run
from revinterp.stats import clopper_pearson

__all__ = ["INTERVENTIONS", "METHODS", "SETS", "InterchangeResult", "subspace_interchange"]

METHODS = ("mean_difference", "das")
"""How the subspace is found (see the module docstring)."""
INTERVENTIONS = ("subspace", "placebo", "random", "none")
"""The interventions every set is measured under."""
SETS = ("seen", "held_out")
"""The evaluation sets: the unfitted part of ``split_fit``, and ``split_test``."""


@dataclass(frozen=True)
class InterchangeResult:
    """Top predictions under each intervention on each set's (base, source) pairs.

    Attributes:
        predictions: per set, per intervention, the top candidate (index into :attr:`candidates`) of each pair.
        base_answers: per set, each pair's base answer (index into :attr:`candidates`).
        source_answers: per set, each pair's source answer.
        pairs: per set, the (base, source) statements of each pair.
        fit_statements: the statements the subspace was fitted on (disjoint from every pair's).
        candidates: the ``M`` answers decoded among.
        method: ``"mean_difference"`` or ``"das"``.
        hook_name: the intervened activation.
        position: the intervened prompt position; ``position_label`` names it.
        rank: the subspace's dimension (of ``d_model``).
        d_model: the activation's dimension.
        seed: fixes the split of ``split_fit``, the pairing, the random bases and DAS.
    """

    predictions: dict[str, dict[str, Int[Tensor, " n_pairs"]]]
    base_answers: dict[str, Int[Tensor, " n_pairs"]]
    source_answers: dict[str, Int[Tensor, " n_pairs"]]
    pairs: dict[str, tuple[tuple[Statement, Statement], ...]]
    fit_statements: tuple[Statement, ...]
    candidates: tuple[str, ...]
    method: str
    hook_name: str
    position: int
    position_label: str
    rank: int
    d_model: int
    seed: int

    @property
    def chance(self) -> float:
        return 1.0 / len(self.candidates)

    def interchange_accuracy(self, set_name: str, intervention: str = "subspace") -> float:
        """Fraction of the set's interchanges whose top prediction is the source's answer."""
        return (self.predictions[set_name][intervention] == self.source_answers[set_name]).double().mean().item()

    def _row(self, set_name: str, intervention: str) -> dict:
        predicted = self.predictions[set_name][intervention]
        moved = int((predicted == self.source_answers[set_name]).sum())
        kept = int((predicted == self.base_answers[set_name]).sum())
        n = len(predicted)
        estimate = clopper_pearson(moved, n)
        return dict(set=set_name, intervention=intervention, interchange_accuracy=estimate.mean, ci_low=estimate.low,
                    ci_high=estimate.high, hits=moved, n=n, kept=kept / n, chance=self.chance)

    def to_frame(self):
        """One row per (set, intervention): interchange accuracy with its exact 95 % interval, ``kept``, chance."""
        import pandas as pd

        return pd.DataFrame([self._row(s, i) for s in self.pairs if self.pairs[s] for i in INTERVENTIONS])

    def to_numbers(self) -> dict:
        """Plain JSON-able numbers: the configuration, per set and intervention the accuracies and intervals, and
        per pair the base, source and top prediction (for later tests without rerunning)."""
        sets = {}
        for s, pairs in self.pairs.items():
            if not pairs:
                sets[s] = {"n": 0}
                continue
            sets[s] = {
                "interventions": {i: {k: v for k, v in self._row(s, i).items() if k not in ("set", "intervention")}
                                  for i in INTERVENTIONS},
                "pairs": [{"base": b.subject, "base_answer": b.object, "source": src.subject,
                           "source_answer": src.object,
                           **{i: self.candidates[int(self.predictions[s][i][k])] for i in INTERVENTIONS}}
                          for k, (b, src) in enumerate(pairs)],
            }
        return {
            "method": self.method, "hook": self.hook_name, "position": self.position,
            "position_label": self.position_label, "rank": self.rank, "d_model": self.d_model, "seed": self.seed,
            "chance": self.chance, "n_candidates": len(self.candidates),
            "fit_pairs": [s.subject for s in self.fit_statements], "interval": "clopper_pearson_95 over pairs",
            "sets": sets,
        }

    def summary(self) -> str:
        lines = [f"subspace interchange ({self.method}, rank {self.rank}/{self.d_model}, {self.hook_name} at "
                 f"{self.position_label}): fitted on {len(self.fit_statements)} pairs, chance {self.chance:.3f}",
                 f"  {'set':<10}{'intervention':<14}{'moved to source [95% CI]':<32}{'kept':>6}"]
        for _, row in self.to_frame().iterrows():
            cell = f"{row.interchange_accuracy:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}] ({row.hits}/{row.n})"
            lines.append(f"  {row.set:<10}{row.intervention:<14}{cell:<32}{row.kept:6.2f}")
        return "\n".join(lines)

    def plot(self):
        """Plotly bars: interchange accuracy per set and intervention, exact 95 % intervals, chance dotted."""
        import plotly.graph_objects as go

        frame = self.to_frame()
        fig = go.Figure()
        for intervention in INTERVENTIONS:
            rows = frame[frame.intervention == intervention]
            fig.add_bar(x=list(rows.set), y=list(rows.interchange_accuracy), name=intervention,
                        error_y=dict(type="data", symmetric=False, array=list(rows.ci_high - rows.interchange_accuracy),
                                     arrayminus=list(rows.interchange_accuracy - rows.ci_low)))
        fig.add_hline(y=self.chance, line_dash="dot", line_color="black")
        fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05], title="interchange accuracy"),
                          title=f"Interchange of a rank-{self.rank} {self.method} subspace at {self.hook_name}, "
                                f"{self.position_label}: top prediction = the source's answer")
        return fig


def subspace_interchange(
    model_or_run,
    facts: FactSet | None = None,
    *,
    split_fit: str = REVERSE_SEEN,
    split_test: str = REVERSE_HELD_OUT,
    layer: int = 1,
    hook: str = "resid_pre",
    position: str | int = "subject",
    rank: int = 8,
    method: str = "mean_difference",
    fit_fraction: float = 0.5,
    n_sources: int = 1,
    das_epochs: int = 30,
    das_lr: float = 1e-2,
    tokenizer=None,
    seed: int = 0,
) -> InterchangeResult:
    """Fit a subspace on part of ``split_fit`` and interchange it on the rest and on ``split_test``.

    Args:
        model_or_run: a :class:`~revinterp.models.LoadedRun`, or a ``TransformerBridge`` in eval mode with ``facts``.
        facts: the fact set, only with a model.
        split_fit: reverse statements; a ``fit_fraction`` of them (seeded) fits the subspace, the rest is ``seen``.
        split_test: reverse statements evaluated as ``held_out`` (none may be in ``split_fit``).
        layer: the block whose ``hook_{hook}`` is intervened on.
        hook: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        position: ``"subject"`` (``B``'s position), ``"relation"`` (the last prompt token) or an index.
        rank: the subspace's dimension.
        method: ``"mean_difference"`` or ``"das"``.
        fit_fraction: the share of ``split_fit`` fitted on.
        n_sources: sources per base (distinct, none the base itself).
        das_epochs: DAS passes over the fit pairs (every ordered pair of fit prompts).
        das_lr: DAS's Adam learning rate.
        tokenizer: default the run's.
        seed: fixes the split, the pairing, the random bases and DAS's initialisation.

    Raises:
        ValueError: train mode; an unknown method, hook or position; a split of other than reverse statements or
            too small; overlapping splits; multi-token answers; prompts of different lengths.
    """
    from transformer_lens.tools.analysis import (
        NormMatchedPlacebo,
        SubspaceInterchange,
        collect_activations,
        fit_das,
        intervened_logits,
        random_basis,
    )
    from transformer_lens.tools.analysis.projection_kernel import orthonormal_subspace

    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    if any(module.training for module in model.modules()):
        raise ValueError("subspace_interchange needs the model in eval mode (call model.eval() first)")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction={fit_fraction}: expected a value in (0, 1)")
    fit_split, test_split = _reverse(facts, split_fit, "split_fit"), _reverse(facts, split_test, "split_test")
    if set(fit_split) & set(test_split):
        raise ValueError(f"split_fit={split_fit!r} and split_test={split_test!r} share statements")
    hook_name = f"blocks.{layer}.hook_{hook}"
    if hook_name not in model.hook_dict:
        raise ValueError(f"layer={layer}, hook={hook!r}: the model has no {hook_name}")
    d_model = model.cfg.d_model
    if not 0 < rank < d_model:
        raise ValueError(f"rank={rank}: expected 1 <= rank < d_model = {d_model}")

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(fit_split), generator=gen).tolist()
    n_fit = max(2, round(fit_fraction * len(fit_split)))
    fit_statements = tuple(fit_split[i] for i in sorted(order[:n_fit]))
    seen_statements = tuple(fit_split[i] for i in sorted(order[n_fit:]))
    statements = fit_statements + seen_statements + test_split

    encoded = encode_statements(facts, statements, tokenizer)
    lengths = sorted(set(encoded.prompt_lengths.tolist()))
    if len(lengths) != 1:
        raise ValueError(f"prompts have lengths {lengths}; expected one length (one relation and template)")
    n_pos = lengths[0]
    subject_len = {len(s.subject.split()) for s in statements}
    if position == "subject":
        if subject_len != {1}:
            raise ValueError("position='subject' needs one-token subjects; pass an index")
        pos, position_label = 1, "subject"
    elif position == "relation":
        pos, position_label = n_pos - 1, "relation"
    elif isinstance(position, int) and -n_pos <= position < n_pos:
        pos = position % n_pos
        position_label = f"pos{pos}"
    else:
        raise ValueError(f"position={position!r}: expected 'subject', 'relation' or an index into {n_pos} positions")

    candidates = sorted({c for s in statements for c in facts.candidates(s.relation)})
    ids = [encode_words(tokenizer, c.split()) for c in candidates]
    if any(len(i) != 1 for i in ids):
        raise ValueError("subspace_interchange needs one-token answers (the top prediction is over their tokens)")
    device = next(model.parameters()).device
    candidate_ids = torch.tensor([i[0] for i in ids], device=device)
    index_of = {c: i for i, c in enumerate(candidates)}
    tokens = encoded.tokens[:, :n_pos].to(device)
    answers = torch.tensor([index_of[s.object] for s in statements])
    row = {s: i for i, s in enumerate(statements)}

    def task_logits(batch):
        return model(batch)[:, -1, candidate_ids]

    def positions(n):
        return torch.full((n,), pos, dtype=torch.long)

    fit_rows = torch.tensor([row[s] for s in fit_statements])
    if method == "mean_difference":
        acts = collect_activations(model, hook_name, tokens[fit_rows], task_logits, positions=positions(len(fit_rows)))
        labels = answers[fit_rows]
        classes = labels.unique()
        if len(classes) <= rank:
            raise ValueError(f"rank={rank}: the {len(classes)} fit classes span at most {len(classes) - 1} dimensions")
        means = torch.stack([acts[labels == c].mean(0) for c in classes])
        basis = orthonormal_subspace((means - means.mean(0)).T, rank=rank).basis
    else:
        base, source = zip(*[(i, j) for i in fit_rows.tolist() for j in fit_rows.tolist()
                             if answers[i] != answers[j]])
        base, source = torch.tensor(base), torch.tensor(source)
        das = fit_das(model, hook_name, tokens[base], tokens[source], answers[source], task_logits, rank=rank,
                      base_positions=positions(len(base)), source_positions=positions(len(source)),
                      epochs=das_epochs, lr=das_lr, seed=seed)
        basis = das.basis.cpu()
    basis = basis.float()
    reference = SubspaceInterchange(basis)
    interventions = {
        "subspace": reference,
        "placebo": NormMatchedPlacebo(reference, random_basis(d_model, rank, seed + 1)),
        "random": SubspaceInterchange(random_basis(d_model, rank, seed + 2)),
    }

    result_pairs, predictions, base_answers, source_answers = {}, {}, {}, {}
    for name, members in (("seen", seen_statements), ("held_out", test_split)):
        pairs = _pairs(members, n_sources, gen)
        result_pairs[name] = tuple((members[b], members[s]) for b, s in pairs)
        rows_b = torch.tensor([row[members[b]] for b, _ in pairs], dtype=torch.long)
        rows_s = torch.tensor([row[members[s]] for _, s in pairs], dtype=torch.long)
        base_answers[name], source_answers[name] = answers[rows_b], answers[rows_s]
        predictions[name] = {}
        if not pairs:
            predictions[name] = {i: torch.zeros(0, dtype=torch.long) for i in INTERVENTIONS}
            continue
        source_acts = collect_activations(model, hook_name, tokens[rows_s], task_logits,
                                          positions=positions(len(rows_s)))
        for label, intervention in interventions.items():
            logits = intervened_logits(model, hook_name, intervention, tokens[rows_b], source_acts, task_logits,
                                       positions=positions(len(rows_b)))
            predictions[name][label] = logits.argmax(-1).cpu()
        with torch.no_grad():
            predictions[name]["none"] = task_logits(tokens[rows_b]).argmax(-1).cpu()

    return InterchangeResult(
        predictions=predictions, base_answers=base_answers, source_answers=source_answers, pairs=result_pairs,
        fit_statements=fit_statements, candidates=tuple(candidates), method=method, hook_name=hook_name,
        position=pos, position_label=position_label, rank=rank, d_model=d_model, seed=seed,
    )


def _reverse(facts: FactSet, name: str, argument: str) -> tuple[Statement, ...]:
    try:
        split = facts.split(name)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    if len(split) < 2:
        raise ValueError(f"{argument}={name!r} has {len(split)} statement(s); expected at least 2")
    wrong = [s for s in split if s.direction != "reverse"]
    if wrong:
        raise ValueError(f"{argument}={name!r} holds {wrong[0].direction} statements; expected reverse ones")
    return tuple(split)


def _pairs(members: tuple[Statement, ...], n_sources: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """Each member a base with ``n_sources`` distinct sources (cyclic shifts of a seeded order), never itself nor a
    statement with the same answer; each member is also a source ``n_sources`` times."""
    n = len(members)
    if not 1 <= n_sources < max(n, 2):
        raise ValueError(f"n_sources={n_sources}: expected 1 <= n_sources < {n} (the set's size)")
    order = torch.randperm(n, generator=gen).tolist()
    return [(order[k], order[(k + shift) % n]) for shift in range(1, n_sources + 1) for k in range(n)
            if members[order[k]].object != members[order[(k + shift) % n]].object]
