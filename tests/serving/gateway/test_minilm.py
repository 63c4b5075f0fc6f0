"""The numpy MiniLM matches sentence-transformers (reference vectors computed once with it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from infermeter.serving.gateway.embeddings.minilm import DIMENSIONS, MiniLMEncoder

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_matches_sentence_transformers(encoder: MiniLMEncoder) -> None:
    ref = json.loads(REFERENCE.read_text())
    expected = np.asarray(ref["vectors"], dtype=np.float32)
    got = encoder.encode(ref["texts"])
    assert got.shape == (len(ref["texts"]), DIMENSIONS)
    cos = (got * expected).sum(axis=1)
    assert cos.min() > 0.99999, cos
    assert np.abs(got - expected).max() < 1e-4


def test_batch_equals_single(encoder: MiniLMEncoder) -> None:
    texts = ["short", "a much longer sentence that needs padding in a batch with a short one"]
    batch = encoder.encode(texts)
    single = np.vstack([encoder.encode([t]) for t in texts])
    assert np.abs(batch - single).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_empty_input(encoder: MiniLMEncoder) -> None:
    assert encoder.encode([]).shape == (0, DIMENSIONS)
