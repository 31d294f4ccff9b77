"""Word lookups of the tokenizer: O(1) each, and the same ids as the vocabulary dictionary."""

from __future__ import annotations

import pytest

from revinterp.data import UnknownWordError, build_tokenizer, seed_experiment
from revinterp.data.tokenizer import encode_words


def test_encode_words_equals_the_vocabulary_and_names_unknown_words():
    facts = seed_experiment(300, seed=0)
    tokenizer = build_tokenizer(facts.vocabulary())
    vocab = tokenizer.get_vocab()
    words = sorted(facts.vocabulary())
    assert encode_words(tokenizer, words) == [vocab[w] for w in words]
    with pytest.raises(UnknownWordError, match=r"word 'zebra' is not in the tokenizer's vocabulary \(\d+ words"):
        encode_words(tokenizer, ["a1", "zebra"])
