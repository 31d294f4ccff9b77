"""Behaviour metrics: candidate scoring paths agree, ranks and chance levels are right, intervals cover."""

from __future__ import annotations

import math

import pytest
import torch

from revinterp.data import Statement, encode_statements
from revinterp.evaluation import answer_scores, evaluate
from revinterp.stats import bootstrap_ci, clopper_pearson

FLOAT32_ULPS = 4 * torch.finfo(torch.float32).eps
"""Relative tolerance of float32 results whose only difference is the shape of a matrix product: 4 ulp."""


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


FAMILIES = "".join(  # two parents per child, two children per parent, names of two or three words
    f"{mother},parent_of,{child},child_of\n{father},parent_of,{child},child_of\n"
    for f in range(6)
    for mother, father in [(f"Ma{f} Mo{f}", f"Pa{f} van Po{f}")]
    for child in (f"Kid{f} Mo{f}", f"Tot{f} del Po{f}")
)


def families(tmp_path, seed=0):
    from revinterp.data import load_fact_file

    path = tmp_path / "families.csv"
    path.write_text("subject,relation,object,inverse\n" + FAMILIES)
    return load_fact_file(path, both_fraction=0.5, held_out_direction="forward", seed=seed)


class PlantedRecall(torch.nn.Module):
    """Logits of 10 at the next token of every sequence in ``answers`` (a prefix of token ids -> the answer's
    ids), 0 elsewhere: a model that recalls the planted answer of each prompt, token by token."""

    def __init__(self, d_vocab, answers: dict[tuple[int, ...], list[int]]):
        super().__init__()
        self.d_vocab, self.bias = d_vocab, torch.nn.Parameter(torch.zeros(()))
        self.next = {(*prompt, *answer[:k]): answer[k]
                     for prompt, answer in answers.items() for k in range(len(answer))}

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.d_vocab) + self.bias
        for r, row in enumerate(tokens.tolist()):
            for p in range(len(row)):
                if (nxt := self.next.get(tuple(row[:p + 1]))) is not None:
                    logits[r, p, nxt] = 10.0
        return logits


def test_either_parent_counts_as_correct(tmp_path):
    from revinterp.data.tokenizer import encode_words
    from revinterp.models import tokenizer_for

    facts = families(tmp_path)
    tok = tokenizer_for(facts)
    held = facts.split("reverse_held_out")
    assert held and all(len(facts.answers(s.subject, s.relation)) == 2 for s in held)
    # plant the father (the name with 'van') for every child: the mother's statement is answered by a valid answer
    father = {s.subject: s.object for s in held if " van " in s.object}
    prompt = lambda s: (tok.bos_token_id, *encode_words(tok, facts.prompt_words(s)))  # noqa: E731
    model = PlantedRecall(len(tok), {prompt(s): encode_words(tok, father[s.subject].split()) for s in held})
    sb = evaluate(model, facts, ["reverse_held_out"], tokenizer=tok)["reverse_held_out"]
    m = len(facts.candidates("child_of"))
    assert sb.correct.all() and (sb.rank == 1).all() and (sb.n_valid == 2).all()
    mothers = torch.tensor([" van " not in s.object for s in sb.statements])
    assert mothers.any() and not sb.vocab_correct[mothers].any()  # the mother's own tokens are not the arg max
    metrics = sb.metrics()
    assert math.isclose(metrics["chance_accuracy"], 2 / m) and math.isclose(metrics["chance_mean_rank"], (m + 1) / 3)
    assert math.isclose(metrics["uniform_logprob_candidates"], -math.log(m / 2))
    assert metrics["max_valid_answers"] == 2
    # among the held-out answers (every parent of a held-out child) the planted father still wins
    assert metrics["held_out_answers"]["accuracy"] == 1.0
    # the two statements of a child are one question: the exact test is over the held-out children
    n_children = len({s.subject for s in held})
    assert metrics["n_questions"] == n_children == len(held) // 2
    assert math.isclose(metrics["tests"]["accuracy_above_chance_p"], (2 / m) ** n_children)
    assert metrics["accuracy_ci"] == [clopper_pearson(n_children, n_children).low, 1.0]


