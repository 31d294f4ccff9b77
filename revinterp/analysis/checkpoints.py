"""A run's saved checkpoints, one model at a time: the loop every over-training analysis shares.

Training writes weight snapshots at log-spaced steps (:func:`revinterp.training.checkpoint_steps`) under
``checkpoints/step_*.safetensors``. :func:`iter_checkpoints` loads them in turn into one model, built once and kept
apart from the run's own, and yields ``(step, model)``; an analysis over training is then a loop::

    run = as_loaded_run("runs/seed0")
    for step, model in iter_checkpoints(run):
        results.append(effective_weights(model, run.facts, tokenizer=run.tokenizer, step=step))

Example:
    >>> from revinterp.evaluation import evaluate
    >>> run = as_loaded_run("runs/seed0")                                               # doctest: +SKIP
    >>> for step, model in iter_checkpoints(run, steps=[0, 100]):                         # doctest: +SKIP
    ...     print(step, evaluate(model, run.facts)["reverse_held_out"].accuracy)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from revinterp.evaluation import model_device
from revinterp.models import LoadedRun, build_model, load_run, load_weights
from revinterp.training import list_checkpoints

__all__ = ["as_loaded_run", "iter_checkpoints"]


def as_loaded_run(run: str | Path | LoadedRun, *, device=None) -> LoadedRun:
    """``run`` itself when it is a :class:`~revinterp.models.LoadedRun`, else the run directory loaded
    (:func:`revinterp.models.load_run`, on ``device``)."""
    return run if isinstance(run, LoadedRun) else load_run(run, device=device)


def iter_checkpoints(
    run: str | Path | LoadedRun, steps: Sequence[int] | None = None, *, device=None
) -> Iterator[tuple[int, object]]:
    """``(step, model)`` for each saved checkpoint of a run, in step order (or in the order of ``steps``).

    The checkpoints are loaded one after the other into a single model built once for the iteration: the same
    object is yielded at every step with its weights replaced, in eval mode, so keep what you need of it before
    the next step. A :class:`~revinterp.models.LoadedRun`'s own model is never touched.

    Args:
        run: a run directory written by :func:`revinterp.training.train`, or a loaded run.
        steps: the training steps to load (default every checkpoint, from step 0).
        device: where to build the model (default the loaded run's device, or
            :func:`revinterp.models.default_device` for a run directory).

    Raises:
        ValueError: the run has no checkpoints, ``steps`` is empty, or a step has no checkpoint (the message
            names the missing steps and the available ones).

    Example:
        >>> for step, model in iter_checkpoints("runs/seed0"):                            # doctest: +SKIP
        ...     print(step, model.W_E.norm().item())
    """
    run_dir = run.path if isinstance(run, LoadedRun) else Path(run)
    selected = _select(run_dir, steps)  # here, not in the generator: bad steps fail at the call
    return _load_each(run, run_dir, selected, device)


def _load_each(run, run_dir: Path, selected: list[tuple[int, Path]], device) -> Iterator[tuple[int, object]]:
    if isinstance(run, LoadedRun):
        model = build_model(run.config, run.tokenizer, device if device is not None else model_device(run.model))
        config = run.config
    else:  # nobody else holds this run's model: load into it
        loaded = load_run(run_dir, checkpoint=selected[0][1], device=device)
        model, config = loaded.model, loaded.config
    for step, path in selected:
        load_weights(model, path, config)
        model.eval()
        yield step, model


def _select(run_dir: Path, steps: Sequence[int] | None) -> list[tuple[int, Path]]:
    """The ``(step, path)`` checkpoints at ``steps`` (default all), checked before anything is loaded."""
    available = list_checkpoints(run_dir)
    if not available:
        raise ValueError(f"{run_dir}: no weight checkpoints (checkpoints/step_*.safetensors)")
    if steps is None:
        return available
    steps = list(steps)
    if not steps:
        raise ValueError(f"{run_dir}: steps is empty; expected checkpoint steps from {[s for s, _ in available]}")
    by_step = dict(available)
    missing = [s for s in steps if s not in by_step]
    if missing:
        raise ValueError(f"{run_dir}: no checkpoint at steps {missing}; available: {sorted(by_step)}")
    return [(s, by_step[s]) for s in steps]
