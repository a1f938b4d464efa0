"""Why rare items sink under full ranking: each view's ranking quality, vector norms and softmax mass by
item popularity, from trained checkpoints.

    python -m benchmarks.tail_diagnosis --checkpoint saved/LLMESR_SASRec-*.pth [saved/SASRec-*.pth ...] \\
        --data_path dataset_atomic

For every test user (input: the history without its last item; target: the last item; every item is ranked,
as in RecBole's full-sort evaluation of sequential models, unless the model itself excludes the input's items
(``exclude_history``) or ``--exclude_history`` is given) and every popularity bucket of the target (its count
in the training split, i.e. without each user's last two items):

- ``share``: the bucket's share of test targets;
- ``ndcg``: full-ranking NDCG@10 of the fused score and, for LLM-ESR models, of each view's half of it
  (``<h_collab, e_id>`` and ``<h_sem, adapter(e_llm)>``);
- ``norm``: mean norm of the bucket's item vectors per view;
- ``mass``: the mean softmax probability the fused scores put on the bucket's items (all users, all items
  of the bucket), against ``share``: a bucket with more mass than share is favoured;
- ``top10``: share of all top-10 slots that go to the bucket's items;
- per scorer (the fused score and each view's half), over all users and items: the scores' standard deviation
  (``score_std``: how much the half moves the fused score), the share of their variance that is a per-item
  constant, the same for every user (``item_share``), and that constant's correlation with
  log(1 + training count) (``item_pop_corr``): a popularity bias;
- with ``--debias B ...``: NDCG@10 of the fused score minus ``B * log(1 + training count)`` for each B, an
  inference-time popularity correction (does ranking rare items higher close the gap, or do they rank
  badly among themselves too?).

Writes a Markdown table per checkpoint to stdout (and ``--json`` if given).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

EDGES = (0, 1, 2, 4, 8, 16, 32, 64)


def bucket_names() -> List[str]:
    names = []
    for lo, hi in zip(EDGES, EDGES[1:] + (math.inf,)):
        names.append(str(lo) if hi - lo == 1 else (f"{lo}+" if hi == math.inf else f"{lo}-{hi - 1}"))
    return names


def _ndcg_at10(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    target_scores = scores.gather(1, targets.unsqueeze(1))
    rank = (scores > target_scores).sum(1)  # 0-based; ties count in the target's favour
    return torch.where(rank < 10, 1.0 / torch.log2(rank.float() + 2), torch.zeros_like(rank, dtype=torch.float))


def diagnose(checkpoint: str, data_path: Optional[str] = None, batch_size: int = 1024,
             exclude_history: bool = False, debias: Sequence[float] = ()) -> Dict[str, object]:
    from recbole_llmesr.model.dual_view import DualViewRecommender
    from recbole_llmesr.recommend import load_recommender

    rec = load_recommender(checkpoint, data_path=data_path)
    model = rec.model.eval()
    users = np.array([u for u in range(1, len(rec.user_tokens)) if len(rec.histories[u]) >= 3])
    counts = np.zeros(rec.n_items, dtype=np.int64)
    for u in users:
        np.add.at(counts, rec.histories[u][:-2], 1)
    bucket_of_item = np.searchsorted(np.array(EDGES), counts, side="right") - 1
    n_buckets = len(EDGES)
    names = bucket_names()
    dual = isinstance(model, DualViewRecommender)
    exclude_history = exclude_history or bool(getattr(model, "exclude_history", False))
    views = list(model.views) if dual else []
    scorers = ["fused"] + (views if len(views) > 1 else [])
    corrected = {f"fused - {b:g} log(1+n)": b for b in debias}
    ndcg = {s: np.zeros(n_buckets) for s in [*scorers, *corrected]}
    log_prior = torch.log1p(torch.from_numpy(counts).float())
    share = np.zeros(n_buckets)
    mass = np.zeros(n_buckets)
    top10 = np.zeros(n_buckets)
    moments = {s: [np.zeros(rec.n_items - 1), 0.0] for s in scorers}  # per-item score sums; sum of squares
    bucket_t = torch.from_numpy(bucket_of_item)
    with torch.no_grad():
        tables = model.view_tables() if dual else None
        items = model.item_table(tables) if dual else None  # as scored: score_temperature normalises each half
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            inputs = [rec.histories[u][:-1] for u in batch]
            targets = torch.as_tensor([rec.histories[u][-1] for u in batch])
            fused = rec.scores(batch, inputs)
            per_view = {}
            if len(scorers) > 1:
                per_view = _view_scores(rec, model, tables, items, batch, inputs)
            rows = torch.cat([torch.full((len(h),), i) for i, h in enumerate(inputs)])
            cols = torch.as_tensor(np.concatenate(inputs))
            shifted = [(name, fused - b * log_prior) for name, b in corrected.items()]
            for name, sums in moments.items():  # from the raw scores, before the masking below
                raw = (fused if name == "fused" else per_view[name])[:, 1:].double()
                sums[0] += raw.sum(0).numpy()
                sums[1] += float((raw**2).sum())
            # Every score tensor here is this batch's own, so it is masked in place.
            for name, scores in [("fused", fused), *per_view.items(), *shifted]:
                scores[:, 0] = -math.inf
                if exclude_history:
                    scores[rows, cols] = -math.inf
                if name == "fused":
                    probs = torch.softmax(scores, dim=1)
                    mass += torch.zeros(n_buckets, dtype=torch.float64).index_add_(
                        0, bucket_t, probs.sum(0).double()
                    ).numpy()
                    top = scores.topk(10, dim=1).indices.reshape(-1)
                    top10 += np.bincount(bucket_of_item[top.numpy()], minlength=n_buckets)
                gains = _ndcg_at10(scores, targets).numpy()
                np.add.at(ndcg[name], bucket_of_item[targets.numpy()], gains)
            share += np.bincount(bucket_of_item[targets.numpy()], minlength=n_buckets)
        norms = {}
        if dual:
            for view, table in zip(views, tables):
                n = table[: rec.n_items].norm(dim=1).numpy()
                norms[view] = [
                    float(n[1:][bucket_of_item[1:] == b].mean()) if (bucket_of_item[1:] == b).any() else math.nan
                    for b in range(n_buckets)
                ]
    n_users = len(users)
    log_count = np.log1p(counts[1:])
    spread = {}
    for name, (sums, squares) in moments.items():
        item_mean = sums / n_users
        variance = squares / (n_users * len(item_mean)) - item_mean.mean() ** 2
        spread[name] = {"score_std": float(np.sqrt(variance)), "item_share": float(item_mean.var() / variance),
                        "item_pop_corr": float(np.corrcoef(item_mean, log_count)[0, 1])}
    result = {
        "checkpoint": checkpoint,
        "exclude_history": exclude_history,
        "model": rec.config["model"],
        "buckets": names,
        "items": np.bincount(bucket_of_item[1:], minlength=n_buckets).tolist(),
        "share": (share / n_users).tolist(),
        "ndcg": {s: (v / np.maximum(share, 1)).tolist() for s, v in ndcg.items()},
        "ndcg_overall": {s: float(v.sum() / n_users) for s, v in ndcg.items()},
        "mass": (mass / n_users).tolist(),
        "top10": (top10 / top10.sum()).tolist(),
        "norm": norms,
        "spread": spread,
    }
    return result


def _view_scores(rec, model, tables, items, batch, inputs) -> Dict[str, torch.Tensor]:
    """Each view's half of the fused score, ``<h_view, e_view>``; ``items``: ``model.item_table(tables)``."""
    interaction = rec.batch(batch, inputs)
    user = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], tables)
    width = model.hidden_size
    return {
        view: user[:, i * width : (i + 1) * width] @ items[:, i * width : (i + 1) * width].T
        for i, view in enumerate(model.views)
    }


