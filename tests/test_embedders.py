"""Tests for recbole_llmesr.prep.embedders: the real offline model, and the real openai client against a
real local HTTP server (tests/openai_stub_server.py) that scripts API faults."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_stub_server import StubEmbeddingServer, vector_for  # noqa: E402
from prep_helpers import ST_IDENTITY, assert_prepare_fails, prepare_cli_error, run_prepare  # noqa: E402

from recbole_llmesr.prep import artifacts  # noqa: E402
from recbole_llmesr.prep import embedders as E  # noqa: E402
from recbole_llmesr.prep.embedders import (  # noqa: E402
    EmbeddingAPIError,
    EmbeddingCache,
    EmbeddingConfigError,
    EmbeddingResponseError,
    build_embedder,
    default_cache_root,
    embed_texts,
    estimate_cost,
    identity_slug,
    plan_batches,
)

FAKE_KEY = "sk-test-FAKE-0123456789abcdef-DO-NOT-LEAK"
LEAK_KEY = "sk-test-LEAKCANARY-7f3a9c2e1b-DO-NOT-WRITE"
URL_USER, URL_PASSWORD = "alice", "LEAKCANARY-url-pw-41d7"
DIM = 16


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def st_embedder():
    return build_embedder()  # offline default: bundled all-MiniLM-L6-v2


@pytest.fixture
def server():
    with StubEmbeddingServer() as srv:
        yield srv


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    return FAKE_KEY


def make(server, **kw):
    """OpenAI-kind embedder pointed at the stub, with tiny backoffs so tests stay fast."""
    opts = dict(kind="openai", model="text-embedding-3-small", base_url=server.base_url, dim=DIM,
                batch_size=3, max_concurrency=1, max_retries=3, timeout=5.0, backoff_base=0.01, max_backoff=0.05)
    opts.update(kw)
    return build_embedder(**opts)


def expected(texts, dim=DIM):
    return np.stack([vector_for(t, dim) for t in texts]).astype(np.float32)


def texts_n(n, prefix="item"):
    return [f"{prefix} {i}: a product title with some words" for i in range(n)]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return port


# ---------------------------------------------------------------------------------------------- offline model
def test_offline_model_real_embeddings(st_embedder, tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert st_embedder.identity()["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert st_embedder.dim == 384
    texts = ["red lipstick matte finish", "matte red lip stick", "stainless steel garden hose",
             "red lipstick matte finish"]
    cache = EmbeddingCache(tmp_path, st_embedder.identity())
    v = embed_texts(st_embedder, texts, cache, show_progress=False)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    np.testing.assert_array_equal(v[0], v[3])
    # Second run is served from the cache (3 unique texts stored) and is identical.
    assert len(EmbeddingCache(tmp_path, st_embedder.identity())) == 3
    v2 = embed_texts(st_embedder, texts, EmbeddingCache(tmp_path, st_embedder.identity()), show_progress=False)
    np.testing.assert_array_equal(v, v2)


def test_offline_model_batches(st_embedder):
    assert [len(b) for b in st_embedder.batches(["x"] * 130)] == [64, 64, 2]


def test_offline_rejects_hub_names():
    with pytest.raises(ValueError, match="offline.*local"):
        build_embedder("sentence-transformers", "BAAI/bge-small-en-v1.5")


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown embedder kind"):
        build_embedder("word2vec")


# ---------------------------------------------------------------------------------------------- batching
def test_plan_batches_caps():
    assert [len(b) for b in plan_batches([1] * 5000, max_inputs=2048, max_tokens=10**9)] == [2048, 2048, 904]
    assert plan_batches([100_000] * 3 + [1], max_inputs=2048, max_tokens=240_000) == [[0, 1], [2, 3]]
    assert plan_batches([500_000, 1], max_inputs=10, max_tokens=240_000) == [[0], [1]]  # oversize goes alone
    flat = [i for b in plan_batches([7] * 100, max_inputs=9, max_tokens=50) for i in b]
    assert flat == list(range(100))  # order preserved, nothing lost


def test_openai_batches_respect_input_and_token_caps(server, key):
    emb = make(server, batch_size=2048)
    assert [len(b) for b in emb.batches(["hi"] * 5000)] == [2048, 2048, 904]
    long = ["x" * 200_000] * 40  # truncated to 8191*3 bytes each -> 6143 est. tokens
    sizes = [len(b) for b in emb.batches(long)]
    assert sum(sizes) == 40 and max(sizes) * 6143 <= E.PLANNED_TOKENS_PER_REQUEST and len(sizes) == 2
    assert E.truncate_text("é" * 20_000).encode("utf-8").__len__() <= E.MAX_INPUT_BYTES
    with pytest.raises(ValueError):
        make(server, batch_size=4096)


def test_openai_batching_and_order(server, key, tmp_path):
    emb = make(server)
    texts = texts_n(10)
    out = embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert [len(r["inputs"]) for r in server.requests] == [3, 3, 3, 1]
    assert server.inputs_sent() == texts
    r0 = server.requests[0]
    assert r0["model"] == "text-embedding-3-small" and r0["dimensions"] == DIM
    assert r0["authorization"] == f"Bearer {FAKE_KEY}"
    np.testing.assert_allclose(out, expected(texts), atol=1e-6)


def test_duplicates_embedded_once_rows_in_input_order(server, key):
    emb = make(server, batch_size=10)
    texts = ["b", "a", "b", "c", "a"]
    out = embed_texts(emb, texts, None, show_progress=False)
    assert server.inputs_sent() == ["b", "a", "c"]
    np.testing.assert_allclose(out, expected(texts), atol=1e-6)


def test_concurrent_requests(server, key, tmp_path):
    server.push({"delay": 0.2}, {"delay": 0.2}, {"delay": 0.2}, {"delay": 0.2})
    emb = make(server, batch_size=2, max_concurrency=4)
    texts = texts_n(8)
    t0 = time.monotonic()
    out = embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert time.monotonic() - t0 < 0.7  # 4 delayed requests overlapped, not 0.8 s in series
    assert server.request_count == 4
    np.testing.assert_allclose(out, expected(texts), atol=1e-6)


# ---------------------------------------------------------------------------------------------- retries
def test_429_honours_retry_after(server, key):
    server.push({"status": 429, "headers": {"Retry-After": "1"}})
    emb = make(server)
    t0 = time.monotonic()
    out = embed_texts(emb, ["one", "two"], None, show_progress=False)
    assert server.request_count == 2
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.95
    assert time.monotonic() - t0 >= 0.95
    np.testing.assert_allclose(out, expected(["one", "two"]), atol=1e-6)


def test_500_then_success(server, key):
    server.push({"status": 500})
    out = embed_texts(make(server), ["one", "two"], None, show_progress=False)
    assert [r["answer"] for r in server.requests] == [500, 200]
    np.testing.assert_allclose(out, expected(["one", "two"]), atol=1e-6)


def test_dropped_connection_then_success(server, key):
    server.push({"drop": True})
    out = embed_texts(make(server), ["one", "two"], None, show_progress=False)
    assert [r["answer"] for r in server.requests] == ["drop", 200]
    np.testing.assert_allclose(out, expected(["one", "two"]), atol=1e-6)


def test_401_fails_at_once_without_leaking_key(server, key):
    server.expected_key = "sk-some-other-key"
    emb = make(server, max_retries=5)
    with pytest.raises(EmbeddingAPIError) as ei:
        embed_texts(emb, ["one"], None, show_progress=False)
    assert server.request_count == 1
    msg = str(ei.value)
    assert "401" in msg and "OPENAI_API_KEY" in msg and "rejected" in msg
    assert FAKE_KEY not in msg
    assert FAKE_KEY not in "".join(traceback.format_exception(type(ei.value), ei.value, ei.value.__traceback__))


def test_400_not_retried(server, key):
    server.push({"status": 400})
    with pytest.raises(EmbeddingAPIError, match="HTTP 400"):
        embed_texts(make(server, max_retries=5), ["one"], None, show_progress=False)
    assert server.request_count == 1


@pytest.mark.parametrize("fault,match", [({"short": 1}, "2 embeddings for 3 inputs"),
                                         ({"nan": True}, "NaN"),
                                         ({"dim": 7}, "7-d")])
def test_bad_responses_detected(server, key, fault, match):
    server.push(fault)
    with pytest.raises(EmbeddingResponseError, match=match):
        embed_texts(make(server), ["a", "b", "c"], None, show_progress=False)


# ---------------------------------------------------------------------------------------------- cache / resume
def test_interrupt_then_resume_sends_only_missing(server, key, tmp_path):
    texts = texts_n(10)
    emb = make(server, batch_size=2, max_retries=1)
    server.fail_after(2, {"status": 500})
    with pytest.raises(EmbeddingAPIError) as ei:
        embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert ei.value.cached_texts == 4
    assert "4 of 10" in str(ei.value) and "after 2 attempt" in str(ei.value)
    assert [r["answer"] for r in server.requests] == [200, 200, 500, 500]

    server.heal()
    server.reset_log()
    emb2 = make(server, batch_size=2, max_retries=1)
    out = embed_texts(emb2, texts, EmbeddingCache(tmp_path, emb2.identity()), show_progress=False)
    assert server.inputs_sent() == texts[4:]
    assert server.request_count == 3
    np.testing.assert_allclose(out, expected(texts), atol=1e-6)


def test_interrupt_with_concurrency_keeps_inflight_batches(server, key, tmp_path):
    texts = texts_n(12)
    emb = make(server, batch_size=2, max_retries=0, max_concurrency=3)
    server.push({"delay": 0.1}, {"status": 500}, {"delay": 0.1})
    cache = EmbeddingCache(tmp_path, emb.identity())
    with pytest.raises(EmbeddingAPIError):
        embed_texts(emb, texts, cache, show_progress=False)
    assert server.request_count == 3  # no new batch started after the failure
    assert len(EmbeddingCache(tmp_path, emb.identity())) == 4  # both in-flight successes were kept
    server.reset_log()
    embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert len(server.inputs_sent()) == 8


def test_corrupt_chunk_skipped_and_reembedded(server, key, tmp_path, caplog):
    texts = texts_n(6)
    emb = make(server)
    embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    chunks = sorted(EmbeddingCache(tmp_path, emb.identity()).dir.glob("chunk-*.npz"))
    assert len(chunks) == 2
    blob = chunks[0].read_bytes()
    chunks[0].write_bytes(blob[: len(blob) // 2])  # truncated write
    server.reset_log()
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr.prep.embedders"):
        out = embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert chunks[0].name in caplog.text
    assert chunks[0].with_name(chunks[0].name + ".corrupt").exists()
    assert server.request_count == 1 and len(server.inputs_sent()) == 3
    np.testing.assert_allclose(out, expected(texts), atol=1e-6)


def test_cache_rejects_wrong_identity(server, key, tmp_path):
    emb = make(server)
    other = EmbeddingCache(tmp_path, {**emb.identity(), "dim": 99})
    with pytest.raises(ValueError, match="does not match"):
        embed_texts(emb, ["a"], other, show_progress=False)


def test_key_never_in_cache_files_or_logs(server, key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    emb = make(server, batch_size=2)
    server.push({"status": 500}, {"drop": True}, {"status": 429, "headers": {"Retry-After": "0"}})
    embed_texts(emb, texts_n(5), EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    server.expected_key = "other"
    with pytest.raises(EmbeddingAPIError):
        embed_texts(emb, texts_n(5, "new"), EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(FAKE_KEY.encode() not in p.read_bytes() for p in files)
    assert FAKE_KEY not in caplog.text and "retry" in caplog.text
    assert FAKE_KEY not in repr(emb) and FAKE_KEY not in str(emb.identity())


# ---------------------------------------------------------------------------------------------- config errors
def test_missing_key_is_clear(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbeddingConfigError, match="OPENAI_API_KEY"):
        make(server)
    assert server.request_count == 0


def test_unreachable_base_url_is_clear_and_quick(key):
    url = f"http://127.0.0.1:{free_port()}/v1"
    emb = build_embedder("openai", base_url=url, dim=DIM, max_retries=2, timeout=2.0, backoff_base=0.01)
    t0 = time.monotonic()
    with pytest.raises(EmbeddingAPIError, match="could not reach") as ei:
        embed_texts(emb, ["a"], None, show_progress=False)
    assert url in str(ei.value) and time.monotonic() - t0 < 5
    with pytest.raises(EmbeddingAPIError, match="could not reach"):  # probe at build time
        build_embedder("openai-compatible", "some-model", base_url=url, max_retries=1, backoff_base=0.01)


def test_openai_dim_rules(server, key):
    with pytest.raises(ValueError, match="always returns 1536"):
        make(server, model="text-embedding-ada-002", dim=256)
    with pytest.raises(ValueError, match="at most 3072"):
        make(server, model="text-embedding-3-large", dim=4096)
    full = make(server, dim=None)
    assert full.dim == 1536 and server.request_count == 0
    embed_texts(full, ["a"], None, show_progress=False)
    assert server.requests[-1]["has_dimensions"] is False


def test_openai_compatible_probe_and_no_dimensions(server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    emb = build_embedder("openai-compatible", "nomic-embed-text", base_url=server.base_url,
                         backoff_base=0.01)
    assert emb.dim == server.default_dim and server.request_count == 1  # one probe
    assert emb.identity() == {"kind": "openai-compatible", "model": "nomic-embed-text",
                              "dim": server.default_dim, "max_input_bytes": E.MAX_INPUT_BYTES}
    out = embed_texts(emb, ["x", "y"], EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    np.testing.assert_allclose(out, expected(["x", "y"], server.default_dim), atol=1e-6)
    assert all(not r["has_dimensions"] for r in server.requests)
    assert server.requests[-1]["authorization"] == "Bearer not-needed"
    # An explicit dim is checked against what the server returns, not sent.
    wrong = build_embedder("openai-compatible", "nomic-embed-text", base_url=server.base_url, dim=8)
    with pytest.raises(EmbeddingResponseError, match="not sent `dimensions`"):
        embed_texts(wrong, ["z"], None, show_progress=False)


# ---------------------------------------------------------------------------------------------- misc
def test_estimate_cost(server, key, tmp_path):
    emb = make(server)
    cache = EmbeddingCache(tmp_path, emb.identity())
    embed_texts(emb, ["abcd"], cache, show_progress=False)
    texts = ["abcd", "abcdefgh", "abcdefgh", "é" * 3]  # 'é' is 2 UTF-8 bytes -> 6 bytes -> 2 tokens
    est = estimate_cost(texts, "text-embedding-3-small", cache=cache)
    assert est == {"texts": 4, "unique_texts": 3, "uncached_texts": 2, "tokens": 4,
                   "usd": pytest.approx(4 * 0.02 / 1e6)}
    assert estimate_cost(texts, "local-model")["usd"] is None
    assert estimate_cost(texts, "text-embedding-3-small")["uncached_texts"] == 3


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RECBOLE_LLMESR_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("RECBOLE_LLMESR_CACHE")
    assert default_cache_root() == Path(os.path.expanduser("~/.cache/recbole_llmesr"))


# --------------------------------------------------------------- through prepare and after failures


# An unreadable embedding-cache chunk is moved aside with a warning naming it, and only its texts are
# embedded again; a missing key or a vanished server fails without losing what was embedded.


def test_corrupt_cache_chunk_is_set_aside_and_nothing_else_is_lost(outputs, caplog):
    chunks = sorted((outputs["cache"] / identity_slug(ST_IDENTITY)).glob("chunk-*.npz"))
    assert len(chunks) == 2  # item texts, then user texts
    folder = outputs["out"] / "tiny"
    vectors = {k: artifacts.load_embeddings(artifacts.artifact_path(folder, "tiny", k))[1]
               for k in (artifacts.ITEM_EMB, artifacts.USER_EMB)}
    kept = chunks[0].read_bytes()
    blob = chunks[1].read_bytes()
    chunks[1].write_bytes(blob[: len(blob) // 2])  # as a crash in the middle of a copy would leave it
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        run_prepare(outputs["raw"] / "tiny.inter", outputs, force=True)
    assert chunks[1].name in caplog.text and "re-embedded" in caplog.text
    assert chunks[1].with_name(chunks[1].name + ".corrupt").is_file()
    assert chunks[0].read_bytes() == kept  # the item texts were not embedded again
    new = sorted(set((outputs["cache"] / identity_slug(ST_IDENTITY)).glob("chunk-*.npz")) - set(chunks))
    assert len(new) == 1 and len(np.load(new[0])["keys"]) == 30  # just the 30 user texts
    for k, v in vectors.items():
        rebuilt = artifacts.load_embeddings(artifacts.artifact_path(folder, "tiny", k))[1]
        np.testing.assert_allclose(rebuilt, v, atol=1e-5)


def test_missing_openai_api_key(outputs, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, EmbeddingConfigError,
                         "OPENAI_API_KEY is not set", embedder="openai")
    line = prepare_cli_error(capsys, "--inter", str(outputs["raw"]), "--out", str(outputs["out"]), "--embedder",
                             "openai")
    assert "OPENAI_API_KEY is not set" in line


def test_unreachable_base_url_keeps_what_was_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    texts = [f"item {i}" for i in range(6)]
    with StubEmbeddingServer() as srv:
        url, port = srv.base_url, srv.port
        emb = build_embedder("openai", base_url=url, dim=16, batch_size=3, max_retries=1, backoff_base=0.01,
                             timeout=2.0)
        embed_texts(emb, texts[:3], EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the server is gone: nothing listens there now
    with pytest.raises(EmbeddingAPIError, match=rf"could not reach {url}.*3 of 6 unique texts are cached") as err:
        embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert err.value.cached_texts == 3 and len(EmbeddingCache(tmp_path, emb.identity())) == 3


def test_credentials_in_base_url_with_api_key_are_refused(monkeypatch):
    # The HTTP client would send user:password as Basic auth *instead of* the key: refuse, without echoing.
    monkeypatch.setenv("OPENAI_API_KEY", LEAK_KEY)
    url = f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:9/v1"
    with pytest.raises(EmbeddingConfigError, match="user:password") as err:
        build_embedder("openai", base_url=url, dim=16)
    assert URL_PASSWORD not in str(err.value) and LEAK_KEY not in str(err.value)