def test_length_fair_ranking_and_chunks_match_the_teacher_forced_reference(tmp_path):
    from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for

    torch.manual_seed(0)
    facts = families(tmp_path)
    tok = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tok), tok, device="cpu").eval()
    splits = ["reverse_held_out"]
    whole = evaluate(model, facts, splits, tokenizer=tok)
    chunked = evaluate(model, facts, splits, tokenizer=tok, rows=17)  # chunks that cut through a statement's rows
    for name in splits:
        sb, sc = whole[name], chunked[name]
        for field in ("correct", "rank", "logprob", "logprob_candidates", "vocab_correct", "n_valid"):
            assert torch.allclose(getattr(sb, field).double(), getattr(sc, field).double(), rtol=0, atol=1e-6), field
        assert torch.equal(sb.length_fair.rank, sc.length_fair.rank)
        for i, s in enumerate(sb.statements):
            candidates = facts.candidates(s.relation)
            scores = teacher_forced_candidate_scores(model, facts, s, candidates, tok).double()
            lengths = torch.tensor([len(c.split()) for c in candidates], dtype=torch.double)
            valid = torch.tensor([c in facts.answers(s.subject, s.relation) for c in candidates])
            for kind, score in (("sum", scores), ("length_fair", scores / lengths)):
                best = score[valid].max()
                rank = int(1 + (score[~valid] > best).sum())
                assert (sb.rank if kind == "sum" else sb.length_fair.rank)[i] == rank, (kind, s)
            assert math.isclose(float(sb.logprob_candidates[i]),
                                float(scores[valid].logsumexp(0) - scores.logsumexp(0)), abs_tol=1e-5)
    assert whole["reverse_held_out"].metrics()["length_fair"]["score"] == "mean_token_logprob"


def test_candidates_ranked_a_few_statements_at_a_time_match_all_at_once(tiny_run, monkeypatch):
    """The candidate scores of a relation are held a chunk of statements at a time (memory O(chunk x candidates)):
    three statements per chunk give the ranks of all at once, and the same log-probabilities to a few float32 ulp
    (the unembedding sees as many rows as a chunk has answer positions, one here, and BLAS rounds a one-row product
    differently from a many-row one: 3 ulp at log p = -7.8 measured)."""
    import revinterp.evaluation as ev

    whole = evaluate(tiny_run.model, tiny_run.facts)
    m = len(tiny_run.facts.candidates("->"))
    monkeypatch.setattr(ev, "LOGIT_ELEMENTS", 3 * m)
    chunked = evaluate(tiny_run.model, tiny_run.facts)
    for name in tiny_run.facts.split_names:
        sb, sc = whole[name], chunked[name]
        assert sb.n > 3
        for field in ("correct", "rank", "n_valid", "vocab_correct"):
            assert torch.equal(getattr(sb, field), getattr(sc, field)), (name, field)
        for field in ("logprob", "logprob_candidates"):
            torch.testing.assert_close(getattr(sb, field), getattr(sc, field), rtol=FLOAT32_ULPS, atol=1e-6)
        assert torch.equal(sb.length_fair.rank, sc.length_fair.rank)
        if sb.held_out_answers is not None:
            assert torch.equal(sb.held_out_answers.rank, sc.held_out_answers.rank)


