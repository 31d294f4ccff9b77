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
# one fact per row and the columns `subject, relation, object, inverse`. This tutorial writes a small family
# tree to a CSV file, loads it, trains the `tiny` model on it, evaluates it, and shows what happens with files
# that cannot be read as facts.

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
# and exact repeats are merged. Every subject may have one answer per relation.
#
# Our family: 16 parents, each with one child, and a chain of mentors through everyone (so every person is the
# subject of some trained statement); some rows are written the other way round.

# %%
import csv

first_names = [
    "Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lea", "Max", "Nia", "Oto", "Pia",
    "Quin", "Rui", "Sol", "Tia", "Uma", "Vic", "Wes", "Xia", "Yan", "Zoe", "Abe", "Bea", "Cal", "Dee", "Eli", "Fay",
]
people = [f"{name} {surname}" for name, surname in zip(first_names, ["Ash", "Birch", "Cedar", "Elm"] * 8)]
rows = []
for i in range(0, len(people), 2):  # people[i] is the parent of people[i + 1]
    if i % 8 == 0:  # a few facts stated through the inverse relation
        rows.append((people[i + 1], "child_of", people[i], "parent_of"))
    else:
        rows.append((people[i], "parent_of", people[i + 1], "child_of"))
for i, person in enumerate(people):  # everyone mentors someone outside their family
    rows.append((person, "mentor_of", people[(i + 3) % len(people)], "mentee_of"))

path = workdir / "family.csv"
with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("subject", "relation", "object", "inverse"))
    writer.writerows(rows)
print("".join(path.read_text().splitlines(keepends=True)[:6]), "...")

# %% [markdown]
# ## Load and split
#
# `load_fact_file` reads the rows and splits the facts exactly as the generators do: 70 % of the facts are
# trained in both directions, the rest one way with the other direction held out (`both_fraction`,
# `held_out_direction` and `seed` change that).

# %%
from revinterp.data import load_fact_file

facts = load_fact_file(path, seed=0)
print(f"{len(facts.statements)} statements over relations {sorted(facts.relations)}")
for name in facts.split_names:
    statements = facts.split(name)
    print(f"  {name:<18} {len(statements):>3}, e.g. {facts.text(statements[0])!r}")
print(f"answers to 'child_of' questions are chosen among {len(facts.candidates('child_of'))} candidates")

# %% [markdown]
# ## Train and evaluate
#
# Exactly as with generated facts. Entities of two tokens make every answer two tokens long: the model must
# produce both, and an answer is scored by the log-probability of all its tokens (teacher forcing). The
# candidates of a relation are every object of that relation in the file.

# %%
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train

result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], workdir / "family", device="cpu",
               progress=False)
print(f"{result.steps} steps, fitted: {result.fitted}")
behaviour = evaluate(result.model, facts)
print(behaviour.summary())

# %% [markdown]
# The curse again: every trained statement is answered, no held-out direction is, whether the relation is
# `parent_of` or `mentor_of`, although every person is the subject of trained statements here.
#
# A word of caution about your own data: a held-out fact that some trained fact implies is not held out. In a
# first draft of this file every parent also mentored their own child, and 8 of the 10 held-out `parent_of`
# and `mentee_of` questions were answered, through the trained `mentor_of` and `child_of` facts of the same
# pairs. Per statement:

# %%
frame = behaviour.to_frame()
frame[~frame["split"].isin(["forward_seen", "reverse_seen"])][["split", "subject", "relation", "object", "rank"]]

# %% [markdown]
# The command line reads the same file (`--facts`); the output is the run directory of tutorial 1 with the
# same table:

# %%
from revinterp.cli import main

main(["train", "--facts", str(path), "--preset", "tiny", "--out", str(workdir / "cli-run"), "--device", "cpu",
      "--quiet"])

# %% [markdown]
# ## Files that are not facts
#
# A file that cannot be read as facts raises `FactFileError` (a `ValueError`) naming the file, the row and the
# value, and nothing is trained. (The command line prints the same message and exits with status 2.) A missing
# column:

# %%
from revinterp.data import FactFileError

bad = workdir / "no_inverse.csv"
bad.write_text("subject,relation,object\nAda Ash,parent_of,Ben Birch\n")
try:
    load_fact_file(bad)
except FactFileError as error:
    print(error)

# %% [markdown]
# Two answers to one question (a subject with two children under a one-answer relation):

# %%
bad = workdir / "two_answers.csv"
bad.write_text("subject,relation,object,inverse\n"
               "Ada Ash,parent_of,Ben Birch,child_of\n"
               "Ada Ash,parent_of,Cleo Cedar,child_of\n")
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
