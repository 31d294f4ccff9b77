"""Circuits: faithfulness of the full graph is 1 and of the empty graph 0 under both replacements, the found circuit
is measured on pairs it was not found on, and edge attribution ranks edges as exact path patching does."""

from __future__ import annotations

import pytest
import torch

from revinterp.analysis.circuit import faithfulness, find_circuit, split_pairs
from revinterp.analysis.edges import all_edges
from revinterp.analysis.prompts import make_prompt_pairs


@pytest.fixture(scope="module")
def forward_pairs(tiny_run):
    return make_prompt_pairs(tiny_run.facts, "forward_seen", tiny_run.tokenizer)


@pytest.mark.parametrize("replacement", ["corrupted", "mean"])
def test_full_graph_recovers_one_and_empty_graph_zero(tiny_run, forward_pairs, replacement):
    model = tiny_run.model
    edges = all_edges(model, forward_pairs.clean.shape[1])
    full = faithfulness(model, forward_pairs, edges, replacement=replacement)
    assert torch.allclose(full.circuit, full.full, atol=1e-4)
    assert full.recovered == pytest.approx(1.0, abs=1e-5)
    empty = faithfulness(model, forward_pairs, [], replacement=replacement)
    assert empty.recovered == pytest.approx(0.0, abs=1e-6)
    if replacement == "corrupted":  # everything ablated with corrupted writes is the corrupted run
        assert torch.allclose(empty.empty, model(forward_pairs.corrupted)[:, -1].gather(
            -1, forward_pairs.clean_answer[:, None])[:, 0] - model(forward_pairs.corrupted)[:, -1].gather(
            -1, forward_pairs.corrupted_answer[:, None])[:, 0], atol=1e-4)
    est = full.estimate()
    assert est.low == pytest.approx(1.0, abs=1e-5) and est.high == pytest.approx(1.0, abs=1e-5)


def test_split_is_disjoint_and_refuses_too_few(forward_pairs):
    discovery, evaluation = split_pairs(forward_pairs, seed=3)
    assert len(discovery) + len(evaluation) == len(forward_pairs)
    seen = {s for s in discovery.statements}
    assert not seen & set(evaluation.statements)
    with pytest.raises(ValueError, match="at least 2 in each half"):
        split_pairs(forward_pairs, fraction=0.01)


def test_find_circuit_on_the_tiny_run(tiny_run, forward_pairs):
    circuit = find_circuit(tiny_run.model, forward_pairs, max_edges=10, n_candidates=12)
    assert 1 <= len(circuit.edges) <= 10
    assert circuit.n_discovery + circuit.n_evaluation == len(forward_pairs)
    # the pruning curve is over sizes 1..n_candidates and ends at the candidates' recovery
    assert len(circuit.curve) == 12
    # a one-layer model: the fact runs embed -> L0 heads' values -> logits; a handful of edges carries it
    recovered = circuit.recovered("corrupted")
    assert recovered.mean > 0.5, circuit.summary()
    # edge attribution ranks edges like exact path patching
    assert circuit.agreement.spearman > 0.8
    numbers = circuit.to_numbers()
    assert numbers["n_edges"] == len(circuit.edges) and "held_out_recovered_mean" in numbers
    assert len(circuit.plot().data) >= len(circuit.edges)
    assert "held-out recovery" in circuit.summary()
