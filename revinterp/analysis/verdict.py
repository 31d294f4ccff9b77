"""The verdict of a run: does a reverse path exist on the held-out split, and which causes does the evidence support?

Computed from the numbers the other stages saved (:mod:`revinterp.pipeline`), never from fixed conclusions. Every
line of evidence asks "is there a path for the held-out direction?" and carries its positive control, the same
measurement on the seen (trained) reverse statements, where the answer is known to be there:

======================  =========================================================  ===================================
line                    finding on the held-out split                              positive control (seen split)
======================  =========================================================  ===================================
behaviour               accuracy among the candidates against chance               seen accuracy above chance
interventions           total effect of swapping the subject (logit difference)    seen effect differs from zero, > 0
effective weights       end-to-end entry ``Y[subject, answer]`` above baseline     seen entry differs from zero, > 0
probes                  the answer's identity read at the selected site            its cross-validated accuracy on
                        (chosen on cross-validation over seen pairs)               seen pairs above chance
interchange             a seen-fitted subspace moves the answer to the source's    the same on seen pairs, above chance
what is missing         routing and stored entry of the storage heads              its own controls (attention, entry)
======================  =========================================================  ===================================

Each line says ``"present"``, ``"absent"`` or ``"undetermined"``; a line whose positive control fails says
``"inconclusive"`` and does not vote, and one that could not run says ``"not run"``. Absence is a claim of
equivalence (../shared/SCIENCE.md):

- effects (interventions, effective weights): two one-sided t-tests (:func:`revinterp.stats.equivalence_test`) against
  a margin of :data:`MARGIN_FRACTION` of the seen effect; "present" when the effect differs from zero upwards;
- proportions (behaviour, probes, interchange) with hits ``k`` of ``n`` at chance ``c``: "present" when the exact
  one-sided binomial test rejects ``p <= c`` at :data:`ALPHA`; "absent" when the one-sided ``1 - ALPHA``
  Clopper-Pearson upper limit lies below ``c + MARGIN_FRACTION * (seen - c)`` (the held-out proportion is within 5 %
  of the seen one's distance from chance, or below chance); "undetermined" otherwise, with the number of questions
  that zero hits would need.

The reverse path is "present" or "absent" when every voting line agrees, else "inconclusive" (no line votes, or the
lines disagree). The causes then follow the starvation diagnostic (:mod:`revinterp.analysis.starvation`) of the
held-out questions, per side: the subject's input embedding (ever an input in training?) and the answer's
unembedding (ever a training target?). With the path absent, a starved side is a sufficient cause ("input starvation",
"answer starvation"); with both sides fed, the remaining cause is "a learned asymmetry"; a starved side leaves it
untestable in that cell. Caveats (unfitted trained splits, lexical overlap between subjects and answers from
:mod:`revinterp.analysis.overlap`) are listed with the numbers that raised them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ALPHA = 0.05
MARGIN_FRACTION = 0.05
"""Absence margin: 5 % of the same quantity on seen statements (its distance from chance for proportions)."""
FIT_ACCURACY, FIT_PROBABILITY = 1.0, 0.99
PRESENT, ABSENT, UNDETERMINED, INCONCLUSIVE, NOT_RUN = "present", "absent", "undetermined", "inconclusive", "not run"
COUNTERPARTS = {"reverse_held_out": ("reverse_seen", "reverse_only"), "forward_held_out": ("forward_seen",),
                "chain_composed_held_out": ("chain_composed_seen",)}
"""The seen split whose behaviour is the positive control of each held-out split (the first present)."""

__all__ = ["Line", "Verdict", "p_text", "proportion_finding", "question_hits", "verdict"]


@dataclass(frozen=True)
class Line:
    """One line of evidence: its finding on the held-out split, its positive control, and the numbers behind both."""

    name: str
    finding: str
    control: str  # "pass", "fail" or "n/a" (not run)
    evidence: str
    control_evidence: str

    @property
    def votes(self) -> bool:
        return self.control == "pass" and self.finding in (PRESENT, ABSENT)


@dataclass(frozen=True)
class Verdict:
    """The run's verdict on its held-out split (see the module docstring)."""

    split: str
    reverse_path: str
    causes: tuple[str, ...]
    input_side: str  # "starved", "partly starved", "fed" or "unknown"
    answer_side: str
    starvation: dict
    lines: tuple[Line, ...]
    caveats: tuple[str, ...]
    statement: str

    def to_numbers(self) -> dict:
        return {"split": self.split, "reverse_path": self.reverse_path, "causes": list(self.causes),
                "input_side": self.input_side, "answer_side": self.answer_side, "starvation": self.starvation,
                "lines": [{**asdict(line), "votes": line.votes} for line in self.lines],
                "caveats": list(self.caveats), "statement": self.statement,
                "alpha": ALPHA, "margin_fraction": MARGIN_FRACTION}

    def summary(self) -> str:
        rows = [f"Verdict on {self.split}: {self.statement}"]
        for line in self.lines:
            rows.append(f"  {line.name:<18} {line.finding:<13} (control {line.control}) {line.evidence}"
                        + (f"; control: {line.control_evidence}" if line.control_evidence else ""))
        rows += [f"  caveat: {c}" for c in self.caveats]
        return "\n".join(rows)


