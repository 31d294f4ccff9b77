"""Answer-identity probes: the analysis on the tiny trained run checked against probes computed by hand (the probe
itself is tested on planted signals in test_probing.py)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from revinterp.analysis.probes import ProbeResult, probe_answer_identity
from revinterp.analysis.probing import fit_identity_probe, normalize_targets
from revinterp.data import (
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    REVERSE_HELD_OUT,
    REVERSE_SEEN,
    build_tokenizer,
    chain_experiment,
    encode_statements,
)
from revinterp.data.tokenizer import encode_words
from revinterp.models import MODEL_PRESETS, build_model, config_for_data


# == the analysis on the tiny trained run =========================================================
@pytest.fixture(scope="module")
def reverse_probe(tiny_run) -> ProbeResult:
    # The former defaults (residual stream incl. the final one, unembedding targets), passed explicitly.
    return probe_answer_identity(tiny_run.model, tiny_run.facts, tokenizer=tiny_run.tokenizer, n_shuffles=2,
                                 hook="resid", target="unembed")


def test_reverse_probe_layout_chance_and_statements(reverse_probe, tiny_facts):
    r = reverse_probe
    assert r.depth_labels == ("L0 resid_pre", "final")
    assert r.position_labels == ("<bos>", "subject", "<-")
    assert r.candidates == tuple(tiny_facts.candidates("<-"))
    assert r.chance == pytest.approx(1 / 40)
    assert r.train_statements == tiny_facts.split(REVERSE_SEEN)
    assert r.test_statements == tiny_facts.split(REVERSE_HELD_OUT)
    assert [r.candidates[i] for i in r.test_answers.tolist()] == [s.object for s in r.test_statements]
    n_train, n_test = len(r.train_statements), len(r.test_statements)
    assert r.cross_val_correct.shape == r.train_correct.shape == (2, 3, n_train)
    assert r.test_scores.shape == (2, 3, n_test, 40)
    assert r.control_train_correct.shape == (2, 2, 3, n_train)
    for acc in (r.train_accuracy, r.cross_val_accuracy, r.test_accuracy, r.control_train_accuracy,
                r.control_test_accuracy):
        assert acc.shape == (2, 3) and acc.min() >= 0 and acc.max() <= 1


def test_reverse_probe_scores_equal_a_probe_fitted_by_hand(reverse_probe, tiny_run):
    model, facts, tok = tiny_run.model, tiny_run.facts, tiny_run.tokenizer
    seen, held_out = facts.split(REVERSE_SEEN), facts.split(REVERSE_HELD_OUT)
    candidates = facts.candidates("<-")
    labels = torch.tensor([candidates.index(s.object) for s in seen + held_out])
    ids = torch.tensor([encode_words(tok, [c])[0] for c in candidates])
    targets = normalize_targets(model.W_U.detach().T[ids])
    n = len(seen)
    with torch.no_grad():
        # Layer 0 at the subject: the residual stream is exactly the subject's token plus position embedding.
        subjects = torch.tensor([encode_words(tok, [s.subject])[0] for s in seen + held_out])
        x0 = model.W_E[subjects] + model.W_pos[1]
        # Final residual stream at the relation token, from a cache of the prompts.
        tokens = encode_statements(facts, seen + held_out, tok).tokens[:, :3]
        _, cache = model.run_with_cache(tokens)
        x_final = cache["blocks.0.hook_resid_post"][:, 2]
    for depth, pos, x in ((0, 1, x0), (1, 2, x_final)):
        probe = fit_identity_probe(x[:n], labels[:n], targets, weight_decay=reverse_probe.weight_decay)
        torch.testing.assert_close(reverse_probe.test_scores[depth, pos], probe.scores(x[n:], targets),
                                   rtol=1e-4, atol=1e-4)
        hits = probe.scores(x[:n], targets).argmax(-1) == labels[:n]
        assert torch.equal(reverse_probe.train_correct[depth, pos], hits)
    assert torch.equal(reverse_probe.test_answers, labels[n:])


def test_reverse_probe_reads_the_trained_answer_and_controls_stay_at_chance(reverse_probe):
    r = reverse_probe
    final, relation = r.depth_labels.index("final"), r.position_labels.index("<-")
    # The model answers every seen reverse statement from here, so the probe fits them all ...
    assert r.train_accuracy[final, relation].item() == 1.0
    # ... and decodes seen pairs whose answer class it never saw far above chance (positive control).
    assert r.cross_val_accuracy[final, relation].item() >= 5 * r.chance
    # Shuffled labels: every site, two shuffles, true held-out answers; chance is 1/40.
    assert r.control_test_accuracy.mean().item() <= 0.1
    # <bos> is the same in every prompt: no information, every candidate tied, expected rank (M + 1) / 2.
    bos = r.position_labels.index("<bos>")
    assert not r.train_correct[:, bos].any() and not r.test_correct[:, bos].any()
    assert torch.all(r.test_ranks[:, bos] == (len(r.candidates) + 1) / 2)
    k = r.test_answers.unique().numel()
    assert torch.all(r.test_ranks_within_test[:, bos] == (k + 1) / 2)


def test_forward_probe_decodes_forward_facts_the_model_knows(tiny_run):
    r = probe_answer_identity(tiny_run.model, tiny_run.facts, tokenizer=tiny_run.tokenizer, direction="forward",
                              test_splits=("forward_only",), positions=[-1], layers=[-1], cv_folds=0,
                              hook="resid", target="unembed")
    assert r.depth_labels == ("final",) and r.position_labels == ("->",) and r.positions == (2,)
    assert r.cross_val_correct.shape[-1] == 0
    assert r.train_accuracy.item() == 1.0
    # forward_only facts are trained: their answer B is readable (5 test rows, chance 1/40).
    assert r.test_accuracy.item() >= 0.4


def test_composed_probe_reads_chain_prompts_for_z():
    """On the chain data the default splits are the composed ones, the prompt is ``<bos> x ~>`` and the classes
    are the composed relation's answers (an untrained model: the layout, not the accuracy, is under test)."""
    facts = chain_experiment(12, composed_held_out_fraction=0.5, seed=0)
    tokenizer = build_tokenizer(facts.vocabulary())
    model = build_model(config_for_data(MODEL_PRESETS["tiny"], facts, tokenizer), tokenizer, device="cpu").eval()
    r = probe_answer_identity(model, facts, direction="composed", tokenizer=tokenizer, cv_folds=0)
    assert r.train_statements == facts.split(CHAIN_COMPOSED_SEEN)
    assert r.test_statements == facts.split(CHAIN_COMPOSED_HELD_OUT)
    assert r.position_labels == ("<bos>", "subject", "~>")
    assert r.candidates == tuple(facts.candidates("~>"))
    assert [r.candidates[i] for i in r.test_answers.tolist()] == [s.object for s in r.test_statements]
    with pytest.raises(ValueError, match="direction='reverse'"):
        probe_answer_identity(model, facts, tokenizer=tokenizer, train_splits=(CHAIN_COMPOSED_SEEN,),
                              test_splits=(CHAIN_COMPOSED_HELD_OUT,))


