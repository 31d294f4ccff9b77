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
# # 1. Reproduce the reversal curse
#
# A model trained on `a17 -> b3` answers `a17 -> ?` with `b3`, but asked `b3 <- ?` it does no better than
# chance unless it also saw the reversed sentence `b3 <- a17` (Berglund et al. 2023; Zhu et al. 2024).
#
# This tutorial reproduces that on the smallest model revinterp has: it generates the facts of Zhu et al.'s
# seed experiment, trains the `tiny` preset (1 layer, `d_model` 64) from scratch until every trained split is
# fitted, measures behaviour per split with bootstrap confidence intervals, looks inside the run directory,
# and reads the run back with `load_run`. It takes a few seconds on a CPU; everything is written into a
# temporary directory.

# %%
# ruff: noqa: E402  (a notebook imports where a step first needs something)
import shutil
import tempfile
from pathlib import Path

from revinterp.data import seed_experiment

workdir = Path(tempfile.mkdtemp(prefix="revinterp-tutorial-"))

# %% [markdown]
# ## The facts
#
# `seed_experiment(40)` draws 40 random pairs `a_i <-> b_i` from two disjoint entity alphabets. Each pair is one
# fact with two statements: the forward `a_i -> b_i` and the reverse `b_i <- a_i`. 70 % of the facts are trained
# in both directions (`forward_seen`, `reverse_seen`); for every other fact one direction, chosen at random, is
# trained (`forward_only` or `reverse_only`) and the other is held out (`reverse_held_out` or
# `forward_held_out`). The held-out statements are the test set.

# %%
facts = seed_experiment(40, seed=0)
for name in facts.split_names:
    statements = facts.split(name)
    status = "trained" if statements[0].trained else "held out"
    print(f"{name:<18} {status:<9} {len(statements):>3} statements, e.g. {facts.text(statements[0])!r}")

# %% [markdown]
# A held-out statement's other direction is always trained, so the model knows the fact; it has only never
# read it backwards. A question through relation `<-` is answered among every object of `<-` in the data
# (`facts.candidates("<-")`): the M = 40 `a` entities, so chance accuracy is 1/40.

# %%
question = facts.split("reverse_held_out")[0]
trained_direction = next(s for s in facts.statements if s.fact == question.fact and s is not question)
print(f"held out: {facts.text(question)!r}; trained: {facts.text(trained_direction)!r} ({trained_direction.split})")
candidates = facts.candidates(question.relation)
print(f"{len(candidates)} candidate answers for '<-' questions, chance accuracy {1 / len(candidates):.3f}")

# %% [markdown]
# ## Train
#
# `MODEL_PRESETS["tiny"]` is a one-layer TransformerLens 4 model (`TransformerBridge.boot_native`);
# `TRAINING_PRESETS["tiny"]` is the seed's optimizer (AdamW, lr 0.01, batch 64, cross-entropy on the answer
# token only). Training stops once every trained split is **fitted**: accuracy 100 % *and* mean probability of
# the answer at least 0.99. Accuracy alone reaches 100 % long before the model is confident; analyses of a
# barely fitted model are not comparable with the seed's curves.
#
# The device is chosen once, by `train(..., device=...)` and `load_run(..., device=...)` (the command line's
# `--device`); the default is CUDA when available. The tiny model is fastest on the CPU, so we pin it there.

# %%
from revinterp.models import MODEL_PRESETS
from revinterp.training import TRAINING_PRESETS, train

run_dir = workdir / "tiny-seed0"
result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, device="cpu", progress=False)
print(f"{result.steps} steps, fitted: {result.fitted}")
last = result.history[-1]
for name, record in last["splits"].items():
    print(f"  {name:<18} accuracy {record['accuracy']:.2f}   mean p(answer) {record['probability']:.3f}")

# %% [markdown]
# ## Behaviour per split
#
# `evaluate` scores every statement against its M candidates: **accuracy** (the answer ranks first; chance
# 1/M), **rank** (chance (M + 1) / 2), the answer's **log-probability among the candidates** (uniform:
# -ln M) and its probability over the whole vocabulary. Accuracies come with exact binomial (Clopper-Pearson)
# 95 % intervals, which say how large a proportion zero hits still allow; other split means with 95 %
# percentile-bootstrap intervals over statements.

# %%
from revinterp.evaluation import evaluate

behaviour = evaluate(result.model, facts)
print(behaviour.summary())

