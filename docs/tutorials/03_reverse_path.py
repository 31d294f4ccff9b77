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
# # 3. Why the reverse path never forms
#
# Tutorial 2 found where `a_i -> b_i` is computed. Here we ask why nothing answers the held-out `b_i <- ?`, by
# five independent lines of evidence, each against a positive control (the `reverse_seen` pairs, whose reverse
# *was* trained):
#
# 1. **reverse patching**: does any activation carry the answer when the reverse question is asked?
# 2. **effective weights**: did the entry `Y[b_i, a_i]` of the token-to-answer map move from its initial value?
# 3. **probes**: is `a_i`'s identity linearly decodable from the model's activations on `<bos> b_i <-`?
# 4. **the gradient view**: how far does a training step on `a_i -> b_i` move the logit of `a_i` after `b_i <-`?
# 5. **embedding starvation**: was the subject `b_i` ever an input in training?
#
# The fifth is a confound, not an explanation: in the seed setup the held-out subject never appears as an input,
# so its embedding is never trained, and any analysis would find nothing there for that reason alone. So we
# run everything twice: on the seed data, and on a **non-starved** variant (`with_attributes`) in which every
# entity is also the subject of an unrelated trained fact.

# %%
# ruff: noqa: E402  (a notebook imports where a step first needs something)
import shutil
import tempfile
from pathlib import Path

from revinterp.data import seed_experiment, with_attributes
from revinterp.evaluation import evaluate
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

workdir = Path(tempfile.mkdtemp(prefix="revinterp-tutorial-"))

# held_out_direction="forward": every one-way fact trains its forward statement and holds out the reverse,
# which gives 12 held-out reverse questions out of 40 facts instead of about 6
seed_facts = seed_experiment(40, held_out_direction="forward", seed=0)
control_facts = with_attributes(seed_facts, n_values=10)  # + "e lives_in c_k" for every entity e
print(f"control adds {len(control_facts.split('attribute'))} attribute facts, e.g. "
      f"{control_facts.text(control_facts.split('attribute')[0])!r}")

runs = {}
for name, facts in (("seed", seed_facts), ("control", control_facts)):
    result = train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], workdir / name, device="cpu",
                   progress=False)
    runs[name] = load_run(workdir / name, device="cpu")
    print(f"\n{name}: {result.steps} steps, fitted {result.fitted}")
    print(evaluate(runs[name].model, facts).summary())

# %% [markdown]
# Both models fit every trained split, and both fail every held-out reverse question: training the subject's
# embedding does not lift the curse. Now, why.
#
# ## 1. Reverse interventions
#
# Prompt pairs for the reverse questions: clean `<bos> b_i <-` (answer `a_i`), corrupted `<bos> b_j <-`.
# `compare_splits` runs the localization analyses on each split's pairs and measures, per pair, how much the
# logit difference `logit[a_i] - logit[a_j]` moves: the *total effect* of swapping the subject, the change when
# each site (residual stream, attention and MLP outputs, each head at each position) of the clean run is
# restored into the corrupted one, the direct logit attribution of each component, and the attribution-patching
# estimate of each site. Each gets a bootstrap interval over pairs. (Raw changes, not normalized effects: for
# held-out pairs clean and corrupted runs barely differ, so normalizing would divide by nearly zero.) On
# `reverse_seen` pairs something must carry the answer; on `reverse_held_out` pairs, if no path exists, every
# effect scatters around zero, and about 5 % of sites exclude zero by chance alone.

# %%
from revinterp.analysis.interventions import compare_splits

interventions = {}
for name, run in runs.items():
    interventions[name] = compare_splits(run.model, run.facts, ("reverse_seen", "reverse_held_out"))
    print(name)
    print(interventions[name].summary())

# %%
interventions["seed"].plot()

# %% [markdown]
# On seen reverse pairs swapping the subject moves the logit difference by about 20, and most sites carry it;
# on held-out pairs the total effect's interval contains zero in both models and no site carries more than a
# few percent of the seen effect. Nothing carries `a_i` when `b_i <-` is asked.
#
# ## 2. Effective weights
#
# Zhu et al. (2024) explain the curse through the *effective weights* `Y`, the map from a context token to
# next-token logits: training `a_i -> b_i` raises `Y[a_i, b_i]`, and nothing raises `Y[b_i, a_i]`. The
# `end_to_end` map measures it on the whole model, `Y_r[x, :] = logits(<bos> x r)[-1]`; the `ov` path reads it
# from the weights, one map per head, `W_E W_V W_O W_U`. Each statement's *effect* is its entry minus the mean
# of the same row over the answers of the other statements of its split (the **split baseline**: answers with
# the same training history, so only the pair-specific part is left). The **asymmetry** is, over one-way facts,
# the trained direction's effect minus the held-out direction's.

# %%
from revinterp.analysis.weights import effective_weights

for name, run in runs.items():
    weights = effective_weights(run.model, run.facts, path="end_to_end")
    print(f"{name}: reverse_held_out {weights.estimate('reverse_held_out')}, "
          f"reverse_seen {weights.estimate('reverse_seen')}, asymmetry {weights.asymmetry()}")

