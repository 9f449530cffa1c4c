"""The ONNX text tower computes the reference (transformers) function."""

from __future__ import annotations

import numpy as np
import pytest

from models.text_encoder import TextEncoder, TextEncoderConfig

TEXTS = [
    "A man is crossing a mountain pass on a metal bridge .",
    "dog",
    "",
    "Two dogs play in the snow while a woman in a red coat watches from the porch " * 12,  # > 128 tokens
    "Café crème on a table — naïve façade, 東京 at night",
    "a black and white dog is running through the grass",
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx")
    return (TextEncoder(TextEncoderConfig(batch_size=2), cache_dir=cache),
            TextEncoder(TextEncoderConfig(backend="torch")))


def test_onnx_matches_the_transformers_reference(encoders):
    fast, ref = encoders
    a, b = fast.encode(TEXTS), ref.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_rows_follow_input_order_whatever_the_batching(encoders):
    fast, _ = encoders
    whole = fast.encode(TEXTS)
    one_by_one = np.concatenate([fast.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(whole, one_by_one, atol=2e-5)
    np.testing.assert_allclose(fast.encode(TEXTS[::-1]), whole[::-1], atol=2e-5)
    assert fast.encode([]).shape == (0, 384)


def test_export_is_built_once_and_reused(encoders, tmp_path):
    fast, _ = encoders
    path = fast.onnx_path
    mtime = path.stat().st_mtime_ns
    again = TextEncoder(cache_dir=path.parent)
    assert again.onnx_path == path and path.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.encode(TEXTS[:2]), fast.encode(TEXTS[:2]), atol=1e-6)
