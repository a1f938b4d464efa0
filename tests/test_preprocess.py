"""Tests for recbole_llmesr.preprocess and the llmesr-prepare CLI.

Real components throughout: the bundled offline MiniLM model, real faiss, the real openai client against
tests/openai_stub_server.py, real RecBole configs and datasets.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FAST, write_tiny_dataset  # noqa: E402
from openai_stub_server import StubEmbeddingServer, vector_for  # noqa: E402

from recbole_llmesr import artifacts, readers  # noqa: E402
from recbole_llmesr import text as T  # noqa: E402
from recbole_llmesr.embedders import EmbeddingCache, identity_slug  # noqa: E402
from recbole_llmesr.preprocess import (  # noqa: E402
    LOCK_NAME,
    choose_template,
    ensure_prepared,
    is_fresh,
    prepare,
    stale_reason,
)

FAKE_KEY = "sk-test-FAKE-prepare-0123456789-DO-NOT-LEAK"
ST_IDENTITY = {"kind": "sentence-transformers", "model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384,
               "normalized": True}
ARTEFACTS = (artifacts.ITEM_EMB, artifacts.USER_EMB, artifacts.SIM_USERS)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Embedding cache shared by the tests of this session (the ml-100k texts are embedded once)."""
    return tmp_path_factory.mktemp("llmesr_embedding_cache")


@pytest.fixture
def raw(tmp_path):
    """A tiny atomic dataset (30 users, 25 titled items) outside the output folder."""
    folder = write_tiny_dataset(tmp_path / "raw", "tiny", n_users=30, n_items=25, seed=3)
    return folder / "tiny.inter"


def chunks(cache_root: Path, identity=ST_IDENTITY):
    return sorted((Path(cache_root) / identity_slug(identity)).glob("chunk-*.npz"))


def chunk_sizes(paths):
    out = []
    for p in paths:
        with np.load(p) as z:
            out.append(len(z["keys"]))
    return out


def settings_of(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("embedder", "template_hash", "max_chars", "user_max_chars", "holdout",
                                     "top_k", "data_hash")}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_tiny(raw, out, cache, **kw):
    return prepare("tiny", inputs={"inter": str(raw)}, out_root=str(out), cache_dir=str(cache),
                   show_progress=False, **kw)


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
    assert (m["max_chars"], m["user_max_chars"], m["holdout"], m["top_k"]) == (2048, 1000, 2, 100)  # user text: what MiniLM reads
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


def test_freshness_rebuilds_and_cache_reuse(raw, tmp_path, caplog):
    out, cache = tmp_path / "out", tmp_path / "cache"
    folder = out / "tiny"
    m1 = run_tiny(raw, out, cache)
    n_chunks = len(chunks(cache))
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    # unchanged: nothing is rewritten, nothing embedded
    with caplog.at_level(logging.INFO, logger="recbole_llmesr"):
        assert run_tiny(raw, out, cache) == m1
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert len(chunks(cache)) == n_chunks

    # template change: items re-embedded, every user text comes from the cache
    _, user_emb = artifacts.load_embeddings(folder / "tiny.user_emb.npz")
    m2 = run_tiny(raw, out, cache, template="Item called {title}.")
    assert m2["template_hash"] != m1["template_hash"] and m2["template"] == "Item called {title}."
    new = [c for c in chunks(cache) if c not in chunks(cache)[:n_chunks]]
    assert chunk_sizes(new) == [25]
    np.testing.assert_array_equal(artifacts.load_embeddings(folder / "tiny.user_emb.npz")[1], user_emb)
    assert not is_fresh(folder, "tiny", settings_of(m1)) and is_fresh(folder, "tiny", settings_of(m2))

    # data change: one more interaction for u0 -> only u0's user text is new
    n_chunks = len(chunks(cache))
    lines = raw.read_text().splitlines()
    last_u0 = [ln for ln in lines if ln.startswith("u0\t")][-1].split("\t")
    first_u0 = [ln for ln in lines if ln.startswith("u0\t")][0].split("\t")
    raw.write_text("\n".join(lines + [f"u0\t{first_u0[1]}\t{float(last_u0[2]) + 1}"]) + "\n")
    m3 = run_tiny(raw, out, cache, template="Item called {title}.")
    assert m3["data_hash"] != m2["data_hash"]
    assert m3["counts"]["interactions"] == m2["counts"]["interactions"] + 1
    assert chunk_sizes(chunks(cache)[n_chunks:]) == [1]
    assert stale_reason(folder, "tiny", settings_of(m2)).startswith("data_hash changed")

    # a damaged or missing artefact is noticed; force rebuilds without embedding anything
    n_chunks = len(chunks(cache))
    good = artifacts.load_neighbors(folder / "tiny.sim_users.npz")
    data = (folder / "tiny.sim_users.npz").read_bytes()
    (folder / "tiny.sim_users.npz").write_bytes(data[:-10])
    assert stale_reason(folder, "tiny", settings_of(m3)) == "tiny.sim_users.npz was modified"
    (folder / "tiny.sim_users.npz").write_bytes(data)
    assert stale_reason(folder, "tiny", settings_of(m3)) is None
    (folder / "tiny.user_emb.npz").unlink()
    assert stale_reason(folder, "tiny", settings_of(m3)) == "tiny.user_emb.npz is missing"
    m4 = run_tiny(raw, out, cache, template="Item called {title}.", force=True)
    assert is_fresh(folder, "tiny", settings_of(m4)) and m4["created"] >= m3["created"]
    rebuilt = artifacts.load_neighbors(folder / "tiny.sim_users.npz")
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt, good))
    assert len(chunks(cache)) == n_chunks

    # other settings that change the outputs
    m5 = run_tiny(raw, out, cache, template="Item called {title}.", top_k=5)
    assert artifacts.load_neighbors(folder / "tiny.sim_users.npz")[1].shape == (30, 5)
    assert len(chunks(cache)) == n_chunks  # same texts
    m6 = run_tiny(raw, out, cache, template="Item called {title}.", top_k=5, holdout=1)
    assert m6["holdout"] == 1 and not is_fresh(folder, "tiny", settings_of(m5))
    assert chunk_sizes(chunks(cache)[n_chunks:]) == [30]


