"""Tests for recbole_llmesr.prep.retrieval: real faiss, compared with brute-force numpy."""
import os
import time

import faiss
import numpy as np
import pytest

from recbole_llmesr.prep.retrieval import available_cpus, recall_at_k, similar_users


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def clustered(n: int, d: int, clusters: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    return (centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_exact_equals_brute_force_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    scaled = x * rng.uniform(0.1, 10.0, size=(300, 1))  # cosine: the scale of a row must not matter
    got = similar_users(scaled, k=10, show_progress=False)
    assert got.dtype == np.int64 and got.shape == (300, 10)
    np.testing.assert_array_equal(got, brute_force(x, 10))


def test_batches_give_the_same_answer():
    x = np.random.default_rng(2).normal(size=(257, 8))
    np.testing.assert_array_equal(similar_users(x, k=7, show_progress=False, batch_size=16),
                                  similar_users(x, k=7, show_progress=False))


@pytest.mark.parametrize("exact_max", [200_000, 0])  # exact and HNSW
def test_self_never_included_with_duplicates(exact_max):
    base = np.random.default_rng(3).normal(size=(50, 12))
    x = np.repeat(base, 4, axis=0)  # every vector 4 times: the query ties with its 3 copies
    got = similar_users(x, k=5, exact_max=exact_max, show_progress=False)
    rows = np.arange(len(x))
    assert not (got == rows[:, None]).any()
    for i in range(len(x)):
        copies = {j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i}
        assert set(got[i, :3].tolist()) == copies  # similarity 1, ahead of everything else
        assert len(set(got[i].tolist())) == 5 and (got[i] >= 0).all()


def test_all_identical_vectors():
    got = similar_users(np.ones((30, 4)), k=40, show_progress=False)
    for i, row in enumerate(got):
        assert i not in row
        assert sorted(row[:29].tolist()) == [j for j in range(30) if j != i]
        assert (row[29:] == -1).all()


def test_padding_when_fewer_than_k_others():
    x = np.random.default_rng(4).normal(size=(5, 3))
    got = similar_users(x, k=10, show_progress=False)
    assert got.shape == (5, 10)
    assert (got[:, 4:] == -1).all()
    np.testing.assert_array_equal(got[:, :4], brute_force(x, 4))
    assert (similar_users(x[:1], k=3, show_progress=False) == -1).all()
    assert similar_users(np.zeros((0, 3)), k=3, show_progress=False).shape == (0, 3)


def test_zero_vector_allowed_nan_rejected():
    x = np.random.default_rng(5).normal(size=(6, 4))
    x[2] = 0.0
    got = similar_users(x, k=5, show_progress=False)
    assert 2 not in got[2] and (got >= 0).all()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        similar_users(x, k=2, show_progress=False)
    with pytest.raises(ValueError, match="k must be"):
        similar_users(x[:2], k=0)
    with pytest.raises(ValueError, match="2-D"):
        similar_users(np.ones(5), k=1)


def test_hnsw_recall_at_10_on_clustered_vectors():
    x = clustered(20_000, 64, clusters=50, noise=1.0)
    exact = similar_users(x, k=10, show_progress=False)
    t = time.monotonic()
    approx = similar_users(x, k=10, exact_max=1_000, show_progress=False)  # forces HNSW
    elapsed = time.monotonic() - t
    assert approx.shape == (20_000, 10) and not (approx == np.arange(20_000)[:, None]).any()
    recall = recall_at_k(approx, exact, 10)
    assert recall >= 0.95, recall
    assert elapsed < 30


def test_recall_at_k_helper():
    exact = np.array([[1, 2, 3], [0, 2, -1], [-1, -1, -1]])
    approx = np.array([[3, 9, 1], [2, 0, 1], [0, 1, 2]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1.0) / 2)  # row 3 has no truth
    assert recall_at_k(exact, exact, 2) == 1.0


def test_threads_respect_cpus_and_are_restored():
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    before = faiss.omp_get_max_threads()
    similar_users(np.random.default_rng(6).normal(size=(20, 4)), k=3, show_progress=False, threads=1)
    assert faiss.omp_get_max_threads() == before
