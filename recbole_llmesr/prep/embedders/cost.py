"""What embedding a list of texts costs before anything is sent: tokens, request batches and US dollars.

No tokenizer (tiktoken) is available offline, so tokens are estimated from UTF-8 bytes; the OpenAI
per-request limits below are planned against with headroom for that estimate's error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence

if TYPE_CHECKING:
    from recbole_llmesr.prep.embedders.cache import EmbeddingCache

#: Native output dimension of the OpenAI embedding models.
OPENAI_MODELS: Dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
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


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text``: ``ceil(len(utf8 bytes) / 4)``, at least 1.

    Four bytes per token is OpenAI's rule of thumb for English; it is exact enough for cost estimates,
    and batch planning keeps 20% headroom for text (e.g. CJK, ~3 bytes per char and ~1 token per char)
    where it undercounts.
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
