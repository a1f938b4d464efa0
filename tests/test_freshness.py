"""Tests of recbole_llmesr.prep.freshness: what a rebuild redoes, and one build under concurrent runs."""
from __future__ import annotations

import logging
import multiprocessing

import numpy as np
from prep_helpers import chunk_sizes, chunks, run_tiny, settings_of

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.freshness import LOCK_NAME, is_fresh, stale_reason


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


# -------------------------------------------------------------------------------------- concurrency


def _concurrent_worker(raw, out, cache, barrier, queue):
    try:
        from recbole_llmesr.prep.pipeline import prepare as prep

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