# %%
effective_weights(runs["seed"].model, runs["seed"].facts, path="end_to_end").plot(relation="<-")

# %% [markdown]
# The held-out entries `Y[b_i, a_i]` are indistinguishable from their rows' other entries in both models, while
# every trained entry stands about 10 logits above them. Per head (OV path, LayerNorm scales and the attention to
# the subject measured on the prompts), the same holds head by head:

# %%
print(effective_weights(runs["control"].model, runs["control"].facts, path="ov", scale="prompts").summary())

# %% [markdown]
# The `row` baseline (every non-fact entry of the row) gives a *negative* held-out effect in the seed data: the
# held-out answers are never the answer of a trained `<-` statement, so training pushes them down. That is the
# answer side of starvation, which the split baseline factors out.
#
# Over training, from the checkpoints that `train` saved: every trained entry's effect grows from 0 to about
# 11, while the held-out reverse effect stays where it started, at 0. (The held-out *raw* entries do move: down,
# with the rest of their rows' never-trained answers, which is why effects are read against a baseline.)

# %%
from revinterp.analysis.weights import effective_weights_over_training

print(effective_weights_over_training(workdir / "seed", path="end_to_end", device="cpu").summary())

# %% [markdown]
# ## 3. Probes for the answer's identity
#
# Is `a_i` linearly decodable from the activations on `<bos> b_i <-`, even if the model does not output it? A
# probe fitted on the `reverse_seen` prompts is tested on the `reverse_held_out` ones. The held-out answers are
# classes the probe never saw, so it scores each class through a fixed vector of that entity, its *input
# embedding*: `score(x, a) = z^T W t_a`, decoded among all M = 40 candidates (chance 1/40). A probe onto the
# unembedding at the last position would be the logit lens up to a linear map and restate behaviour, so the
# probe reads every layer's residual stream and attention and MLP outputs, where the unembedding cannot
# trivially read the answer. Its control is a task of the same shape with the classes relabelled at random
# (Hewitt & Liang 2019): **selectivity** is the cross-validated accuracy on seen pairs minus the control's. The
# headline site is the most selective one on cross-validation, never chosen on the held-out pairs, and its
# held-out accuracy gets an exact binomial interval against chance.

# %%
from revinterp.analysis.probes import probe_answer_identity

for name, run in runs.items():
    probes = probe_answer_identity(run, positions=(1, 2))  # the subject and `<-`, not <bos>
    site = probes.selected_site
    if probes.selectivity.max() <= 0:  # the best of chance-level scores is no place: name none
        print(f"{name}: no selective site (selectivity at most {probes.selectivity.max():.3f} over {site.n_sites} "
              "sites)")
    else:
        print(f"{name}: most selective site {site.layer} at {site.position_label} (selectivity "
              f"{site.selectivity:.3f} of {site.n_sites} sites); held-out {site.test_hits} of {site.test.n} "
              f"[{site.test.low:.3f}, {site.test.high:.3f}] against chance {site.chance:.3f}")

# %% [markdown]
# The model does not hold the subject's identity in a form a probe can carry to entities it never trained on:
# selectivity stays near zero at every site, and held-out pairs are read no better than chance, in either model.
#
# ## 4. The gradient view
#
# One plain SGD step on a trained statement `a_i -> b_i` changes a logit `f` by `-lr <grad f, grad L>` to first
# order. The theory predicts that the statement's own answer logit moves by O(1) and the reverse logit
# `f(a_i | b_i <-)` by O(1/d). The ratio is measured per fact: for facts trained both ways (`forward_seen`) and
# for one-way facts (`forward_only`, whose reverse is held out).

# %%
from revinterp.analysis.gradients import gradient_step_effects

for name, run in runs.items():
    effects = gradient_step_effects(run.model, run.facts, splits=("forward_seen", "forward_only"))
    print(name, effects.summary(), sep="\n")

# %% [markdown]
# A step on the forward statement moves its reverse logit by a few hundredths of what it moves its own answer's
# logit at most, whether the reverse is trained (`forward_seen`) or held out (`forward_only`): learning
# `a -> b` does not teach `b <- a`. The reverse of a `forward_seen` fact is learned all the same, from its own
# reverse statements.
#
# ## 5. Embedding starvation
#
# Finally the confound itself. `starvation_report` counts how often each entity's tokens are inputs of trained
# statements, and how far its embedding and unembedding moved and how much gradient they received over the
# saved checkpoints.

# %%
from revinterp.analysis.starvation import starvation_report

for name in runs:
    print(name, starvation_report(workdir / name, device="cpu").summary(), sep="\n")

# %% [markdown]
# In the seed data all 12 held-out subjects are starved: never an input, zero gradient, their embeddings moved
# only by weight decay (0.008 against about 0.8 for trained subjects). In the control none is starved, and the
# embeddings moved as much as any. Every other line of evidence came out the same in both models, so the
# missing reverse path is not a by-product of starvation: the reverse association is simply never learned.
#
# Next: tutorial 5 adds training data that *does* create a reverse path, and finds where it forms.

# %%
shutil.rmtree(workdir)
