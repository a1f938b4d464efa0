"""Tests of recbole_llmesr.prep.pipeline: what ``prepare`` writes, estimates and refuses.

Real components throughout: the bundled offline MiniLM model, real faiss, the real openai client against
tests/openai_stub_server.py.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from openai_stub_server import StubEmbeddingServer, vector_for
from prep_helpers import ST_IDENTITY, run_tiny, settings_of, sha

from recbole_llmesr.prep import artifacts, readers
from recbole_llmesr.prep import text as T
from recbole_llmesr.prep.embedders import EmbeddingCache
from recbole_llmesr.prep.freshness import LOCK_NAME, is_fresh
from recbole_llmesr.prep.pipeline import prepare

FAKE_KEY = "sk-test-FAKE-prepare-0123456789-DO-NOT-LEAK"
ARTEFACTS = (artifacts.ITEM_EMB, artifacts.USER_EMB, artifacts.SIM_USERS)


# ------------------------------------------------------------------------------------------ outputs


def test_prepare_writes_complete_valid_outputs(raw, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    m = run_tiny(raw, out, cache)
    folder = out / "tiny"
    for f in ["tiny.inter", "tiny.item", *[f"tiny.{k}" for k in ARTEFACTS], "tiny.llmesr.json", LOCK_NAME]:
        assert (folder / f).is_file(), f
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp") or "staging" in p.name]

    ds = readers.read_written(folder, "tiny")
    assert m == artifacts.read_manifest(folder, "tiny")
    assert m["format"] == 1 and m["dataset"] == "tiny"
    assert m["counts"] == ds.counts() == {"users": 30, "items": 25, "interactions": len(ds.inter)}
    assert m["embedder"] == ST_IDENTITY and m["dim"] == 384
    assert m["template"] == T.TEMPLATES["generic"] and m["template_hash"] == T.template_hash(m["template"], 2048)
    # user text: what MiniLM reads
    assert (m["max_chars"], m["user_max_chars"], m["holdout"], m["top_k"]) == (2048, 1000, 2, 100)
    assert m["files"] == {f.name: sha(f) for f in folder.iterdir() if f.name.startswith("tiny.") and
                          f.name != "tiny.llmesr.json"}
    h = hashlib.sha256(b"\0inter\0" + (folder / "tiny.inter").read_bytes() + b"\0item\0"
                       + (folder / "tiny.item").read_bytes())
    assert m["data_hash"] == h.hexdigest()
    assert is_fresh(folder, "tiny", settings_of(m))

    # embeddings are keyed by token and aligned with them
    items, item_emb = artifacts.load_embeddings(folder / "tiny.item_emb.npz", expected_dim=384)
    assert items.tolist() == sorted(ds.items["item_id"]) and item_emb.shape == (25, 384)
    np.testing.assert_allclose(np.linalg.norm(item_emb, axis=1), 1.0, atol=1e-5)
    users, user_emb = artifacts.load_embeddings(folder / "tiny.user_emb.npz", expected_dim=384)
    assert users.tolist() == sorted(set(ds.inter["user_id"])) and user_emb.shape == (30, 384)

    # each row is the embedding of exactly the text the template / holdout say
    cache_obj = EmbeddingCache(cache, ST_IDENTITY)
    expected_items = T.item_texts(ds.items, m["template"], 2048)
    got = cache_obj.get_many([expected_items[t] for t in items.tolist()])
    np.testing.assert_array_equal(np.stack([got[i] for i in range(25)]), item_emb)
    names = T.item_names(ds.items, "title")
    held = T.user_texts(ds.inter, names, holdout=2)
    full = T.user_texts(ds.inter, names, holdout=0)
    got = cache_obj.get_many([held[u] for u in users.tolist()])
    np.testing.assert_array_equal(np.stack([got[i] for i in range(30)]), user_emb)
    # the texts with the validation/test items were never embedded
    assert not cache_obj.get_many([full[u] for u in users.tolist()])

    # similar users: exact top-k by cosine, self excluded, -1 padded
    sim_tokens, nb = artifacts.load_neighbors(folder / "tiny.sim_users.npz")
    assert sim_tokens.tolist() == users.tolist() and nb.shape == (30, 100) and nb.dtype == np.int64
    assert (nb[:, :29] >= 0).all() and (nb[:, 29:] == -1).all()
    assert not (nb == np.arange(30)[:, None]).any()
    sims = user_emb @ user_emb.T
    for i in range(30):
        row = sims[i, nb[i, :29]]
        assert (np.diff(row) <= 1e-5).all()


def test_dry_run_writes_nothing_and_estimates(raw, tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    est = run_tiny(raw, out, cache, dry_run=True)
    assert not out.exists() and not cache.exists()
    assert est["dry_run"] and est["counts"]["users"] == 30 and est["counts"]["items"] == 25
    assert (est["item_texts"], est["user_texts"]) == (25, 30)
    assert est["uncached_texts"] == est["unique_texts"] == 55 and est["tokens"] > 55 and est["usd"] == 0.0

    # OpenAI: a priced estimate, no key needed and no request made
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    est = run_tiny(raw, out, cache, dry_run=True, embedder="openai", embedder_model="text-embedding-3-large")
    assert est["usd"] == pytest.approx(est["tokens"] * 0.13 / 1e6) and est["usd"] > 0
    assert not out.exists() and not cache.exists()

    # after a real run everything is cached: nothing left to pay for
    run_tiny(raw, out, cache)
    before = {p: sha(p) for p in (out / "tiny").iterdir() if p.is_file()}
    est = run_tiny(raw, out, cache, dry_run=True)
    assert est["uncached_texts"] == 0
    assert {p: sha(p) for p in (out / "tiny").iterdir() if p.is_file()} == before


def test_bad_settings_fail_before_any_work(raw, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="field 'brand'"):
        run_tiny(raw, out, tmp_path / "cache", template="{title} by {brand}")
    with pytest.raises(ValueError, match="unknown source"):
        prepare("tiny", source="parquet", inputs={"inter": str(raw)}, out_root=str(out))
    with pytest.raises(ValueError, match="unknown embedder kind"):
        run_tiny(raw, out, tmp_path / "cache", embedder="word2vec")
    with pytest.raises(ValueError, match="needs inputs"):
        prepare("tiny", source="amazon2014", inputs={"reviews": str(raw)}, out_root=str(out))
    with pytest.raises(FileNotFoundError, match="nope.inter"):
        prepare("tiny", inputs={"inter": str(tmp_path / "nope.inter")}, out_root=str(out))
    with pytest.raises(ValueError, match="invalid dataset name"):
        prepare("../x", inputs={"inter": str(raw)}, out_root=str(out))
    assert not (out / "tiny" / "tiny.llmesr.json").exists()


# -------------------------------------------------------------------------------------- OpenAI kind


def test_openai_kind_through_stub_never_writes_the_key(raw, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with StubEmbeddingServer() as srv:
        m = run_tiny(raw, out, cache, embedder="openai", embedder_model="text-embedding-3-small",
                     base_url=srv.base_url, dim=16)
        assert srv.requests and all(r["authorization"] == f"Bearer {FAKE_KEY}" for r in srv.requests)
        assert {r["dimensions"] for r in srv.requests} == {16}
        sent = srv.inputs_sent()
        base_url = srv.base_url
    folder = out / "tiny"
    assert m["dim"] == 16 and m["embedder"]["kind"] == "openai"
    assert m["embedder"]["model"] == "text-embedding-3-small"
    assert len(sent) == len(set(sent)) == 55  # every text sent once
    items, emb = artifacts.load_embeddings(folder / "tiny.item_emb.npz", expected_dim=16)
    texts = T.item_texts(readers.read_written(folder, "tiny").items, m["template"], 2048)
    np.testing.assert_allclose(emb, np.stack([vector_for(texts[t], 16) for t in items.tolist()]), atol=1e-6)
    assert is_fresh(folder, "tiny", settings_of(m))

    written = [p for root in (out, cache) for p in root.rglob("*") if p.is_file()]
    assert len(written) >= 8
    for p in written:
        data = p.read_bytes()
        assert FAKE_KEY.encode() not in data, p
        assert base_url.encode() not in data, p
    # the same request is fresh without contacting the server (the stub is gone now)
    assert run_tiny(raw, out, cache, embedder="openai", embedder_model="text-embedding-3-small",
                    base_url=base_url, dim=16) == m
