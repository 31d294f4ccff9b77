"""Circuit discovery from edge attribution, and its faithfulness measured on prompt pairs not used to find it.

A *circuit* is a set of edges (:mod:`revinterp.analysis.edges`). Its faithfulness (Wang et al. 2022; Conmy et al.
2023, ACDC) is measured by *ablating everything outside it*: the clean run in which every edge outside the circuit
reads a replacement write instead of its sender's (the corrupted prompt's write, or the mean write over prompts),
while circuit edges read what their senders write in that same run::

    recovered(C) = (mean metric(C) - mean metric(empty)) / (mean metric(full) - mean metric(empty))

The full graph is the clean run (1) and the empty graph every edge ablated (0; with corrupted writes it is the
corrupted run). :func:`find_circuit` splits the pairs in two halves: on the *discovery* half it ranks the edges by
first-order edge attribution (one backward pass; its rank agreement with exact path patching is measured on the same
half), keeps the ``n_candidates`` best-ranked edges and prunes them by backward elimination (as ACDC does: each step
drops the edge whose removal lowers the measured discovery recovery least), and takes the smallest set that reaches
``target`` (at most ``max_edges``; otherwise the best set of ``max_edges``). Single edges are not scored one at a
time: an edge alone carries nothing unless the rest of its path from the subject to the logits is kept, which
pruning respects and forward selection does not. The *evaluation* half then gives the reported recovery, with both
replacements and paired bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from revinterp.analysis.agreement import Agreement
from revinterp.analysis.checks import check_choice, check_model_and_pairs
from revinterp.analysis.edges import Edge, _Graph, all_edges, check_edge, edge_sweep, plot_edges
from revinterp.analysis.metrics import metric_values
from revinterp.analysis.prompts import PromptPairs
from revinterp.stats import Estimate, normalized_ci

REPLACEMENTS = ("corrupted", "mean")

__all__ = ["REPLACEMENTS", "Circuit", "Faithfulness", "faithfulness", "find_circuit", "split_pairs"]


def split_pairs(pairs: PromptPairs, *, fraction: float = 0.5, seed: int = 0) -> tuple[PromptPairs, PromptPairs]:
    """(discovery, evaluation): a random ``fraction`` of the pairs and the rest; each needs at least 2 pairs."""
    n = len(pairs)
    k = round(fraction * n)
    if k < 2 or n - k < 2:
        raise ValueError(f"{n} prompt pairs split {fraction:.2f}/{1 - fraction:.2f} leaves {k} and {n - k}; expected "
                         "at least 2 in each half (more pairs, or another fraction)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return pairs.select(sorted(order[:k])), pairs.select(sorted(order[k:]))


@dataclass(frozen=True)
class Faithfulness:
    """Ablate-outside runs of one circuit on one set of pairs: per-example metric with the circuit kept
    (``circuit``), nothing ablated (``full``, the clean run) and everything ablated (``empty``)."""

    circuit: Float[Tensor, " batch"]
    full: Float[Tensor, " batch"]
    empty: Float[Tensor, " batch"]
    replacement: str
    n_edges: int

    @property
    def recovered(self) -> float:
        return ((self.circuit.double().mean() - self.empty.double().mean())
                / (self.full.double().mean() - self.empty.double().mean())).item()

    def estimate(self, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
        """:attr:`recovered` with a paired percentile-bootstrap interval over pairs (ratio of means)."""
        return normalized_ci(self.circuit[None], self.full, self.empty, confidence=confidence,
                             n_resamples=n_resamples, seed=seed)[0]


def faithfulness(model, pairs: PromptPairs, edges: Sequence[Edge], *, replacement: str = "corrupted",
                 metric: str = "logit_diff", reference: PromptPairs | None = None) -> Faithfulness:
    """Recovery of the circuit ``edges`` alone on ``pairs`` (see the module docstring).

    ``replacement="corrupted"``: an ablated edge reads its sender's write on the corrupted prompt; ``"mean"``: the
    mean write per position over the clean prompts of ``reference`` (default ``pairs``)."""
    return _Ablations(model, pairs, replacement=replacement, metric=metric, reference=reference)(edges)


class _Ablations:
    """Ablate-outside runs of many circuits on one set of pairs: the clean run, the replacement writes and the
    everything-ablated run are recorded once, and each call runs one circuit (:func:`faithfulness`)."""

    def __init__(self, model, pairs: PromptPairs, *, replacement: str = "corrupted", metric: str = "logit_diff",
                 reference: PromptPairs | None = None):
        check_choice("replacement", replacement, REPLACEMENTS)
        check_model_and_pairs(model, pairs, "faithfulness")
        self.model, self.pairs, self.replacement, self.metric = model, pairs, replacement, metric
        self.graph, self.n_pos = _Graph(model), pairs.clean.shape[1]
        with torch.no_grad():
            full_logits, _, _ = self.graph.record(pairs.clean)
            if replacement == "corrupted":
                self.writes = self.graph.record(pairs.corrupted)[1]
            else:
                self.writes = self.graph.record((reference or pairs).clean)[1].mean(0, keepdim=True)
            empty = self.graph.run(pairs.clean, self.writes, self.graph.mask_for([], self.n_pos, fill=1.0))
        self.full, self.empty = self.value(full_logits), self.value(empty)

    def value(self, logits: Tensor) -> Tensor:
        return metric_values(self.metric, logits, self.pairs.clean_answer, self.pairs.corrupted_answer)

    def __call__(self, edges: Sequence[Edge]) -> Faithfulness:
        for e in edges:
            check_edge(self.model, e, self.n_pos)
        with torch.no_grad():
            kept = self.graph.run(self.pairs.clean, self.writes,
                                  self.graph.mask_for(edges, self.n_pos, value=0.0, fill=1.0))
        return Faithfulness(circuit=self.value(kept), full=self.full, empty=self.empty,
                            replacement=self.replacement, n_edges=len(edges))


@dataclass(frozen=True)
class Circuit:
    """A circuit found on the discovery pairs and its faithfulness on the evaluation pairs.

    Attributes:
        edges: the chosen edges.
        curve: ``curve[k - 1]``: discovery recovery (corrupted replacement) of the best ``k`` edges found by the
            backward elimination, for ``k = 1 .. n_candidates``.
        candidates: the edges the greedy search chose from (best edge attribution first) and their scores
            (``attribution``: mean attributed change of the metric on the discovery pairs).
        agreement: edge attribution against exact path patching over every edge, on the discovery pairs.
        evaluation: per replacement, the ablate-outside runs on the evaluation pairs.
        target_edges: the smallest pruned set that reaches ``target`` on the discovery pairs (any size; empty when
            none does), and ``target_evaluation`` its held-out runs (corrupted replacement).
        n_discovery, n_evaluation: the pairs in each half.
        target, max_edges: the stopping rule.
    """

    edges: tuple[Edge, ...]
    curve: tuple[float, ...]
    candidates: tuple[Edge, ...]
    attribution: tuple[float, ...]
    agreement: Agreement
    evaluation: dict[str, Faithfulness]
    target_edges: tuple[Edge, ...]
    target_evaluation: Faithfulness | None
    labels: tuple[str, ...]
    n_discovery: int
    n_evaluation: int
    target: float
    max_edges: int
    metric: str

    def recovered(self, replacement: str = "corrupted") -> Estimate:
        """Held-out recovery with its interval."""
        return self.evaluation[replacement].estimate()

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([dict(edge=e.label(self.labels), sender=e.sender.label, receiver=e.receiver.label,
                                  pos=e.pos) for e in self.edges])

    def to_numbers(self) -> dict:
        numbers = {"n_edges": len(self.edges), "discovery_curve": list(self.curve), "n_discovery": self.n_discovery,
                   "n_evaluation": self.n_evaluation,
                   "target": self.target, "max_edges": self.max_edges, "n_candidates": len(self.candidates),
                   "edges": [e.label(self.labels) for e in self.edges],
                   "attribution_spearman": self.agreement.spearman,
                   "attribution_top_k_recall": self.agreement.top_k_recall,
                   "attribution_slope": self.agreement.slope}
        for name, f in self.evaluation.items():
            numbers[f"held_out_recovered_{name}"] = f.estimate().to_dict()
        numbers["target_n_edges"] = len(self.target_edges)
        if self.target_evaluation is not None:
            numbers["target_held_out_recovered_corrupted"] = self.target_evaluation.estimate().to_dict()
        return numbers

    def summary(self) -> str:
        lines = [f"circuit of {len(self.edges)} edges (max {self.max_edges}, target {self.target:.0%}), found on "
                 f"{self.n_discovery} pairs, evaluated on {self.n_evaluation} others; metric {self.metric}"]
        for name, f in self.evaluation.items():
            lines.append(f"  held-out recovery, {name} replacement: {f.estimate()} (95% CI, paired bootstrap)")
        lines.append("  discovery recovery by circuit size: " + ", ".join(
            f"{k + 1}: {v:.2f}" for k, v in enumerate(self.curve) if k + 1 in (1, 2, 3, 5, 10, 15, 20, 30, 40)
            or k + 1 == len(self.curve)))
        reaching = [k + 1 for k, v in enumerate(self.curve) if v >= self.target]
        lines.append(f"  smallest size reaching {self.target:.0%} on discovery pairs: "
                     + (f"{reaching[0]}, held-out recovery {self.target_evaluation.estimate()} (corrupted replacement)"
                        if reaching else f"none up to {len(self.curve)}"))
        lines.append(f"  edge attribution vs exact path patching (discovery pairs): Spearman "
                     f"{self.agreement.spearman:.3f} over {self.agreement.n_sites} non-trivial edges, top-"
                     f"{self.agreement.k} recall {self.agreement.top_k_recall:.2f}, slope {self.agreement.slope:.2f}")
        for k, e in enumerate(self.edges):
            lines.append(f"  {k + 1:>2}. {e.label(self.labels)}")
        return "\n".join(lines)

    def plot(self):
        """The circuit as a graph (edge width ~ its first-order attribution on the discovery pairs)."""
        score = dict(zip(self.candidates, self.attribution))
        return plot_edges([(e, score[e]) for e in self.edges], self.labels,
                          title=f"circuit, {len(self.edges)} edges, held-out recovery "
                                f"{self.evaluation['corrupted'].recovered:.2f}")


def find_circuit(
    model,
    pairs: PromptPairs,
    *,
    max_edges: int = 10,
    target: float = 0.9,
    n_candidates: int = 40,
    discovery_fraction: float = 0.5,
    metric: str = "logit_diff",
    seed: int = 0,
) -> Circuit:
    """The smallest circuit (at most ``max_edges``) found on half the pairs, its recovery measured on the other half.

    Example:
        >>> pairs = make_prompt_pairs(run.facts, "forward_seen", run.tokenizer)   # doctest: +SKIP
        >>> circuit = find_circuit(run.model, pairs)                              # doctest: +SKIP
        >>> print(circuit.summary()); circuit.plot()                              # doctest: +SKIP
    """
    check_model_and_pairs(model, pairs, "find_circuit", min_pairs=4)
    if max_edges < 1 or n_candidates < 1:
        raise ValueError(f"max_edges={max_edges}, n_candidates={n_candidates}: expected positive numbers")
    discovery, evaluation = split_pairs(pairs, fraction=discovery_fraction, seed=seed)
    edges = all_edges(model, pairs.clean.shape[1])
    attribution = edge_sweep(model, discovery, edges, method="attribution", metric=metric)
    exact = edge_sweep(model, discovery, edges, metric=metric)
    agreement = attribution.agreement_with(exact)
    order = torch.argsort(attribution.effect.abs(), descending=True, stable=True)[:n_candidates].tolist()
    candidates = [edges[i] for i in order]
    # backward elimination (as ACDC prunes): from every candidate, repeatedly drop the edge whose removal costs the
    # least discovery recovery; sizes[k] is the best set of k + 1 edges found this way
    kept = list(candidates)
    on_discovery = _Ablations(model, discovery, metric=metric)
    sizes = {len(kept): (tuple(kept), on_discovery(kept).recovered)}
    while len(kept) > 1:
        scores = [on_discovery(kept[:i] + kept[i + 1:]).recovered for i in range(len(kept))]
        drop = max(range(len(kept)), key=lambda i: scores[i])
        kept.pop(drop)
        sizes[len(kept)] = (tuple(kept), scores[drop])
    reaching = [k for k in sorted(sizes) if sizes[k][1] >= target]
    size = reaching[0] if reaching and reaching[0] <= max_edges else min(max_edges, max(sizes))
    chosen = list(sizes[size][0])
    smallest = sizes[reaching[0]][0] if reaching else ()
    curve = [sizes[k][1] for k in sorted(sizes)]
    evaluated = {name: faithfulness(model, evaluation, chosen, replacement=name, metric=metric, reference=discovery)
                 for name in REPLACEMENTS}
    at_target = (faithfulness(model, evaluation, smallest, metric=metric) if smallest else None)
    return Circuit(edges=tuple(chosen), target_edges=tuple(smallest), target_evaluation=at_target,
                   curve=tuple(curve), candidates=tuple(candidates),
                   attribution=tuple(attribution.effect[order].tolist()), agreement=agreement, evaluation=evaluated,
                   labels=pairs.labels, n_discovery=len(discovery), n_evaluation=len(evaluation), target=target,
                   max_edges=max_edges, metric=metric)
