"""Issue 8: top-K export from a checkpoint (no embedder calls for known items) and cold-start items."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, write_checkpoint_without

from recbole_llmesr import recommend
from recbole_llmesr.cli import recommend as recommend_cli
from recbole_llmesr.quick_start import run_recbole


def _train(model: str, config: dict, dataset: str = "tiny") -> Path:
    run_recbole(model, dataset, config_dict=config)
    return sorted(Path(config["checkpoint_dir"]).glob(f"{model}-*.pth"))[-1]


@pytest.fixture
def count_encodes(monkeypatch):
    """Count calls of the real offline model's encode (it still runs)."""
    from sentence_transformers import SentenceTransformer

    calls = []
    original = SentenceTransformer.encode

    def counting(self, sentences, *args, **kwargs):
        calls.append(len(sentences) if isinstance(sentences, list) else 1)
        return original(self, sentences, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting)
    return calls


def _rows(path: Path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_export_excludes_history_is_deterministic_and_calls_no_embedder(tiny, tmp_path, count_encodes):
    ckpt = _train("LLMESR_SASRec", {**tiny["config"], "epochs": 1})
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    rec = recommend.load_recommender(str(ckpt))
    recommend.export(rec, str(first), k=5, show_progress=False)
    recommend.export(recommend.load_recommender(str(ckpt)), str(second), k=5, show_progress=False)
    assert first.read_bytes() == second.read_bytes()
    assert count_encodes == []  # known items: everything came from the checkpoint and the atomic files

    history = {}
    for line in (tiny["folder"] / "tiny.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        history.setdefault(user, set()).add(item)
    rows = _rows(first)
    assert len(rows) == 5 * len(history)
    for row in rows:
        assert row["item_id"] not in history[row["user_id"]]
    by_user = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append((int(row["rank"]), float(row["score"])))
    for ranks in by_user.values():
        assert [r for r, _ in ranks] == [1, 2, 3, 4, 5]
        assert all(a[1] >= b[1] for a, b in zip(ranks, ranks[1:]))

    # The scores are the model's: the same numbers as its full_sort_predict on the user's full history.
    uid = rec.user_ids(["u3"])
    scores = rec.scores(uid)[0]
    top = rows[[r["user_id"] for r in rows].index("u3")]
    assert float(top["score"]) == pytest.approx(float(scores[rec.item_tokens.index(top["item_id"])]), abs=1e-5)


def test_checkpoint_from_before_a_changed_default_keeps_its_setting(tiny, tmp_path):
    # cross_attention_residual became True by default; a checkpoint written before the key existed was
    # trained with the paper's fusion and must be served with it, not with today's default.
    ckpt = _train("LLMESR_SASRec", {**tiny["config"], "epochs": 1, "cross_attention_residual": False})
    old = write_checkpoint_without(ckpt, "cross_attention_residual", to=tmp_path / "old.pth")
    assert recommend.load_recommender(str(ckpt)).model.options.cross_attention_residual is False
    rec = recommend.load_recommender(str(old))
    assert rec.model.options.cross_attention_residual is False
    users = rec.user_ids(["u1", "u3"])
    assert torch.equal(rec.scores(users), recommend.load_recommender(str(ckpt)).scores(users))


def test_cli_users_jsonl_and_clear_errors(tiny, tmp_path, capsys):
    ckpt = _train("LLMESR_SASRec", {**tiny["config"], "epochs": 1})
    out = tmp_path / "recs.jsonl"
    assert recommend_cli.main(["--checkpoint", str(ckpt), "--users", "u1,u2", "-k", "3", "-o", str(out),
                               "--quiet"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in lines] == ["u1", "u2"] and all(len(r["items"]) == 3 for r in lines)
    assert "users/s" in capsys.readouterr().out

    assert recommend_cli.main(["--checkpoint", str(ckpt), "--users", "nobody", "-o", str(out), "--quiet"]) == 2
    assert "unknown user(s), e.g. nobody" in capsys.readouterr().err
    assert recommend_cli.main(["--checkpoint", str(tmp_path / "missing.pth"), "--quiet"]) == 2
    assert "missing.pth: checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "recs.jsonl.tmp").exists()


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec", "LLMESR_GRU4Rec", "LLMESR_BERT4Rec"])
def test_other_models_export_and_only_llmesr_takes_cold_items(model, tiny):
    ckpt = _train(model, {**tiny["config"], "epochs": 1})
    rec = recommend.load_recommender(str(ckpt))
    uid = rec.user_ids(["u0"])
    items, _ = rec.topk(uid, k=4)
    assert len(set(items[0])) == 4 and 0 not in items[0] and not set(items[0]) & set(rec.histories[uid[0]])
    if model.startswith("LLMESR_"):
        recommend.add_cold_items(rec, ["new"], np.ones((1, 16), dtype=np.float32))
        assert rec.scores(uid).shape[1] == rec.n_items == 32  # 30 items, [PAD] and the new one
    else:
        with pytest.raises(recommend.RecommendError, match=f"{model} cannot rank items without interactions"):
            recommend.add_cold_items(rec, ["new"], np.zeros((1, 16), dtype=np.float32))


# ---- cold-start items, with the real offline embedder -----------------------------------------------

TOPICS = {
    "lip": ["Velvet Matte Lipstick Ruby Red", "Glossy Lip Balm Cherry", "Lip Liner Pencil Nude",
            "Liquid Lipstick Berry", "Tinted Lip Oil Rose", "Lip Plumper Gloss Clear"],
    "hair": ["Argan Oil Shampoo Repair", "Keratin Conditioner Smooth", "Dry Shampoo Spray Fresh",
             "Hair Mask Deep Repair", "Heat Protectant Hair Spray", "Curl Defining Cream"],
    "nail": ["Nail Polish Coral Pink", "Gel Top Coat Shine", "Cuticle Oil Almond", "Nail File Glass",
             "Base Coat Strengthener", "Nail Polish Remover Acetone Free"],
}


def _write_text_dataset(root: Path, name: str = "shop", n_users: int = 150, seed: int = 0) -> Path:
    """Users stay within one topic; the first item of each topic is its best seller."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    items = [(f"{topic}{i}", title) for topic, titles in TOPICS.items() for i, title in enumerate(titles)]
    inter = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(n_users):
        topic = list(TOPICS)[u % len(TOPICS)]
        n = int(rng.integers(4, 8))
        weights = np.array([4.0] + [1.0] * (len(TOPICS[topic]) - 1))
        seq = rng.choice(len(TOPICS[topic]), size=n, p=weights / weights.sum())
        inter += [f"u{u}\t{topic}{i}\t{t}" for t, i in enumerate(seq)]
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (folder / f"{name}.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "\n".join(f"{i}\t{t}" for i, t in items) + "\n"
    )
    return folder


def test_cold_item_like_a_best_seller_ranks_high_for_its_fans(tmp_path, count_encodes):
    root = tmp_path / "data"
    _write_text_dataset(root)
    config = {**FAST, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"), "epochs": 15,
              "hidden_size": 16, "inner_size": 32, "embedding_cache_dir": str(tmp_path / "cache"),
              "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}}
    ckpt = _train("LLMESR_SASRec", config, dataset="shop")
    assert sum(count_encodes) > 0  # preparation embedded the items and users
    count_encodes.clear()

    cold = tmp_path / "new.item"
    cold.write_text("item_id:token\ttitle:token_seq\nnew_lip\tVelvet Matte Lipstick Ruby Red Limited Edition\n"
                    "new_garden\tGarden Hose 50 ft Heavy Duty\n")
    rec = recommend.load_recommender(str(ckpt))
    texts = recommend.cold_item_texts(str(cold), "shop", rec.config["data_path"])
    vectors = recommend.embed_cold_items(texts, "shop", rec.config["data_path"], cache_dir=str(tmp_path / "cache"),
                                         show_progress=False)
    assert sum(count_encodes) == 2  # each cold text embedded once
    ids = recommend.add_cold_items(rec, list(texts), vectors)
    assert rec.item_tokens[ids[0]] == "new_lip" and rec.n_items == 18 + 1 + 2

    fans = [u for u in range(1, len(rec.user_tokens)) if rec.item_tokens.index("lip0") in rec.histories[u]]
    items, _ = rec.topk(np.array(fans), k=5)
    lip_share = np.mean([ids[0] in row for row in items])
    garden_share = np.mean([ids[1] in row for row in items])
    # The unrelated item is not favoured; how far below chance (5 of 18) it lands varies with the seed.
    assert lip_share >= 0.8 and garden_share <= 0.5, (lip_share, garden_share)

    # A second run reads the cold vectors from the cache: no model call at all.
    count_encodes.clear()
    again = recommend.embed_cold_items(texts, "shop", rec.config["data_path"], cache_dir=str(tmp_path / "cache"),
                                       show_progress=False)
    assert count_encodes == [] and np.allclose(again, vectors)

    # And through the command line.
    out = tmp_path / "recs.csv"
    assert recommend_cli.main(["--checkpoint", str(ckpt), "--cold-items", str(cold),
                               "--cache-dir", str(tmp_path / "cache"), "-o", str(out), "--quiet", "-k", "5"]) == 0
    assert count_encodes == []
    assert any(r["item_id"] == "new_lip" for r in _rows(out))


@pytest.mark.parametrize("collab", ["regression", "pca", "zero"])
def test_add_items_extends_every_view_and_keeps_known_scores(tiny, collab):
    from conftest import build

    _, model, _ = build("LLMESR_BERT4Rec", tiny["config"])
    model.eval()
    seq = torch.tensor([[1, 2, 3, 0, 0]])
    seq = torch.cat([seq, torch.zeros(1, model.max_seq_length - 5, dtype=torch.long)], dim=1)
    batch = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([3])}
    before = model.full_sort_predict(batch)
    n = model.n_items
    new = model.add_items(torch.randn(2, model.llm_item_emb.size(1)), collab=collab)
    assert new.tolist() == [n, n + 1] and model.mask_token == n + 2
    after = model.full_sort_predict(batch)
    assert after.shape == (1, n + 2)
    assert torch.allclose(after[:, :n], before, atol=1e-5)  # known items unchanged, [MASK] moved behind the new ones
    with pytest.raises(ValueError, match=r"shape \[n, 16\]"):
        model.add_items(torch.randn(1, 5))


def test_evaluate_cases_counts_hits_and_ndcg(tiny):
    ckpt_cfg = {**tiny["config"], "epochs": 1}
    rec = recommend.load_recommender(str(_train("LLMESR_SASRec", ckpt_cfg)))
    uid = rec.user_ids(["u0", "u1"])
    hist = [rec.histories[u][:-1] for u in uid]
    ranked, _ = rec.topk(uid, k=rec.n_items, histories=hist)
    targets = [ranked[0][0], ranked[1][11]]  # first place, then outside the top 10
    result = recommend.evaluate_cases(rec, uid, hist, np.array(targets), k=10)
    assert result["hit@10"] == pytest.approx(0.5) and result["ndcg@10"] == pytest.approx(0.5)
