"""``transition_weight`` chosen on validation for trained checkpoints: is the text's item-to-item term worth
adding to a model's inference scores, and at what weight?

    python -m benchmarks.transition_sweep --checkpoint saved/LLMESR_SASRec-*.pth [more.pth ...] \\
        --weights 0 1 2 4 6 8 12 --test_modes full paper100

For each checkpoint (its own dataset, splits and evaluation settings, as in training), every weight ``w`` is set
on the trained model (the term is not trained, so no retraining is needed) and the validation split is scored
under the checkpoint's ``eval_args.mode``. The weight with the best validation ``valid_metric`` is kept; the
test split is then scored under each ``--test_modes`` protocol at ``w = 0`` and at that weight (``--test_all``:
at every weight). The test split never chooses anything. Works for LLMESR_* checkpoints, the plain backbone's
included (it is given the LLM item embeddings for the term).

Writes a Markdown table per checkpoint to stdout and ``--json`` if given.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

import torch

DEFAULT_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0)
REPORTED = ("ndcg@10", "hit@10", "ndcg@10_tail_item", "ndcg@10_head_item", "ndcg@10_tail_user", "ndcg@10_head_user")


def sweep(checkpoint: str, weights: Sequence[float] = DEFAULT_WEIGHTS, test_modes: Sequence[str] = ("full",),
          data_path: Optional[str] = None, test_all: bool = False) -> Dict[str, object]:
    from recbole.utils import init_seed

    from recbole_llmesr.checkpoints import load_checkpoint
    from recbole_llmesr.quick_start import split_dataset
    from recbole_llmesr.recommend import _rebuilt_config
    from recbole_llmesr.registry import create_dataset, get_model, get_trainer

    state = load_checkpoint(checkpoint)
    # Any w > 0 at build time makes the dataset load the LLM item embeddings (the plain backbone has none).
    config = _rebuilt_config(state["config"], data_path, {"transition_weight": 1.0})
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = split_dataset(config, create_dataset(config))
    model = get_model(config["model"])(config, train._dataset).to(config["device"])
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if unexpected or set(missing) - {"llm_item_emb"}:
        raise SystemExit(f"{checkpoint}: does not fit the model rebuilt from its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train)  # the training split's item counts: the tail-item groups
    metric = config["valid_metric"].lower()

    def at(weight: float, data) -> Dict[str, float]:
        model.transition_weight = weight
        return {k: float(v) for k, v in trainer.evaluate(data, load_best_model=False).items()}

    validation = {w: at(w, valid)[metric] for w in weights}
    best = max(weights, key=lambda w: (validation[w], -w))  # ties: the smaller weight
    tests: Dict[str, Dict[float, Dict[str, float]]] = {}
    for mode in test_modes:
        with config.test_mode(mode):
            _, _, data = split_dataset(config, create_dataset(config))
        tests[mode] = {w: at(w, data) for w in (weights if test_all else sorted({0.0, best}))}
    return {"checkpoint": checkpoint, "model": config["model"], "valid_metric": metric,
            "valid_mode": _valid_mode(config["eval_args"]["mode"]), "validation": validation, "best_weight": best,
            "test": tests}


def _valid_mode(mode) -> str:
    return str(mode.get("valid", mode)) if isinstance(mode, dict) else str(mode)


def markdown(result: Dict[str, object]) -> str:
    lines = [f"### {result['model']}: {result['checkpoint']}", "",
             f"Validation {result['valid_metric']} ({result['valid_mode']}) by weight: "
             + ", ".join(f"{w:g}: {v:.4f}" for w, v in result["validation"].items())
             + f"; chosen w = {result['best_weight']:g}.", "",
             "| test protocol | w | " + " | ".join(REPORTED) + " |", "|---|---|" + "---|" * len(REPORTED)]
    for mode, by_weight in result["test"].items():
        for w, metrics in by_weight.items():
            lines.append(f"| {mode} | {w:g} | " + " | ".join(f"{metrics.get(k, float('nan')):.4f}" for k in REPORTED)
                         + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transition_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS))
    p.add_argument("--test_modes", nargs="+", default=["full", "paper100"], help="test protocols (full, paper100, ...)")
    p.add_argument("--test_all", action="store_true", help="test at every weight, not only at 0 and the chosen one")
    p.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the training one)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(w < 0 for w in args.weights):
        p.error("--weights must be >= 0")
    results = []
    for path in args.checkpoint:
        result = sweep(path, args.weights, args.test_modes, args.data_path, args.test_all)
        sys.stdout.write(markdown(result) + "\n")
        sys.stdout.flush()
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
