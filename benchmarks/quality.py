"""Recommendation quality: RecBole's SASRec, GRU4Rec and BERT4Rec against their LLMESR_ counterparts, and
the paper's Table 2 ablations of LLMESR_SASRec.

One command each (Beauty prepared by ``llmesr-prepare --dataset amazon_beauty_5core --source beauty``)::

    python -m benchmarks.quality --dataset amazon_beauty_5core --data_path dataset_atomic --output quality_beauty
    python -m benchmarks.quality --ablations --dataset amazon_beauty_5core --data_path dataset_atomic \\
        --output quality_beauty

Every run trains once, is selected on validation NDCG@10 under the paper's 100-negative protocol and is
tested twice from the same checkpoint: ``paper100`` and full ranking (``extra_test_modes: [full]``).
Groups use the paper's Beauty thresholds (tail user: fewer than 9 history items; tail item: fewer than 4
training interactions) unless ``--pareto``. Each (model, seed) is stored as soon as it ends and skipped
when run again with the same settings, so an interrupted benchmark resumes. Writes ``quality.md``
(per-backbone tables with p-values, the SASRec targets) and ``ablations.md`` into ``--output``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from recbole_llmesr import compare

BACKBONES = ("SASRec", "GRU4Rec", "BERT4Rec")
#: The plain backbone inside the plugin: LLM-ESR's switches off, so with the LLMESR_ model's own training
#: recipe it tells what the recipe alone gives (row label ``plain_<Backbone>``, ``--plain``).
PLAIN = {"use_semantic_view": False, "id_init": "random", "id_anchor": False, "use_distillation": False}
#: Relative NDCG@10 targets of LLMESR_<Backbone> over each baseline: metric key -> (label, bound, kind).
TARGETS = {
    "ndcg@10": ("overall", 0.08, "min"),
    "ndcg@10_tail_item": ("tail items", 0.25, "min"),
    "ndcg@10_tail_user": ("tail users", 0.08, "min"),
    "ndcg@10_head_item": ("head items", -0.02, "min"),
    "ndcg@10_head_user": ("head users", -0.02, "min"),
}
#: The paper's Table 2 rows: label -> LLMESR_SASRec overrides.
ABLATIONS = {
    "LLM-ESR": {},
    "w/o Co-view": {"use_collab_view": False},
    "w/o Se-view": {"use_semantic_view": False},
    "w/o CA": {"use_cross_attention": False},
    "w/o SD": {"use_distillation": False},
    "w/o Share": {"shared_encoder": False},
    "random ID init": {"id_init": "random"},
    # Not in the paper's table: SASRec trained exactly like LLM-ESR (the paper's baseline recipe), so the
    # gain of the whole method can be read apart from the change of loss and training mode.
    "plain backbone": {"use_semantic_view": False, "id_init": "random", "use_distillation": False},
}
COLUMNS = [
    ("", "Overall"), ("_tail_item", "Tail item"), ("_head_item", "Head item"), ("_tail_user", "Tail user"),
    ("_head_user", "Head user"),
]


def settings(args) -> Dict[str, Any]:
    """Settings shared by every run."""
    common: Dict[str, Any] = {
        **compare.protocol(args.eval_mode),
        "extra_test_modes": [other_protocol(args.eval_mode)],
        "data_path": args.data_path,
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "state": "WARNING",
    }
    if not args.pareto:
        common.update({"group_split": "threshold", "ts_user": args.ts_user, "ts_item": args.ts_item})
    return {**common, **compare.parse_overrides(args.extra)}


def other_protocol(eval_mode: str) -> str:
    """The protocol each best checkpoint is tested under as well: full ranking beside a sampled one."""
    return "paper100" if eval_mode == "full" else "full"


def run_backbones(args, common: Dict[str, Any], seeds: Sequence[int]) -> Dict[str, dict]:
    reports = {}
    overrides = compare.parse_overrides(args.override, per_model=True)
    for backbone in args.backbones:
        ours = f"LLMESR_{backbone}"
        rows = {"baseline": backbone, "llmesr": ours, **({"plain": f"plain_{backbone}"} if args.plain else {})}
        labels = [rows[k] for k in args.only] if args.only else list(rows.values())
        per_label = {m: v for m, v in overrides.items() if m in labels}
        if args.plain:
            per_label[f"plain_{backbone}"] = {**overrides.get(ours, {}), **PLAIN}
        reports[backbone] = compare.run_comparison(
            labels, args.dataset, seeds, Path(args.output) / backbone, baseline=labels[0], config_dict=common,
            model_overrides={m: v for m, v in per_label.items() if m in labels}, model_of={f"plain_{backbone}": ours},
        )
    return reports


def run_ablations(args, common: Dict[str, Any], seeds: Sequence[int]) -> Dict[str, List[dict]]:
    out = Path(args.output) / "ablations"
    runs: Dict[str, List[dict]] = {}
    for seed in seeds:  # seed by seed, so an interrupted benchmark has complete rows
        for label, overrides in ABLATIONS.items():
            if args.variants and label not in args.variants:
                continue
            run_settings = {**common, "checkpoint_dir": str(out / "saved"), **overrides, "seed": seed}
            slug = label.replace("/", "").replace(" ", "_")
            runs.setdefault(label, []).append(
                compare.run_once(slug, "LLMESR_SASRec", args.dataset, seed, run_settings, out / "runs")
            )
    return runs


def relative(a: float, b: float) -> float:
    return (a - b) / b if b else math.nan


def targets_table(report: dict, ours: str, baseline: str, mode: str = "") -> str:
    """``ours`` over ``baseline``, relative NDCG@10 per group, against the targets; p: paired t-test."""
    base, mine = report["summary"][baseline], report["summary"][ours]
    lines = [f"| group | {baseline} | {ours} | relative | target | p | verdict |", "|---|---|---|---|---|---|---|"]
    for key, (label, bound, _) in TARGETS.items():
        key = mode + key
        if key not in base or key not in mine:
            continue
        rel = relative(mine[key]["mean"], base[key]["mean"])
        p = _paired_p(report, ours, baseline, key)
        verdict = "met" if rel >= bound else "**missed**"
        lines.append(f"| {label} | {base[key]['mean']:.4f} | {mine[key]['mean']:.4f} | {100 * rel:+.1f} % | "
                     f">= {100 * bound:+.0f} % | {compare._fmt_p(p)} | {verdict} |")
    return "\n".join(lines) + "\n"


def _paired_p(report: dict, ours: str, baseline: str, key: str) -> float:
    if baseline == report["baseline"]:
        return report["p_values"][ours].get(key, math.nan)
    by_seed = {
        m: {r["seed"]: r["test"][key] for r in report["runs"] if r["model"] == m and key in r["test"]}
        for m in (ours, baseline)
    }
    return compare.paired_p_value(by_seed[ours], by_seed[baseline])


def ablation_table(runs: Dict[str, List[dict]], mode: str = "") -> str:
    """The paper's Table 2: one row per variant, HR@10 and NDCG@10 per group, mean over seeds."""
    header = "| variant | " + " | ".join(f"{name} HR@10 | {name} NDCG@10" for _, name in COLUMNS) + " | seeds |"
    lines = [header, "|" + "---|" * (2 * len(COLUMNS) + 2)]
    for label, records in runs.items():
        cells = []
        for suffix, _ in COLUMNS:
            for metric in ("hit@10", "ndcg@10"):
                values = [r["test"].get(f"{mode}{metric}{suffix}", math.nan) for r in records]
                cells.append(f"{sum(values) / len(values):.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(records)} |")
    return "\n".join(lines) + "\n"


