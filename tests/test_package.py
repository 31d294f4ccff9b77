"""The top-level package: its names resolve to the objects their modules define, and importing it stays light."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import subprocess
import sys

import pytest

import revinterp


@pytest.mark.parametrize("name", [n for n in revinterp.__all__ if n != "__version__"])
def test_every_top_level_name_is_the_object_of_its_module(name):
    module = importlib.import_module(revinterp._LAZY[name])
    value = getattr(revinterp, name)
    assert value is getattr(module, name)
    if inspect.isfunction(value) or inspect.isclass(value):
        # mapped to the module that defines it, or to the package whose API it is (revinterp.data)
        assert value.__module__ == module.__name__ or (
            hasattr(module, "__path__") and value.__module__.startswith(module.__name__ + ".")
            and name in module.__all__
        )
    assert vars(revinterp)[name] is value  # resolved once, then an ordinary attribute


def test_the_notebook_names_are_all_there():
    expected = {
        "load_run", "LoadedRun", "train", "TrainingConfig", "TRAINING_PRESETS", "ModelConfig", "MODEL_PRESETS",
        "evaluate", "seed_experiment", "knowledge_graph", "chain_experiment", "with_attributes", "load_fact_file",
        "make_prompt_pairs", "patch_sweep", "patch_sweeps", "localize", "direct_logit_attribution", "logit_lens",
        "attribution_patch", "compare_splits", "effective_weights", "probe_answer_identity", "gradient_step_effects",
        "starvation_report", "iter_checkpoints",
    }
    assert set(revinterp.__all__) == expected | {"__version__"}
    assert len(revinterp.__all__) == len(set(revinterp.__all__))
    assert set(revinterp.__all__) <= set(dir(revinterp))


def test_version_is_the_installed_distributions():
    assert revinterp.__version__ == importlib.metadata.version("revinterp")


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'revinterp' has no attribute 'effective_weight'"):
        revinterp.effective_weight  # noqa: B018
    assert not hasattr(revinterp, "torch")


def test_import_revinterp_loads_neither_torch_nor_transformer_lens():
    code = (
        "import json, sys, revinterp\n"
        "revinterp.__version__, dir(revinterp)\n"
        "before = sorted(m for m in ('torch', 'transformer_lens', 'jaxtyping') if m in sys.modules)\n"
        "revinterp.seed_experiment\n"
        "after = 'torch' in sys.modules\n"
        "print(json.dumps([before, after]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after = json.loads(out.stdout.splitlines()[-1])
    assert before == []
    assert after  # the check can fail: a top-level name does pull its module in
