"""Shared fixtures: one trained `tiny` run per test session (a few seconds on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

TINY_PAIRS = 40


@pytest.fixture(scope="session")
def tiny_facts():
    return seed_experiment(TINY_PAIRS, seed=0)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, tiny_facts):
    """A `tiny` model trained on 40 seed pairs until fitted, on the CPU."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = train(tiny_facts, MODEL_PRESETS["tiny"], TRAINING_PRESETS["tiny"], run_dir, progress=False,
                   device="cpu")
    assert result.fitted, "the tiny preset must fit its training splits"
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tiny_run_dir):
    """The trained tiny run loaded back (model in eval mode, on the CPU)."""
    return load_run(tiny_run_dir, device="cpu")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
