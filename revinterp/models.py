"""Hooked transformers trained from scratch: presets, boot, and exact save/load of a run's model.

Models are TransformerLens 4 ``TransformerBridge.boot_native`` models over the word-level tokenizer
of :mod:`revinterp.data.tokenizer`. A run directory holds what is needed to rebuild one exactly::

    model.json          ModelConfig (architecture, seed) and the format version
    model.safetensors   the final weights
    tokenizer.json      the word-level tokenizer
    facts.json          the fact manifest (every statement with its split)

Reloading gives bit-identical logits (tested). Everything read back is checked first: each file against the
shape it must have (:class:`CheckpointError` names the file, the field and what was expected), the weights for
NaN and infinities (:func:`check_finite`, :class:`NonFiniteError` names the tensor), the run for a diverged
training (:class:`DivergedRunError`, recorded in ``training.json`` by :func:`revinterp.training.train`) and for
a writer that still holds it (:mod:`revinterp.rundir`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from revinterp.data import FactSet, build_tokenizer, load_tokenizer, save_tokenizer
from revinterp.data.tokenizer import SPECIAL_TOKENS
from revinterp.io import atomic_write, json_text, write_json
from revinterp.rundir import check_not_being_written

FORMAT_VERSION = 1
MODEL_CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FACTS_FILE = "facts.json"
TRAINING_FILE = "training.json"

NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDINGS = ("standard", "rotary")
ATTENTION_DIRECTIONS = ("causal", "bidirectional")
"""TransformerLens's ``attention_dir``: causal (a decoder) or bidirectional (MLM-U, :mod:`revinterp.objectives`)."""
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish", "solu", "solu_ln")
"""The activation functions of TransformerLens's native models."""


class CheckpointError(ValueError):
    """A checkpoint or run directory that is corrupt, incomplete or does not match its config."""


class NonFiniteError(ValueError):
    """Weights or outputs of a model that hold NaN or infinities: such a model has no meaningful results."""


class DivergedRunError(NonFiniteError):
    """A run directory whose training diverged (its loss or weights became non-finite); it holds no usable model."""


OMITTED_AT_DEFAULT = {"attention_dir": "causal", "objective": "next_token"}
"""Settings added after runs were first saved: left out of a saved record while at this default, so the records,
checkpoint metadata and hashes of every earlier run stay as they were."""


def config_record(config) -> dict:
    """``asdict(config)`` (a ModelConfig or TrainingConfig) without the :data:`OMITTED_AT_DEFAULT` settings at their
    default."""
    return {k: v for k, v in asdict(config).items() if OMITTED_AT_DEFAULT.get(k, object()) != v}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_field_types(cls, values: dict, where: str, nullable: tuple[str, ...] = ()) -> dict:
    """Check saved settings against the types of ``cls``'s defaults (int, number, str, bool, list of numbers),
    raising :class:`CheckpointError` that names the field; ``nullable`` fields may also be null.

    Returns the settings as ``cls`` takes them: a JSON integer given for a float setting as a float, a list for a
    tuple setting as a tuple.
    """
    defaults = cls()
    out = dict(values)
    for name, value in values.items():
        default = getattr(defaults, name)
        if value is None and name in nullable:
            continue
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, expected = is_int(value), "an integer"
        elif isinstance(default, float):
            ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "a string" + (" or null" if name in nullable else "")
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and len(value) == len(default) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            expected = f"a list of {len(default)} numbers"
        else:
            continue
        if not ok:
            raise CheckpointError(f"{where}.{name} is {value!r}; expected {expected}")
        if isinstance(default, float):
            out[name] = float(value)
        elif isinstance(default, tuple):
            out[name] = tuple(float(v) if isinstance(d, float) else v for v, d in zip(value, default))
    return out


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a model; ``seed`` fixes its initial weights.

    ``d_vocab`` and ``n_ctx`` follow from the data (tokenizer size, longest statement) and are
    filled in by :func:`build_model` when left at 0.
    """

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act_fn: str = "gelu"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    attn_only: bool = False
    attention_dir: str = "causal"
    d_vocab: int = 0
    n_ctx: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_mlp"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        for name in ("d_vocab", "n_ctx", "seed"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"{name}={value!r}: expected a non-negative integer")
        if not isinstance(self.attn_only, bool):
            raise ValueError(f"attn_only={self.attn_only!r}: expected true or false")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r}: expected one of {ACTIVATIONS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(
                f"normalization_type={self.normalization_type!r}: expected one of {NORMALIZATION_TYPES}"
            )
        if self.attention_dir not in ATTENTION_DIRECTIONS:
            raise ValueError(f"attention_dir={self.attention_dir!r}: expected one of {ATTENTION_DIRECTIONS}")
        if self.positional_embedding_type not in POSITIONAL_EMBEDDINGS:
            raise ValueError(
                f"positional_embedding_type={self.positional_embedding_type!r}: "
                f"expected one of {POSITIONAL_EMBEDDINGS}"
            )
        if self.positional_embedding_type == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary positions need an even d_head; d_model={self.d_model} / "
                             f"n_heads={self.n_heads} = {self.d_head}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def bridge_config(self):
        from transformer_lens import TransformerBridgeConfig

        kwargs = asdict(self)
        kwargs.update(d_head=self.d_head, architecture="TransformerLensNative")
        if self.attn_only:
            kwargs.pop("d_mlp")
        return TransformerBridgeConfig(**kwargs)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # For tests and tutorials: fits a few dozen facts in seconds.
    "tiny": ModelConfig(n_layers=1, d_model=64, n_heads=4, d_mlp=256),
    # The headline run: 2 layers, d_model 128; fits the 200-pair seed experiment in about a minute.
    "default": ModelConfig(n_layers=2, d_model=128, n_heads=4, d_mlp=512),
    # Deeper and wider, for where the forward fact is stored when there is room.
    "deep": ModelConfig(n_layers=4, d_model=256, n_heads=8, d_mlp=1024),
}


def default_device() -> torch.device:
    """CUDA when it is available, else the CPU; chosen once, at the top of a run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(config: ModelConfig, tokenizer, device: torch.device | str | None = None):
    """Boot a fresh ``TransformerBridge`` for ``config`` over ``tokenizer`` (in train mode)."""
    from transformer_lens import TransformerBridge

    if config.d_vocab != len(tokenizer):
        raise ValueError(f"config d_vocab={config.d_vocab} but the tokenizer has {len(tokenizer)} tokens")
    if config.n_ctx < 2:
        raise ValueError(f"config n_ctx={config.n_ctx}: expected the length of the longest statement")
    device = torch.device(device) if device is not None else default_device()
    return TransformerBridge.boot_native(config.bridge_config(), tokenizer=tokenizer, device=device)


