"""Shared fixtures: one trained `tiny` run per test session (a few seconds on 2 CPU cores), and a trained run of the
`default` architecture on a reduced fact set, cached across sessions under pytest's cache directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from revinterp.data import seed_experiment
from revinterp.models import MODEL_PRESETS, load_run
from revinterp.training import TRAINING_PRESETS, train

TINY_PAIRS = 40
DEFAULT_PAIRS = 60


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


def _code_fingerprint(config: dict) -> str:
    """Hash of what determines a trained run: the configuration, torch's version and the code that trains."""
    import revinterp

    package = Path(revinterp.__path__[0])
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(torch.__version__.encode())
    for source in sorted([*package.glob("data/*.py"), package / "models.py", package / "training.py",
                          package / "evaluation.py", package / "io.py"]):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def default_run_dir(request):
    """The `default` architecture (2 layers, d_model 128) trained until fitted on 60 seed pairs, on the CPU.

    Trained once and kept under pytest's cache directory (not committed), keyed by a hash of the configuration
    and of the training code, so a change to either trains it anew.
    """
    facts = seed_experiment(DEFAULT_PAIRS, seed=0)
    model_config, training_config = MODEL_PRESETS["default"], TRAINING_PRESETS["default"]
    key = _code_fingerprint({"facts": [asdict(s) for s in facts.statements], "model": asdict(model_config),
                             "training": asdict(training_config)})
    cache = Path(request.config.cache.mkdir("revinterp-default-run"))
    run_dir = cache / key
    if not (run_dir / "model.safetensors").is_file():
        for stale in cache.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        result = train(facts, model_config, training_config, run_dir, progress=False, device="cpu")
        assert result.fitted, "the default preset must fit its training splits"
    return run_dir


@pytest.fixture(scope="session")
def default_run(default_run_dir):
    """The trained default-architecture run loaded back (model in eval mode, on the CPU)."""
    return load_run(default_run_dir, device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models (a second thread only adds synchronisation, badly so on a busy
    machine); the previous count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
