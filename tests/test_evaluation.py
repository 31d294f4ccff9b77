"""Behaviour metrics: candidate scoring paths agree, ranks and chance levels are right, intervals cover."""

from __future__ import annotations

import math

import torch

from revinterp.data import Statement, encode_statements
from revinterp.evaluation import answer_scores, evaluate
from revinterp.stats import bootstrap_ci


def teacher_forced_candidate_scores(model, facts, statement, candidates, tok):
    """Reference: log p(c | prompt) from one encoded statement per candidate."""
    rows = [Statement(statement.subject, statement.relation, c, -1, statement.direction, statement.split)
            for c in candidates]
    with torch.no_grad():
        return answer_scores(model, encode_statements(facts, rows, tok))[0]


def test_single_token_fast_path_equals_teacher_forced_scoring(tiny_run):
    facts, model, tok = tiny_run.facts, tiny_run.model, tiny_run.tokenizer
    behaviour = evaluate(model, facts, ["forward_seen", "reverse_held_out"])
    sb = behaviour["reverse_held_out"]
    for i, s in enumerate(sb.statements):
        candidates = facts.candidates(s.relation)
        scores = teacher_forced_candidate_scores(model, facts, s, candidates, tok)
        answer = scores[candidates.index(s.object)]
        assert torch.allclose(sb.logprob_candidates[i], answer - scores.logsumexp(0), atol=1e-5)
        assert sb.rank[i] == 1 + (scores > answer).sum()
        assert sb.n_candidates[i] == len(candidates)


def test_logprob_is_the_models_own_log_softmax(tiny_run):
    facts, model, tok = tiny_run.facts, tiny_run.model, tiny_run.tokenizer
    statements = facts.split("forward_seen")[:5]
    encoded = encode_statements(facts, statements, tok)
    with torch.no_grad():
        logprob, _ = answer_scores(model, encoded)
        for i, s in enumerate(statements):
            logits = model(tiny_run.model.to_tokens(" ".join(facts.prompt_words(s))))
            expected = logits[0, -1].log_softmax(-1)[tok.get_vocab()[s.object]]
            assert torch.allclose(logprob[i], expected, atol=1e-5)


def test_metrics_report_chance_and_baselines(tiny_run):
    m = evaluate(tiny_run.model, tiny_run.facts, ["reverse_held_out"]).to_dict()["splits"]["reverse_held_out"]
    n_candidates = len(tiny_run.facts.candidates("<-"))
    assert m["chance_accuracy"] == 1 / n_candidates
    assert m["chance_mean_rank"] == (n_candidates + 1) / 2
    assert math.isclose(m["uniform_logprob_candidates"], -math.log(n_candidates))
    assert math.isclose(m["uniform_logprob"], -math.log(len(tiny_run.tokenizer)))
    assert m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]


def test_evaluate_restores_training_mode(tiny_run):
    tiny_run.model.train()
    evaluate(tiny_run.model, tiny_run.facts, ["forward_seen"])
    assert tiny_run.model.training
    tiny_run.model.eval()


def test_bootstrap_interval():
    x = torch.tensor([0.0] * 50 + [1.0] * 50)
    est = bootstrap_ci(x, seed=1)
    assert est.mean == 0.5 and 0.38 < est.low < 0.45 and 0.55 < est.high < 0.62  # ~ mean +- 1.96 * 0.05
    assert bootstrap_ci(x, seed=1) == est


def test_held_out_answers_rank_among_the_splits_own_answers(tiny_run):
    from scipy.stats import binomtest

    facts, model, tok = tiny_run.facts, tiny_run.model, tiny_run.tokenizer
    behaviour = evaluate(model, facts, ["forward_seen", "reverse_held_out"])
    sb = behaviour["reverse_held_out"]
    own = sorted({s.object for s in sb.statements})
    ranks = []
    for s in sb.statements:
        scores = teacher_forced_candidate_scores(model, facts, s, own, tok)
        ranks.append(int(1 + (scores > scores[own.index(s.object)]).sum()))
    m = sb.metrics()["held_out_answers"]
    assert set(m) == {"n_candidates", "accuracy", "accuracy_ci", "chance_accuracy", "mean_rank", "chance_mean_rank",
                      "accuracy_above_chance_p"}
    hits = sum(r == 1 for r in ranks)
    assert sb.held_out_answers.rank.tolist() == ranks
    assert m["n_candidates"] == len(own) < len(facts.candidates("<-"))
    assert m["accuracy"] == hits / len(ranks) and m["chance_accuracy"] == 1 / len(own)
    assert math.isclose(m["mean_rank"], sum(ranks) / len(ranks)) and m["chance_mean_rank"] == (len(own) + 1) / 2
    assert math.isclose(m["accuracy_above_chance_p"], binomtest(hits, len(ranks), 1 / len(own), "greater").pvalue)
    tests = sb.metrics()["tests"]
    assert set(tests) == {"accuracy_above_chance_p", "rank_below_chance_p", "logprob_below_chance_p"}
    assert all(0 <= p <= 1 for p in tests.values())
    assert "held_out_answers" not in behaviour["forward_seen"].metrics()  # trained splits: all candidates only
