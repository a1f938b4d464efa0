"""What every embedder is: the :class:`Embedder` interface, the embedder kinds, and the errors."""
from __future__ import annotations

import abc
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from recbole_llmesr.errors import LLMESRError

KINDS = ("sentence-transformers", "openai", "openai-compatible")
OPENAI_KINDS = ("openai", "openai-compatible")
#: The offline embedder: needs no network and no key.
DEFAULT_KIND = "sentence-transformers"
_KIND_ALIASES = {"sentence_transformers": DEFAULT_KIND, "st": DEFAULT_KIND, "local": DEFAULT_KIND,
                 "openai_compatible": "openai-compatible"}


class EmbeddingError(LLMESRError, RuntimeError):
    """Base class of the errors raised by the embedders."""


class CacheWriteError(EmbeddingError):
    """The embedding cache folder cannot be written (disk full, read-only, no permission)."""


class EmbeddingConfigError(EmbeddingError, ValueError):
    """Bad configuration detected before any work (unknown kind/model, missing API key, ...)."""


class EmbeddingAPIError(EmbeddingError):
    """An embeddings request failed for good (non-retryable status, or retries exhausted).

    ``status_code`` is the HTTP status when there was one; ``cached_texts`` is filled by
    :func:`~recbole_llmesr.prep.embedders.driver.embed_texts` with how many of the requested unique texts are
    safely cached.
    """

    def __init__(self, message: str, *, status_code: Optional[int] = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.cached_texts: Optional[int] = None


class EmbeddingResponseError(EmbeddingAPIError):
    """The server answered, but the answer is unusable (wrong count, wrong dimension, NaN/inf)."""


def normalise_kind(kind: Optional[str]) -> str:
    """The canonical name of an embedder kind (``st``, ``local``, ``openai_compatible`` ... are accepted);
    None or "" is :data:`DEFAULT_KIND`."""
    k = (kind or DEFAULT_KIND).strip().lower()
    k = _KIND_ALIASES.get(k, k)
    if k not in KINDS:
        raise EmbeddingConfigError(f"unknown embedder kind {kind!r}; expected one of {KINDS}")
    return k


class Embedder(abc.ABC):
    """Turns texts into float32 vectors of a fixed dimension.

    ``embed_batch`` does one request / forward pass; ``batches`` says how a list of texts is split
    into such calls; ``identity`` names the embedding space (for cache keys and manifests).
    """

    kind: str
    model: str
    dim: int
    #: How many ``embed_batch`` calls :func:`~recbole_llmesr.prep.embedders.driver.embed_texts` may run at once.
    max_concurrency: int = 1

    @abc.abstractmethod
    def embed_batch(self, texts: List[str]) -> np.ndarray:
        """Embed ``texts`` in one request; returns float32 ``[len(texts), dim]``."""

    @abc.abstractmethod
    def batches(self, texts: Sequence[str]) -> Iterator[List[int]]:
        """Yield lists of indices into ``texts``, one list per ``embed_batch`` call."""

    def identity(self) -> Dict[str, Any]:
        """Stable, JSON-able description of the embedding space. Never contains credentials."""
        return {"kind": self.kind, "model": self.model, "dim": int(self.dim)}

    def __repr__(self) -> str:
        # Built from identity() only, so no client object (which holds the key) is ever printed.
        return f"{type(self).__name__}({json.dumps(self.identity(), sort_keys=True)})"

    __str__ = __repr__
