"""The verdict: lines of evidence with positive controls, absence as equivalence, causes per starvation cell."""

from __future__ import annotations

import copy

import pytest

from revinterp.analysis.verdict import ABSENT, INCONCLUSIVE, PRESENT, UNDETERMINED, proportion_finding, verdict


def split(n, hits, chance, trained, probability=None):
    return {"n": n, "accuracy": hits / n, "chance_accuracy": chance, "trained": trained,
            "probability": probability if probability is not None else (0.995 if trained else 0.001)}


def tost(mean, low, high, margin, verdict, differs, n=60):
    return {"verdict": verdict, "mean": mean, "low": low, "high": high, "margin": margin, "p_equivalence": 0.01,
            "p_zero": 0.01 if differs else 0.5, "n": n, "n_needed": 10, "alpha": 0.05, "differs_from_zero": differs}


def numbers(*, held_hits=0, n_held=300, seen_hits=300, starved=(300, 300), held_effect=None, seen_effect=None):
    """Saved stage numbers of a run with 300 held-out reverse questions at chance 0.5 %."""
    held_effect = held_effect or tost(0.1, -0.2, 0.4, 1.25, "equivalent to zero", False)
    seen_effect = seen_effect or tost(25.0, 24.0, 26.0, 1.25, "different from zero", True)
    return {
        "behaviour": {"splits": {"forward_seen": split(300, 300, 0.005, True),
                                 "reverse_seen": split(300, seen_hits, 0.005, True),
                                 "reverse_held_out": split(n_held, held_hits, 0.005, False)}},
        "reverse": {
            "interventions": {"seen": "reverse_seen", "per_split": {
                "reverse_seen": {"equivalence": seen_effect}, "reverse_held_out": {"equivalence": held_effect}}},
            "weights": {"equivalence": {"reverse_seen": seen_effect, "reverse_held_out": held_effect}},
            "probes": {"skipped": {"reason": "not in this test"}},
            "interchange": {"skipped": {"reason": "not in this test"}},
            "starvation": {"n_held_out": 300, "n_starved": starved[0], "n_answer_starved": starved[1]},
        },
        "missing": {"verdict": {"skipped": {"reason": "not in this test"}}},
    }


def test_proportion_finding_claims_absence_only_with_power():
    assert proportion_finding(0, 300, 0.005, 1.0)[0] == ABSENT  # upper limit 1.0 % < 0.5 % + 5 % of 99.5 %
    finding, text = proportion_finding(0, 29, 0.005, 1.0)  # upper limit 9.8 %: zero hits of 29 say little
    assert finding == UNDETERMINED and "n >= 54" in text  # ln 0.05 / ln(1 - 0.05475) = 53.2, rounded up
    assert proportion_finding(10, 29, 0.005, 1.0)[0] == PRESENT


@pytest.mark.parametrize("starved, causes", [
    ((300, 300), ("input starvation", "answer starvation")),
    ((0, 300), ("answer starvation",)),
    ((300, 0), ("input starvation",)),
    ((0, 0), ("a learned asymmetry",)),
    ((12, 0), ("input starvation",)),
])
def test_causes_follow_the_starvation_cell(starved, causes):
    found = verdict(numbers(starved=starved))
    assert found.reverse_path == ABSENT
    assert found.causes == causes
    assert all(line.votes for line in found.lines if line.name in ("behaviour", "interventions", "effective weights"))


def test_a_failed_positive_control_makes_its_line_inconclusive_and_not_vote():
    data = numbers(seen_hits=2)  # seen reverse at chance: accuracy cannot show a known path
    found = verdict(data)
    behaviour = next(line for line in found.lines if line.name == "behaviour")
    assert behaviour.finding == INCONCLUSIVE and behaviour.control == "fail" and not behaviour.votes
    assert found.reverse_path == ABSENT  # the other lines still vote

    failed = copy.deepcopy(data)
    no_effect = tost(0.1, -0.5, 0.7, 1.25, "undetermined", False)
    failed["reverse"]["interventions"]["per_split"]["reverse_seen"]["equivalence"] = no_effect
    failed["reverse"]["weights"]["equivalence"]["reverse_seen"] = no_effect
    found = verdict(failed)
    assert not any(line.votes for line in found.lines)
    assert found.reverse_path == INCONCLUSIVE and found.causes == ()
    assert found.statement.startswith("inconclusive")


def test_lines_that_disagree_give_inconclusive_and_a_present_path_names_no_cause():
    found = verdict(numbers(held_hits=150))  # behaviour says present, the effects say absent
    assert found.reverse_path == INCONCLUSIVE and "disagree" in found.statement
    present = tost(20.0, 19.0, 21.0, 1.25, "different from zero", True)
    found = verdict(numbers(held_hits=150, held_effect=present))
    assert found.reverse_path == PRESENT and found.causes == ()


def test_unfitted_trained_splits_are_a_caveat():
    data = numbers()
    data["behaviour"]["splits"]["forward_seen"] = split(300, 290, 0.005, True, probability=0.9)
    assert any("forward_seen is not fitted" in c for c in verdict(data).caveats)


def test_lexical_overlap_is_a_caveat_with_its_numbers():
    data = numbers()
    data["behaviour"]["overlap"] = {"n_overlap": 12, "n_questions": 300, "shortcut_p": 0.001,
                                    "accuracy_with_overlap": {"accuracy": 0.25, "ci": [0.05, 0.57], "n": 12},
                                    "accuracy_without_overlap": {"accuracy": 0.0, "ci": [0.0, 0.013], "n": 288}}
    caveat = next(c for c in verdict(data).caveats if "share a token" in c)
    assert "12 of 300" in caveat and "25.0 % with overlap against 0.0 % without" in caveat and "p = 0.001" in caveat
