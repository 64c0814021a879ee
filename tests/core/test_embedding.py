"""The numpy MiniLM encoder gives sentence-transformers' embeddings, offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from core.routing.embedding import MiniLMEncoder, default_model_dir

TEXTS = [
    "",
    "   ",
    "?",
    "Write a Python function that reverses a linked list in place.",
    "Wie viele Einwohner hat Berlin, und wie hat sich die Zahl seit 1990 entwickelt?",
    "東京で一番古いお寺はどこですか？",
    "¿Cuál es la derivada de x³·sin(x)?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 🐢 slow",
    "word " * 400,  # well past the 256-token limit
    "Antidisestablishmentarianism " * 60 + "supercalifragilistic",
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder.load()


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_model_dir()), device="cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_embeddings_match_sentence_transformers(encoder: MiniLMEncoder, reference) -> None:
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    batch = encoder.encode(TEXTS, batch_size=4)  # mixed lengths in one batch exercise the padding mask
    single = np.stack([encoder.encode_one(t) for t in TEXTS])
    assert _cosines(batch, expected).min() >= 0.9999
    assert _cosines(single, expected).min() >= 0.9999
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_max_tokens_reads_only_the_opening(encoder: MiniLMEncoder, reference) -> None:
    long_texts = [t for t in TEXTS if encoder.token_count(t) > 128]
    assert long_texts
    reference.max_seq_length = 128
    try:
        expected = reference.encode(long_texts, convert_to_numpy=True)
    finally:
        reference.max_seq_length = 256
    clipped = np.stack([encoder.encode_one(t, max_tokens=128) for t in long_texts])
    assert _cosines(clipped, expected).min() >= 0.9999
    assert _cosines(encoder.encode(long_texts, max_tokens=128), expected).min() >= 0.9999


def test_similar_meanings_are_closer_than_unrelated_ones(encoder: MiniLMEncoder) -> None:
    a, b, c = encoder.encode(
        [
            "How do I reverse a list in Python?",
            "python: invert the order of a list",
            "A poem about autumn leaves",
        ]
    )
    assert a @ b > a @ c + 0.3


def test_loads_and_encodes_without_any_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    encoder = MiniLMEncoder.load()
    assert encoder.encode_one("offline please").shape == (384,)
