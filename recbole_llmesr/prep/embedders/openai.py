"""The OpenAI embeddings API, and any server speaking the same protocol (vLLM, Ollama, llama.cpp, TEI, ...).

Requests are batched within the API's per-request limits (:mod:`.cost`), retried with backoff on transient
failures and validated. The API key is read from ``OPENAI_API_KEY`` only; it is handed to the ``openai``
client and kept nowhere else: not in :meth:`~recbole_llmesr.prep.embedders.base.Embedder.identity` (hence
not in cache paths or manifests), not in ``repr``/``str``, not in log lines, and it is scrubbed from any
server message we re-raise. A base URL may carry ``user:password@`` for a server behind basic auth
(openai-compatible, no API key): they are sent as the Basic auth header, the client and every message only
see the URL without them (:func:`~recbole_llmesr.prep.embedders.redact.redact_url`), and with an API key
set such a URL is refused (the credentials would replace the key).
"""
from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from recbole_llmesr.prep.embedders.base import (
    OPENAI_KINDS,
    Embedder,
    EmbeddingAPIError,
    EmbeddingConfigError,
    EmbeddingResponseError,
)
from recbole_llmesr.prep.embedders.cost import (
    DEFAULT_OPENAI_MODEL,
    MAX_INPUT_BYTES,
    MAX_INPUTS_PER_REQUEST,
    OPENAI_MODELS,
    PLANNED_TOKENS_PER_REQUEST,
    estimate_tokens,
    plan_batches,
    truncate_text,
)
from recbole_llmesr.prep.embedders.redact import REDACTED, basic_token, redact_url, url_secrets

logger = logging.getLogger(__name__)

#: Models that accept the ``dimensions`` request parameter (Matryoshka-trained v3 models only).
_OPENAI_SUPPORTS_DIMENSIONS = {"text-embedding-3-small", "text-embedding-3-large"}
DEFAULT_OPENAI_BATCH_SIZE = 512
#: TEI's default --max-client-batch-size is 32; staying at it keeps local servers happy by default.
DEFAULT_COMPATIBLE_BATCH_SIZE = 32
#: Placeholder key for local servers, which ignore it (the openai client insists on having one).
PLACEHOLDER_API_KEY = "not-needed"
#: Upper bound on a server-requested Retry-After, so a bogus header cannot hang a run for hours.
MAX_RETRY_AFTER_S = 600.0


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
        if kind not in OPENAI_KINDS:
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
        self._secrets = url_secrets(full_url) + ([key] if key != PLACEHOLDER_API_KEY else [])
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
            headers = {"Authorization": f"Basic {basic_token(user, password)}"}
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
            extra = "" if self.kind == "openai" else (" (openai-compatible servers are not sent `dimensions`; set dim "
                                                      "to what the model returns)")
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
