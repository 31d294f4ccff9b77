"""Training from scratch: answer-only cross-entropy, AdamW, checkpoints, early stop, resume.

The loss follows the seed code of Zhu et al. (2024): cross-entropy on the answer entity's tokens
only (``loss="answer"``), or on every next token (``loss="sequence"``). A run directory gets, besides
the model files of :mod:`revinterp.models`::

    training.json                    TrainingConfig and the versions that produced the run
    history.jsonl                    one line per periodic evaluation: loss, accuracy and p(answer) per split
    checkpoints/step_0000100.safetensors   weights at log-spaced steps (for training dynamics)
    checkpoints/last.safetensors     weights + optimizer state of the newest step (for resume)

Every file is written atomically. Same seed, same data, same device type -> same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from revinterp.data import FactSet, encode_statements
from revinterp.evaluation import answer_scores
from revinterp.io import atomic_write_text
from revinterp.models import (
    CheckpointError,
    ModelConfig,
    build_model,
    config_for_data,
    default_device,
    load_weights,
    read_model_config,
    read_weights,
    save_model,
    save_weights,
    tokenizer_for,
    write_model_config,
    write_run_data,
)

TRAINING_FILE = "training.json"
HISTORY_FILE = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.safetensors"
SCHEDULES = ("constant", "cosine", "linear")
LOSSES = ("answer", "sequence")


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained. Defaults are the seed's: AdamW, lr 0.01, batch 64.

    A split is *fitted* when its accuracy is 100 % and its mean answer probability is at least
    ``fit_probability`` (0.99, as the seed's curves); training stops early once every trained
    split is fitted (``early_stop``).
    """

    max_steps: int = 6000
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    warmup_steps: int = 0
    loss: str = "answer"
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
        for name in ("max_steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive integer")

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


@dataclass
class TrainingResult:
    """What :func:`train` returns: the model (eval mode), the run directory and how it ended."""

    model: object
    run_dir: Path
    steps: int
    fitted: bool
    history: list[dict]


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
    device = torch.device(device) if device is not None else default_device()
    tokenizer = tokenizer_for(facts)
    model_config = config_for_data(model_config, facts, tokenizer)
    training_record = {"training": asdict(training_config), "versions": versions()}

    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} is a file; expected a run directory (new or, with resume, an existing one)")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
            raise FileExistsError(
                f"run directory {run_dir} already exists; pass resume=True (--resume) to continue it, "
                "or choose a new output directory"
            )
        check_resumable(run_dir, facts, model_config, training_config)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_data(run_dir, facts, tokenizer)
        write_model_config(run_dir, model_config)
        atomic_write_text(run_dir / TRAINING_FILE, json.dumps(training_record, indent=1))

    model = build_model(model_config, tokenizer, device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training_config.lr, betas=training_config.betas,
        weight_decay=training_config.weight_decay,
    )
    start_step, history, finished = 0, [], False
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume and last.is_file():
        start_step, finished = load_training_state(last, model, optimizer, model_config)
        history = [h for h in read_history(run_dir) if h["step"] <= start_step]

    train_data = encode_statements(facts, facts.train, tokenizer).to(device)
    eval_data = {name: encode_statements(facts, facts.split(name), tokenizer).to(device)
                 for name in facts.split_names}
    trained_splits = [name for name in facts.split_names if facts.split(name)[0].trained]
    snapshot_steps = checkpoint_steps(training_config.max_steps, training_config.n_checkpoints)
    n = len(train_data)
    batches_per_epoch = math.ceil(n / training_config.batch_size)

    def evaluate_now(step: int, loss: float | None) -> dict:
        model.eval()
        with torch.no_grad():
            record = {"step": step, "loss": loss, "splits": {}}
            for name, data in eval_data.items():
                logprob, correct = answer_scores(model, data)
                record["splits"][name] = {
                    "accuracy": correct.float().mean().item(), "probability": logprob.exp().mean().item(),
                }
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
            save_weights(checkpoint_path(run_dir, 0), model.state_dict(), model_config, step=0)
            evaluate_now(0, None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=training_config.max_steps, initial=step, desc="training", unit="step")
        running_loss, running_count = 0.0, 0
        while step < training_config.max_steps:
            epoch, batch_index = divmod(step, batches_per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(
                training_config.seed * 1_000_003 + epoch))
            rows = order[batch_index * training_config.batch_size:(batch_index + 1) * training_config.batch_size]
            batch = train_data.select(rows.to(device))
            for group in optimizer.param_groups:
                group["lr"] = training_config.lr_at(step)
            loss = batch_loss(model, batch, training_config.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running_loss += loss.item()
            running_count += 1
            if bar is not None:
                bar.update(1)
            if step in snapshot_steps:
                save_weights(checkpoint_path(run_dir, step), model.state_dict(), model_config, step=step)
            if step % training_config.eval_every == 0 or step == training_config.max_steps:
                record = evaluate_now(step, running_loss / running_count)
                running_loss, running_count = 0.0, 0
                done = step == training_config.max_steps or (training_config.early_stop and record["fitted"])
                save_training_state(last, model, optimizer, model_config, step, finished=done)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.3g}", fitted=record["fitted"])
                if done:
                    break
        if bar is not None:
            bar.close()
        if step not in snapshot_steps:
            save_weights(checkpoint_path(run_dir, step), model.state_dict(), model_config, step=step)
        save_model(run_dir, model, model_config)
    else:
        load_weights(model, run_dir / "model.safetensors", model_config)
    model.eval()
    fitted = bool(history and history[-1]["fitted"])
    return TrainingResult(model=model, run_dir=run_dir, steps=step, fitted=fitted, history=history)


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


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The log-spaced weight snapshots of a run, as ``(step, path)`` sorted by step."""
    found = []
    for path in sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step_*.safetensors")):
        found.append((int(path.stem.removeprefix("step_")), path))
    return found


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
    """Refuse to resume a run directory written with other data or another configuration."""
    saved_model = read_model_config(run_dir)
    if saved_model != model_config:
        raise CheckpointError(f"{run_dir} holds a run of model {saved_model}; expected {model_config}")
    saved_facts = FactSet.load(run_dir / "facts.json")
    if saved_facts.to_manifest() != facts.to_manifest():
        raise CheckpointError(f"{run_dir} holds a run on other facts ({saved_facts.source}); expected {facts.source}")
    saved_training = read_training_config(run_dir)
    if saved_training != training:
        raise CheckpointError(f"{run_dir} was trained with {saved_training}; expected {training}")


def read_training_config(run_dir: str | Path) -> TrainingConfig:
    path = Path(run_dir) / TRAINING_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {TRAINING_FILE})")
    try:
        data = json.loads(path.read_text())["training"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a training record ({type(e).__name__}: {e}); expected the JSON object "
                              "that train() writes") from None
    known = {f.name for f in fields(TrainingConfig)}
    if set(data) - known:
        raise CheckpointError(f"{path}: unknown training settings {sorted(set(data) - known)}")
    return replace(TrainingConfig(), **{**data, "betas": tuple(data["betas"])})


def read_history(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_history(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / HISTORY_FILE, "".join(json.dumps(h) + "\n" for h in history))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("revinterp", "torch", "transformer-lens"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