def config_for_data(config: ModelConfig, facts: FactSet, tokenizer) -> ModelConfig:
    """``config`` with ``d_vocab`` and ``n_ctx`` set from the tokenizer and the longest statement."""
    if not facts.statements:
        raise ValueError("the fact set has no statements; expected at least one to size the model")
    longest = max(1 + len(facts.text(s).split()) for s in facts.statements)  # +1 for <bos>
    return replace(config, d_vocab=len(tokenizer), n_ctx=longest)


# -- finiteness ------------------------------------------------------------------------------------
def non_finite_summary(name: str, tensor: torch.Tensor) -> str | None:
    """``"blocks.0.attn.W_Q holds 3 NaN and 1 infinite values of 4096"``, or None for a finite tensor."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return None
    if bool(torch.isfinite(tensor.sum())):  # NaN and infinities carry into the sum (a cheap reduction); a finite
        return None                         # tensor whose sum overflows falls through to the exact count
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return None
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int((~finite).sum()) - n_nan
    parts = [f"{n_nan} NaN"] * bool(n_nan) + [f"{n_inf} infinite"] * bool(n_inf)
    return f"{name} holds {' and '.join(parts)} values of {tensor.numel()}"


def check_finite(model_or_tensors, source: str = "model") -> None:
    """Raise :class:`NonFiniteError` naming the first tensor that holds NaN or infinities.

    Args:
        model_or_tensors: a model (its ``state_dict()``, parameters and buffers, is checked), a dict of named
            tensors, or one tensor.
        source: what the tensors are, for the message (``"checkpoint runs/x/model.safetensors"``).

    Evaluation (:func:`revinterp.evaluation.evaluate`) and loading (:func:`load_weights`, :func:`load_run`) call it:
    a model with non-finite weights has no meaningful behaviour (every comparison with NaN is false).
    """
    if isinstance(model_or_tensors, torch.Tensor):
        tensors = {"tensor": model_or_tensors}
    elif isinstance(model_or_tensors, dict):
        tensors = model_or_tensors
    else:
        tensors = model_or_tensors.state_dict()
    bad = [summary for name, t in tensors.items() if (summary := non_finite_summary(name, t)) is not None]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"{source}: weights are not finite: {bad[0]}{more}; such a model has no meaningful results "
            "(its training diverged or the file was damaged): retrain, e.g. with a smaller --lr"
        )


def check_finite_output(values: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` when a model output (logits, scores) holds NaN or infinities."""
    summary = non_finite_summary(what, values)
    if summary is not None:
        raise NonFiniteError(f"model outputs are not finite: {summary}; expected finite logits (are the weights "
                             "finite? the inputs within the vocabulary?)")


