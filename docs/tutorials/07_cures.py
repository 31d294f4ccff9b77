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
# # 7. Two cures: change the data, or change what is predicted
#
# Tutorial 5 cured the curse with extra training data (reverse training). The other family of cures changes the
# *objective*: the reversal curse comes from which tokens are predicted, and next-token answer loss never makes
# the source entity `a_i` of `a_i -> b_i` a target given `b_i`. `revinterp.objectives` has three objectives that
# do (`TrainingConfig.objective`, `revinterp train --objective`):
#
# - `mlm_u`: MLM-U (Kitouni et al. 2024), a uniform masking rate with bidirectional attention;
# - `masked_causal`: a decoder-only masked objective (Coda-Forno et al. 2026): `a -> b` is also trained as
#   `[mask] -> b a`, the masked entity predicted after the rest, under causal attention;
# - `blank_infilling`: autoregressive blank infilling (Lv et al. 2023): `[blank] -> b [sep] a`.
#
# We compare reverse training (`reverse_entity`) with `masked_causal` on the same facts and the same held-out
# questions: accuracy, cost, where the reverse path forms, and whether its stored entry is the forward one.

# %%
# ruff: noqa: E402  (a notebook imports where a step first needs something)
import random
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from revinterp.data import apply_mitigation, encode_statements, seed_experiment
from revinterp.objectives import objective_batch, objective_tokenizer

workdir = Path(tempfile.mkdtemp(prefix="revinterp-tutorial-"))
facts = seed_experiment(40, held_out_direction="forward", seed=0)  # 12 held-out reverse questions
tokenizer = objective_tokenizer(facts, "masked_causal")
batch = objective_batch(facts, encode_statements(facts, facts.train[:4], tokenizer), "masked_causal", tokenizer,
                        random.Random(0))
for tokens, targets in zip(batch.tokens, batch.targets):
    shown = [t for t in tokenizer.convert_ids_to_tokens(tokens.tolist()) if t != "<pad>"]
    target = tokenizer.convert_ids_to_tokens([t for t in targets.tolist() if t >= 0])
    print(f"masked_causal trains {' '.join(shown):<26} predicting {target}")

# %% [markdown]
# Each row masks one entity, the subject or the object with probability 1/2; when the subject is masked, the
# source entity is the target. The model asks for an answer the same way: the prompt, then `[mask]`, read at the
# last position (`objectives.QueryModel` does this for `evaluate`, and `query_facts` for the analyses that read a
# prompt).
#
# ## Accuracy and cost

# %%
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS
from revinterp.objectives import query_facts, query_model
from revinterp.training import TRAINING_PRESETS, train

cures = {"reverse_entity": (apply_mitigation(facts, "reverse_entity"), "next_token"),
         "masked_causal": (facts, "masked_causal")}
models = {}
print(f"{'cure':<16}{'steps':>6}  {'reverse_held_out [95% CI]':<30}{'forward_only':>14}{'chance':>8}")
for name, (data, objective) in cures.items():
    result = train(data, MODEL_PRESETS["tiny"], replace(TRAINING_PRESETS["tiny"], objective=objective),
                   workdir / name, device="cpu", progress=False)
    assert result.fitted
    models[name] = query_model(result.model, objective)
    behaviour = evaluate(models[name], data, ["reverse_held_out", "forward_only"], tokenizer=result.model.tokenizer)
    held = behaviour["reverse_held_out"]
    print(f"{name:<16}{result.steps:>6}  {str(held.accuracy):<30}{behaviour['forward_only'].accuracy.mean:>14.2f}"
          f"{held.chance_accuracy:>8.3f}")
print(f"reverse training adds {len(cures['reverse_entity'][0].split('augmented'))} statements; the masked objective "
      f"trains the same {len(facts.train)} statements as next-token training")

# %% [markdown]
# Both answer every held-out reverse question (12 questions: the intervals are those of 12), and both keep the
# forward facts. Reverse training adds statements; the masked objective adds none, it changes what each
# statement predicts.
#
# ## Where the reverse path forms
#
# Patching on the held-out reverse prompts, asked as each model asks them (`<bos> b <-` for reverse training,
# `<bos> b <- [mask]` for the masked objective):

# %%
from revinterp.analysis.entries import entry_sharing
from revinterp.analysis.localize import localize
from revinterp.analysis.prompts import make_prompt_pairs

for name, (data, objective) in cures.items():
    model = models[name] if objective == "next_token" else models[name].model  # the bridge, for its hooks
    asked = query_facts(data, objective)
    pairs = make_prompt_pairs(asked, "reverse_held_out", model.tokenizer)
    located = localize(model, pairs, target=0.8)
    print(f"{name}: prompt {model.to_str_tokens(pairs.clean[0])}; localize restores "
          f"{[s.label(pairs.labels) for s in located.chosen]}, recovering {located.recovered_ci()}")
    sharing = entry_sharing(model, asked, tokenizer=model.tokenizer)
    print(f"{name}: {sharing.summary()}")

# %% [markdown]
# In both models the answer is carried by the layer's attention output at the last position, where the answer is
# read: the relation token for reverse training, the `[mask]` token for the masked objective. `entry_sharing`
# then asks whether the head that stores the held-out reverse answer writes, for each fact, the same direction as
# for its forward statement (the cosine of the projected writes, against unrelated facts), and whether it reads
# the fact with the same key both ways (its attention-weighted key): both verdicts for each cure are printed
# above. On this tiny model with 12 facts the test is weak; `analyses/mitigation_atlas.py` measures every cure over
# seeds at the default preset.

# %%
shutil.rmtree(workdir)
