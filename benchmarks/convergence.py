"""Convergence: what a training choice costs to reach its best model, and how good that model is.

Two studies of LLMESR_SASRec, one command each (ml-100k is prepared on first use)::

    python -m benchmarks.convergence --study teacher --dataset ml-100k --output convergence_ml100k
    python -m benchmarks.convergence --study mode --dataset ml-100k --output convergence_ml100k

``teacher``: the memory-bank teacher (every user re-encoded each epoch, or written back per batch) against
the official code's online teacher (10 similar users encoded with every batch). Issue 6's target: the memory
bank is >= 5x faster per epoch at equal final quality (test NDCG@10 within 1 %).

``mode``: ``prefix`` against ``sequence`` training (the same loss), in training seconds to the best
validation NDCG@10.

Every variant trains to early stopping, is selected on validation NDCG@10 and tested from its best
checkpoint, for several seeds. Runs resume like ``benchmarks.quality`` (one JSON per variant and seed).

Speed is measured apart, side by side: after the runs, every variant's training epochs are timed
round-robin in one process (``benchmarks.train_cost.Runner``), because the runs themselves may share the
machine unevenly. Time to best = (best epoch + 1) x that side-by-side s/epoch. The runs' own training
seconds (from the trainer's history, validation excluded) are reported too, as context. Writes
``<study>.md`` and ``<study>.json`` into ``--output``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from recbole_llmesr import compare

#: study -> variant label -> LLMESR_SASRec overrides. The first variant is the reference row.
STUDIES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "teacher": {
        "memory bank, epoch refresh": {"teacher_mode": "memory_bank", "teacher_update": "epoch"},
        "memory bank, batch update": {"teacher_mode": "memory_bank", "teacher_update": "batch"},
        "online (official)": {"teacher_mode": "online"},
    },
    "mode": {
        "sequence": {"train_mode": "sequence"},
        "prefix": {"train_mode": "prefix"},
    },
}


def summarize_run(record: dict) -> Dict[str, float]:
    """Per run, from its own history: best epoch, epochs trained, and the run's own (machine-dependent)
    training seconds to the best epoch and median seconds per epoch."""
    history = record.get("history") or []
    if not history:
        raise ValueError(
            f"run {record['model']} seed {record['seed']} has no training history; delete its JSON and rerun"
        )
    best = max(history, key=lambda h: h["valid_score"])  # the first of equal scores, as RecBole keeps it
    per_epoch = [b["train_s"] - a["train_s"] for a, b in zip([{"train_s": 0.0}] + history, history)]
    return {"best_epoch": best["epoch"], "epochs": len(history), "run_train_s_to_best": best["train_s"],
            "run_s_per_epoch": statistics.median(per_epoch)}


def side_by_side(dataset: str, common: Dict[str, Any], study: Dict[str, Dict[str, Any]], epochs: int,
                 max_batches: Optional[int]) -> Dict[str, float]:
    """Median training seconds per epoch of each variant, epochs timed round-robin in this process."""
    from benchmarks.train_cost import Runner

    runners = {label: Runner("LLMESR_SASRec", dataset, {**common, **overrides}, max_batches)
               for label, overrides in study.items()}
    times: Dict[str, List[float]] = {label: [] for label in runners}
    for e in range(epochs + 1):  # epoch 0 warms up (allocator, lazy init) and is not counted
        for label, runner in runners.items():
            t = runner.epoch()
            if e:
                times[label].append(t)
    return {label: statistics.median(t) for label, t in times.items()}


def report(runs: Dict[str, List[dict]], speed: Dict[str, float], metric: str = "ndcg@10") -> dict:
    """Mean over seeds of test ``metric`` (both protocols) and the timings, relative to the first variant."""
    ref_label = next(iter(runs))
    ref = {r["seed"]: r for r in runs[ref_label]}
    rows = {}
    for label, records in runs.items():
        timing = [summarize_run(r) for r in records]
        row: Dict[str, Any] = {"seeds": [r["seed"] for r in records]}
        for key in timing[0]:
            row[key] = statistics.mean(t[key] for t in timing)
        row["s_per_epoch"] = speed[label]
        row["train_s_to_best"] = (row["best_epoch"] + 1) * speed[label]
        for mode in ("", "full:"):
            values = {r["seed"]: r["test"].get(mode + metric, math.nan) for r in records}
            row[mode + metric] = compare._mean_std(list(values.values()))
            base = {s: ref[s]["test"].get(mode + metric, math.nan) for s in values if s in ref}
            mean_base = statistics.mean(base.values()) if base else math.nan
            row[mode + metric]["relative"] = row[mode + metric]["mean"] / mean_base - 1 if mean_base else math.nan
            row[mode + metric]["p"] = compare.paired_p_value(values, base) if label != ref_label else math.nan
        rows[label] = row
    for row in rows.values():
        row["s_per_epoch_vs_ref"] = row["s_per_epoch"] / rows[ref_label]["s_per_epoch"]
        row["to_best_vs_ref"] = row["train_s_to_best"] / rows[ref_label]["train_s_to_best"]
    return {"reference": ref_label, "metric": metric, "rows": rows}


def markdown(rep: dict) -> str:
    m = rep["metric"]
    lines = [f"| variant | test {m} (paper100) | vs ref | p | test {m} (full) | vs ref | p "
             "| s/epoch | s/epoch vs ref | best epoch | train s to best | to best vs ref | in-run s/epoch | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rep["rows"].items():
        cells = []
        for key in (m, "full:" + m):
            s = r[key]
            cells += [f"{s['mean']:.4f} ± {s['std']:.4f}", f"{100 * s['relative']:+.1f} %", compare._fmt_p(s["p"])]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['s_per_epoch']:.2f} "
                     f"| {r['s_per_epoch_vs_ref']:.2f}x | {r['best_epoch']:.1f} | {r['train_s_to_best']:.0f} "
                     f"| {r['to_best_vs_ref']:.2f}x | {r['run_s_per_epoch']:.2f} | {len(r['seeds'])} |")
    return "\n".join(lines) + (
        f"\n\nReference row: {rep['reference']}. Means over seeds; p: paired t-test over seeds. "
        "s/epoch: training only, timed side by side in one process (median); best epoch counts from 0; "
        "train s to best = (best epoch + 1) x s/epoch; in-run s/epoch: the runs' own median, which depends on "
        "what else shared the machine.\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=list(STUDIES), required=True)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data_path", default="dataset_atomic")
    p.add_argument("--output", default="convergence")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first_seed", type=int, default=42)
    p.add_argument("--epochs", type=int, default=200, help="epoch budget per run")
    p.add_argument("--stopping_step", type=int, default=10, help="patience on validation NDCG@10")
    p.add_argument("--eval_mode", default="paper100")
    p.add_argument("--variants", nargs="*", help="labels of the study to run (default: all)")
    p.add_argument("--timing_epochs", type=int, default=3,
                   help="side-by-side timed epochs per variant (after a warm-up)")
    p.add_argument("--max_batches", type=int, default=None, help="time only N batches per epoch and extrapolate")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="RecBole settings for every run")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    study = STUDIES[args.study]
    unknown = set(args.variants or []) - set(study)
    if unknown:
        raise SystemExit(f"unknown variants for --study {args.study}: {sorted(unknown)}; choose from {list(study)}")
    out = Path(args.output) / args.study
    common = {**compare.protocol(args.eval_mode), "extra_test_modes": ["full"], "data_path": args.data_path,
              "epochs": args.epochs, "stopping_step": args.stopping_step, "state": "WARNING",
              "checkpoint_dir": str(out / "saved"), **compare.parse_overrides(args.extra)}
    runs: Dict[str, List[dict]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for label, overrides in study.items():
            if args.variants and label not in args.variants:
                continue
            slug = label.replace(",", "").replace("(", "").replace(")", "").replace(" ", "_")
            runs.setdefault(label, []).append(compare.run_once(
                slug, "LLMESR_SASRec", args.dataset, seed, {**common, **overrides, "seed": seed}, out / "runs"))
    timed = {label: study[label] for label in runs}
    rep = report(runs, side_by_side(args.dataset, common, timed, args.timing_epochs, args.max_batches))
    text = f"# Convergence study: {args.study} ({args.dataset})\n\n" + markdown(rep)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / f"{args.study}.md").write_text(text)
    (Path(args.output) / f"{args.study}.json").write_text(
        json.dumps({"settings": common, **rep, "runs": runs}, indent=2)
    )
    print(text)
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