def markdown(result: Dict[str, object]) -> str:
    scorers = list(result["ndcg"])
    header = ["bucket (training count)", "items", "share of targets", *[f"NDCG@10 {s}" for s in scorers],
              "softmax mass", "top-10 share", *[f"norm {v}" for v in result["norm"]]]
    lines = [f"### {result['model']} ({result['checkpoint']})", "",
             f"input items excluded from the ranking: {result['exclude_history']}", "",
             "overall NDCG@10: " + ", ".join(f"{s} {v:.4f}" for s, v in result["ndcg_overall"].items()), "",
             "score spread: " + "; ".join(
                 f"{s} std {v['score_std']:.3f}, per-item share {v['item_share']:.3f}, "
                 f"per-item vs log count r = {v['item_pop_corr']:.3f}" for s, v in result["spread"].items()), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b, name in enumerate(result["buckets"]):
        cells = [name, str(result["items"][b]), f"{result['share'][b]:.3f}",
                 *[f"{result['ndcg'][s][b]:.4f}" for s in scorers],
                 f"{result['mass'][b]:.3f}", f"{result['top10'][b]:.3f}",
                 *[f"{result['norm'][v][b]:.2f}" for v in result["norm"]]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tail_diagnosis", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the training one)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--exclude_history", action="store_true",
                   help="rank only items outside the input (always so for models with exclude_history on)")
    p.add_argument("--debias", type=float, nargs="*", default=[],
                   help="also rank by the fused score minus B * log(1 + training count), for each B")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for path in args.checkpoint:
        result = diagnose(path, args.data_path, exclude_history=args.exclude_history, debias=args.debias)
        print(markdown(result))
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
