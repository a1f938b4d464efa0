"""Similar-user retrieval cost (HNSW build + search, recall@10 vs exact) and offline embedding throughput.

One command, defaults as in issue 6 (1M synthetic users, 384-d, k=100, 2 threads)::

    python -m benchmarks.retrieval_cost                 # retrieval at N=1,000,000
    python -m benchmarks.retrieval_cost --n 200000      # smaller N
    python -m benchmarks.retrieval_cost --embed-only    # embedding throughput of the offline model

Timings are wall-clock and the machine may be shared: read them as context, not as a guarantee.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from typing import Any, Dict, Optional

import numpy as np

from recbole_llmesr.prep.retrieval import recall_at_k, similar_users


def clustered_users(n: int, dim: int, seed: int, n_clusters: int = 1000, spread: float = 0.5) -> np.ndarray:
    """Unit-norm Gaussian blobs around random centres: user embeddings cluster by taste, and clustered
    data is harder for HNSW than uniform noise because many neighbours are near-ties."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    chunk = 100_000  # generate in chunks so a 1M run never holds float64 temporaries
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x[s:s + m] = centres[rng.integers(0, n_clusters, m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
    """Exact top-k other rows for the sampled query rows (IndexFlatIP over all n), self removed by id."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(x[queries], k + 1)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for r, (q, row) in enumerate(zip(queries, ids)):
        kept = row[(row != q) & (row >= 0)][:k]
        out[r, :len(kept)] = kept
    return out


def run_retrieval(n: int = 1_000_000, dim: int = 384, k: int = 100, exact_max: int = 100_000, threads: int = 2,
                  sample: int = 1000, seed: int = 2024, show_progress: bool = False) -> Dict[str, Any]:
    """Build + search with ``similar_users`` (HNSW when n > exact_max) and recall@10 on ``sample`` queries."""
    t0 = time.perf_counter()
    x = clustered_users(n, dim, seed)
    gen_s = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    approx = similar_users(x, k=k, exact_max=exact_max, show_progress=show_progress, threads=threads)
    search_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queries = np.random.default_rng(seed + 1).choice(n, size=min(sample, n), replace=False)
    t0 = time.perf_counter()
    exact = exact_neighbours(x, queries, 10, threads)
    exact_s = time.perf_counter() - t0
    return {
        "n": n, "dim": dim, "k": k, "threads": threads, "seed": seed, "sample": len(queries),
        "index": "HNSW" if n > exact_max else "exact",
        "generate_s": round(gen_s, 2), "build_search_s": round(search_s, 2), "exact_sample_s": round(exact_s, 2),
        "recall_at_10": round(float(recall_at_k(approx[queries], exact, 10)), 4),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_during_search_mb": round((rss1 - rss0) / 1024, 1),
    }


def item_texts(n: int, seed: int) -> list:
    """Texts shaped like the item template (title, category, brand), unique so no cache could help."""
    rng = np.random.default_rng(seed)
    words = "soft matte gloss rose vanilla daily repair hydrating vitamin clean fresh ultra night shea".split()
    cats = ["Beauty > Skin Care > Face", "Beauty > Makeup > Lips", "Beauty > Hair Care > Shampoo"]
    return [f"Title: {' '.join(rng.choice(words, 4))} no. {i}. Category: {cats[i % 3]}. Brand: brand{i % 97}."
            for i in range(n)]


def run_embedding(
    n: int = 1000, threads: int = 2, seed: int = 2024, batch_size: Optional[int] = None
) -> Dict[str, Any]:
    """Items per second of the offline embedder (all-MiniLM-L6-v2) on ``threads`` CPU threads, no cache."""
    import torch

    from recbole_llmesr.prep.embedders import build_embedder

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    emb = build_embedder(batch_size=batch_size)
    load_s = time.perf_counter() - t0
    texts = item_texts(n, seed)
    emb.embed_batch(texts[:8])  # warm-up: first call pays lazy initialisation
    t0 = time.perf_counter()
    vecs = [emb.embed_batch([texts[i] for i in b]) for b in emb.batches(texts)]
    secs = time.perf_counter() - t0
    out = np.concatenate(vecs)
    return {"n": n, "threads": threads, "seed": seed, "model": emb.model, "dim": int(out.shape[1]),
            "batch_size": emb.batch_size, "load_s": round(load_s, 2), "embed_s": round(secs, 2),
            "items_per_s": round(n / secs, 1)}


def environment() -> Dict[str, str]:
    import faiss
    import recbole
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"python": platform.python_version(), "torch": torch.__version__, "recbole": recbole.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "nproc": str(os.cpu_count()), "cpu": cpu,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic users")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=100, help="neighbours stored per user")
    p.add_argument("--exact-max", type=int, default=100_000, help="exact search up to this n (keep below --n for HNSW)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample", type=int, default=1000, help="queries checked against exact search")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--embed", action="store_true", help="also measure embedding throughput")
    p.add_argument("--embed-only", action="store_true", help="only measure embedding throughput")
    p.add_argument("--embed-n", type=int, default=1000)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", help="write results here")
    a = p.parse_args(argv)
    res: Dict[str, Any] = {"env": environment()}
    if not a.embed_only:
        r = res["retrieval"] = run_retrieval(a.n, a.dim, a.k, a.exact_max, a.threads, a.sample, a.seed, a.progress)
        print("| users | dim | k | index | threads | build+search (s) | recall@10 (sample) | max RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {r['n']:,} | {r['dim']} | {r['k']} | {r['index']} | {r['threads']} | {r['build_search_s']} "
              f"| {r['recall_at_10']} ({r['sample']}) | {r['max_rss_mb']} |")
    if a.embed or a.embed_only:
        e = res["embedding"] = run_embedding(a.embed_n, a.threads, a.seed)
        print("| model | texts | threads | batch | seconds | items/s |")
        print("|---|---|---|---|---|---|")
        print(f"| {e['model']} | {e['n']} | {e['threads']} | {e['batch_size']} | {e['embed_s']} | {e['items_per_s']} |")
    print(json.dumps(res["env"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
