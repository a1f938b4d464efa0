"""``llmesr-compare``: RecBole baselines and LLM-ESR models over several seeds on one dataset and split.

Each (model, seed) run is stored as ``runs/<model>-seed<seed>.json`` in the output folder as soon as it
finishes; a run whose file exists with the same settings is skipped, so an interrupted comparison
resumes. From all runs it writes ``results.csv`` (one row per run), ``results.json`` (runs, mean/std,
p-values), ``results.md`` (mean ± std per metric and group, paired t-test p-values against the baseline)
and ``results.png`` (bar chart of the overall, tail and head groups).
"""
import ast
import csv
import hashlib
import json
import math
import re
import sys
import time
from logging import getLogger
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import atomic_write
from recbole_llmesr.prep.embedders.redact import redact_url

GROUPS = {
    "": "overall", "_tail_user": "tail user", "_head_user": "head user", "_tail_item": "tail item",
    "_head_item": "head item",
}
# Test metric keys: ``ndcg@10``, ``ndcg@10_tail_user``, and with extra_test_modes ``full:ndcg@10``.
_METRIC = re.compile(r"^(?P<base>(?:[a-z0-9]+:)?[a-z]+@\d+)(?P<group>_(?:tail|head)_(?:user|item))?$")


def protocol(eval_mode: str) -> Dict[str, Any]:
    """Shared settings of every run: the paper's leave-one-out split, HR/NDCG@10, selection on NDCG@10."""
    return {
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": eval_mode},
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "show_progress": False,
    }


def parse_value(text: str) -> Any:
    """A command-line value as RecBole would read it: Python literal, else YAML (``[Hit,NDCG]``), else str."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text


class OverrideError(LLMESRError, ValueError):
    """A ``key=value`` (or ``MODEL:key=value``) setting is malformed."""


def parse_overrides(items: Sequence[str], per_model: bool = False) -> Dict[str, Any]:
    """``key=value`` (or ``MODEL:key=value`` when ``per_model``) into a (nested) dict."""
    result: Dict[str, Any] = {}
    for item in items:
        target = result
        if per_model:
            model, sep, item = item.partition(":")
            if not sep:
                raise OverrideError(f"--override expects MODEL:key=value, got {model!r}")
            target = result.setdefault(model, {})
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not key:
            raise OverrideError(f"expected key=value, got {item!r}")
        target[key] = parse_value(value)
    return result


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _redacted(value: Any) -> Any:
    """``value`` with credentials removed from every URL string (an embedder_base_url override can carry them)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(_redacted(data), indent=2, default=str)
    # Atomic: an interrupted write never leaves a half file that would count as done.
    atomic_write(path, lambda f: f.write(text), text=True)


def run_comparison(
    models: Sequence[str],
    dataset: str,
    seeds: Sequence[int],
    output: Path,
    baseline: Optional[str] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    model_overrides: Optional[Dict[str, Dict[str, Any]]] = None,
    config_file_list: Optional[List[str]] = None,
    model_of: Optional[Dict[str, str]] = None,
) -> dict:
    """Run every (model, seed) not done yet, then write the reports; returns the ``results.json`` content.

    ``models`` are row labels; ``model_of`` maps a label to the RecBole model it runs when they differ
    (e.g. a plain-backbone row that runs ``LLMESR_SASRec`` with overrides), and ``model_overrides`` are keyed
    by label.
    """
    logger = getLogger()
    output = Path(output)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    baseline = baseline or models[0]
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(models)}")
    common = {"checkpoint_dir": str(output / "saved"), **(config_dict or {})}
    model_overrides = model_overrides or {}
    unknown = set(model_overrides) - set(models)
    if unknown:
        raise ValueError(f"--override names models that are not compared: {', '.join(sorted(unknown))}")
    model_of = model_of or {}
    _prepare_data(list(dict.fromkeys(model_of.get(m, m) for m in models)), dataset, common, config_file_list)

    jobs = [(m, s) for s in seeds for m in models]  # seed by seed: an interrupted comparison still has pairs
    runs = []
    bar = tqdm(jobs, desc="llmesr-compare", unit="run", file=sys.stderr)
    for model, seed in bar:
        bar.set_postfix_str(f"{model} seed {seed}")
        settings = {**common, **model_overrides.get(model, {}), "seed": seed}
        runs.append(
            run_once(model, model_of.get(model, model), dataset, seed, settings, output / "runs", config_file_list)
        )
    report = summarize(runs, models, baseline)
    report.update({"dataset": dataset, "seeds": list(seeds), "config": common, "model_overrides": model_overrides})
    write_reports(report, output)
    logger.info(f"llmesr-compare: wrote {output / 'results.md'}, results.csv, results.json and results.png")
    return report


