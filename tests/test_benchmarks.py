"""Smoke runs of the benchmark scripts on tiny inputs, so they keep working. Structure only: no timing
assertions (machines are shared and noisy)."""
import json
import sys

import pytest
import torch
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
    assert train_cost.peak_rss_mb("backbone_default", "tiny", base, 1) > 0


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


def test_quality_smoke_backbone_and_ablations(tiny, tmp_path):
    from benchmarks import quality

    common = ["--dataset", "tiny", "--data_path", tiny["config"]["data_path"], "--output", str(tmp_path / "q"),
              "--seeds", "2", "--epochs", "1", "--eval_mode", "paper10", "--threads", "1",
              "hidden_size=8", "inner_size=16", "train_batch_size=64"]
    # --only splits a pair over processes; the run of both then reuses it.
    one = quality.main(common + ["--backbones", "SASRec", "--only", "llmesr", "--seeds", "1"]).read_text()
    assert "LLMESR_SASRec" in one and "## Targets" not in one
    first = tmp_path / "q" / "SASRec" / "runs" / "LLMESR_SASRec-seed42.json"
    assert [p.name for p in first.parent.glob("*.json")] == [first.name]
    stamp = first.stat().st_mtime_ns
    path = quality.main(common + ["--backbones", "SASRec"])
    assert first.stat().st_mtime_ns == stamp
    text = path.read_text()
    assert "## SASRec vs LLMESR_SASRec" in text and "| NDCG@10 (full) | tail item |" in text
    assert "## Targets, LLMESR_SASRec over SASRec, NDCG@10 (full ranking)" in text
    assert text.count("| overall |") >= 2  # the targets tables
    runs = sorted(p.name for p in (tmp_path / "q" / "SASRec" / "runs").glob("*.json"))
    assert runs == [
        "LLMESR_SASRec-seed42.json", "LLMESR_SASRec-seed43.json", "SASRec-seed42.json", "SASRec-seed43.json"
    ]

    # --variants splits the rows over processes; a later full run reuses them.
    only = quality.main(common + ["--ablations", "--seeds", "1", "--variants", "w/o SD"]).read_text()
    assert "| w/o SD |" in only and "| w/o CA |" not in only
    path = quality.main(common + ["--ablations", "--seeds", "1"])
    table = path.read_text()
    for label in quality.ABLATIONS:
        assert f"| {label} |" in table
    records = [json.loads(p.read_text()) for p in (tmp_path / "q" / "ablations" / "runs").glob("*.json")]
    assert {r["spec"]["config"].get("use_collab_view") for r in records} == {None, False}


def test_cold_start_smoke(tmp_path):
    from benchmarks import cold_start
    from conftest import write_tiny_dataset

    root = tmp_path / "data"
    write_tiny_dataset(root, n_users=60, n_items=40)
    res = cold_start.main(["--dataset", "tiny", "--data_path", str(root), "--output", str(tmp_path / "cold"),
                           "--epochs", "1", "--sasrec_epochs", "1", "--eval_mode", "full", "--share", "0.2",
                           "--cache_dir", str(tmp_path / "cache"), "--json", str(tmp_path / "cold.json"),
                           "hidden_size=8", "inner_size=16", "train_batch_size=64"])
    assert res["cold_items"] == 8 and res["rows"]
    rows = res["rows"]
    assert set(rows) == {f"LLMESR_SASRec (cold collab: {p})" for p in cold_start.POLICIES} | {"Popularity", "SASRec"}
    # Neither SASRec nor popularity can put a never-seen item in the top 10 of 40.
    assert rows["SASRec"]["hit@10"] == 0.0 and rows["Popularity"]["hit@10"] == 0.0
    assert all(r["cases"] == rows["SASRec"]["cases"] > 0 for r in rows.values())
    assert json.loads((tmp_path / "cold.json").read_text())["cold_items"] == 8
    warm_items = (root / "tiny_warm" / "tiny_warm.item").read_text()
    cold_items = (root / "tiny_warm.cold.item").read_text().splitlines()[1:]
    assert len(cold_items) == 8 and not any(line.split("\t")[0] + "\t" in warm_items for line in cold_items)


def test_eval_cost_smoke(tiny):
    from benchmarks import eval_cost

    res = eval_cost.run(dataset="tiny", repeats=1, slow=True, threads=1, settings=tiny["config"], paper_n=10)
    rows = res["rows"]
    assert set(rows) == {"full", "paper10", "paper10 (RecBole predict path)"}
    assert rows["full"]["ratio_to_full"] == 1.0 and all(r["eval_s"] > 0 for r in rows.values())
    # Both sampled paths rank the same candidates with the same model: identical metrics.
    assert rows["paper10"]["metrics"] == rows["paper10 (RecBole predict path)"]["metrics"]
    assert "/ full ranking" in eval_cost.table(res)