# -- run directory: model side -------------------------------------------------------------------
def write_model_config(run_dir: Path, config: ModelConfig) -> None:
    write_json(run_dir / MODEL_CONFIG_FILE, {"format_version": FORMAT_VERSION, "model": config_record(config)})


def save_model(run_dir: Path, model, config: ModelConfig) -> None:
    """Write ``model.json`` and ``model.safetensors`` (atomically)."""
    write_model_config(run_dir, config)
    save_weights(run_dir / WEIGHTS_FILE, model.state_dict(), config)


def save_weights(path: Path, tensors: dict[str, torch.Tensor], config: ModelConfig, **metadata) -> None:
    """Write ``tensors`` to a safetensors file whose metadata records ``config`` (checked on load)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"model_config": json_text(config_record(config), indent=None, sort_keys=True)}
    meta.update({k: str(v) for k, v in metadata.items()})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_weights(path: Path, config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors checkpoint, checked to belong to ``config``."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"checkpoint {path}: unreadable safetensors file ({e})") from None
    expected = json_text(config_record(config), indent=None, sort_keys=True)
    if meta.get("model_config") != expected:
        raise CheckpointError(
            f"checkpoint {path} was written for model config {meta.get('model_config')}; "
            f"expected {expected}"
        )
    return tensors, meta


def load_weights(model, path: Path, config: ModelConfig) -> dict[str, str]:
    """Load a checkpoint's model weights into ``model``; returns the checkpoint's metadata.

    Weights that hold NaN or infinities are refused (:class:`NonFiniteError` names the tensor); ``model`` is left
    as it was.
    """
    tensors, meta = read_weights(path, config)
    weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    check_finite(weights, f"checkpoint {path}")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from None
    return meta


def read_model_config(run_dir: Path) -> ModelConfig:
    """The :class:`ModelConfig` of ``run_dir/model.json``, checked field by field."""
    path = Path(run_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {MODEL_CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); expected the model config train() writes") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}; expected an object "
                              '{"format_version": 1, "model": {...}}')
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}; this revinterp reads {FORMAT_VERSION}")
    model = data.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: field 'model' is {type(model).__name__}; expected an object of model "
                              "settings (n_layers, d_model, ...)")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(model) - known
    if unknown:
        raise CheckpointError(f"{path}: unknown model settings {sorted(unknown)}; expected only {sorted(known)}")
    missing = {"d_vocab", "n_ctx"} - set(model)
    if missing:
        raise CheckpointError(f"{path}: model settings {sorted(missing)} are missing; expected the values the "
                              "run was trained with")
    model = check_field_types(ModelConfig, model, f"{path}: field 'model'", nullable=("normalization_type",))
    try:
        return ModelConfig(**model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'model': {e}") from None


def read_training_status(run_dir: str | Path) -> dict | None:
    """The ``diverged`` record of ``run_dir/training.json`` (``{"step", "reason", "message"}``), or None.

    A missing ``training.json`` is no divergence (runs written by other means); an unreadable one is an error.
    """
    path = Path(run_dir) / TRAINING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{path}: not a training record ({type(e).__name__}: {e}); expected the JSON object "
                              "that train() writes") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}; expected the object that train() writes")
    diverged = data.get("diverged")
    if diverged is None:
        return None
    if not isinstance(diverged, dict):
        raise CheckpointError(f"{path}: field 'diverged' is {type(diverged).__name__}; expected an object "
                              "{step, reason} or no such field")
    return diverged


def check_not_diverged(run_dir: str | Path) -> None:
    """Raise :class:`DivergedRunError` with the recorded reason when ``run_dir``'s training diverged."""
    diverged = read_training_status(run_dir)
    if diverged is not None:
        reason = diverged.get("reason") or "no reason recorded"
        step = f" at step {diverged['step']}" if is_int(diverged.get("step")) else ""
        raise DivergedRunError(f"run directory {run_dir} is marked as diverged in {TRAINING_FILE}: its training "
                               f"diverged{step} ({reason}). It holds no usable model; train a new run (e.g. with a "
                               "smaller --lr)")


