"""Direct logit attribution of one answer: which head or MLP writes `b_i` after `a_i ->`.

    python examples/attribute_one_answer.py

Trains the `tiny` model (in a temporary directory) and splits the logit difference between the answer and another
fact's answer into the parts that write into the residual stream (embeddings, heads, attention bias, MLP).
"""

import tempfile
from pathlib import Path

from revinterp.analysis.dla import direct_logit_attribution
from revinterp.analysis.prompts import PromptPairs
from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

with tempfile.TemporaryDirectory() as tmp:
    facts = seed_experiment(40, seed=0)
    train(facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], Path(tmp) / "run", device="cpu", progress=False)
    run = load_run(Path(tmp) / "run", device="cpu")

fact, other = facts.split("forward_seen")[:2]
pairs = PromptPairs.from_prompts(
    run.tokenizer, clean=[" ".join(facts.prompt_words(fact))], corrupted=[" ".join(facts.prompt_words(other))],
    clean_answers=[fact.object], corrupted_answers=[other.object],
)
dla = direct_logit_attribution(run.model, pairs)
print(f"fact {facts.text(fact)!r}: logit[{fact.object}] - logit[{other.object}] = {dla.total[0]:.2f}")
for label, value in sorted(zip(dla.labels, dla.values[:, 0].tolist()), key=lambda p: -abs(p[1])):
    print(f"  {label:<14} {value:+7.2f}")
print(f"  {'b_U':<14} {dla.unembed_bias[0]:+7.2f}   (parts + b_U = total, error {dla.residual.abs().max():.1e})")
