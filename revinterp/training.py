"""Training from scratch: answer-only cross-entropy, AdamW, checkpoints, early stop, resume.

The loss follows the seed code of Zhu et al. (2024): cross-entropy on the answer entity's tokens
only (``loss="answer"``), or on every next token (``loss="sequence"``). A run directory gets, besides
the model files of :mod:`revinterp.models`::

    training.json                    TrainingConfig, the versions and environment (device, torch threads) that
                                     produced the run, and how it ended ("fit": fitted, steps, and for an unfitted
                                     run the splits that missed the criterion with what usually helps)
    history.jsonl                    one line per periodic evaluation: loss, accuracy and p(answer) per split
    checkpoints/step_0000100.safetensors   weights at log-spaced steps (for training dynamics)
    checkpoints/last.safetensors     weights + optimizer state of the newest step (for resume)

Every file is written atomically. Same seed, same data, same device type -> same weights. Steps run through
:func:`plain_model` (the bridge's own tensors without its hook points), bit-identical to steps through the bridge.

One writer per run directory: :func:`train` holds the directory's lock (:mod:`revinterp.rundir`) from its first
write to its end. Options are checked before anything is written, so a refused call leaves nothing behind (and
removes a directory it created when a later step refuses before training starts). A loss or weight that becomes
NaN or infinite stops training: ``training.json`` records ``"diverged": {"step", "reason", "message"}``,
:class:`revinterp.models.DivergedRunError` is raised, and loading the run (eval, analyze) refuses it with that
reason.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from revinterp.data import SPLITS, FactSet, encode_statements, load_tokenizer
from revinterp.evaluation import answer_scores
from revinterp.io import atomic_write_text, json_text, write_json
from revinterp.models import (
    FACTS_FILE,
    MODEL_CONFIG_FILE,
    TOKENIZER_FILE,
    TRAINING_FILE,
    CheckpointError,
    DivergedRunError,
    ModelConfig,
    build_model,
    check_field_types,
    check_not_diverged,
    config_for_data,
    default_device,
    is_int,
    load_weights,
    non_finite_summary,
    read_model_config,
    read_weights,
    save_model,
    save_weights,
    write_model_config,
    write_run_data,
)
from revinterp.objectives import (
    OBJECTIVES,
    objective_loss,
    objective_model_config,
    objective_tokenizer,
    query_model,
)
from revinterp.rundir import LOCK_FILE, run_lock

HISTORY_FILE = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.safetensors"
SCHEDULES = ("constant", "cosine", "linear")
SPLITS_TRAINED = {name for name, trained in SPLITS.items() if trained}
LOSSES = ("answer", "sequence")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained. Defaults are the seed's: AdamW, lr 0.01, batch 64.

    A split is *fitted* when its accuracy is 100 % and its mean answer probability is at least
    ``fit_probability`` (0.99, as the seed's curves), both over its distinct questions: a question with several
    valid answers (a child's two parents) is right when the greedy answer is any of them and its probability is
    that of any of them (:func:`per_question`); training stops early once every trained split is fitted
    (``early_stop``).
    """

    max_steps: int = 6000
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    warmup_steps: int = 0
    loss: str = "answer"
    objective: str = "next_token"
    eval_every: int = 50
    n_checkpoints: int = 20
    early_stop: bool = True
    fit_probability: float = 0.99
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: expected one of {LOSSES}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}: expected one of {OBJECTIVES} (revinterp.objectives)")
        if self.objective != "next_token" and self.loss != "answer":
            raise ValueError(f"loss={self.loss!r} with objective {self.objective!r}: the objective chooses its own "
                             "targets; expected loss='answer'")
        for name in ("max_steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        for name in ("warmup_steps", "n_checkpoints", "seed"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}={value!r}: expected a non-negative integer")
        if not is_number(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr={self.lr!r}: expected a finite learning rate > 0")
        if not is_number(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected a finite number >= 0")
        if (not isinstance(self.betas, tuple) or len(self.betas) != 2
                or not all(is_number(b) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas={self.betas!r}: expected two numbers in [0, 1)")
        if not is_number(self.fit_probability) or not 0 < self.fit_probability <= 1:
            raise ValueError(f"fit_probability={self.fit_probability!r}: expected a probability in (0, 1]")
        if not isinstance(self.early_stop, bool):
            raise ValueError(f"early_stop={self.early_stop!r}: expected true or false")

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "linear":
            return self.lr * (1 - progress)
        return self.lr


TRAINING_PRESETS: dict[str, TrainingConfig] = {
    "tiny": TrainingConfig(max_steps=3000, eval_every=25),
    "default": TrainingConfig(max_steps=6000),
    "deep": TrainingConfig(max_steps=6000, lr=0.003, warmup_steps=100),
}


def checkpoint_steps(max_steps: int, n: int) -> set[int]:
    """``n`` log-spaced steps in [1, max_steps], plus step 0 (the initialization)."""
    if n <= 1:
        return {0}
    return {0} | {round(max_steps ** (i / (n - 1))) for i in range(n)}


AUTO_EPOCHS = 100
"""Epochs of the step budget that ``auto_configs`` gives (at least the preset's own ``max_steps``)."""
AUTO_SIZES = ((150, "tiny"), (2500, "default"))
"""``(most trained statements, preset)``: the first preset whose bound the trained statements do not exceed;
``deep`` above the last bound."""


def auto_configs(facts: FactSet) -> tuple[ModelConfig, TrainingConfig, str]:
    """The model and training configuration that ``--preset auto`` sizes from a fact set, and the rule as text.

    Rule: with N trained statements, the ``tiny`` preset (1 layer, d_model 64) up to 150, ``default`` (2 layers,
    d_model 128; the 200-pair seed experiment has 340) up to 2,500, else ``deep`` (4 layers, d_model 256): a
    small model fits a few hundred one-token facts, and more facts need more width to store them. The step budget
    is at least the preset's and at least ``AUTO_EPOCHS`` epochs (``ceil(100 N / batch)``) so that large fact sets
    are seen often enough to reach p >= 0.99.
    """
    from revinterp.models import MODEL_PRESETS

    n = len(facts.train)
    if n == 0:
        raise ValueError("the fact set has no trained statements; expected at least one to size a model for")
    preset = next((name for bound, name in AUTO_SIZES if n <= bound), "deep")
    training = TRAINING_PRESETS[preset]
    steps = max(training.max_steps, math.ceil(AUTO_EPOCHS * n / training.batch_size))
    rule = (f"{n} trained statements -> preset {preset!r} (tiny <= {AUTO_SIZES[0][0]} < default <= "
            f"{AUTO_SIZES[1][0]} < deep), max_steps {steps} (at least {AUTO_EPOCHS} epochs of batch "
            f"{training.batch_size})")
    return MODEL_PRESETS[preset], replace(training, max_steps=steps), rule


@dataclass
class TrainingResult:
    """What :func:`train` returns: the model (eval mode), the run directory and how it ended; ``guidance`` says,
    for a run that ended unfitted, which splits missed the criterion and what usually helps (:func:`fit_guidance`)."""

    model: object
    run_dir: Path
    steps: int
    fitted: bool
    history: list[dict]
    guidance: dict | None = None


def fit_guidance(history: list[dict], training: TrainingConfig, model: ModelConfig) -> dict | None:
    """Which trained splits missed the fit criterion at the last evaluation, by how much, and what usually helps;
    None for a fitted run.

    Each missed split gets its accuracy and mean p(answer) with the gaps to 100 % and to ``fit_probability``. The
    advice follows the last evaluations: more steps while every split's accuracy is 100 % but p(answer) falls short
    (the slow last stretch of fitting), or while the loss still falls; a smaller learning rate with a warm-up when
    the loss rose over the last quarter of the evaluations (it oscillates); a larger model when some split is
    below 90 % accuracy after the whole budget (too many facts for its width).
    """
    if not history or history[-1]["fitted"]:
        return None
    last = history[-1]
    trained = [name for name, m in last["splits"].items() if name in SPLITS_TRAINED]
    missed = {}
    for name in trained:
        m = last["splits"][name]
        if m["accuracy"] < 1.0 or m["probability"] < training.fit_probability:
            missed[name] = {"accuracy": m["accuracy"], "probability": m["probability"],
                            "accuracy_gap": 1.0 - m["accuracy"],
                            "probability_gap": max(0.0, training.fit_probability - m["probability"])}
    losses = [h["loss"] for h in history if h["loss"] is not None]
    recent = losses[-max(2, len(losses) // 4):]
    advice = []
    if all(m["accuracy"] == 1.0 for m in missed.values()) or (len(recent) > 1 and recent[-1] < recent[0]):
        advice.append(f"train longer: --steps {2 * training.max_steps} (p(answer) still short of "
                      f"{training.fit_probability:g})")
    if len(recent) > 1 and recent[-1] > recent[0]:
        advice.append(f"a smaller learning rate with a warm-up: --lr {training.lr / 3:.3g} (the loss rose from "
                      f"{recent[0]:.3g} to {recent[-1]:.3g} over the last evaluations)")
    if any(m["accuracy"] < 0.9 for m in missed.values()):
        advice.append(f"a larger model: --preset deep or --preset auto (d_model {model.d_model}, {model.n_layers} "
                      "layers may be too small for this many facts)")
    if not advice:
        advice.append(f"train longer: --steps {2 * training.max_steps}")
    return {"step": last["step"], "criterion": f"accuracy 100% and mean p(answer) >= {training.fit_probability:g} "
                                               "on every trained split",
            "missed": missed, "advice": advice}


def format_guidance(guidance: dict) -> str:
    """The guidance of :func:`fit_guidance` as lines for the command line."""
    lines = [f"NOT fitted after {guidance['step']} steps ({guidance['criterion']}); missed:"]
    for name, m in guidance["missed"].items():
        lines.append(f"  {name}: accuracy {100 * m['accuracy']:.1f}% (short by {100 * m['accuracy_gap']:.1f} "
                     f"points), mean p(answer) {m['probability']:.4f} (short by {m['probability_gap']:.4f})")
    lines.append("what usually helps: " + "; ".join(guidance["advice"]))
    return "\n".join(lines)


def train(
    facts: FactSet,
    model_config: ModelConfig,
    training_config: TrainingConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainingResult:
    """Train a fresh model on the trained splits of ``facts`` and write the run to ``run_dir``.

    Args:
        facts: the fact set; its ``train`` statements are the training data.
        model_config: architecture (``d_vocab`` and ``n_ctx`` are set from the data).
        training_config: optimizer, schedule, stopping and checkpointing.
        run_dir: a new directory, or with ``resume=True`` an existing run of the same configuration,
            continued from its last checkpoint.
        device: default :func:`revinterp.models.default_device`.
        progress: show a progress bar.
        on_eval: called with each history record.

    Example:
        >>> from revinterp.data import seed_experiment
        >>> from revinterp.models import MODEL_PRESETS
        >>> result = train(seed_experiment(40), MODEL_PRESETS["tiny"], TrainingConfig(), "runs/x")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not isinstance(training_config, TrainingConfig) or not isinstance(model_config, ModelConfig):
        raise ValueError("train() takes a ModelConfig and a TrainingConfig; got "
                         f"{type(model_config).__name__} and {type(training_config).__name__}")
    if not facts.train:
        raise ValueError("the fact set has no trained statements; expected at least one to train on")
    # Everything that can refuse the call comes before the first write: the data, the model, the optimizer.
    device = torch.device(device) if device is not None else default_device()
    tokenizer = objective_tokenizer(facts, training_config.objective)
    model_config = objective_model_config(config_for_data(model_config, facts, tokenizer), training_config.objective)
    training_record = {"training": asdict(training_config), "versions": versions(),
                       "environment": {"device": str(device), "torch_threads": torch.get_num_threads()}}
    train_data = encode_statements(facts, facts.train, tokenizer).to(device)
    eval_data = {name: encode_statements(facts, facts.split(name), tokenizer).to(device)
                 for name in facts.split_names}
    model = build_model(model_config, tokenizer, device)
    model.train()
    # foreach: one fused kernel per update over all tensors, bit-identical to the per-tensor loop (tested)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training_config.lr, betas=training_config.betas,
        weight_decay=training_config.weight_decay, foreach=True,
    )
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file; expected a run directory (new or, with resume, an existing one)")

    created = make_directory(run_dir)  # the top-most directory this call created, or None
    # A writer that finds the lock taken leaves everything as it is: the holder may be the one that made the
    # directory between our mkdir and our lock.
    with run_lock(run_dir, purpose="train"):
        fresh = not any(p.name != LOCK_FILE for p in run_dir.iterdir())
        try:
            if not fresh:
                if not resume:
                    raise FileExistsError(
                        f"run directory {run_dir} already exists; pass resume=True (--resume) to continue it, "
                        "or choose a new output directory"
                    )
                check_resumable(run_dir, facts, model_config, training_config)
            else:
                write_run_data(run_dir, facts, tokenizer)
                write_model_config(run_dir, model_config)
                write_json(run_dir / TRAINING_FILE, training_record)
        except BaseException:
            if fresh:
                remove_created(run_dir, created)
            raise
        return _train_locked(facts, model, optimizer, model_config, training_config, run_dir, train_data,
                             eval_data, training_record, resume=resume, progress=progress, on_eval=on_eval)


def make_directory(run_dir: Path) -> Path | None:
    """``mkdir -p run_dir``; returns the top-most directory this call created (None if it already existed)."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in reversed(missing):  # outermost first: the first that we (not a racing writer) made
        if p.is_dir():
            return p
    return None


def remove_created(run_dir: Path, created: Path | None) -> None:
    """Undo the setup of a fresh run: the directories this call created, else the files it wrote."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for name in (FACTS_FILE, TOKENIZER_FILE, MODEL_CONFIG_FILE, TRAINING_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _train_locked(facts, model, optimizer, model_config, training_config, run_dir, train_data, eval_data,
                  training_record, *, resume, progress, on_eval) -> TrainingResult:
    """The training loop of :func:`train`, with the run directory set up and locked."""
    start_step, history, finished = 0, [], False
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume and last.is_file():
        start_step, finished = load_training_state(last, model, optimizer, model_config)
        history = [h for h in read_history(run_dir) if h["step"] <= start_step]
    # killed after the last step's state was saved but before the final model: the state holds those weights, so
    # the run is finished from it (snapshot, model, record) without another step
    complete = finished and (run_dir / "model.safetensors").is_file()

    trained_splits = [name for name in facts.split_names if facts.split(name)[0].trained]
    plain = plain_model(model)
    query = query_model(plain, training_config.objective, model.tokenizer)  # how the objective asks a question
    snapshot_steps = checkpoint_steps(training_config.max_steps, training_config.n_checkpoints)
    n = len(train_data)
    batches_per_epoch = math.ceil(n / training_config.batch_size)

    def diverge(step: int, reason: str):
        message = (f"training diverged at step {step}: {reason} (lr {training_config.lr:g}, schedule "
                   f"{training_config.schedule}); the run is marked as diverged in {run_dir / TRAINING_FILE} and "
                   "has no final model. Train a new run with a smaller --lr (or a warm-up)")
        write_json(run_dir / TRAINING_FILE, {**training_record, "diverged": {"step": step, "reason": reason,
                                                                             "message": message}})
        return DivergedRunError(message)

    def check_weights(step: int) -> None:
        for name, tensor in model.state_dict().items():
            summary = non_finite_summary(name, tensor)
            if summary is not None:
                raise diverge(step, f"weight {summary}")

    def evaluate_now(step: int, loss: float | None) -> dict:
        model.eval()
        with torch.no_grad():
            record = {"step": step, "loss": loss, "splits": {}}
            for name, data in eval_data.items():
                logprob, correct = answer_scores(query, data, vocab_size=model_config.d_vocab)
                logprob, hit = per_question(data.statements, logprob, correct)
                record["splits"][name] = {"accuracy": hit.float().mean().item(),
                                          "probability": logprob.exp().mean().item(),
                                          "log_probability": logprob.mean().item()}
        model.train()
        record["fitted"] = all(
            record["splits"][s]["accuracy"] == 1.0
            and record["splits"][s]["probability"] >= training_config.fit_probability
            for s in trained_splits
        )
        history.append(record)
        write_history(run_dir, history)
        if on_eval is not None:
            on_eval(record)
        return record

    step = start_step
    if not finished:
        if step == 0:
            check_weights(0)
            save_weights(checkpoint_path(run_dir, 0), model.state_dict(), model_config, step=0)
            evaluate_now(0, None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=training_config.max_steps, initial=step, desc="training", unit="step")
        try:
            running_loss, running_count = 0.0, 0
            while step < training_config.max_steps:
                epoch, batch_index = divmod(step, batches_per_epoch)
                order = torch.randperm(n, generator=torch.Generator().manual_seed(
                    training_config.seed * 1_000_003 + epoch))
                rows = order[batch_index * training_config.batch_size:(batch_index + 1) * training_config.batch_size]
                batch = train_data.select(rows.to(train_data.tokens.device))
                for group in optimizer.param_groups:
                    group["lr"] = training_config.lr_at(step)
                loss = batch_loss(plain, batch, training_config.loss) if training_config.objective == "next_token" \
                    else objective_loss(plain, facts, batch, training_config.objective, model.tokenizer,
                                        random.Random(training_config.seed * 1_000_003 + step))
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise diverge(step + 1, f"the loss is {loss_value}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                running_loss += loss_value
                running_count += 1
                if bar is not None:
                    bar.update(1)
                if step in snapshot_steps:
                    check_weights(step)
                    save_weights(checkpoint_path(run_dir, step), model.state_dict(), model_config, step=step)
                if step % training_config.eval_every == 0 or step == training_config.max_steps:
                    check_weights(step)
                    record = evaluate_now(step, running_loss / running_count)
                    running_loss, running_count = 0.0, 0
                    done = step == training_config.max_steps or (training_config.early_stop and record["fitted"])
                    save_training_state(last, model, optimizer, model_config, step, finished=done)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.3g}", fitted=record["fitted"])
                    if done:
                        break
        finally:
            if bar is not None:
                bar.close()
    if complete:
        load_weights(model, run_dir / "model.safetensors", model_config)
    else:
        check_weights(step)
        if step not in snapshot_steps:
            save_weights(checkpoint_path(run_dir, step), model.state_dict(), model_config, step=step)
        save_model(run_dir, model, model_config)
    model.eval()
    fitted = bool(history and history[-1]["fitted"])
    guidance = fit_guidance(history, training_config, model_config)
    if not complete:
        write_json(run_dir / TRAINING_FILE, {**training_record, "fit": {"fitted": fitted, "steps": step,
                                                                       "guidance": guidance}})
    return TrainingResult(model=model, run_dir=run_dir, steps=step, fitted=fitted, history=history,
                          guidance=guidance)


def plain_model(model) -> torch.nn.Module:
    """A plain TransformerLens ``NativeModel`` that shares the parameters of a ``TransformerBridge.boot_native`` bridge.

    The bridge wraps every submodule of its ``NativeModel`` in a hooked component. This is a fresh ``NativeModel`` of
    the same config whose parameters and buffers *are* the bridge's tensors (no copy) and whose attention, MLPs,
    embeddings and unembedding run without hook points. Its normalizations are the bridge's own components: the
    bridge computes LayerNorm/RMSNorm from scratch (to expose ``hook_scale``), which rounds differently from
    ``F.layer_norm``, and sharing them keeps every forward and every training step bit-identical to the bridge's
    (tested) at a lower cost. Any other model (no ``NativeModel`` inside) is returned as it is.
    """
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
    from transformer_lens.model_bridge.sources.native import NativeModel

    original = getattr(model, "original_model", None)
    if not isinstance(original, NativeModel):
        return model
    tensors = {name.replace("._original_component", "").replace("_original_component.", ""): tensor
               for named in (original.named_parameters(remove_duplicate=False),
                             original.named_buffers(remove_duplicate=False))
               for name, tensor in named}
    with torch.random.fork_rng(devices=[]):  # the fresh model's random init must not move the global generator
        plain = NativeModel(copy.deepcopy(original.cfg))
    for prefix, module in plain.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for key in table:
                table[key] = tensors[f"{prefix}.{key}" if prefix else key]
    for path, _ in list(plain.named_modules()):
        bridged = original
        for part in path.split(".") if path else ():
            bridged = getattr(getattr(bridged, "original_component", None) or bridged, part)
        if isinstance(bridged, NormalizationBridge):
            parent, _, name = path.rpartition(".")
            setattr(plain.get_submodule(parent), name, bridged)
    shared = {id(t) for t in tensors.values()}
    if not all(id(t) in shared for t in (*plain.parameters(), *plain.buffers())):
        raise RuntimeError("the plain model does not share every tensor with the bridge")
    # Once the bridge has run, its blocks keep a pre-hook on the shared ln1 that stores ln1's input on the attention
    # bridge for its own forward (which releases it at the end). A plain forward fires that hook too and nothing
    # releases it: the stored activation, with its autograd graph, would stay on the bridge (memory held, and
    # copy.deepcopy of the bridge refused). Release it after every plain forward.
    captures = [m for m in model.modules() if hasattr(m, "_captured_pre_ln_residual")]

    def release(*_):
        for module in captures:
            module._captured_pre_ln_residual = None

    plain.register_forward_hook(release)
    return plain.train(model.training)


def per_question(statements, logprob: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distinct question ``(subject, relation)``: the log-probability of any of its valid answers (the log of the
    sum of its statements' probabilities: distinct answers are disjoint events) and whether the greedy answer is one
    of them. With one answer per question these are the statements' own values, so single-answer runs are unchanged;
    with ``k`` answers a question can reach probability 1 where each answer alone reaches about ``1 / k``."""
    index: dict[tuple[str, str], int] = {}
    rows = torch.tensor([index.setdefault((s.subject, s.relation), len(index)) for s in statements],
                        device=logprob.device)
    if len(index) == len(statements):
        return logprob, correct
    top = torch.full((len(index),), -torch.inf, dtype=logprob.dtype, device=logprob.device).scatter_reduce(
        0, rows, logprob, "amax")
    top = torch.where(torch.isfinite(top), top, 0.0)
    total = torch.zeros(len(index), dtype=logprob.dtype, device=logprob.device).index_add_(
        0, rows, (logprob - top[rows]).exp())
    hits = torch.zeros(len(index), dtype=torch.long, device=correct.device).index_add_(0, rows, correct.long())
    return total.log() + top, hits > 0


def batch_loss(model, batch, loss: str) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (``"answer"``) or every real next token."""
    logits = model(batch.tokens)[:, :-1]
    target = batch.tokens[:, 1:]
    if loss == "answer":
        mask = batch.answer_mask[:, 1:]
    else:
        lengths = batch.prompt_lengths + batch.answer_lengths
        mask = torch.arange(target.shape[1], device=target.device)[None] < (lengths[:, None] - 1)
    return F.cross_entropy(logits[mask], target[mask])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{step:07d}.safetensors"


CHECKPOINT_NAME = re.compile(r"^step_([0-9]{1,12})\.safetensors$")


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The log-spaced weight snapshots of a run, as ``(step, path)`` sorted by step.

    A file ``checkpoints/step_*.safetensors`` whose name is not ``step_<digits>.safetensors`` is an error (a
    :class:`~revinterp.models.CheckpointError` naming it), as are two files of one step.
    """
    found: dict[int, Path] = {}
    for path in sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step_*.safetensors")):
        match = CHECKPOINT_NAME.match(path.name)
        if match is None:
            raise CheckpointError(f"{path}: not a checkpoint name; expected step_<step number>.safetensors, e.g. "
                                  "step_0000100.safetensors (rename or remove the file)")
        step = int(match.group(1))
        if step in found:
            raise CheckpointError(f"{path} and {found[step]} are both checkpoints of step {step}; expected one "
                                  "file per step (remove one)")
        found[step] = path
    return sorted(found.items())


def save_training_state(path: Path, model, optimizer, config: ModelConfig, step: int, finished: bool) -> None:
    """Weights and AdamW moments in one safetensors file (no pickle); the lr follows from ``step``."""
    tensors = dict(model.state_dict())
    for i, param in enumerate(optimizer.param_groups[0]["params"]):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"optimizer.{i}.{key}"] = torch.as_tensor(state[key]).reshape(-1) if key == "step" \
                    else state[key]
    save_weights(path, tensors, config, step=step, finished=int(finished))


def load_training_state(path: Path, model, optimizer, config: ModelConfig) -> tuple[int, bool]:
    meta = load_weights(model, path, config)
    tensors, _ = read_weights(path, config)
    params = optimizer.param_groups[0]["params"]
    for i, param in enumerate(params):
        if f"optimizer.{i}.exp_avg" in tensors:
            device = param.device
            optimizer.state[param] = {
                "step": tensors[f"optimizer.{i}.step"].reshape(()).to(torch.float32),
                "exp_avg": tensors[f"optimizer.{i}.exp_avg"].to(device),
                "exp_avg_sq": tensors[f"optimizer.{i}.exp_avg_sq"].to(device),
            }
    return int(meta["step"]), meta.get("finished") == "1"


def check_resumable(run_dir: Path, facts: FactSet, model_config: ModelConfig, training: TrainingConfig) -> None:
    """Refuse to resume a run directory written with other data or another configuration, or that diverged."""
    saved_model = read_model_config(run_dir)
    for name in (FACTS_FILE, TOKENIZER_FILE, TRAINING_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir}: incomplete run directory (no {name}); expected a run written by "
                                  "train() to resume")
    check_not_diverged(run_dir)
    if saved_model != model_config:
        raise CheckpointError(f"{run_dir} holds a run of model {saved_model}; expected {model_config}")
    try:
        saved_facts = FactSet.load(run_dir / FACTS_FILE)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        saved_vocab = load_tokenizer(run_dir / TOKENIZER_FILE).get_vocab()
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise CheckpointError(f"{run_dir / TOKENIZER_FILE}: unreadable tokenizer ({e})") from None
    if saved_vocab != objective_tokenizer(facts, training.objective).get_vocab():
        raise CheckpointError(f"{run_dir / TOKENIZER_FILE} does not match the vocabulary of the facts (token ids "
                              "differ); expected the tokenizer train() wrote for them")
    if saved_facts.to_manifest() != facts.to_manifest():
        raise CheckpointError(f"{run_dir} holds a run on other facts ({saved_facts.source}); expected {facts.source}")
    saved_training = read_training_config(run_dir)
    if saved_training != training:
        raise CheckpointError(f"{run_dir} was trained with {saved_training}; expected {training}")


def read_training_config(run_dir: str | Path) -> TrainingConfig:
    """The :class:`TrainingConfig` of ``run_dir/training.json``, checked field by field."""
    path = Path(run_dir) / TRAINING_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {TRAINING_FILE})")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: not a training record ({type(e).__name__}: {e}); expected the JSON object "
                              "that train() writes") from None
    data = record.get("training") if isinstance(record, dict) else None
    if not isinstance(data, dict):
        got = type(record).__name__ if not isinstance(record, dict) else f"field 'training' {type(data).__name__}"
        raise CheckpointError(f"{path}: not a training record ({got}); expected the JSON object that train() "
                              'writes, {"training": {...}, "versions": {...}}')
    known = {f.name for f in fields(TrainingConfig)}
    if set(data) - known:
        raise CheckpointError(f"{path}: unknown training settings {sorted(set(data) - known)}; expected only "
                              f"{sorted(known)}")
    values = check_field_types(TrainingConfig, data, f"{path}: field 'training'")
    try:
        return replace(TrainingConfig(), **values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'training': {e}") from None


def read_history(run_dir: str | Path) -> list[dict]:
    """The periodic evaluations of a run (``history.jsonl``), each line checked: ``step`` an integer, ``loss`` a
    number or null, ``splits`` an object of ``{accuracy, probability}`` numbers in [0, 1] and, in runs since it was
    recorded, ``log_probability`` (the mean log p(answer) over questions), ``fitted`` true or false."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    history = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{where}: not valid JSON ({e}); expected one evaluation record per line") from None
        check_history_record(where, record)
        if history and record["step"] <= history[-1]["step"]:
            raise CheckpointError(f"{where}: step {record['step']} after step {history[-1]['step']}; expected "
                                  "increasing steps")
        history.append(record)
    return history


def check_history_record(where: str, record) -> None:
    def finite_number(value) -> bool:
        return is_number(value) and math.isfinite(value)

    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: a JSON {type(record).__name__}; expected an object "
                              "{step, loss, splits, fitted}")
    missing = [k for k in ("step", "loss", "splits", "fitted") if k not in record]
    if missing:
        raise CheckpointError(f"{where}: fields {missing} are missing; expected step, loss, splits and fitted")
    if not is_int(record["step"]) or record["step"] < 0:
        raise CheckpointError(f"{where}: field 'step' is {record['step']!r}; expected a non-negative integer")
    if record["loss"] is not None and not finite_number(record["loss"]):
        raise CheckpointError(f"{where}: field 'loss' is {record['loss']!r}; expected a finite number or null")
    if not isinstance(record["fitted"], bool):
        raise CheckpointError(f"{where}: field 'fitted' is {record['fitted']!r}; expected true or false")
    splits = record["splits"]
    if not isinstance(splits, dict):
        raise CheckpointError(f"{where}: field 'splits' is {type(splits).__name__}; expected an object per split")
    for name, m in splits.items():
        if not isinstance(m, dict):
            raise CheckpointError(f"{where}: field 'splits.{name}' is {m!r}; expected {{accuracy, probability}}")
        for key in ("accuracy", "probability"):
            if not finite_number(m.get(key)) or not 0 <= m[key] <= 1 + 1e-6:
                raise CheckpointError(f"{where}: field 'splits.{name}.{key}' is {m.get(key)!r}; expected a "
                                      "number in [0, 1]")
        if "log_probability" in m and not (is_number(m["log_probability"]) and m["log_probability"] <= 1e-6):
            raise CheckpointError(f"{where}: field 'splits.{name}.log_probability' is {m['log_probability']!r}; "
                                  "expected a number <= 0 (or -Infinity)")


def write_history(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / HISTORY_FILE,
                      "".join(json_text(h, indent=None, what=str(run_dir / HISTORY_FILE)) + "\n" for h in history))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("revinterp", "torch", "transformer-lens"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
