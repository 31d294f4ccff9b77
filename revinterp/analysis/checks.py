"""Input checks shared by the analyses that run a model on prompt pairs: one message for each mistake.

Each check raises ``ValueError`` naming the operation, what it got and what it expected.
"""

from __future__ import annotations

from collections.abc import Sequence

from revinterp.analysis.prompts import PromptPairs
from revinterp.evaluation import model_device


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices``, e.g. ``direction='sideways': expected one of ('denoising', 'noising')``."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {tuple(choices)}")


def check_eval(model, operation: str) -> None:
    """The model is in eval mode (TransformerLens's patching and analysis tools refuse train mode)."""
    training = [name or "<model>" for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(
            f"{operation}: the model is in train mode (model.training={model.training}; e.g. {training[0]}); "
            "expected eval mode: call model.eval() first"
        )


def check_model_and_pairs(model, pairs, operation: str, *, min_pairs: int = 2, same_device: bool = True) -> None:
    """``pairs`` are :class:`PromptPairs` that ``model`` (in eval mode) can read.

    Checks, in order: the type of ``pairs``; eval mode; at least ``min_pairs`` pairs (2 where intervals
    over examples are reported); with ``same_device``, that the pairs are on the model's device (analyses
    that move the pairs themselves pass ``False``); prompts no longer than ``n_ctx``; every token id,
    prompts and answers, in ``[0, d_vocab)``.
    """
    if not isinstance(pairs, PromptPairs):
        raise ValueError(f"{operation}: pairs is a {type(pairs).__name__}; expected PromptPairs (make_prompt_pairs)")
    check_eval(model, operation)
    if len(pairs) < min_pairs:
        raise ValueError(f"{operation}: got {len(pairs)} prompt pair(s); expected at least {min_pairs} "
                         "(intervals need several examples)")
    device = model_device(model)
    if same_device and pairs.clean.device != device:
        raise ValueError(
            f"{operation}: prompt pairs are on device {pairs.clean.device} but the model is on {device}; "
            f"expected the same device (use pairs.to({str(device)!r}))"
        )
    n_ctx = model.cfg.n_ctx
    if pairs.clean.shape[1] > n_ctx:
        raise ValueError(f"{operation}: prompts have {pairs.clean.shape[1]} positions; the model's n_ctx is {n_ctx}")
    d_vocab = model.cfg.d_vocab
    for name in ("clean", "corrupted", "clean_answer", "corrupted_answer"):
        t = getattr(pairs, name)
        if t.min() < 0 or t.max() >= d_vocab:
            raise ValueError(f"{operation}: pairs.{name} has token ids outside [0, {d_vocab}) (the model's d_vocab)")