def test_over_seeds_gives_every_seed_and_a_t_interval(tiny_run):
    from dataclasses import replace

    from scipy.stats import t

    from revinterp.evaluation import Behaviour, over_seeds

    sb = evaluate(tiny_run.model, tiny_run.facts, ["reverse_held_out"])["reverse_held_out"]
    hits = [torch.arange(sb.n) < k for k in (0, 2, 3)]  # three "seeds" with 0, 2 and 3 hits planted
    behaviours = [Behaviour({"reverse_held_out": replace(sb, correct=h)}) for h in hits]
    summary = over_seeds(behaviours, ["accuracy", "held_out_answers.n_candidates"])["reverse_held_out"]
    acc = summary["accuracy"]
    values = [k / sb.n for k in (0, 2, 3)]
    assert acc.values == tuple(values) and acc.n == 3 and acc.method == "student_t_over_seeds"
    sd = torch.tensor(values, dtype=torch.float64).std().item()
    low, high = t.interval(0.95, 2, loc=sum(values) / 3, scale=sd / 3 ** 0.5)
    assert math.isclose(acc.low, low) and math.isclose(acc.high, high)
    assert acc.to_dict()["values"] == values and acc.to_dict()["method"] == "student_t_over_seeds"
    assert summary["held_out_answers.n_candidates"].low == summary["held_out_answers.n_candidates"].mean  # sd 0
    one = over_seeds(behaviours[:1], ["accuracy"])["reverse_held_out"]["accuracy"]
    assert math.isnan(one.low) and one.to_dict()["ci_low"] is None  # one seed: no interval


def test_progress_bar_only_when_asked(tiny_run, capsys):
    evaluate(tiny_run, splits=["forward_seen"])
    assert capsys.readouterr().err == ""
    evaluate(tiny_run, splits=["forward_seen"], progress=True)
    assert "evaluating" in capsys.readouterr().err


def full_logits_reference(model, tokens, answer_mask):
    """Reference: log p(answer) from the full logits of every position, and the greedy check, by hand."""
    with torch.no_grad():
        logp = model(tokens).log_softmax(-1)[:, :-1]
    target, mask = tokens[:, 1:], answer_mask[:, 1:]
    token_logp = logp.gather(-1, target[..., None])[..., 0]
    top = (logp.argmax(-1) == target) | ~mask
    return torch.where(mask, token_logp, 0.0).sum(-1), top.all(-1)


def test_read_at_reads_the_full_forwards_logits_at_the_requested_positions(tiny_run):
    """The bridge and the plain NativeModel give the full forward's normalizer, arg max, target and column logits
    at the requested positions without running their unembedding; a model without a known unembedding (a wrapper)
    and a bridge whose unembedding carries a caller's hook run in full (the hook sees the logits)."""
    from revinterp.evaluation import VocabularyReadout, read_at, unembedding_module
    from revinterp.training import plain_model

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens):
            return self.inner(tokens)

    model = tiny_run.model
    vocab = model.cfg.d_vocab
    tokens = torch.randint(0, vocab, (6, 4), generator=torch.Generator().manual_seed(0))
    rows, positions = torch.tensor([0, 1, 2, 5, 5, 3]), torch.tensor([2, 2, 0, 1, 3, 2])
    targets, columns = torch.tensor([3, 0, vocab - 1, 7, 7, 1]), torch.tensor([9, 2, 2, vocab - 1, 0])
    for candidate in (model, plain_model(model), Wrapped(model)):
        module = unembedding_module(candidate)
        calls = []
        hook = None if module is None else module.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        readout = None if module is None else VocabularyReadout(module.original_component.weight
                                                                if hasattr(module, "original_component")
                                                                else module.weight)
        with torch.no_grad():
            got = read_at(candidate, tokens, rows, positions, readout=readout, targets=targets, columns=columns)
            expected = candidate(tokens)[rows, positions]
        if hook is not None:
            hook.remove()
            assert calls == [1], "the unembedding ran inside read_at"  # the one call is the reference forward
        name = type(candidate).__name__
        torch.testing.assert_close(got.logsumexp, expected.logsumexp(-1), rtol=FLOAT32_ULPS, atol=1e-6, msg=name)
        assert torch.equal(got.argmax, expected.argmax(-1)), name
        torch.testing.assert_close(got.target_logit, expected[torch.arange(len(rows)), targets], rtol=FLOAT32_ULPS,
                                   atol=1e-6, msg=name)
        torch.testing.assert_close(got.column_logits, expected[:, columns], rtol=FLOAT32_ULPS, atol=1e-6, msg=name)

    assert VocabularyReadout.of(Wrapped(model)) is None
    seen = []
    with model.hooks(fwd_hooks=[("unembed.hook_out", lambda logits, hook: seen.append(logits.shape))]):
        assert VocabularyReadout.of(model) is None  # a caller's hook on the unembedding must see its logits
        with torch.no_grad():
            read_at(model, tokens, rows, positions, readout=VocabularyReadout.of(model))
    assert seen == [(6, 4, vocab)]
    assert VocabularyReadout.of(model) is not None


