"""Evaluation cost: the paper's sampled protocol (paper100) against full ranking, side by side.

One command (Beauty prepared by ``llmesr-prepare``)::

    python -m benchmarks.eval_cost --dataset amazon_beauty_5core data_path=dataset_atomic

One model (``--model``, untrained: evaluation cost does not depend on the weights) is tested on the test
split under each protocol, round-robin ``--repeats`` times (the median is reported, so a noisy neighbour
slows both alike). Loader construction (the paper's candidate sampling) is timed apart. ``--slow`` adds
RecBole's own sampled path (``fast_sampled_eval: False``: one ``predict`` per candidate).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import torch

LOO = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}
QUIET = {
    "show_progress": False, "state": "WARNING", "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10"
}


def build(model_name: str, dataset: str, mode: str, settings: Dict[str, Any]):
    """(trainer, test loader, seconds to build the loaders) for one protocol."""
    from recbole.utils import init_seed

    from recbole_llmesr.config import LLMESRConfig
    from recbole_llmesr.evaluation import data_preparation
    from recbole_llmesr.registry import create_dataset, get_model, get_trainer

    config = LLMESRConfig(
        model=model_name, dataset=dataset, config_dict={**QUIET, **settings, "eval_args": {**LOO, "mode": mode}}
    )
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    start = time.perf_counter()
    train, _, test = data_preparation(config, data)
    loaders_s = time.perf_counter() - start
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model), test, loaders_s


def run(model: str = "LLMESR_SASRec", dataset: str = "ml-100k", repeats: int = 3, slow: bool = False,
        threads: Optional[int] = None, settings: Optional[Dict[str, Any]] = None, paper_n: int = 100) -> Dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    settings = dict(settings or {})
    paper = f"paper{paper_n}"
    protocols = {"full": ("full", {}), paper: (paper, {})}
    if slow:
        protocols[f"{paper} (RecBole predict path)"] = (paper, {"fast_sampled_eval": False})
    built = {name: build(model, dataset, mode, {**settings, **extra}) for name, (mode, extra) in protocols.items()}
    times: Dict[str, List[float]] = {name: [] for name in built}
    results: Dict[str, Dict[str, float]] = {}
    for _ in range(repeats):
        for name, (trainer, test, _) in built.items():
            start = time.perf_counter()
            result = trainer.evaluate(test, load_best_model=False)
            times[name].append(time.perf_counter() - start)
            results[name] = {k: float(v) for k, v in result.items() if k in ("hit@10", "ndcg@10")}
    rows = {name: {"eval_s": statistics.median(times[name]), "times": times[name], "loaders_s": built[name][2],
                   "metrics": results[name]} for name in built}
    full = rows["full"]["eval_s"]
    for row in rows.values():
        row["ratio_to_full"] = row["eval_s"] / full
    return {
        "model": model, "dataset": dataset, "repeats": repeats, "threads": threads, "settings": settings, "rows": rows
    }


def table(res: Dict[str, Any]) -> str:
    lines = ["| protocol | test evaluation (s, median) | / full ranking | loader build (s) | HR@10 | NDCG@10 |",
             "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        m = r["metrics"]
        lines.append(f"| {name} | {r['eval_s']:.2f} | {r['ratio_to_full']:.2f}x | {r['loaders_s']:.1f} | "
                     f"{m.get('hit@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="LLMESR_SASRec")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slow", action="store_true", help="also RecBole's one-predict-per-candidate path")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--paper_n", type=int, default=100, help="negatives of the paper's protocol (default 100)")
    p.add_argument("--json", default=None)
    p.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="RecBole settings, e.g. data_path=...")
    a = p.parse_args(argv)
    from recbole_llmesr.compare import parse_overrides

    res = run(a.model, a.dataset, a.repeats, a.slow, a.threads, parse_overrides(a.extra), a.paper_n)
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