def test_convergence_smoke_and_history(tiny, tmp_path):
    from benchmarks import convergence

    args = ["--study", "teacher", "--dataset", "tiny", "--data_path", tiny["config"]["data_path"],
            "--output", str(tmp_path / "c"), "--seeds", "2", "--epochs", "3", "--stopping_step", "3",
            "--eval_mode", "paper10", "--threads", "1", "--timing_epochs", "1", "--max_batches", "2",
            "hidden_size=8", "inner_size=16", "train_batch_size=64"]
    rep = convergence.main(args)
    assert list(rep["rows"]) == list(convergence.STUDIES["teacher"])
    ref = rep["rows"][rep["reference"]]
    assert ref["s_per_epoch_vs_ref"] == 1.0 and ref["ndcg@10"]["relative"] == 0.0
    for row in rep["rows"].values():
        assert row["seeds"] == [42, 43] and row["epochs"] == 3 and 0 <= row["best_epoch"] <= 2
        assert row["s_per_epoch"] > 0 and row["run_s_per_epoch"] > 0
        assert row["train_s_to_best"] == pytest.approx((row["best_epoch"] + 1) * row["s_per_epoch"])
    # The trainer's history: one entry per validation, cumulative training seconds, the run's best score.
    record = json.loads(next((tmp_path / "c" / "teacher" / "runs").glob("online*-seed42.json")).read_text())
    history = record["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(a["train_s"] < b["train_s"] for a, b in zip(history, history[1:]))
    assert max(h["valid_score"] for h in history) == record["best_valid_score"]
    text = (tmp_path / "c" / "teacher.md").read_text()
    assert "| online (official) |" in text and "train s to best" in text
    with pytest.raises(SystemExit, match="unknown variants"):
        convergence.main(args + ["--variants", "nope"])


def test_tail_diagnosis_reports_each_half_and_its_spread(tiny):
    from benchmarks import tail_diagnosis
    from recbole_llmesr.quick_start import run_recbole

    run_recbole("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], "epochs": 1})
    ckpt = str(sorted(Path(tiny["config"]["checkpoint_dir"]).glob("LLMESR_SASRec-*.pth"))[-1])
    (result,) = tail_diagnosis.main(["--checkpoint", ckpt, "--debias", "0", "0.5"])
    assert set(result["spread"]) == {"fused", "collab", "semantic"}
    assert set(result["ndcg"]) == {"fused", "collab", "semantic", "fused - 0 log(1+n)", "fused - 0.5 log(1+n)"}
    assert result["ndcg"]["fused - 0 log(1+n)"] == result["ndcg"]["fused"]
    assert abs(sum(result["share"]) - 1) < 1e-9
    # The spread of the fused score, recomputed directly from the model's scores of every user.
    from recbole_llmesr.recommend import load_recommender

    rec = load_recommender(ckpt)
    users = [u for u in range(1, len(rec.user_tokens)) if len(rec.histories[u]) >= 3]
    with torch.no_grad():
        scores = rec.scores(users, [rec.histories[u][:-1] for u in users])[:, 1:].double()
    spread = result["spread"]["fused"]
    assert abs(spread["score_std"] - scores.std(unbiased=False).item()) < 1e-6
    item_mean = scores.mean(0)
    assert abs(spread["item_share"] - (item_mean.var(unbiased=False) / scores.var(unbiased=False)).item()) < 1e-6
    assert -1 <= spread["item_pop_corr"] <= 1


def test_transition_sweep_scores_as_training_did_and_chooses_on_validation(tiny):
    from benchmarks import transition_sweep
    from recbole_llmesr.quick_start import run_recbole

    # The plain backbone: trained without LLM item embeddings, which the sweep adds for the term.
    plain = {"use_semantic_view": False, "id_init": "random", "use_distillation": False}
    run = run_recbole("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], **plain, "epochs": 2})
    ckpt = str(sorted(Path(tiny["config"]["checkpoint_dir"]).glob("LLMESR_SASRec-*.pth"))[-1])
    mode = tiny["config"].get("eval_args", {}).get("mode", "full")
    (result,) = transition_sweep.main(["--checkpoint", ckpt, "--weights", "0", "3", "--test_modes", str(mode),
                                       "--test_all"])
    # w = 0 is the trained model as run_recbole selected and tested it.
    assert result["validation"][0.0] == pytest.approx(run["best_valid_score"], abs=1e-4)
    at_zero = result["test"][str(mode)][0.0]
    assert at_zero["ndcg@10"] == pytest.approx(run["test_result"]["ndcg@10"], abs=1e-4)
    assert result["test"][str(mode)][3.0] != at_zero
    assert result["best_weight"] == max((0.0, 3.0), key=lambda w: (result["validation"][w], -w))
    with pytest.raises(SystemExit):
        transition_sweep.main(["--checkpoint", ckpt, "--weights", "-1"])