@pytest.mark.parametrize("rows_per_block, block", [(256, 1 << 18), (2, 6), (3, 1)])
def test_vocabulary_readout_equals_the_whole_rows_definition(monkeypatch, rows_per_block, block):
    """Blocks of every shape (one block; 2 rows x 3 columns; one column at a time) give torch's logsumexp, its
    argmax (the first of tied maxima), the target and column logits of whole rows; rows holding NaN, +inf, all
    -inf, and values far below the maximum (under EXP_FLOOR) keep torch's results."""
    import revinterp.evaluation as ev

    monkeypatch.setattr(ev, "READOUT_ROWS", rows_per_block)
    monkeypatch.setattr(ev, "VOCABULARY_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 11, generator=g) * 3
    logits[1, [2, 7, 9]] = 50.0  # tied maxima in different blocks: the first is the arg max
    logits[2, 4] = math.nan
    logits[3, 5] = math.inf
    logits[4] = -math.inf
    logits[5, :5] = -300.0  # exp under the floor
    logits[6, 3] = -math.inf
    targets = torch.tensor([0, 9, 4, 5, 1, 10, 3, 2, 8])
    columns = torch.tensor([10, 0, 3, 3, 7])  # unsorted, with a repeat
    got = ev.VocabularyReadout(None).read(logits.clone(), targets=targets, columns=columns)
    finite_rows = [0, 1, 5, 6, 7, 8]
    torch.testing.assert_close(got.logsumexp, logits.logsumexp(-1), rtol=FLOAT32_ULPS, atol=0, equal_nan=True)
    assert torch.isnan(got.logsumexp[2]) and got.logsumexp[3] == math.inf and got.logsumexp[4] == -math.inf
    assert torch.equal(got.argmax[finite_rows], logits[finite_rows].argmax(-1))
    assert got.argmax[1] == 2
    exactly = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got.target_logit, logits[torch.arange(9), targets], **exactly)
    torch.testing.assert_close(got.column_logits, logits[:, columns], **exactly)

    weight, x = torch.randn(11, 5, generator=g), torch.randn(9, 5, generator=g)
    bias = torch.randn(11, generator=g)
    got = ev.VocabularyReadout(weight, bias).read(x, targets=targets, columns=columns)
    full = torch.nn.functional.linear(x, weight, bias)
    torch.testing.assert_close(got.logsumexp, full.logsumexp(-1), rtol=FLOAT32_ULPS, atol=1e-6)
    torch.testing.assert_close(got.column_logits, full[:, columns], rtol=FLOAT32_ULPS, atol=1e-6)
    assert torch.equal(got.argmax, full.argmax(-1))
    wide = ev.VocabularyReadout(weight.double(), bias.double()).read(x.double(), targets=targets)  # float64 kept
    assert wide.logsumexp.dtype == wide.target_logit.dtype == torch.float64
    torch.testing.assert_close(wide.logsumexp, full.double().logsumexp(-1), rtol=1e-6, atol=0)  # inputs were float32
    torch.testing.assert_close(wide.logsumexp, torch.nn.functional.linear(x.double(), weight.double(), bias.double())
                               .logsumexp(-1), rtol=1e-13, atol=0)