# %% [markdown]
# Every trained split is answered perfectly. Both held-out directions are at 0 %, *below* chance (2.5 %), with
# a mean rank worse than the 20.5 of guessing and a log-probability below the uniform -ln 40: the reversal
# curse. (Below rather than at chance: in this setup the held-out answers are never the answer of any trained
# `<-` statement, so training only ever pushes their logits down; see the concepts page on embedding
# starvation, and tutorial 3.)
#
# The same numbers as a figure, and per statement as a data frame:

# %%
behaviour.plot()

# %%
frame = behaviour.to_frame()
frame.groupby("split", sort=False)[["correct", "rank", "logprob_candidates"]].mean()

# %% [markdown]
# ## Over seeds
#
# One run's interval is over prompts. Whether the result holds *across* runs needs several seeds (different
# facts, initial weights and data order); `over_seeds` gives each split's mean over runs with a bootstrap
# interval over seeds.

# %%
from revinterp.evaluation import over_seeds

behaviours = [behaviour]  # seed 0, trained above
for seed in range(1, 5):
    seed_facts = seed_experiment(40, seed=seed)
    seed_result = train(seed_facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], workdir / f"tiny-seed{seed}",
                        device="cpu", progress=False)
    behaviours.append(evaluate(seed_result.model, seed_facts))
for split, metrics in over_seeds(behaviours).items():
    print(f"{split:<18} accuracy {metrics['accuracy']}   mean rank {metrics['mean_rank']}")

# %% [markdown]
# ## The run directory
#
# `train` wrote everything needed to rebuild the model and to study its training, atomically, and nothing
# pickled:
#
# | file | what it holds |
# | --- | --- |
# | `model.json` | the model config (architecture, seed) |
# | `model.safetensors` | the final weights |
# | `tokenizer.json` | the word-level tokenizer |
# | `facts.json` | every statement with its split |
# | `training.json` | the training config and the versions that produced the run |
# | `history.jsonl` | one line per periodic evaluation: loss, accuracy and p(answer) per split |
# | `checkpoints/` | weights at log-spaced steps (for training dynamics) and `last.safetensors` (for `--resume`) |
#
# (`revinterp train` also writes `behaviour.json`, and `revinterp analyze` adds `analysis/` and `report.html`.)

# %%
for path in sorted(run_dir.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(run_dir)):<42} {path.stat().st_size:>9,} bytes")

# %%
from revinterp.training import read_history

history = read_history(run_dir)
print(f"{len(history)} evaluations; the last one:")
history[-1]

# %% [markdown]
# ## Read the run back
#
# `load_run` rebuilds the model from the run directory, in eval mode, with its facts, tokenizer and config.
# Reloading is exact: the behaviour is identical to the last digit.

# %%
from revinterp.models import load_run

run = load_run(run_dir, device="cpu")
print(run.config)
assert evaluate(run.model, run.facts).to_dict() == behaviour.to_dict()

# %% [markdown]
# The model is an ordinary TransformerLens bridge. Here are its top answers for a forward question it was
# trained on and for the held-out reverse question above:

# %%
import torch


def top_answers(statement, k=3):
    """The k most probable candidate answers for a statement's prompt, with their probabilities."""
    words = run.facts.prompt_words(statement)
    tokens = torch.tensor([[run.tokenizer.bos_token_id, *run.tokenizer.convert_tokens_to_ids(words)]])
    with torch.no_grad():
        logits = run.model(tokens)[0, -1]
    names = run.facts.candidates(statement.relation)
    probs = logits[run.tokenizer.convert_tokens_to_ids(names)].softmax(-1)
    best = probs.argsort(descending=True)[:k].tolist()
    return ", ".join(f"{names[i]} ({probs[i]:.2f})" for i in best)


for statement in (trained_direction, question):
    print(f"{' '.join(run.facts.prompt_words(statement))} ?   expected {statement.object}; "
          f"the model says {top_answers(statement)}")

# %% [markdown]
# ## The same from the command line
#
# ```bash
# revinterp train --preset tiny --n-pairs 40 --out runs/tiny-seed0   # trains and prints the table above
# revinterp eval runs/tiny-seed0 --json                              # the per-split metrics as JSON
# revinterp run --preset tiny --n-pairs 40 --seeds 0 1 2 3 4         # five seeds, analyses and reports
# ```
#
# Next: tutorial 2, *where the forward fact lives*.

# %%
shutil.rmtree(workdir)