def run_once(
    label: str,
    model: str,
    dataset: str,
    seed: int,
    settings: Dict[str, Any],
    runs_dir: Path,
    config_file_list: Optional[List[str]] = None,
) -> dict:
    """Train and test one (model, settings, seed), or load the stored record of the very same run.

    The record goes to ``runs_dir/<label>-seed<seed>.json``; ``label`` names the row (the model, or an
    ablation variant of it).
    """
    from recbole_llmesr.config import without_command_line
    from recbole_llmesr.quick_start import run_recbole

    # What makes a run the same run (not where its checkpoint goes).
    spec = {"model": model, "dataset": dataset, "config_files": config_file_list,
            "config": {k: v for k, v in settings.items() if k != "checkpoint_dir"}}
    path = Path(runs_dir) / f"{label}-seed{seed}.json"
    done = json.loads(path.read_text()) if path.is_file() else None
    if done is not None and done.get("fingerprint") == _fingerprint(spec):
        tqdm.write(f"skip {label} seed {seed}: done ({path})", file=sys.stderr)
        return done
    start = time.time()
    with without_command_line():
        result = run_recbole(model, dataset, config_file_list=config_file_list, config_dict=dict(settings))
    record = {
        "model": label,
        "recbole_model": model,
        "seed": seed,
        "wall_s": round(time.time() - start, 1),
        "best_valid_score": result["best_valid_score"],
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "history": result.get("history", []),
        "fingerprint": _fingerprint(spec),
        "spec": spec,
    }
    Path(runs_dir).mkdir(parents=True, exist_ok=True)
    _write_json(path, record)
    tqdm.write(f"done {label} seed {seed} in {record['wall_s']} s", file=sys.stderr)
    return record


def _prepare_data(models, dataset, config_dict, config_file_list) -> None:
    """Build the LLM artefacts before any run, so baselines and LLM-ESR read the very same data files
    (for ml-100k the preparation writes a copy that later runs then prefer)."""
    from recbole_llmesr.config import LLMESRConfig, without_command_line
    from recbole_llmesr.prep.from_config import ensure_prepared
    from recbole_llmesr.registry import get_model

    for model in models:
        if getattr(get_model(model), "uses_llm_artifacts", False):
            with without_command_line():
                ensure_prepared(LLMESRConfig(model=model, dataset=dataset, config_file_list=config_file_list,
                                             config_dict=dict(config_dict)))


def _mean_std(values: List[float]) -> Dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def paired_p_value(model: Dict[int, float], baseline: Dict[int, float]) -> float:
    """Two-sided paired t-test over the seeds both have; NaN with fewer than 2 pairs or no variance."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(model) & set(baseline))
    a, b = np.array([model[s] for s in seeds]), np.array([baseline[s] for s in seeds])
    if len(seeds) < 2 or np.allclose(a - b, (a - b)[0]):
        return float("nan")  # the t statistic is undefined without variance in the differences
    return float(ttest_rel(a, b).pvalue)


def summarize(runs: List[dict], models: Sequence[str], baseline: str) -> dict:
    """Mean/std per model and test metric, and p-values of every other model against the baseline."""
    per_model: Dict[str, Dict[str, Dict[int, float]]] = {m: {} for m in models}
    for run in runs:
        for key, value in run["test"].items():
            per_model[run["model"]].setdefault(key, {})[run["seed"]] = value
    summary = {m: {k: _mean_std(list(v.values())) for k, v in metrics.items()} for m, metrics in per_model.items()}
    p_values = {
        m: {k: paired_p_value(v, per_model[baseline].get(k, {})) for k, v in per_model[m].items() if _METRIC.match(k)}
        for m in models
        if m != baseline
    }
    return {"models": list(models), "baseline": baseline, "runs": runs, "summary": summary, "p_values": p_values}


def _table_rows(report: dict) -> List[tuple]:
    """(metric key, base metric, group label) in display order: each metric's overall, then its groups."""
    keys = [k for m in report["models"] for k in report["summary"][m]]
    bases = list(dict.fromkeys(_METRIC.match(k)["base"] for k in keys if _METRIC.match(k)))
    return [(base + suffix, base, label) for base in bases for suffix, label in GROUPS.items() if base + suffix in keys]