def test_logsumexp_rows_equals_torch_on_every_kind_of_row():
    from revinterp.evaluation import EXP_FLOOR, logsumexp_rows

    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1)) * 20
    x[1, 3] = math.nan
    x[2, 0] = math.inf
    x[3] = -math.inf
    x[4, 1:] = EXP_FLOOR * 3  # everything but the maximum under the floor
    x[5, ::2] = -math.inf
    reference = x.logsumexp(-1)
    torch.testing.assert_close(logsumexp_rows(x), reference, rtol=FLOAT32_ULPS, atol=0, equal_nan=True)
    kept = x.clone()
    torch.testing.assert_close(logsumexp_rows(kept, kept.amax(-1), overwrite=True), reference, rtol=FLOAT32_ULPS,
                               atol=0, equal_nan=True)
    finite = x[[0, 4, 5]].clone()
    torch.testing.assert_close(logsumexp_rows(finite, overwrite=True), reference[[0, 4, 5]], rtol=FLOAT32_ULPS,
                               atol=0)


def test_teacher_forced_scores_equal_the_full_logits_on_multi_token_answers(tmp_path):
    """Two-token entities, chunks that cut through the rows: the scores from the answer positions alone equal the
    full forward's log-softmax, summed by hand, within 1e-6; the greedy check agrees row by row."""
    from revinterp.data import seed_experiment
    from revinterp.evaluation import teacher_forced_scores
    from revinterp.models import MODEL_PRESETS, build_model, config_for_data, tokenizer_for

    facts = seed_experiment(20, tokens_per_entity=2, seed=2)
    tok = tokenizer_for(facts)
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tok), tok, device="cpu").eval()
    encoded = encode_statements(facts, facts.statements, tok)
    reference, greedy_reference = full_logits_reference(model, encoded.tokens, encoded.answer_mask)
    assert int(encoded.answer_lengths.min()) == 2
    for rows in (None, 7):
        with torch.no_grad():
            logprob, greedy = teacher_forced_scores(model, encoded.tokens, encoded.answer_mask, rows=rows)
        assert (logprob - reference).abs().max().item() <= 1e-6
        assert torch.equal(greedy, greedy_reference)


def test_rank_among_equals_its_definition_with_nan_infinities_and_ties():
    """rank = 1 + #{invalid c: score(c) > best valid score, or score(c) NaN}; a best valid score that is NaN-only or
    infinite ranks M - k + 2; logprob = log of the valid answers' softmax mass (NaN where a valid score is NaN)."""
    from revinterp.evaluation import rank_among

    gen = torch.Generator().manual_seed(0)
    n, m = 400, 9
    scores = torch.randint(-3, 3, (n, m), generator=gen).float()  # many ties
    pick = torch.rand(n, m, generator=gen)
    scores[pick < 0.08] = math.nan
    scores[(pick >= 0.08) & (pick < 0.12)] = -math.inf
    scores[(pick >= 0.12) & (pick < 0.14)] = math.inf
    scores[:n // 2] = scores[:n // 2].nan_to_num(nan=0.5, posinf=9.0, neginf=-9.0)  # half without NaN or infinity
    valid = torch.rand(n, m, generator=gen) < 0.25
    valid[torch.arange(n), torch.randint(m, (n,), generator=gen)] = True
    got = rank_among(scores, valid)
    for i in range(n):
        s, v = scores[i].tolist(), valid[i].tolist()
        valid_scores = [x for x, ok in zip(s, v) if ok and not math.isnan(x)]
        best = max(valid_scores, default=-math.inf)
        k = sum(v)
        if math.isfinite(best):
            rank = 1 + sum(1 for x, ok in zip(s, v) if not ok and (math.isnan(x) or x > best))
        else:
            rank = m - k + 2
        assert int(got.rank[i]) == rank and bool(got.correct[i]) == (rank == 1), i
        assert int(got.n_valid[i]) == k and int(got.n_candidates[i]) == m
        expected = (torch.tensor(s)[torch.tensor(v)].logsumexp(0) - torch.tensor(s).logsumexp(0)).item()
        assert (math.isnan(expected) and math.isnan(float(got.logprob_candidates[i]))) or \
            float(got.logprob_candidates[i]) == pytest.approx(expected, abs=1e-6, nan_ok=True), i
