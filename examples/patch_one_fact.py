"""Activation patching on one fact: which residual-stream sites carry the answer of `a_i -> ?`.

    python examples/patch_one_fact.py

Trains the `tiny` model (in a temporary directory), takes one trained forward fact, corrupts its subject with
two other subjects, restores each residual-stream site of the clean run into the corrupted runs (denoising) and
prints the normalized effect per site: 0 = corrupted run, 1 = clean run.
"""

import tempfile
from pathlib import Path

from revinterp.analysis.patching import patch_sweep
from revinterp.analysis.prompts import PromptPairs
from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

with tempfile.TemporaryDirectory() as tmp:
    facts = seed_experiment(40, seed=0)
    train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], Path(tmp) / "run", device="cpu", progress=False)
    run = load_run(Path(tmp) / "run", device="cpu")

fact, *others = facts.split("forward_seen")[:3]
prompt = lambda s: " ".join(facts.prompt_words(s))  # noqa: E731
pairs = PromptPairs.from_prompts(
    run.tokenizer, clean=[prompt(fact)] * 2, corrupted=[prompt(s) for s in others],
    clean_answers=[fact.object] * 2, corrupted_answers=[s.object for s in others],
)
result = patch_sweep(run.model, pairs, "resid_pre")
print(f"fact {facts.text(fact)!r}, subject corrupted to {[s.subject for s in others]}")
for site, value in zip(result.sites(), result.normalized.flatten().tolist()):
    print(f"  {site.label(pairs.labels):<24} normalized effect {value:.2f}")
