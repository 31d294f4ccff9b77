"""Hooked transformers trained from scratch: presets, boot, and exact save/load of a run's model.

Models are TransformerLens 4 ``TransformerBridge.boot_native`` models over the word-level tokenizer
of :mod:`revinterp.data.tokenizer`. A run directory holds what is needed to rebuild one exactly::

    model.json          ModelConfig (architecture, seed) and the format version
    model.safetensors   the final weights
    tokenizer.json      the word-level tokenizer
    facts.json          the fact manifest (every statement with its split)

Reloading gives bit-identical logits (tested).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from revinterp.data import FactSet, build_tokenizer, load_tokenizer, save_tokenizer
from revinterp.io import atomic_write, atomic_write_text

FORMAT_VERSION = 1
MODEL_CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FACTS_FILE = "facts.json"

NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDINGS = ("standard", "rotary")


class CheckpointError(ValueError):
    """A checkpoint or run directory that is corrupt, incomplete or does not match its config."""


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
    d_vocab: int = 0
    n_ctx: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(
                f"normalization_type={self.normalization_type!r}: expected one of {NORMALIZATION_TYPES}"
            )
        if self.positional_embedding_type not in POSITIONAL_EMBEDDINGS:
            raise ValueError(
                f"positional_embedding_type={self.positional_embedding_type!r}: "
                f"expected one of {POSITIONAL_EMBEDDINGS}"
            )

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
    longest = max(1 + len(facts.text(s).split()) for s in facts.statements)  # +1 for <bos>
    return replace(config, d_vocab=len(tokenizer), n_ctx=longest)


# -- run directory: model side -------------------------------------------------------------------
def write_model_config(run_dir: Path, config: ModelConfig) -> None:
    atomic_write_text(
        run_dir / MODEL_CONFIG_FILE,
        json.dumps({"format_version": FORMAT_VERSION, "model": asdict(config)}, indent=1),
    )


def save_model(run_dir: Path, model, config: ModelConfig) -> None:
    """Write ``model.json`` and ``model.safetensors`` (atomically)."""
    write_model_config(run_dir, config)
    save_weights(run_dir / WEIGHTS_FILE, model.state_dict(), config)


def save_weights(path: Path, tensors: dict[str, torch.Tensor], config: ModelConfig, **metadata) -> None:
    """Write ``tensors`` to a safetensors file whose metadata records ``config`` (checked on load)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"model_config": json.dumps(asdict(config), sort_keys=True)}
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
    expected = json.dumps(asdict(config), sort_keys=True)
    if meta.get("model_config") != expected:
        raise CheckpointError(
            f"checkpoint {path} was written for model config {meta.get('model_config')}; "
            f"expected {expected}"
        )
    return tensors, meta


def load_weights(model, path: Path, config: ModelConfig) -> dict[str, str]:
    """Load a checkpoint's model weights into ``model``; returns the checkpoint's metadata."""
    tensors, meta = read_weights(path, config)
    weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from None
    return meta


def read_model_config(run_dir: Path) -> ModelConfig:
    path = Path(run_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {MODEL_CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {version!r}; this revinterp reads {FORMAT_VERSION}")
        known = {f.name for f in fields(ModelConfig)}
        unknown = set(data["model"]) - known
        if unknown:
            raise CheckpointError(f"{path}: unknown model settings {sorted(unknown)}")
        return ModelConfig(**data["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a valid model config ({e})") from None


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
    config = read_model_config(run_dir)
    for name in (TOKENIZER_FILE, FACTS_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir}: incomplete run directory (no {name})")
    try:
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise CheckpointError(f"{run_dir / TOKENIZER_FILE}: unreadable tokenizer ({e})") from None
    if len(tokenizer) != config.d_vocab:
        raise CheckpointError(
            f"{run_dir}: tokenizer has {len(tokenizer)} tokens but the model config says d_vocab={config.d_vocab}"
        )
    facts = FactSet.load(run_dir / FACTS_FILE)
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