def test_template_choice():
    assert choose_template(["movie_title", "release_year", "class"], "ml-100k", "atomic")[1] == "movie"
    assert choose_template(["title", "brand", "categories", "price", "description"], "x", "beauty")[1] == "beauty"
    amazon = ["title", "brand", "price", "categories", "description"]
    assert choose_template(amazon, "amazon_beauty", "atomic")[1] == "beauty"
    assert choose_template(amazon, "sports", "amazon2014")[1] == "amazon"
    assert choose_template(amazon + ["features"], "clothing", "amazon2018")[1] == "fashion"
    assert choose_template(["name", "city", "categories", "stars", "review_count"], "y", "yelp")[1] == "yelp"
    assert choose_template(["title"], "books", "csv") == (T.TEMPLATES["generic"], "generic", "unknown")
    assert choose_template(["title"], "books", "csv", "movie") == (T.TEMPLATES["movie"], "movie", "error")
    assert choose_template(["title"], "b", "csv", "Book: {title}")[:2] == ("Book: {title}", "custom")
    with pytest.raises(ValueError, match="unknown item text template"):
        choose_template(["title"], "b", "csv", "nonsense")


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


# ------------------------------------------------------------------------------------------ OpenAI kind
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


# ------------------------------------------------------------------------------------------ concurrency
def _concurrent_worker(raw, out, cache, barrier, queue):
    try:
        from recbole_llmesr.preprocess import prepare as prep

        barrier.wait(timeout=120)
        m = prep("tiny", inputs={"inter": raw}, out_root=out, cache_dir=cache, show_progress=False)
        queue.put(("ok", m))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(err)))


