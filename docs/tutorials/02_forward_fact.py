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
# # 2. Where the forward fact lives
#
# The model of tutorial 1 answers `a26 -> ?` with `b16`. Which activations carry that answer? This tutorial
# localizes the forward fact causally, with activation patching (denoising and noising, every layer, position,
# component and head), checks the fast exact patching path against TransformerLens's own functions, restores
# only the sites it found, and then reads the same computation with three cheaper views: direct logit
# attribution, the logit lens and attribution patching (a gradient estimate, validated against the exact
# sweep). It ends with an interactive circuitsvis view of the attention heads that matter.

# %%
# ruff: noqa: E402  (a notebook imports where a step first needs something)
import shutil
import tempfile
import time
from pathlib import Path

import torch

from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

workdir = Path(tempfile.mkdtemp(prefix="revinterp-tutorial-"))
train(seed_experiment(40, seed=0), MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], workdir / "run", device="cpu",
      progress=False)
run = load_run(workdir / "run", device="cpu")  # eval mode, as every analysis requires

# %% [markdown]
# ## Prompt pairs
#
# Every causal intervention here compares a **clean** prompt `<bos> a_i ->` (answer `b_i`) with a
# **corrupted** one, `<bos> a_j ->` (answer `b_j`), where `a_j` is the subject of another statement of the same
# split. The two prompts differ only at the subject's position, so every position lines up. The metric is the
# **logit difference** `logit[b_i] - logit[b_j]` at the last position: large and positive on the clean
# prompt, negative on the corrupted one.

# %%
from revinterp.analysis.prompts import make_prompt_pairs

pairs = make_prompt_pairs(run.facts, "forward_seen", run.tokenizer)
print(f"{len(pairs)} pairs; positions {pairs.labels}")
for clean, corrupted in list(zip(pairs.statements, pairs.corrupted_statements))[:3]:
    print(f"  clean {run.facts.text(clean)!r:<14} corrupted {run.facts.text(corrupted)!r}")

# %% [markdown]
# ## Activation patching
#
# **Denoising** runs the corrupted prompt and restores one activation (a *site*) from the clean run: a site
# that brings the clean answer back is sufficient to carry the fact. **Noising** does the opposite: a site whose
# corrupted value destroys the clean answer is necessary. Both are reported on one scale,
#
# ```
# normalized = (mean patched - mean corrupted) / (mean clean - mean corrupted)
# ```
#
# 0 for the corrupted run and 1 for the clean one (means over prompt pairs, with paired bootstrap intervals).
# `patch_sweeps` patches every site of the residual stream (`resid_pre`), the attention and MLP outputs and
# every head at every position in one call.

# %%
from revinterp.analysis.patching import patch_sweeps

sweeps = patch_sweeps(run.model, pairs)  # denoising, logit difference, the fast exact path
for result in sweeps.values():
    print(result.summary(k=3), end="\n\n")

# %% [markdown]
# The residual stream at the subject position carries everything (restoring it restores the answer
# completely), and nothing at `<bos>` or `->` does *before* the layer. After it, the answer is at the last
# position: the attention output there restores it fully, and the MLP output there restores part of it. The
# per-head view splits the attention output across the four heads:

# %%
sweeps["head_out_by_pos"].plot()

# %% [markdown]
# Noising asks the complementary question: which single site, corrupted, destroys the clean answer?

# %%
noising = patch_sweeps(run.model, pairs, ("attn_out", "mlp_out"), direction="noising")
for result in noising.values():
    print(result.summary(k=2), end="\n\n")

# %% [markdown]
# ## The fast path is exact
#
# `method="fast"` (the default) starts each patched forward at the patched layer from cached activations,
# reuses cached keys and values of earlier positions, computes only the answer position in the last layer, and
# skips sites whose patch provably changes nothing. `method="transformer_lens"` calls
# `transformer_lens.patching.get_act_patch_*` instead, one full forward per site. They agree to float
# precision (the test suite holds them to 1e-5); the fast path's advantage grows with model size.

# %%
start = time.perf_counter()
fast = patch_sweeps(run.model, pairs)
fast_seconds = time.perf_counter() - start
start = time.perf_counter()
reference = patch_sweeps(run.model, pairs, method="transformer_lens")
reference_seconds = time.perf_counter() - start
for component in fast:
    difference = (fast[component].values - reference[component].values).abs().max().item()
    print(f"{component:<16} max |fast - TransformerLens| = {difference:.1e}")
    assert torch.allclose(fast[component].values, reference[component].values, atol=1e-5)
