"""revinterp: where the reversal curse lives in small transformers trained from scratch.

Generate facts (``A_i -> B_i`` and ``B_i <- A_i``, some directions held out), train a small TransformerLens model on
them, measure the curse, then locate the forward fact and look for the missing reverse path with patching,
attribution, effective weights, probes and the gradient view. The names a notebook needs are here::

    import revinterp as ri

    facts = ri.seed_experiment(200, seed=0)
    ri.train(facts, ri.MODEL_PRESETS["default"], ri.TRAINING_PRESETS["default"], "runs/seed0")
    run = ri.load_run("runs/seed0")
    print(ri.evaluate(run.model, run.facts).summary())
    print(ri.effective_weights(run, path="end_to_end").summary())

They are imported on first use (PEP 562), so ``import revinterp`` stays fast and loads neither torch nor
TransformerLens; the full API is in the submodules (``revinterp.data``, ``revinterp.analysis.patching``, ...).
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_LAZY = {
    "LoadedRun": "revinterp.models",
    "MODEL_PRESETS": "revinterp.models",
    "ModelConfig": "revinterp.models",
    "load_run": "revinterp.models",
    "TRAINING_PRESETS": "revinterp.training",
    "TrainingConfig": "revinterp.training",
    "train": "revinterp.training",
    "evaluate": "revinterp.evaluation",
    "chain_experiment": "revinterp.data",
    "knowledge_graph": "revinterp.data",
    "load_fact_file": "revinterp.data",
    "seed_experiment": "revinterp.data",
    "with_attributes": "revinterp.data",
    "make_prompt_pairs": "revinterp.analysis.prompts",
    "patch_sweep": "revinterp.analysis.patching",
    "patch_sweeps": "revinterp.analysis.patching",
    "localize": "revinterp.analysis.localize",
    "direct_logit_attribution": "revinterp.analysis.dla",
    "logit_lens": "revinterp.analysis.logit_lens",
    "attribution_patch": "revinterp.analysis.attribution_patching",
    "compare_splits": "revinterp.analysis.interventions",
    "effective_weights": "revinterp.analysis.weights",
    "probe_answer_identity": "revinterp.analysis.probes",
    "gradient_step_effects": "revinterp.analysis.gradients",
    "starvation_report": "revinterp.analysis.starvation",
    "iter_checkpoints": "revinterp.analysis.checkpoints",
}

__all__ = ["__version__", *_LAZY]

def __getattr__(name: str):
    """Import a top-level name's module on first access (and ``__version__``'s metadata: importlib.metadata alone
    takes longer to import than the rest of ``import revinterp``), and keep the name here."""
    if name == "__version__":
        value = _installed_version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'revinterp' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("revinterp")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"
