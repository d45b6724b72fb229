"""Fixtures for collect tests: a tiny model's tokenizer and a small corpus file."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tiny_tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A .jsonl corpus of 12 short distinct documents."""
    p = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    with open(p, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": " ".join(words[i:] + words[:i]) + f" number {i}.", "id": i}) + "\n")
    return p