def test_frame_plot_and_summary_agree_with_the_result(reverse_probe):
    r = reverse_probe
    frame = r.to_frame()
    assert len(frame) == 5 * 2 * 3  # five sets, one split each, 2 depths x 3 positions
    row = frame[(frame.set == "test") & (frame.depth == 1) & (frame.position == 2)].iloc[0]
    assert row.accuracy == pytest.approx(r.test_accuracy[1, 2].item())
    assert row.ci_low <= row.accuracy <= row.ci_high and row.chance == pytest.approx(1 / 40)
    row = frame[(frame.set == "control_train") & (frame.depth == 1) & (frame.position == 1)].iloc[0]
    assert row.accuracy == pytest.approx(r.control_train_accuracy[1, 1].item())
    examples = r.to_frame(per_example=True)
    n_train, n_test = len(r.train_statements), len(r.test_statements)
    assert len(examples) == 6 * (2 * n_train + n_test + 2 * n_train + 2 * n_test)
    assert len(r.plot().data) == 5 * 3
    assert "chance 0.025" in r.summary()


def test_a_loaded_run_gives_the_same_probes_as_its_model_and_facts(reverse_probe, tiny_run):
    from_run = probe_answer_identity(tiny_run, n_shuffles=2, hook="resid", target="unembed")
    assert from_run.test_statements == reverse_probe.test_statements
    assert torch.equal(from_run.test_scores, reverse_probe.test_scores)
    assert torch.equal(from_run.cross_val_correct, reverse_probe.cross_val_correct)
    assert torch.equal(from_run.control_test_correct, reverse_probe.control_test_correct)