def metric_label(base: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``; ``full:hit@10`` -> ``HR@10 (full)``."""
    mode, _, metric = base.rpartition(":")
    label = metric.upper().replace("HIT", "HR")
    return f"{label} ({mode})" if mode else label


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(report: dict) -> str:
    models, baseline, summary = report["models"], report["baseline"], report["summary"]
    others = [m for m in models if m != baseline]
    header = ["Metric", "Group", *models, *[f"p ({m} vs {baseline})" for m in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, base, label in _table_rows(report):
        cells = [summary[m].get(key) for m in models]
        best = max((c["mean"] for c in cells if c and not math.isnan(c["mean"])), default=None)
        shown = []
        for c in cells:
            text = "–" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}"
            shown.append(f"**{text}**" if c and len(models) > 1 and c["mean"] == best else text)
        p_cells = [_fmt_p(report["p_values"][m].get(key, float("nan"))) for m in others]
        lines.append("| " + " | ".join([metric_label(base), label, *shown, *p_cells]) + " |")
    n_runs = {m: sum(r["model"] == m for r in report["runs"]) for m in models}
    shares = {k: v["mean"] for k, v in summary[models[0]].items() if k.startswith("share_")}
    notes = [
        "",
        (f"Mean ± sample std over seeds ({', '.join(f'{m}: {n} runs' for m, n in n_runs.items())}); best mean in "
         f"bold; p: two-sided paired t-test over seeds against {baseline}."),
    ]
    mode = (report.get("config") or {}).get("eval_args", {}).get("mode")
    if mode:
        notes.append(f"Test protocol: eval mode {mode}; a metric marked (m) is the same best model tested again "
                     "under eval mode m.")
    if shares:
        groups = ", ".join(f"{k[6:].replace('_', ' ')} {100 * v:.1f} %" for k, v in shares.items())
        notes.append(f"Share of the test users in each group: {groups}.")
    return "\n".join(lines + notes) + "\n"


def plot(report: dict, path: Path) -> None:
    """Grouped bars (mean, std error bars): one panel per metric, groups on the x axis, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _table_rows(report)
    bases = list(dict.fromkeys(base for _, base, _ in rows))
    models = report["models"]
    fig, axes = plt.subplots(1, len(bases), figsize=(4.2 * len(bases) + 0.8, 3.4), squeeze=False)
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10").colors
    for ax, base in zip(axes[0], bases):
        groups = [(key, label) for key, b, label in rows if b == base]
        x = np.arange(len(groups))
        for i, model in enumerate(models):
            stats = [report["summary"][model].get(key, {"mean": np.nan, "std": 0.0}) for key, _ in groups]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, [s["mean"] for s in stats], width,
                   yerr=[s["std"] for s in stats], capsize=2, label=model, color=colors[i % len(colors)],
                   edgecolor="black", linewidth=0.4, error_kw={"linewidth": 0.8})
        ax.set_xticks(x, [_tick(report, key, label) for key, label in groups], fontsize=8)
        ax.set_title(metric_label(base), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("mean over seeds (± std)", fontsize=9)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(models), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, dpi=200)
    plt.close(fig)


def _tick(report: dict, key: str, label: str) -> str:
    """Group label with its share of the test users, e.g. ``Tail user\n(80 %)``."""
    match = _METRIC.match(key)
    share = report["summary"][report["models"][0]].get(f"share{match['group']}") if match["group"] else None
    return label.capitalize() + (f"\n({100 * share['mean']:.0f} %)" if share else "")


def write_reports(report: dict, output: Path) -> None:
    runs = report["runs"]
    columns = ["model", "seed", "wall_s", "best_valid_score"] + list(dict.fromkeys(k for r in runs for k in r["test"]))
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in runs:
            writer.writerow({**{k: r[k] for k in columns[:4]}, **r["test"]})
    _write_json(output / "results.json", report)
    (output / "results.md").write_text(markdown_table(report))
    plot(report, output / "results.png")
