"""What exactly is missing on a held-out reverse prompt: the routing, or only the stored entry?

One verdict per split from three lines of evidence (:mod:`revinterp.analysis.storage`,
:mod:`revinterp.analysis.edit`), each with its positive control on seen reverse statements:

- **routing**: the storage heads' attention from the answer position to the subject on the split, against the
  seen-reverse attention (per statement: attention minus the seen mean; TOST against a margin of 0.1, i.e. ten
  points of attention). Control: seen-reverse attention above 0.25 (the storage heads do read the subject where
  the answer is known).
- **entry**: the storage heads' summed entry effect on the split (TOST against 5 % of the seen-reverse mean entry).
  Control: the seen-reverse entry is different from zero.
- **insertion** (held-out split only): the causal test of :func:`~revinterp.analysis.edit.insert_missing_entries`:
  held-out accuracy restored with the placebo not; and the margin change, edit against placebo. Control: forward and
  seen-reverse accuracy after the edit stay within their before intervals.

A line whose control fails says "inconclusive" and does not vote. Verdicts: "routing and entry present", "only the
entry is missing" (routing equivalent to seen, entry equivalent to zero), "routing missing" (attention differs from
the seen one and is lower), "undetermined".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from revinterp.analysis.edit import EditResult, insert_missing_entries
from revinterp.analysis.storage import Storage, storage
from revinterp.models import unpack_run
from revinterp.stats import Equivalence, equivalence_test

VERDICT_SPLITS = ("forward_seen", "reverse_seen", "reverse_held_out")
ROUTING_MARGIN = 0.1
ENTRY_MARGIN_FRACTION = 0.05

__all__ = ["MissingEntryResult", "what_is_missing"]


@dataclass(frozen=True)
class MissingEntryResult:
    """Per split: the routing and entry tests and a verdict; the storage analysis and the insertion test."""

    storage: Storage
    edit: EditResult | None
    routing: dict[str, Equivalence]
    entry: dict[str, Equivalence]
    attention: dict[str, float]
    entry_mean: dict[str, float]
    controls: dict[str, bool]
    verdicts: dict[str, str]

    def to_numbers(self) -> dict:
        """Plain JSON-able numbers (no NaN): per split the mean attention of the storage heads to the subject, the
        routing TOST (attention minus the seen-reverse mean), the summed entry and its TOST against zero, the verdict;
        the controls; the insertion test's accuracies (Clopper-Pearson) and margins per group."""
        out = {"storage_heads": [f"L{a}H{b}" for a, b in self.storage.storage_heads], "controls": self.controls,
               "routing_margin": ROUTING_MARGIN, "entry_margin_fraction": ENTRY_MARGIN_FRACTION, "splits": {}}
        for split in self.verdicts:
            out["splits"][split] = {"attention_to_subject": self.attention[split],
                                    "routing_tost": self.routing[split].to_dict(),
                                    "entry": self.entry_mean[split], "entry_tost": self.entry[split].to_dict(),
                                    "verdict": self.verdicts[split]}
        if self.edit is not None:
            out["insertion"] = self.edit.to_numbers()
        return _finite(out)

    def summary(self) -> str:
        lines = ["What is missing? storage heads: " + (", ".join(f"L{a}H{b}" for a, b in self.storage.storage_heads)
                                                     or "none")]
        for split, verdict in self.verdicts.items():
            lines.append(f"  {split:<18} attention to subject {self.attention[split]:.2f}; entry "
                         f"{self.entry_mean[split]:.3g}; routing vs seen: {self.routing[split].verdict}; entry vs "
                         f"zero: {self.entry[split].verdict} -> {verdict}")
        lines.append("  controls: " + ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in self.controls.items()))
        if self.edit is not None:
            lines.append(self.edit.summary())
        return "\n".join(lines)

    def figures(self) -> dict:
        figs = {"storage": self.storage.plot()}
        if self.edit is not None:
            figs["insertion"] = self.edit.plot()
        return figs


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not torch.isfinite(torch.tensor(x)):
        return None
    return x


def what_is_missing(model_or_run, facts=None, *, tokenizer=None, seed: int = 0) -> MissingEntryResult:
    """The routing-versus-storage verdict per split (see the module docstring).

    Example:
        >>> print(what_is_missing(run).summary())          # doctest: +SKIP
    """
    model, facts, tokenizer = unpack_run(model_or_run, facts, tokenizer)
    found = storage(model, facts, tokenizer=tokenizer)
    heads = found.storage_heads
    if not heads:
        raise ValueError("what_is_missing: no storage head (no head's reverse_seen entries lie above zero); the "
                         "analysis needs one to test routing and entries")
    splits = [s for s in VERDICT_SPLITS if s in found.splits]

    def attention(split):  # mean over the storage heads, per statement
        return torch.stack([found.splits[split].attention[a, b] for a, b in heads]).mean(0).double()

    def entry(split):  # summed over the storage heads, per statement
        return torch.stack([found.splits[split].effect[a, b] for a, b in heads]).sum(0).double()

    seen_attention, seen_entry = attention("reverse_seen").mean().item(), entry("reverse_seen")
    entry_margin = max(ENTRY_MARGIN_FRACTION * abs(seen_entry.mean().item()), 1e-6)
    routing, entries, att_mean, entry_mean = {}, {}, {}, {}
    for split in splits:
        a, e = attention(split), entry(split)
        routing[split] = equivalence_test(a - seen_attention if a.numel() > 1 else torch.cat([a, a]) - seen_attention,
                                          ROUTING_MARGIN)
        entries[split] = equivalence_test(e if e.numel() > 1 else torch.cat([e, e]), entry_margin)
        att_mean[split], entry_mean[split] = a.mean().item(), e.mean().item()
    seen_differs = entries["reverse_seen"].verdict == "different from zero"
    controls = {"routing (seen-reverse attention > 0.25)": seen_attention > 0.25,
                "entry (seen-reverse entry differs from zero)": seen_differs}
    edit = None
    if "reverse_held_out" in splits and len(facts.split("reverse_held_out")) >= 2:
        edit = insert_missing_entries(model, facts, heads=list(heads), tokenizer=tokenizer, seed=seed)
        keeps = all(edit.groups[g].accuracy("after").mean >= edit.groups[g].accuracy("before").low
                    for g in ("forward", "reverse_seen") if g in edit.groups)
        controls["insertion specificity (seen accuracy kept)"] = keeps
    verdicts = {}
    for split in splits:
        if not all(v for k, v in controls.items() if not k.startswith("insertion")):
            verdicts[split] = "inconclusive (a positive control failed)"
            continue
        r, e = routing[split].verdict, entries[split].verdict
        if r == "different from zero" and att_mean[split] < seen_attention:
            verdicts[split] = "routing missing"
        elif r == "equivalent to zero" and e == "equivalent to zero":
            verdicts[split] = "only the entry is missing"
        elif (r == "equivalent to zero" or att_mean[split] > seen_attention) and e == "different from zero" \
                and entry_mean[split] > 0:
            verdicts[split] = "routing and entry present"
        else:
            verdicts[split] = "undetermined"
        if split == "reverse_held_out" and edit is not None:
            verdicts[split] += ("; inserting it restores the answer" if edit.restored else
                                "; inserting it does not restore the answer (something besides the entry is missing)")
    return MissingEntryResult(storage=found, edit=edit, routing=routing, entry=entries, attention=att_mean,
                              entry_mean=entry_mean, controls=controls, verdicts=verdicts)