print(f"fast {fast_seconds:.2f} s, TransformerLens {reference_seconds:.2f} s")

# %% [markdown]
# ## Localization: restore only what was found
#
# A ranking of single sites is not yet a localization. `localize` ranks the sites by their own denoising
# effect, then restores the top ones *together* (downstream activations recomputed) until the recovered
# fraction reaches a target, and reports the measured joint recovery with a bootstrap interval.

# %%
from revinterp.analysis.localize import localize

located = localize(run.model, pairs, target=0.8)
print(located.summary())

# %%
located.plot()

# %% [markdown]
# ## Direct logit attribution
#
# With the final LayerNorm scale frozen at its value on each prompt, the logit difference is a sum over the
# parts that write into the residual stream: the embeddings, every head, the attention bias and every MLP,
#
# ```
# logit[a] - logit[a'] = sum over parts c of  LN(x_c) . (W_U[:, a] - W_U[:, a'])  +  b_U[a] - b_U[a']
# ```
#
# It says who writes the answer *directly*, not who causes it: a part can matter only through later ones.
# The decomposition is exact (it runs on a compatibility-mode copy; `run.model` is untouched):

# %%
from revinterp.analysis.dla import direct_logit_attribution

dla = direct_logit_attribution(run.model, pairs)
print(dla.summary(k=6))
print(f"largest |total - sum of parts - bias| = {dla.residual.abs().max().item():.1e}")
print(dla.aggregate("component").summary())

# %%
dla.plot()

# %% [markdown]
# ## The logit lens
#
# Reading the residual stream through the final LayerNorm and the unembedding *before* each layer shows where
# the answer becomes decodable. In a one-layer model there are two readings: the embeddings alone, and the
# output.

# %%
from revinterp.analysis.logit_lens import logit_lens

print(logit_lens(run.model, pairs).summary())

# %% [markdown]
# ## Attribution patching, and why it is not an effect size
#
# Attribution patching estimates every site's patching effect from one forward and one backward pass,
# `metric(base) + grad . (a_source - a_base)`. It is much cheaper than exact patching on large sweeps, and it
# *ranks* sites well, but it is a first-order estimate: on the 2-layer model it underestimates effects by
# 2-5x (the response to swapping an embedding is S-shaped and flat at the corrupted end). Always check it
# against an exact sweep before reading its numbers; `attribution_agreement` reports the rank correlation,
# top-k recall and the calibration slope (1 = right size).

# %%
from revinterp.analysis.agreement import attribution_agreement
from revinterp.analysis.attribution_patching import attribution_patch_components

components = ("attn_out", "mlp_out", "head_out_by_pos")
estimates = attribution_patch_components(run.model, pairs, components)
agreement = attribution_agreement(
    torch.cat([estimates[c].effect.flatten() for c in components]),
    torch.cat([fast[c].effect.flatten() for c in components]),
    labels=[label for c in components for label in estimates[c].site_labels()],
)
print(agreement.summary())

# %% [markdown]
# ## Attention, interactively
#
# The heads with the largest direct contribution, on one clean prompt, drawn by circuitsvis. The view is built
# from `.local_src`, which inlines circuitsvis's JavaScript: it renders offline (displaying the object itself
# would first try to reach a CDN).

# %%
import circuitsvis as cv
from IPython.display import HTML

head_rows = [i for i, kind in enumerate(dla.kinds) if kind == "head"]
top_heads = sorted(head_rows, key=lambda i: -dla.mean()[i].abs().item())[:2]
with torch.no_grad():
    _, cache = run.model.run_with_cache(pairs.clean[:1])
patterns = []
for i in top_heads:
    layer, head = (int(x) for x in dla.labels[i][1:].split("H"))
    patterns.append(cache["pattern", layer][0, head])
view = cv.attention.attention_heads(
    attention=torch.stack(patterns), tokens=run.tokenizer.convert_ids_to_tokens(pairs.clean[0].tolist()),
    attention_head_names=[dla.labels[i] for i in top_heads],
)
HTML(view.local_src)

# %% [markdown]
# Next: tutorial 3 asks why nothing comparable forms for the held-out reverse questions.

# %%
shutil.rmtree(workdir)