def proportion_finding(hits: int, n: int, chance: float, seen: float) -> tuple[str, str]:
    """``(finding, evidence)`` for ``hits`` of ``n`` at ``chance``, against the seen proportion ``seen``."""
    from scipy.stats import beta

    p_above = _p_above(hits, n, chance)
    upper = 1.0 if hits == n else float(beta.ppf(1 - ALPHA, hits + 1, n - hits))
    bound = chance + MARGIN_FRACTION * max(seen - chance, 0.0)
    text = (f"{hits}/{n} = {100 * hits / n:.1f} % against chance {100 * chance:.2f} % (one-sided p = {p_above:.2g}; "
            f"{100 * (1 - ALPHA):.0f} % upper limit {100 * upper:.1f} % against the absence bound {100 * bound:.2f} %)")
    if p_above < ALPHA:
        return PRESENT, text
    if upper < bound:
        return ABSENT, text
    needed = math.ceil(math.log(ALPHA) / math.log(1 - bound)) if 0 < bound < 1 else None
    return UNDETERMINED, text + (f"; even zero hits would need n >= {needed}" if needed and needed > n else "")


def _p_above(hits: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value of ``hits`` or more of ``n`` at ``chance``."""
    from scipy.stats import binomtest

    return float(binomtest(hits, n, chance, alternative="greater").pvalue)


def _above_chance(hits: int, n: int, chance: float) -> tuple[bool, str]:
    p = _p_above(hits, n, chance)
    return p < ALPHA, f"{hits}/{n} against chance {100 * chance:.2f} % (one-sided p = {p:.2g})"


def _effect_line(name: str, held: dict | None, seen: dict | None, unit: str) -> Line:
    """A line from two saved TOST results (:meth:`revinterp.stats.Equivalence.to_dict`): held-out and seen."""
    if held is None or seen is None:
        return Line(name, NOT_RUN, "n/a", "no equivalence test was saved for this split", "")
    passed = seen["differs_from_zero"] and seen["mean"] > 0
    control = (f"seen {unit} {seen['mean']:.3g} [{seen['low']:.3g}, {seen['high']:.3g}], "
               + ("differs from zero" if seen["differs_from_zero"] else "not shown to differ from zero"))
    evidence = (f"{unit} {held['mean']:.3g} [{held['low']:.3g}, {held['high']:.3g}] against a margin of "
                f"+-{held['margin']:.3g} ({held['verdict']}, TOST p = {held['p_equivalence']:.2g}, n = {held['n']})")
    if held["verdict"] == "equivalent to zero":
        finding = ABSENT
    elif held["differs_from_zero"] and held["mean"] > 0:
        finding = PRESENT
    else:
        finding = UNDETERMINED
        if held["verdict"] == "undetermined":
            evidence += f"; about {held['n_needed']} pairs would be needed"
    return Line(name, finding if passed else INCONCLUSIVE, "pass" if passed else "fail", evidence, control)


def _skipped(part: dict) -> bool:
    return not isinstance(part, dict) or "skipped" in part


def question_hits(metrics: dict) -> tuple[int, int]:
    """``(hits, questions)`` of a split's saved metrics: accuracy is over distinct questions (a question with several
    valid answers counts once, :mod:`revinterp.evaluation`)."""
    n = metrics.get("n_questions", metrics["n"])
    return round(metrics["accuracy"] * n), n


def behaviour_line(behaviour: dict, split: str) -> Line:
    splits = behaviour["splits"]
    m = splits[split]
    seen_name = next((s for s in COUNTERPARTS.get(split, ()) if s in splits), None)
    hits, n = question_hits(m)
    if seen_name is None:
        return Line("behaviour", INCONCLUSIVE, "fail", f"{hits}/{n} correct",
                    "no seen counterpart split to show that accuracy detects a known path")
    s = splits[seen_name]
    passed, control = _above_chance(*question_hits(s), s["chance_accuracy"])
    finding, evidence = proportion_finding(hits, n, m["chance_accuracy"], s["accuracy"])
    among = m.get("held_out_answers")
    if among:
        evidence += (f"; among the {among['n_candidates']} held-out answers only: {100 * among['accuracy']:.1f} % "
                     f"against chance {100 * among['chance_accuracy']:.1f} % (one-sided p = "
                     f"{among['accuracy_above_chance_p']:.2g})")
        if finding == ABSENT and among["accuracy_above_chance_p"] < ALPHA:
            finding, evidence = UNDETERMINED, evidence + ": above chance there, so absence is not shown"
    tests = m.get("tests")
    if tests:
        evidence += (f"; rank worse than chance p = {p_text(tests['rank_below_chance_p'])}, log-probability below "
                     f"uniform p = {p_text(tests['logprob_below_chance_p'])}")
    return Line("behaviour", finding if passed else INCONCLUSIVE, "pass" if passed else "fail", evidence,
                f"{seen_name} " + control)


def interventions_line(reverse: dict, split: str) -> Line:
    found = reverse.get("interventions", {})
    if _skipped(found) or split not in found.get("per_split", {}) or not found.get("seen"):
        return Line("interventions", NOT_RUN, "n/a", _why(found, "no held-out and seen reverse prompt pairs"), "")
    per = found["per_split"]
    return _effect_line("interventions", per[split].get("equivalence"), per[found["seen"]].get("equivalence"),
                        "effect of swapping the subject on the logit difference")


def weights_line(reverse: dict, split: str, seen_split: str) -> Line:
    found = reverse.get("weights", {})
    eq = {} if _skipped(found) else found.get("equivalence", {})
    if split not in eq or seen_split not in eq:
        return Line("effective weights", NOT_RUN, "n/a", _why(found, "no equivalence test for these splits"), "")
    return _effect_line("effective weights", eq[split], eq[seen_split], "end-to-end entry above its baseline")


def probes_line(reverse: dict) -> Line:
    found = reverse.get("probes", {})
    if _skipped(found):
        return Line("probes", NOT_RUN, "n/a", _why(found, "not run"), "")
    selected = found.get("selected")
    if selected is None:
        return Line("probes", INCONCLUSIVE, "fail", f"no site of {found['n_sites']} is selective",
                    f"selectivity at most {found['max_selectivity']:.3g} (task minus control task, cross-validated)")
    passed, control = _above_chance(selected["cross_val_hits"], selected["n_cross_val"], selected["chance"])
    finding, evidence = proportion_finding(selected["test_hits"], selected["n_test"], selected["chance"],
                                           selected["cross_val_accuracy"])
    where = f"{selected['layer']} at {selected['position_label']} (selectivity {selected['selectivity']:.3g}): "
    return Line("probes", finding if passed else INCONCLUSIVE, "pass" if passed else "fail", where + evidence,
                "cross-validated on seen pairs " + control)


def interchange_line(reverse: dict) -> Line:
    found = reverse.get("interchange", {})
    if _skipped(found):
        return Line("interchange", NOT_RUN, "n/a", _why(found, "not run"), "")
    rows = {(r["set"], r["intervention"]): r for r in found["rows"]}
    seen, held = rows.get(("seen", "subspace")), rows.get(("held_out", "subspace"))
    if seen is None or held is None:
        return Line("interchange", NOT_RUN, "n/a", "no seen or no held-out interchange pairs", "")
    passed, control = _above_chance(seen["hits"], seen["n"], seen["chance"])
    for name in ("placebo", "random"):
        if ("seen", name) in rows and rows["seen", name]["hits"] >= seen["hits"]:
            passed, control = False, control + f"; the {name} moves as many ({rows['seen', name]['hits']})"
    finding, evidence = proportion_finding(held["hits"], held["n"], held["chance"], seen["interchange_accuracy"])
    return Line("interchange", finding if passed else INCONCLUSIVE, "pass" if passed else "fail", evidence,
                "seen pairs " + control)


def missing_line(missing: dict, split: str) -> Line:
    found = missing.get("verdict", {})
    if _skipped(found) or split not in found.get("splits", {}):
        return Line("what is missing", NOT_RUN, "n/a", _why(found, f"{split} not analysed"), "")
    failed = [k for k, ok in found["controls"].items() if not ok and not k.startswith("insertion")]
    said = found["splits"][split]["verdict"]
    finding = next((f for prefix, f in (("routing and entry present", PRESENT), ("only the entry is missing", ABSENT),
                                         ("routing missing", ABSENT)) if said.startswith(prefix)), UNDETERMINED)
    control = "all pass" if not failed else "failed: " + ", ".join(failed)
    return Line("what is missing", INCONCLUSIVE if failed else finding, "fail" if failed else "pass",
                f"storage heads {', '.join(found['storage_heads'])}: {said}", control)


def p_text(p: float | None) -> str:
    """A p-value, or "n/a" where its test is undefined (too few questions, or no spread)."""
    return "n/a" if p is None else f"{p:.2g}"


def _why(part, default: str) -> str:
    return part["skipped"]["reason"] if isinstance(part, dict) and "skipped" in part else default


def _side(starved: int, n: int) -> str:
    return "unknown" if n == 0 else "starved" if starved == n else "partly starved" if starved else "fed"


def fit_caveats(behaviour: dict) -> list[str]:
    out = []
    for name, m in behaviour["splits"].items():
        if m["trained"] and (m["accuracy"] < FIT_ACCURACY or m["probability"] < FIT_PROBABILITY):
            out.append(f"{name} is not fitted (accuracy {100 * m['accuracy']:.1f} %, mean p(answer) "
                       f"{m['probability']:.3f}; criterion 100 % and {FIT_PROBABILITY})")
    return out


def verdict(numbers: dict[str, dict]) -> Verdict:
    """The verdict from the saved numbers of the stages (``{"behaviour": ..., "reverse": ..., "missing": ...}``).

    Raises:
        ValueError: when the behaviour has no held-out split to judge.
    """
    behaviour, reverse, missing = numbers["behaviour"], numbers.get("reverse", {}), numbers.get("missing", {})
    split = next((s for s in COUNTERPARTS if s in behaviour["splits"] and behaviour["splits"][s]["n"]), None)
    if split is None:
        raise ValueError(f"no held-out split among {sorted(behaviour['splits'])}; expected one of {list(COUNTERPARTS)}")
    seen_split = next((s for s in COUNTERPARTS[split] if s in behaviour["splits"]), COUNTERPARTS[split][0])
    lines = (behaviour_line(behaviour, split), interventions_line(reverse, split),
             weights_line(reverse, split, seen_split), probes_line(reverse), interchange_line(reverse),
             missing_line(missing, split))
    votes = {line.finding for line in lines if line.votes}
    path = votes.pop() if len(votes) == 1 else INCONCLUSIVE

    starvation = reverse.get("starvation", {})
    known = not _skipped(starvation)
    n = starvation.get("n_held_out", 0) if known else 0
    input_side = _side(starvation.get("n_starved", 0), n)
    answer_side = _side(starvation.get("n_answer_starved", 0), n)
    counts = {"n_held_out": n, "n_input_starved": starvation.get("n_starved"),
              "n_answer_starved": starvation.get("n_answer_starved")} if known else {}
    causes: list[str] = []
    voting = ", ".join(f"{line.name} ({line.finding})" for line in lines if line.votes) or "none"
    if path == ABSENT:
        if input_side in ("starved", "partly starved"):
            causes.append("input starvation")
        if answer_side in ("starved", "partly starved"):
            causes.append("answer starvation")
        if input_side == answer_side == "fed":
            causes.append("a learned asymmetry")
        statement = (f"no path for {split} (voting lines: {voting}); supported cause(s): " + ", ".join(causes or
                     ["unknown (starvation not measured)"]))
        if causes and "a learned asymmetry" not in causes:
            statement += "; a learned asymmetry cannot be tested here, since a starved side alone makes the " \
                         "held-out question impossible"
    elif path == PRESENT:
        statement = f"a path for {split} exists (voting lines: {voting}): no reversal curse on this split"
    else:
        disagree = len({line.finding for line in lines if line.votes}) > 1
        statement = ("inconclusive: " + ("the voting lines disagree: " + voting if disagree
                                         else "no line of evidence passed its positive control and reached a finding"))
    caveats = fit_caveats(behaviour)
    overlap = behaviour.get("overlap")
    if isinstance(overlap, dict) and not _skipped(overlap) and overlap["n_overlap"]:
        with_, without = overlap["accuracy_with_overlap"], overlap["accuracy_without_overlap"]
        caveats.append(
            f"{overlap['n_overlap']} of {overlap['n_questions']} held-out questions share a token between subject "
            f"and answer, which a lexical shortcut can use without any reverse path: accuracy "
            f"{100 * with_['accuracy']:.1f} % with overlap against "
            + (f"{100 * without['accuracy']:.1f} % without" if without else "no question without")
            + (f" (one-sided Fisher exact p = {overlap['shortcut_p']:.2g})" if overlap["shortcut_p"] is not None
               else ""))
    return Verdict(split, path, tuple(causes), input_side, answer_side, counts, lines, tuple(caveats), statement)
