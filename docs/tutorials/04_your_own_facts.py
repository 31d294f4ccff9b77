# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Bring your own facts
#
# The generators reproduce the seed experiment; your own relational facts come from a CSV or JSONL file with
# one fact per row and the columns `subject, relation, object, inverse` (and, optionally, `split`). This tutorial
# writes a small file shaped like the celebrity child-parent pairs of Berglund et al. (2023), "The Reversal
# Curse": names of several words, two parents per child, several children per parent, and children who share a
# surname with their father. It loads the file, trains the `tiny` model on it, evaluates it with several valid
# answers per question, checks the lexical shortcut through shared surnames, fixes a split by hand, and shows
# what happens with files that cannot be read as facts.

# %%
# ruff: noqa: E402  (a notebook imports where a step first needs something)
import shutil
import tempfile
from pathlib import Path

workdir = Path(tempfile.mkdtemp(prefix="revinterp-tutorial-"))

# %% [markdown]
# ## The file
#
# Each row states one fact and names the inverse relation (`parent_of` -> `child_of`); the inverse must be the
# same on every row of a relation. Entity names may have several words (each word becomes a token). A row may
# state a fact through the inverse (`Bob Ash, child_of, Alice Ash` is the fact `Alice Ash, parent_of, Bob Ash`),
# and exact repeats are merged. A question may have several answers: here every child has two parents and every
# parent two children (`parent_of` and `child_of` are one-to-many).
#
# `celebrity_like` makes such families (we write them to a file, as you would write your own data); half of the
# children carry their father's surname.

# %%
import csv

from revinterp.data import celebrity_like

families = celebrity_like(8, children_per_parent=2, shared_surname_fraction=0.5, seed=0)
rows = [(s.subject, s.relation, s.object, families.relations[s.relation].inverse)
        for s in families.statements if s.direction == "forward"]
rows = [(o, inv, s, r) if i % 5 == 1 else (s, r, o, inv) for i, (s, r, o, inv) in enumerate(rows)]  # some reversed
path = workdir / "families.csv"
with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("subject", "relation", "object", "inverse"))
    writer.writerows(rows)
print("".join(path.read_text().splitlines(keepends=True)[:6]), "...")

# %% [markdown]
# ## Load and split
#
# `load_fact_file` reads the rows and splits the facts as the generators do: 70 % trained in both directions,
# the rest one way with the other direction held out (`both_fraction`, `held_out_direction` and `seed` change
# that). Facts that share a question (a child's two parents, a parent's children) are split together, as one
# family, so a held-out question never has a trained answer, which would count as a correct reply without any
# reverse recall. The relations with several answers per question are detected and listed.

# %%
from revinterp.data import load_fact_file

facts = load_fact_file(path, held_out_direction="forward", seed=0)
print(f"{len(facts.statements)} statements over relations {sorted(facts.relations)}")
print(f"relations with several answers: {facts.source['many_answer_relations']}")
for name in facts.split_names:
    statements = facts.split(name)
    print(f"  {name:<18} {len(statements):>3}, e.g. {facts.text(statements[0])!r}")
child = facts.split("reverse_held_out")[0].subject
print(f"{child!r} child_of -> {facts.answers(child, 'child_of')}")
print(f"answers to 'child_of' questions are chosen among {len(facts.candidates('child_of'))} candidates")

# %% [markdown]
# ## Train and evaluate
#
# Exactly as with generated facts. An answer is scored by the log-probability of all its tokens (teacher
# forcing) among the candidates, every object of the relation in the file. With two valid answers a prediction
# is correct when it is either one; the rank is that of the best valid answer among the invalid candidates, and
# chance is k/M for accuracy and (M + 1)/(k + 1) for the rank.
#
# A question with two answers cannot put probability 0.99 on each, so the fit criterion (every trained answer at
# p >= 0.99) is never met here: we train for a fixed budget of steps instead.

# %%
from dataclasses import replace

from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train

result = train(facts, MODEL_PRESETS["tiny"], replace(TRAINING_PRESETS["tiny"], max_steps=300), workdir / "families",
               device="cpu", progress=False)
print(f"{result.steps} steps")
behaviour = evaluate(result.model, facts)
print(behaviour.summary())

# %% [markdown]
# The table counts questions (`n`): the two statements of a child, one per parent, ask one question. Every
# trained question is answered by one of its valid answers (p(answer) 0.5: the model splits its mass between the
# two), and no held-out child names a parent among all the candidates: the curse. Among the held-out answers only
# (the parents of held-out children), where chance is high enough for zero hits to say something, and with the
# one-sided tests against chance (exact for accuracy and rank, a t-test for the log-probability):