def write_quality(args, reports: Dict[str, dict]) -> Path:
    parts = ["# Quality: RecBole baselines against LLM-ESR\n"]
    extra = other_protocol(args.eval_mode)
    modes = (("", _protocol_name(args.eval_mode)), (f"{extra}:", _protocol_name(extra)))
    for backbone, report in reports.items():
        parts += [f"## {backbone} vs LLMESR_{backbone}\n", compare.markdown_table(report)]
        ours, present = f"LLMESR_{backbone}", set(report["summary"])
        for baseline in (backbone, f"plain_{backbone}"):
            if {ours, baseline} <= present:
                for mode, name in modes:
                    parts += [
                        f"## Targets, {ours} over {baseline}, NDCG@10 ({name})\n",
                        targets_table(report, ours, baseline, mode),
                    ]
    path = Path(args.output) / "quality.md"
    path.write_text("\n".join(parts))
    return path


def _protocol_name(mode: str) -> str:
    return "full ranking" if mode == "full" else mode


def write_ablations(args, runs: Dict[str, List[dict]]) -> Path:
    parts = ["# Ablations of LLMESR_SASRec (the paper's Table 2)\n"]
    extra = other_protocol(args.eval_mode)
    for mode, name in (("", _protocol_name(args.eval_mode)), (f"{extra}:", _protocol_name(extra))):
        parts += [f"## {name}\n", ablation_table(runs, mode)]
    path = Path(args.output) / "ablations.md"
    path.write_text("\n".join(parts))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="amazon_beauty_5core")
    p.add_argument("--data_path", default="dataset_atomic", help="folder holding <dataset>/ (llmesr-prepare --out)")
    p.add_argument("--output", default="quality_beauty")
    p.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=BACKBONES)
    p.add_argument("--ablations", action="store_true", help="run the ablation table instead of the baselines")
    p.add_argument("--variants", nargs="*", choices=list(ABLATIONS), metavar="LABEL",
                   help=f"--ablations: run only these rows (default all: {', '.join(ABLATIONS)}), "
                        "e.g. to split them over processes")
    p.add_argument("--plain", action="store_true",
                   help="also run the plain backbone (plain_<Backbone>: LLMESR_<Backbone> with every LLM-ESR switch "
                        "off) with the LLMESR_ model's overrides, i.e. the same training recipe")
    p.add_argument("--only", nargs="+", choices=("baseline", "llmesr", "plain"),
                   help="run only these rows of each backbone, the first as the baseline (e.g. to split the rows "
                        "over processes; a later run of all reuses them)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--first_seed", type=int, default=42, help="seeds first_seed, first_seed + 1, ... (default 42)")
    p.add_argument("--epochs", type=int, default=200, help="epoch budget per run (paper: 200)")
    p.add_argument("--stopping_step", type=int, default=20, help="patience on validation NDCG@10 (paper: 20)")
    p.add_argument("--eval_mode", default="paper100",
                   help="validation (model selection) and first test protocol: paper100 (the paper's, default) or "
                        "full; the best checkpoint is also tested under the other one")
    p.add_argument("--pareto", action="store_true", help="Pareto 20/80 groups instead of the paper's Beauty thresholds")
    p.add_argument("--ts_user", type=int, default=9)
    p.add_argument("--ts_item", type=int, default=4)
    p.add_argument("--override", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="setting for one model only, repeatable, e.g. --override=SASRec:train_batch_size=256")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("extra", nargs="*", metavar="KEY=VALUE",
                   help="RecBole settings for every run, e.g. MAX_ITEM_LIST_LENGTH=50")
    return p


def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    args.plain = args.plain or "plain" in (args.only or ())
    if args.threads:
        torch.set_num_threads(args.threads)
    common = settings(args)
    seeds = [args.first_seed + i for i in range(args.seeds)]
    if args.ablations:
        path = write_ablations(args, run_ablations(args, common, seeds))
    else:
        path = write_quality(args, run_backbones(args, common, seeds))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
