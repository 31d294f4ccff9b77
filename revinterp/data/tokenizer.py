"""An offline word-level tokenizer that TransformerLens accepts.

TransformerLens 4 needs a ``transformers.PreTrainedTokenizerBase``. Two settings keep it offline:
``name_or_path`` (TransformerLens pops it from ``init_kwargs``) and ``add_bos_token=True``
(otherwise it reloads the tokenizer from the Hub to add one). The four special tokens must be in
the vocabulary, or TransformerLens falls back to ``<|endoftext|>`` and silently drops the first word.

Unknown words: revinterp's own encoders (:func:`encode_words`, the prompt pairs, fact files) raise
:class:`UnknownWordError` naming the word; the model's TransformerLens methods (``to_tokens``,
``to_single_token``) follow the transformers convention and map it to ``<unk>`` (id 3) without an error, so
check ``model.to_str_tokens(...)`` for ``<unk>`` when you call them on text of your own.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TOKENIZER_NAME = "revinterp-wordlevel"


def word_problem(word: str) -> str | None:
    """Why ``word`` cannot be one token of the vocabulary, or ``None`` when it can.

    The tokenizer splits text on whitespace, and it matches its special tokens *anywhere* in the text (``a<bos>b``
    reads as ``a``, ``<bos>``, ``b``), so a word must hold no whitespace, no control character and no special
    token. Other characters, ``<`` and ``>`` included, are plain word characters.

    Example:
        >>> word_problem("Smith"), word_problem("x<pad>")
        (None, "contains the special token '<pad>'")
    """
    if not word:
        return "is empty"
    for token in SPECIAL_TOKENS:
        if token in word:
            return f"contains the special token {token!r}" if token != word else f"is the special token {token!r}"
    if word.isprintable() and " " not in word:  # printable: no control character and no whitespace but " "
        return None
    for c in word:
        if c.isspace():
            return f"contains the whitespace character U+{ord(c):04X}"
        if unicodedata.category(c) == "Cc":
            return f"contains the control character U+{ord(c):04X}"
    return None


class UnknownWordError(KeyError):
    """A word that is not in the tokenizer's vocabulary."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def build_tokenizer(words: Iterable[str]):
    """A word-level tokenizer over ``words`` (ids: the four special tokens, then ``words`` in order).

    Example:
        >>> tok = build_tokenizer(["a1", "->", "b1"])
        >>> tok("a1 -> b1")["input_ids"]
        [1, 4, 5, 6]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(words)
    clash = [f"{w!r} {problem}" for w in words if (problem := word_problem(w))]
    if clash:
        raise ValueError(
            f"vocabulary word(s) {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''}: expected words "
            f"without whitespace, control characters or the special tokens {SPECIAL_TOKENS}"
        )
    if len(set(words)) != len(words):
        raise ValueError("the vocabulary has repeated words")
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap_backend(backend)


def wrap_backend(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, name_or_path=TOKENIZER_NAME, add_bos_token=True,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
    )


def save_tokenizer(tokenizer, path: Path) -> None:
    """Write the tokenizer as one ``tokenizer.json`` file (atomically)."""
    from revinterp.io import atomic_write

    atomic_write(Path(path), lambda tmp: tokenizer.backend_tokenizer.save(str(tmp)))


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return wrap_backend(Tokenizer.from_file(str(path)))


def encode_words(tokenizer, words: Sequence[str]) -> list[int]:
    """Token ids of ``words`` (no BOS), raising :class:`UnknownWordError` for a word not in the vocabulary.

    Each word is one O(1) lookup in the backend tokenizer (``token_to_id``); ``get_vocab()`` would rebuild the whole
    vocabulary dictionary on every call (228 ms at 200,000 words).
    """
    lookup = tokenizer.backend_tokenizer.token_to_id
    ids = []
    for w in words:
        index = lookup(w)
        if index is None:
            examples = [word for word, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])[4:9]]
            raise UnknownWordError(
                f"word {w!r} is not in the tokenizer's vocabulary ({len(tokenizer)} words, e.g. {examples}); "
                "expected one of the words the fact set was built with"
            )
        ids.append(index)
    return ids