# %%
held = behaviour["reverse_held_out"].metrics()
among = held["held_out_answers"]
print(f"among the {among['n_candidates']} held-out answers: accuracy {among['accuracy']:.2f} "
      f"[{among['accuracy_ci'][0]:.2f}, {among['accuracy_ci'][1]:.2f}] against chance {among['chance_accuracy']:.2f}; "
      f"mean rank {among['mean_rank']:.2f} against chance {among['chance_mean_rank']:.2f}")
print({name: round(p, 4) for name, p in held["tests"].items()})

# %% [markdown]
# ## The lexical shortcut
#
# A child who carries a parent's surname shares a token with the answer: a model could pick out the parent by the
# shared token without any reverse recall (in the published celebrity pairs two thirds of the pairs share a
# surname). The overlap diagnostic counts the held-out questions whose subject shares a token with any of their
# answers and compares their accuracy with the others':

# %%
from revinterp.analysis.overlap import lexical_overlap

print(lexical_overlap(behaviour).summary())

# %% [markdown]
# ## A split of your own
#
# To reproduce a published split, give each row a `split`: `both` (trained both ways), `reverse_held_out` (the row
# as written trained, its inverse held out) or `forward_held_out` (the row held out). Here we write the split
# that was just drawn back into the file, and load it with a different seed: the same statements, in the same
# splits.

# %%
from revinterp.data import FACT_SPLITS

named = {splits: name for name, splits in FACT_SPLITS.items()}
by_fact = {}
for s in facts.statements:
    by_fact.setdefault(s.fact, {})[s.direction] = s
with (workdir / "families_split.csv").open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("subject", "relation", "object", "inverse", "split"))
    for pair in by_fact.values():
        fwd, rev = pair["forward"], pair["reverse"]
        writer.writerow((fwd.subject, fwd.relation, fwd.object, rev.relation, named[fwd.split, rev.split]))
again = load_fact_file(workdir / "families_split.csv", seed=123)
print("same splits:", {(s.subject, s.relation, s.object, s.split) for s in again.statements}
      == {(s.subject, s.relation, s.object, s.split) for s in facts.statements})

# %% [markdown]
# The command line reads the same files (`--facts`), and also a run directory's `facts.json`, which holds the
# facts with their splits: `revinterp train --facts RUN/facts.json` trains again on exactly the same split.

# %%
from revinterp.cli import main

main(["train", "--facts", str(workdir / "families" / "facts.json"), "--preset", "tiny", "--steps", "100",
      "--out", str(workdir / "cli-run"), "--device", "cpu", "--quiet"])

# %% [markdown]
# ## Files that are not facts
#
# A file that cannot be read as facts raises `FactFileError` (a `ValueError`) naming the file, the row and the
# value, and nothing is trained; every problem in the rows is reported at once. (The command line prints the same
# message and exits with status 2.) A missing column:

# %%
from revinterp.data import FactFileError

bad = workdir / "no_inverse.csv"
bad.write_text("subject,relation,object\nAda Ash,parent_of,Ben Birch\n")
try:
    load_fact_file(bad)
except FactFileError as error:
    print(error)

# %% [markdown]
# One fact given two splits (once as written, once through the inverse), and a held-out question with a trained
# answer:

# %%
bad = workdir / "split_conflicts.csv"
bad.write_text("subject,relation,object,inverse,split\n"
               "Ada Ash,parent_of,Ben Birch,child_of,both\n"
               "Ben Birch,child_of,Ada Ash,parent_of,forward_held_out\n"
               "Cleo Cedar,parent_of,Dan Dale,child_of,reverse_held_out\n"
               "Eve Elm,parent_of,Dan Dale,child_of,both\n")
try:
    load_fact_file(bad)
except FactFileError as error:
    print(error)

# %% [markdown]
# And a relation whose inverse changes from row to row:

# %%
bad = workdir / "inverse_changes.jsonl"
bad.write_text('{"subject": "Ada", "relation": "parent_of", "object": "Ben", "inverse": "child_of"}\n'
               '{"subject": "Cleo", "relation": "parent_of", "object": "Dan", "inverse": "kid_of"}\n')
try:
    load_fact_file(bad)
except FactFileError as error:
    print(error)

# %%
shutil.rmtree(workdir)
