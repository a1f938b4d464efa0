"""Smoke runs of the benchmark scripts on tiny inputs, so they keep working. Structure only: no timing
assertions (machines are shared and noisy)."""
import json
import sys
from pathlib import Path

# benchmarks/ sits at the repository root, which is not on sys.path under pytest (tests/ has no __init__).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import retrieval_cost, train_cost


def test_train_cost_smoke(tiny, tmp_path):
    res = train_cost.run(dataset="tiny", epochs=1, max_batches=2, threads=1, memory=False, config_dict=tiny["config"])
    assert set(res["variants"]) == set(train_cost.VARIANTS)
    for v in res["variants"].values():
        assert v["sec_per_epoch"] > 0 and len(v["epoch_times"]) == 1
        assert 0 < v["batches_timed"] <= min(2, v["batches_per_epoch"])
    assert [r["ratio"] for r in res["ratios"]] == [r[0] for r in train_cost.RATIOS]
    assert all(r["value"] > 0 for r in res["ratios"])
    assert "s/epoch" in train_cost.table(res)
    json.dumps(res)  # --json must be able to save it


def test_train_cost_peak_rss_subprocess(tiny):
    base = train_cost.prepare("tiny", tiny["config"])
    assert train_cost.peak_rss_mb("backbone_sequence", "tiny", base, 1) > 0


def test_retrieval_cost_smoke(tmp_path):
    out = tmp_path / "r.json"
    res = retrieval_cost.main(["--n", "3000", "--dim", "32", "--exact-max", "500", "--k", "20",
                               "--sample", "200", "--json", str(out)])
    r = res["retrieval"]
    assert r["index"] == "HNSW" and r["n"] == 3000 and r["sample"] == 200
    assert r["build_search_s"] > 0 and 0.0 <= r["recall_at_10"] <= 1.0
    assert json.loads(out.read_text())["env"]["faiss"]


def test_embedding_throughput_smoke():
    e = retrieval_cost.run_embedding(n=16, threads=1)
    assert e["dim"] == 384 and e["items_per_s"] > 0
