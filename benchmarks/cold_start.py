"""Cold-start items: hold out 10 % of a dataset's items entirely from training, then rank them.

One command (Beauty prepared by ``llmesr-prepare``; the warm copy and its artefacts are built on first use)::

    python -m benchmarks.cold_start --data_path dataset_atomic --dataset amazon_beauty_5core --output cold_beauty

1. A random 10 % of the items (``--seed``) become cold: the warm dataset ``<dataset>_warm`` keeps every
   interaction with the other items, and its LLM artefacts are rebuilt (user texts lose the cold items).
2. LLMESR_SASRec and SASRec train on the warm dataset.
3. Every interaction with a cold item whose user has earlier warm interactions is a case: the history is
   the user's warm items before it (cold ones are dropped for every model alike), the target is the cold
   item, ranked among *all* items (warm and cold) with the history excluded: HR@10 and NDCG@10.
4. LLMESR_SASRec gets the cold items through ``add_items`` (text embedded with the dataset's embedder),
   once per collaborative-view policy; SASRec has no vector for them (score -inf); the popularity
   baseline scores by training count (0 for cold items). Ties count against the target.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
import torch

from recbole_llmesr import recommend
from recbole_llmesr.quick_start import run_recbole

POLICIES = ("regression", "pca", "zero")


def split_items(folder: Path, name: str, warm_name: str, share: float, seed: int, out_root: Path) -> Dict[str, Any]:
    """Write ``out_root/warm_name`` without the cold items; return the cold item ids and the full data."""
    inter = pd.read_csv(folder / f"{name}.inter", sep="\t", dtype=str)
    items = pd.read_csv(folder / f"{name}.item", sep="\t", dtype=str, keep_default_na=False)
    icol, ucol = inter.columns[1], inter.columns[0]
    all_items = np.sort(inter[icol].unique())
    rng = np.random.default_rng(seed)
    cold = set(rng.choice(all_items, size=int(round(share * len(all_items))), replace=False).tolist())
    warm_dir = out_root / warm_name
    warm_dir.mkdir(parents=True, exist_ok=True)
    is_cold = inter[icol].isin(cold)
    new_inter = inter[~is_cold].to_csv(sep="\t", index=False)
    inter_path = warm_dir / f"{warm_name}.inter"
    if not inter_path.is_file() or inter_path.read_text() != new_inter:  # unchanged files keep the artefacts fresh
        inter_path.write_text(new_inter)
        items[~items[items.columns[0]].isin(cold)].to_csv(warm_dir / f"{warm_name}.item", sep="\t", index=False)
    cold_items = items[items[items.columns[0]].isin(cold)]
    cold_path = out_root / f"{warm_name}.cold.item"
    cold_items.to_csv(cold_path, sep="\t", index=False)
    return {"cold": cold, "inter": inter, "ucol": ucol, "icol": icol, "cold_path": cold_path,
            "n_items": len(all_items), "n_cold_inter": int(is_cold.sum())}


def cold_cases(data: Dict[str, Any], rec: recommend.Recommender):
    """(user ids, warm histories, cold target tokens) for every interaction with a cold item."""
    inter, ucol, icol = data["inter"], data["ucol"], data["icol"]
    tcol = next((c for c in inter.columns if c.startswith("timestamp")), None)
    frame = inter.assign(_t=inter[tcol].astype(float) if tcol else np.arange(len(inter)), _row=np.arange(len(inter)))
    frame = frame.sort_values([ucol, "_t", "_row"], kind="stable")
    item_index = {t: i for i, t in enumerate(rec.item_tokens)}
    user_index = {t: i for i, t in enumerate(rec.user_tokens)}
    uids, histories, targets = [], [], []
    for user, group in frame.groupby(ucol, sort=False):
        seen: List[int] = []
        for item in group[icol].tolist():
            if item in data["cold"]:
                if seen and user in user_index:
                    uids.append(user_index[user])
                    histories.append(np.array(seen, dtype=np.int64))
                    targets.append(item)
            else:
                seen.append(item_index[item])
    return np.array(uids, dtype=np.int64), histories, targets


class Popularity(torch.nn.Module):
    """Scores every item by its training count, whatever the history."""

    def __init__(self, counts: torch.Tensor, like: torch.nn.Module):
        super().__init__()
        self.counts = counts.float()
        self.USER_ID, self.ITEM_SEQ, self.ITEM_SEQ_LEN = like.USER_ID, like.ITEM_SEQ, like.ITEM_SEQ_LEN

    def full_sort_predict(self, interaction):
        return self.counts.repeat(len(interaction[self.ITEM_SEQ]), 1)  # a copy: callers mask it in place


def train(model: str, warm_name: str, args, extra: Dict[str, Any]) -> Dict[str, Any]:
    ckpt_dir = Path(args.output) / "saved" / model
    existing = sorted(ckpt_dir.glob(f"{model}-*.pth"))
    if existing and not args.retrain:
        return {"checkpoint": existing[-1], "test_result": None, "train_s": None}
    start = time.time()
    result = run_recbole(model, warm_name, config_dict={
        "data_path": str(args.data_path), "checkpoint_dir": str(ckpt_dir), "show_progress": False, "state": "WARNING",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": args.eval_mode},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "seed": args.seed,
        "embedding_cache_dir": args.cache_dir, **args.settings, **extra})
    return {"checkpoint": sorted(ckpt_dir.glob(f"{model}-*.pth"))[-1], "train_s": round(time.time() - start, 1),
            "test_result": {k: float(v) for k, v in result["test_result"].items()}}


def evaluate(rec: recommend.Recommender, data, k: int) -> Dict[str, float]:
    """Among all items (the benchmark), and among the cold items only (context: a new-arrivals shelf)."""
    uids, histories, targets = cold_cases(data, rec)
    index = {t: i for i, t in enumerate(rec.item_tokens)}
    # Items the model does not know score -inf: they are appended as unscorable columns.
    missing = [t for t in sorted(set(targets)) if t not in index]
    for t in missing:
        index[t] = len(rec.item_tokens)
        rec.item_tokens.append(t)
    target_ids = np.array([index[t] for t in targets])
    result = recommend.evaluate_cases(rec, uids, histories, target_ids, k=k)
    cold_ids = np.array(sorted(index[t] for t in data["cold"] if t in index))
    among_cold = recommend.evaluate_cases(rec, uids, histories, target_ids, k=k, candidates=cold_ids)
    result.update({f"cold_only_{key}": value for key, value in among_cold.items() if key != "cases"})
    return result


def run(args) -> Dict[str, Any]:
    root = Path(args.data_path)
    warm_name = f"{args.dataset}_warm"
    data = split_items(root / args.dataset, args.dataset, warm_name, args.share, args.seed, root)
    results: Dict[str, Any] = {"dataset": args.dataset, "items": data["n_items"], "cold_items": len(data["cold"]),
                               "cold_interactions": data["n_cold_inter"], "seed": args.seed, "rows": {}}
    llmesr = train("LLMESR_SASRec", warm_name, args, {"epochs": args.epochs, "stopping_step": args.stopping_step})
    results["LLMESR_SASRec_warm_test"] = llmesr["test_result"]
    for policy in POLICIES:
        rec = recommend.load_recommender(str(llmesr["checkpoint"]))
        texts = recommend.cold_item_texts(str(data["cold_path"]), warm_name, rec.config["data_path"])
        vectors = recommend.embed_cold_items(texts, warm_name, rec.config["data_path"],
                                             cache_dir=args.cache_dir, show_progress=False)
        recommend.add_cold_items(rec, list(texts), vectors, collab=policy)
        results["rows"][f"LLMESR_SASRec (cold collab: {policy})"] = evaluate(rec, data, args.k)
        if policy == POLICIES[0]:
            popular = recommend.Recommender(**{**rec.__dict__, "item_tokens": list(rec.item_tokens)})
            counts = torch.zeros(rec.n_items)
            for h in rec.histories:
                counts.index_add_(0, torch.as_tensor(h, dtype=torch.long), torch.ones(len(h)))
            popular.model = Popularity(counts, rec.model)
            results["rows"]["Popularity"] = evaluate(popular, data, args.k)
    if args.sasrec_epochs > 0:
        sasrec = train("SASRec", warm_name, args, {"epochs": args.sasrec_epochs})
        results["SASRec_warm_test"] = sasrec["test_result"]
        results["rows"]["SASRec"] = evaluate(recommend.load_recommender(str(sasrec["checkpoint"])), data, args.k)
    return results


def table(res: Dict[str, Any], k: int = 10) -> str:
    lines = [f"| model | HR@{k} | NDCG@{k} | HR@{k} among cold items only | NDCG@{k} among cold items only | cases |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r[f'hit@{k}']:.4f} | {r[f'ndcg@{k}']:.4f} | {r[f'cold_only_hit@{k}']:.4f} | "
                     f"{r[f'cold_only_ndcg@{k}']:.4f} | {r['cases']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cold_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon_beauty_5core")
    p.add_argument("--data_path", default="dataset_atomic")
    p.add_argument("--output", default="cold_start")
    p.add_argument("--share", type=float, default=0.1, help="share of items held out (default 0.1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--stopping_step", type=int, default=20)
    p.add_argument("--sasrec_epochs", type=int, default=1, help="SASRec cannot rank cold items whatever its training")
    p.add_argument("--eval_mode", default="paper100", help="validation/test protocol of the warm training runs")
    p.add_argument("--cache_dir", default=None, help="embedding cache (default: the package default)")
    p.add_argument("--retrain", action="store_true", help="train again even if a checkpoint exists")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="RecBole settings for the training runs")
    args = p.parse_args(argv)
    from recbole_llmesr.compare import parse_overrides

    args.settings = parse_overrides(args.extra)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    res = run(args)
    print(table(res, args.k))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