# == bad input ====================================================================================
def test_model_in_train_mode_is_refused(tiny_run):
    model = copy.deepcopy(tiny_run.model).train()
    with pytest.raises(ValueError, match="eval mode"):
        probe_answer_identity(model, tiny_run.facts, tokenizer=tiny_run.tokenizer)


def test_split_with_one_statement_is_refused(tiny_run):
    facts = tiny_run.facts
    first = facts.split(REVERSE_HELD_OUT)[0]
    thin = replace(facts, statements=tuple(s for s in facts.statements if s.split != REVERSE_HELD_OUT or s == first))
    with pytest.raises(ValueError, match="'reverse_held_out' has 1 statement"):
        probe_answer_identity(tiny_run.model, thin, tokenizer=tiny_run.tokenizer)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(hook="resid_middle"), "hook='resid_middle'.*expected one of"),
    (dict(target="one_hot"), "target='one_hot'"),
    (dict(direction="sideways"), "direction='sideways'"),
    (dict(test_splits=("no_such_split",)), "no_such_split"),
    (dict(test_splits=("forward_only",)), "forward statements.*direction='reverse'"),
    (dict(test_splits=(REVERSE_SEEN,)), "both train and test"),
    (dict(layers=[2], hook="resid"), r"layers=\[2\]"),
    (dict(positions=[3]), r"positions=\[3\]"),
    (dict(cv_folds=1), "cv_folds=1"),
    (dict(weight_decay=0.0), "weight_decay=0.0"),
])
def test_bad_arguments_are_refused(tiny_run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        probe_answer_identity(tiny_run.model, tiny_run.facts, tokenizer=tiny_run.tokenizer, **kwargs)


# == defaults, selectivity and the site chosen on cross-validation ================================
def test_defaults_read_intermediate_sites_with_input_embedding_targets(tiny_run):
    r = probe_answer_identity(tiny_run, cv_folds=0, positions=[1])
    assert r.target == "embed" and r.hook == "sites"
    assert r.depth_labels == ("L0 resid_pre", "L0 attn_out", "L0 mlp_out")  # no final residual stream
    assert r.control_cross_val_correct.shape[-1] == 0
    with pytest.raises(ValueError, match="cross-validation"):
        _ = r.selected_site


def _planted(tiny_run, scale: float = 30.0):
    """A copy of the tiny model whose attention output at the subject of every reverse prompt gets a fixed random
    linear image of the answer's (normalised, centred) input embedding added: the answer's identity is planted at
    ``L0 attn_out`` and nowhere upstream. Hooks: ``hook_embed`` recovers the tokens (an exact row of ``W_E``)."""
    model, facts, tok = copy.deepcopy(tiny_run.model), tiny_run.facts, tiny_run.tokenizer
    candidates = facts.candidates("<-")
    ids = torch.tensor([encode_words(tok, [c])[0] for c in candidates])
    with torch.no_grad():
        codes = normalize_targets(model.W_E.detach()[ids])
        mixing = torch.linalg.qr(torch.randn(codes.shape[1], codes.shape[1],
                                             generator=torch.Generator().manual_seed(7)))[0]
        table = torch.zeros(model.W_E.shape[0], codes.shape[1])
        for s in facts.split(REVERSE_SEEN) + facts.split(REVERSE_HELD_OUT):
            table[encode_words(tok, [s.subject])[0]] = scale * codes[candidates.index(s.object)] @ mixing
        w_e = model.W_E.detach().clone()
    seen = {}

    def grab_tokens(act, hook):
        seen["tokens"] = torch.cdist(act, w_e[None]).argmin(-1)

    def plant(act, hook):
        act = act.clone()
        act[:, 1] += table[seen["tokens"][:, 1]].to(act)
        return act

    model.add_hook("hook_embed", grab_tokens, is_permanent=True)
    model.add_hook("blocks.0.hook_attn_out", plant, is_permanent=True)
    return model


@pytest.fixture(scope="module")
def planted_probe(tiny_run):
    model = _planted(tiny_run)
    try:
        yield probe_answer_identity(model, tiny_run.facts, tokenizer=tiny_run.tokenizer, positions=[1, 2],
                                    n_shuffles=2), model
    finally:
        model.reset_hooks(including_permanent=True)


def test_a_planted_signal_at_an_intermediate_site_is_selective_and_its_control_task_is_not(planted_probe):
    r, _ = planted_probe
    site = r.depth_labels.index("L0 attn_out"), r.position_labels.index("subject")
    upstream = r.depth_labels.index("L0 resid_pre"), r.position_labels.index("subject")
    # The task: seen pairs whose answer class the probe never trained on, decoded among 40 (chance 0.025).
    assert r.cross_val_accuracy[site].item() >= 0.6  # measured 0.79 (28 training classes, 64 dimensions)
    # The control task (consistently relabelled classes, same probe, same folds) stays near chance ...
    assert r.control_cross_val_accuracy[site].item() <= 0.1
    assert r.selectivity[site].item() >= 0.6
    # ... and where nothing was planted nothing is selective: the subject's embedding, the relation token.
    assert r.selectivity[upstream].item() <= 0.1
    assert r.selectivity[:, r.position_labels.index("<-")].max().item() <= 0.15
    chosen = r.selected_site
    assert (chosen.layer, chosen.position_label) == ("L0 attn_out", "subject")
    # The planted code is there for held-out pairs too: exact interval above chance.
    assert chosen.test.low > chosen.chance and chosen.p_value < 1e-3
    assert chosen.test.mean == pytest.approx(r.test_accuracy[site].item())
    frame = r.selectivity_frame()
    assert len(frame) == r.selectivity.numel() and frame.selected.sum() == 1
    row = frame[frame.selected].iloc[0]
    assert (row.layer, row.position_label) == ("L0 attn_out", "subject")
    assert row.test_ci_low == pytest.approx(chosen.test.low) and row.selectivity == pytest.approx(chosen.selectivity)
    numbers = chosen.to_numbers()
    assert numbers["chosen_on"] == "cross_val" and numbers["n_sites"] == r.selectivity.numel()


def test_the_selected_site_does_not_depend_on_the_test_split(planted_probe, tiny_run):
    r, model = planted_probe
    facts = tiny_run.facts
    held_out = facts.split(REVERSE_HELD_OUT)
    objects = [s.object for s in held_out]
    relabelled = {s: replace(s, object=objects[(i + 1) % len(objects)]) for i, s in enumerate(held_out)}
    scrambled = replace(facts, statements=tuple(relabelled.get(s, s) for s in facts.statements))
    other = probe_answer_identity(model, scrambled, tokenizer=tiny_run.tokenizer, positions=[1, 2], n_shuffles=2)
    assert not torch.equal(other.test_answers, r.test_answers)
    assert not torch.equal(other.test_accuracy, r.test_accuracy)  # the test labels matter to the test accuracy ...
    assert torch.equal(other.selectivity, r.selectivity)  # ... and not to the choice
    assert (other.selected_site.depth, other.selected_site.position) == (r.selected_site.depth,
                                                                        r.selected_site.position)
