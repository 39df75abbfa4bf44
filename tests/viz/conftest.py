"""A tiny random-init Llama with a word-level tokenizer, loaded once for the viz tests."""

from __future__ import annotations

from pathlib import Path

import pytest

import anatomist
from tests.helpers import load, tiny_llama, tiny_tokenizer

PROMPT = "the cat sat on the mat and the dog"
# An IOI pair in the tiny tokenizer's words: one token differs, the names are single tokens.
IOI = (
    "when mary and john went to the store john gave a drink to",
    "when mary and john went to the store mary gave a drink to",
    " mary",
    " john",
)


@pytest.fixture(scope="package")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> anatomist.HookedTransformer:
    folder: Path = tmp_path_factory.mktemp("viz-model")
    tiny_llama(folder, num_key_value_heads=2)
    tiny_tokenizer().save_pretrained(folder)
    return load(folder, processing=True)
