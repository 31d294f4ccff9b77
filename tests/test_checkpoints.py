"""The checkpoint iterator: every snapshot's exact weights, in a model apart from the run's, and clear errors."""

from __future__ import annotations

import pytest
import torch

from revinterp.analysis.checkpoints import as_loaded_run, iter_checkpoints
from revinterp.models import read_weights
from revinterp.training import list_checkpoints


def test_every_checkpoint_is_loaded_exactly_into_one_model(tiny_run_dir, tiny_run):
    available = list_checkpoints(tiny_run_dir)
    assert len(available) >= 3
    seen = []
    for (step, model), (expected_step, path) in zip(iter_checkpoints(tiny_run_dir, device="cpu"), available,
                                                    strict=True):
        assert step == expected_step
        assert not model.training
        tensors, _ = read_weights(path, tiny_run.config)
        state = model.state_dict()
        assert state.keys() == {k for k in tensors if not k.startswith("optimizer.")}
        assert all(torch.equal(state[k], tensors[k]) for k in state)
        seen.append(model)
    assert all(m is seen[0] for m in seen)  # built once, weights replaced at each step


def test_a_loaded_runs_own_model_is_left_alone(tiny_run):
    before = {k: v.clone() for k, v in tiny_run.model.state_dict().items()}
    first_step = list_checkpoints(tiny_run.path)[0][0]
    for step, model in iter_checkpoints(tiny_run, [first_step]):
        assert step == first_step
        assert model is not tiny_run.model
        assert next(model.parameters()).device == next(tiny_run.model.parameters()).device
        # step 0 is the initialization: far from the trained weights
        assert not torch.equal(model.W_E, tiny_run.model.W_E)
    after = tiny_run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not tiny_run.model.training


def test_the_last_checkpoint_is_the_final_model(tiny_run):
    last = list_checkpoints(tiny_run.path)[-1][0]
    ((step, model),) = list(iter_checkpoints(tiny_run, [last]))
    assert step == last
    final = tiny_run.model.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())


def test_steps_select_and_order_the_checkpoints(tiny_run):
    steps = [s for s, _ in list_checkpoints(tiny_run.path)]
    chosen = [steps[-1], steps[0], steps[1]]
    assert [s for s, _ in iter_checkpoints(tiny_run, chosen)] == chosen


def test_bad_steps_fail_at_the_call_naming_missing_and_available_steps(tiny_run, tmp_path):
    steps = [s for s, _ in list_checkpoints(tiny_run.path)]
    with pytest.raises(ValueError, match=r"no checkpoint at steps \[7777, 8888\]; available: ") as error:
        iter_checkpoints(tiny_run, [steps[0], 7777, 8888])  # no next(): checked before iterating
    assert str(steps) in str(error.value)
    with pytest.raises(ValueError, match="steps is empty"):
        iter_checkpoints(tiny_run.path, [])
    with pytest.raises(ValueError, match="no weight checkpoints"):
        iter_checkpoints(tmp_path)


def test_as_loaded_run_passes_a_run_through_and_loads_a_directory(tiny_run, tiny_run_dir):
    assert as_loaded_run(tiny_run) is tiny_run
    loaded = as_loaded_run(tiny_run_dir, device="cpu")
    assert loaded.path == tiny_run.path and loaded.facts.statements == tiny_run.facts.statements
    assert all(torch.equal(v, tiny_run.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
