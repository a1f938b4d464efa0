"""Creating embedders by kind, and the process-wide cache of loaded offline models."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from recbole_llmesr.prep.embedders.base import DEFAULT_KIND, Embedder, normalise_kind
from recbole_llmesr.prep.embedders.local import SentenceTransformerEmbedder
from recbole_llmesr.prep.embedders.openai import OpenAIEmbedder

# Sentence-transformers models are loaded once per process (repeated preparations, sweeps, serving).
_ST_EMBEDDERS: Dict[Tuple[Optional[str], Optional[int]], Embedder] = {}


def build_embedder(kind: str = DEFAULT_KIND, model: Optional[str] = None, *, base_url: Optional[str] = None,
                   dim: Optional[int] = None, batch_size: Optional[int] = None, device: str = "cpu",
                   **client_options: Any) -> Embedder:
    """Create an embedder. Fails here (not halfway through a job) on bad config or a missing key.

    * ``"sentence-transformers"``: ``model`` None = bundled all-MiniLM-L6-v2 (384-d), or a local
      model directory; batch size 64; ``device`` as for torch. Never contacts a hub.
    * ``"openai"``: ``model`` None = text-embedding-3-small; ``dim`` may shrink v3 models;
      ``base_url`` optional (proxies, tests); key from ``OPENAI_API_KEY`` only; batch size 512.
    * ``"openai-compatible"``: ``base_url`` and ``model`` required; ``dim`` given or probed with one
      request; key from ``OPENAI_API_KEY`` if set, else a placeholder; batch size 32.

    ``client_options`` go to :class:`~recbole_llmesr.prep.embedders.openai.OpenAIEmbedder` (``max_concurrency``,
    ``max_retries``, ``timeout``, ``backoff_base``, ``max_backoff``); the offline model has none.
    """
    kind = normalise_kind(kind)
    if kind == "sentence-transformers":
        return SentenceTransformerEmbedder(model, batch_size=batch_size, device=device, dim=dim)
    return OpenAIEmbedder(kind, model, base_url=base_url, dim=dim, batch_size=batch_size, **client_options)


def get_embedder(kind: str, model: Optional[str], base_url: Optional[str], dim: Optional[int]) -> Embedder:
    """:func:`build_embedder` with default options, loading each offline model once per process."""
    if normalise_kind(kind) == "sentence-transformers":
        key = (model, None if dim is None else int(dim))
        if key not in _ST_EMBEDDERS:
            _ST_EMBEDDERS[key] = build_embedder(kind, model, dim=dim)
        return _ST_EMBEDDERS[key]
    return build_embedder(kind, model, base_url=base_url, dim=dim)