def check_tokenizer(run_dir: Path, tokenizer, config: ModelConfig, facts: FactSet) -> None:
    """The tokenizer of a run fits its model (every id < d_vocab, the special tokens) and its facts' words."""
    path = run_dir / TOKENIZER_FILE
    vocab = tokenizer.get_vocab()
    if len(tokenizer) != config.d_vocab:
        raise CheckpointError(
            f"{run_dir}: tokenizer has {len(tokenizer)} tokens but the model config says d_vocab={config.d_vocab}"
        )
    too_large = sorted((i, w) for w, i in vocab.items() if not 0 <= i < config.d_vocab)
    if too_large:
        i, w = too_large[0]
        raise CheckpointError(f"{path}: token {w!r} has id {i}; expected ids 0..{config.d_vocab - 1} "
                              f"(d_vocab={config.d_vocab} in {MODEL_CONFIG_FILE})")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise CheckpointError(f"{path}: special tokens {missing} are missing; expected all of {list(SPECIAL_TOKENS)}")
    unknown = sorted(set(facts.vocabulary()) - set(vocab))
    if unknown:
        raise CheckpointError(f"{run_dir}: words of {FACTS_FILE} are not in {TOKENIZER_FILE}: {unknown[:5]}"
                              f"{' ...' if len(unknown) > 5 else ''}; expected the tokenizer the run was trained with")
    longest = max(1 + len(facts.text(s).split()) for s in facts.statements)
    if longest > config.n_ctx:
        raise CheckpointError(f"{run_dir}: a statement of {FACTS_FILE} has {longest} tokens; the model's n_ctx is "
                              f"{config.n_ctx}")


@dataclass
class LoadedRun:
    """A trained run read back: the model (in eval mode), its facts, tokenizer and config."""

    path: Path
    model: object
    facts: FactSet
    tokenizer: object
    config: ModelConfig


def unpack_run(model_or_run, facts: FactSet | None = None, tokenizer=None) -> tuple[object, FactSet, object]:
    """``(model, facts, tokenizer)`` for an analysis given a :class:`LoadedRun` or a model with its facts.

    Analyses that read a model and its facts take either ``analysis(run)`` or ``analysis(model, facts)``;
    the tokenizer defaults to the run's (or the model's own ``model.tokenizer``).
    """
    if isinstance(model_or_run, LoadedRun):
        if facts is not None:
            raise ValueError("got a LoadedRun and facts; expected one or the other (a run carries its own facts)")
        return model_or_run.model, model_or_run.facts, tokenizer if tokenizer is not None else model_or_run.tokenizer
    if not isinstance(facts, FactSet):
        raise ValueError(f"facts is {type(facts).__name__}; expected a FactSet with the model (or pass a LoadedRun "
                         "alone: analysis(run))")
    return model_or_run, facts, tokenizer if tokenizer is not None else model_or_run.tokenizer


def load_run(run_dir: str | Path, *, checkpoint: str | Path | None = None, device=None) -> LoadedRun:
    """Read a run directory written by :func:`revinterp.training.train`.

    Args:
        run_dir: the run directory.
        checkpoint: a checkpoint file (e.g. ``run_dir / "checkpoints/step_0000100.safetensors"``)
            to load instead of the final weights.
        device: where to put the model; default :func:`default_device`.

    Example:
        >>> run = load_run("runs/seed0")                          # doctest: +SKIP
        >>> run.model.to_str_tokens("a17 ->")                    # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory" if not run_dir.exists()
                              else f"{run_dir} is a file; expected a run directory")
    check_not_being_written(run_dir)
    config = read_model_config(run_dir)
    check_not_diverged(run_dir)
    for name in (TOKENIZER_FILE, FACTS_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir}: incomplete run directory (no {name})")
    try:
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise CheckpointError(f"{run_dir / TOKENIZER_FILE}: unreadable tokenizer ({e})") from None
    try:
        facts = FactSet.load(run_dir / FACTS_FILE)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    check_tokenizer(run_dir, tokenizer, config, facts)
    model = build_model(config, tokenizer, device)
    load_weights(model, Path(checkpoint) if checkpoint is not None else run_dir / WEIGHTS_FILE, config)
    model.eval()
    return LoadedRun(path=run_dir, model=model, facts=facts, tokenizer=tokenizer, config=config)


def write_run_data(run_dir: Path, facts: FactSet, tokenizer) -> None:
    """Write the fact manifest and the tokenizer of a run."""
    facts.save(run_dir / FACTS_FILE)
    save_tokenizer(tokenizer, run_dir / TOKENIZER_FILE)


def tokenizer_for(facts: FactSet):
    """The word-level tokenizer over the vocabulary of ``facts``."""
    return build_tokenizer(facts.vocabulary())