def test_concurrent_prepares_build_once(raw, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, args=(str(raw), str(out), str(cache), barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[0] for r in results] == ["ok", "ok"], results
    m1, m2 = results[0][1], results[1][1]
    assert m1 == m2 == artifacts.read_manifest(out / "tiny", "tiny")  # one build; the other reused it
    assert is_fresh(out / "tiny", "tiny", settings_of(m1))
    assert chunk_sizes(chunks(cache)) == [25, 30]  # every text embedded exactly once
    artifacts.load_embeddings(out / "tiny" / "tiny.item_emb.npz", expected_dim=384)
    artifacts.load_neighbors(out / "tiny" / "tiny.sim_users.npz")
    assert sorted(p.name for p in (out / "tiny").iterdir() if p.name.startswith(".")) == [LOCK_NAME]


# ------------------------------------------------------------------------------------------ RecBole hook
def test_ensure_prepared_ml100k_end_to_end(shared_cache):
    from recbole_llmesr.config import RECBOLE_ML100K_DIR, LLMESRConfig
    from recbole_llmesr.registry import create_dataset

    # All 2.6k texts go through the real model. User texts are capped at 200 characters (~50 tokens; by
    # default most ml-100k users fill MiniLM's 256) to keep this test under a minute on 2 CPU cores.
    cfg = {"embedding_cache_dir": str(shared_cache), "show_progress": False, "user_text_max_chars": 200}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="ml-100k", config_dict=cfg)
    assert Path(config["data_path"]) == RECBOLE_ML100K_DIR
    wheel_files = {p.name: sha(p) for p in RECBOLE_ML100K_DIR.iterdir() if p.is_file()}
    ensure_prepared(config)
    folder = Path("dataset_atomic") / "ml-100k"
    assert Path(config["data_path"]) == folder
    m = artifacts.read_manifest(folder, "ml-100k")
    assert m["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert m["template_name"] == "movie" and m["user_name_field"] == "movie_title"
    assert m["embedder"] == ST_IDENTITY and m["user_max_chars"] == 200 and is_fresh(folder, "ml-100k", settings_of(m))
    assert {p.name: sha(p) for p in RECBOLE_ML100K_DIR.iterdir() if p.is_file()} == wheel_files

    # the next run finds the prepared copy (RecBole's config does) and leaves it alone
    config2 = LLMESRConfig(model="LLMESR_SASRec", dataset="ml-100k", config_dict=cfg)
    assert Path(config2["data_path"]) == folder
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    ensure_prepared(config2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before

    # and the plugin's dataset loads the artefacts
    data = create_dataset(config2)
    assert tuple(data.llm_item_emb.shape) == (data.item_num, 384)
    assert data.sim_users.shape[0] == data.user_num and data.sim_users.shape[1] == 100


def test_ensure_prepared_in_place_never_rewrites_atomic_files(tmp_path, shared_cache):
    from recbole_llmesr.config import LLMESRConfig

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny", n_users=30, n_items=25, seed=3)
    original = {f: (folder / f).read_bytes() for f in ("tiny.inter", "tiny.item")}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny",
                          config_dict={**FAST, "data_path": str(root), "embedding_cache_dir": str(shared_cache),
                                       "sim_top_k": 20, "text_template": "movie-ish: {title}"})
    ensure_prepared(config)
    assert {f: (folder / f).read_bytes() for f in original} == original
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [LOCK_NAME]
    m = artifacts.read_manifest(folder, "tiny")
    assert m["top_k"] == 20 and m["template"] == "movie-ish: {title}" and is_fresh(folder, "tiny", settings_of(m))
    assert m["files"]["tiny.inter"] == hashlib.sha256(original["tiny.inter"]).hexdigest()
    assert config["data_path"] == str(folder)


def test_ensure_prepared_keeps_artefacts_made_elsewhere(tiny):
    from recbole_llmesr.config import LLMESRConfig

    before = {p.name: sha(p) for p in tiny["folder"].iterdir()}
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny", config_dict=tiny["config"])
    ensure_prepared(config)
    assert {p.name: sha(p) for p in tiny["folder"].iterdir()} == before


def test_ensure_prepared_skips_configs_without_llm_parts(tmp_path):
    from recbole_llmesr.config import LLMESRConfig

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny")
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny",
                          config_dict={**FAST, "data_path": str(root), "use_semantic_view": False,
                                       "id_init": "random", "use_distillation": False})
    ensure_prepared(config)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.inter", "tiny.item"]


def test_run_recbole_builds_missing_artefacts(tmp_path, shared_cache):
    from recbole_llmesr.quick_start import run_recbole

    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root, "tiny", n_users=30, n_items=25, seed=3)
    cfg = {**FAST, "epochs": 1, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
           "embedding_cache_dir": str(shared_cache), "sim_top_k": 10}
    result = run_recbole(model="LLMESR_SASRec", dataset="tiny", config_dict=cfg)
    assert "ndcg@10" in result["test_result"]
    m = artifacts.read_manifest(folder, "tiny")
    assert m is not None and m["top_k"] == 10 and is_fresh(folder, "tiny", settings_of(m))


# ------------------------------------------------------------------------------------------ CLI
def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "recbole_llmesr.prepare_cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_builds_and_reports(raw, tmp_path, shared_cache):
    out = tmp_path / "out"
    r = cli("--dataset", "tiny", "--source", "atomic", "--inter", str(raw), "--out", str(out),
            "--cache-dir", str(shared_cache), "--top-k", "7", "--template", "Item called {title}.", "--quiet",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "30 users, 25 items" in r.stdout and "384-d" in r.stdout and str(out / "tiny") in r.stdout
    m = artifacts.read_manifest(out / "tiny", "tiny")
    assert m["top_k"] == 7 and m["template"] == "Item called {title}." and is_fresh(out / "tiny", "tiny", settings_of(m))


def test_cli_bad_input_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n")
    r = cli("--dataset", "bad", "--source", "atomic", "--inter", str(bad), "--out", str(tmp_path / "out"),
            "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"llmesr-prepare: error: {bad}, line 3: expected 3 tab-separated "
                                             f"fields, found 2"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing_file", "missing_args", "bad_template", "bad_columns", "empty"])
def test_cli_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    from recbole_llmesr.prepare_cli import main

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # what --quiet sets; restored afterwards

    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    csv = tmp_path / "x.csv"
    csv.write_text("u,i,t\n1,2,3\n")
    args, expected = {
        "missing_file": (["--inter", str(tmp_path / "absent.inter")], f"{tmp_path / 'absent.inter'}: file not found"),
        "missing_args": (["--source", "amazon2014", "--reviews", str(inter)], "needs --reviews and --meta"),
        "bad_template": (["--inter", str(inter), "--template", "nonsense"], "unknown item text template 'nonsense'"),
        "bad_columns": (["--source", "csv", "--inter", str(csv), "--columns", "user_id=u,item_id=i,timestamp=ts"],
                        f"{csv}, line 1: column 'ts' (for timestamp) is not in the header"),
        "empty": (["--inter", str(inter), "--filter", "kcore"], "removed every interaction"),
    }[case]
    assert main(["--dataset", "x", "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmesr-prepare: error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()
