"""Training cost of LLMESR_SASRec against its baselines: seconds per epoch, peak memory, ratios.

One command (ml-100k; the LLM artefacts are built on first use, about a minute)::

    python -m benchmarks.train_cost --max-batches 20 --json train_cost.json

All variants are built in one process and their epochs are timed round-robin (a warm-up epoch, then the
median of ``--epochs``, robust to a noisy neighbour), so a shared machine slows every variant alike and the
*ratios* hold even when the absolute seconds drift. Peak memory comes from a separate subprocess per
variant (its peak RSS after one epoch), because tracemalloc does not see torch's allocations and one
process's peak would be shared by all variants. ``--max-batches N`` times only the first N batches of an
epoch and extrapolates to the full epoch (stock SASRec's prefix epochs are ~100 s on ml-100k); the output
says so.

``--device cuda`` trains on GPU 0 (``use_gpu``/``gpu_id``; timings wait for the GPU, and the memory column
adds the peak CUDA memory); ``--amp bfloat16`` (or ``float16``, CUDA only) adds an ``<variant>_amp`` row per
variant, trained under ``enable_amp`` with that ``amp_dtype``::

    python -m benchmarks.train_cost --dataset amazon_beauty_5core --device cuda --amp bfloat16 --max-batches 50
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from benchmarks.quality import PLAIN  # the plugin's plain backbone: every LLM-ESR switch off

#: name -> (model, config overrides). Unlisted keys take the YAML defaults, so "llmesr_default" is what
#: ``run_recbole --model=LLMESR_SASRec`` trains and "backbone_default" the plain backbone in the same recipe.
VARIANTS: Dict[str, tuple] = {
    "llmesr_default": ("LLMESR_SASRec", {}),
    "backbone_default": ("LLMESR_SASRec", PLAIN),
    "llmesr_teacher_batch": ("LLMESR_SASRec", {"teacher_update": "batch"}),
    "llmesr_online_teacher": ("LLMESR_SASRec", {"teacher_mode": "online"}),
    # The paper's recipe: one negative per position, BCE.
    "llmesr_paper": ("LLMESR_SASRec", {"loss_type": "BCE", "logit_adjustment": 0.0}),
    "backbone_paper": ("LLMESR_SASRec", {**PLAIN, "loss_type": "BCE", "logit_adjustment": 0.0}),
    # Sampled softmax, for catalogues where CE over every item is too slow.
    "llmesr_ssm_uniform": ("LLMESR_SASRec", {"loss_type": "SSM", "negative_sampling": "uniform"}),
    "llmesr_ssm_mixed": ("LLMESR_SASRec", {"loss_type": "SSM", "negative_sampling": "mixed"}),
    # Same batch size as stock SASRec's default, so that only the model differs.
    "llmesr_prefix_ce": ("LLMESR_SASRec", {"train_mode": "prefix", "loss_type": "CE", "train_batch_size": 2048}),
    "sasrec_prefix_ce": ("SASRec", {"loss_type": "CE", "train_batch_size": 2048}),
}
#: (label, numerator, denominator, target) of the reported ratios.
RATIOS = [
    ("LLMESR_SASRec / plain backbone, defaults (same recipe)", "llmesr_default", "backbone_default", "<= 2.5"),
    ("LLMESR_SASRec / plain backbone, paper's recipe", "llmesr_paper", "backbone_paper", "<= 2.5"),
    ("LLMESR_SASRec, teacher_update=batch / plain backbone, defaults",
     "llmesr_teacher_batch", "backbone_default", "<= 2.5"),
    ("online teacher / memory bank (defaults)", "llmesr_online_teacher", "llmesr_default", ">= 5"),
    ("sampled softmax (uniform) / CE over all items", "llmesr_ssm_uniform", "llmesr_default", "-"),
    ("sampled softmax (mixed) / CE over all items", "llmesr_ssm_mixed", "llmesr_default", "-"),
    ("LLMESR_SASRec / stock SASRec (prefix, CE)", "llmesr_prefix_ce", "sasrec_prefix_ce", "-"),
]
QUIET = {"show_progress": False, "state": "WARNING"}
#: Config keys of each ``--device``.
DEVICES = {"cpu": {"use_gpu": False}, "cuda": {"use_gpu": True, "gpu_id": "0"}}


def amp_variants(names: List[str], dtype: str) -> Dict[str, tuple]:
    """``<name>_amp``: each variant trained under ``enable_amp`` with ``amp_dtype: dtype``."""
    return {f"{n}_amp": (VARIANTS[n][0], {**VARIANTS[n][1], "enable_amp": True, "amp_dtype": dtype}) for n in names}


def prepare(dataset: str, base: Dict[str, Any]) -> Dict[str, Any]:
    """Build the LLM artefacts once (as run_recbole does) and return ``base`` pointed at their data_path."""
    from recbole_llmesr.config import LLMESRConfig
    from recbole_llmesr.prep.from_config import ensure_prepared

    config = LLMESRConfig(model="LLMESR_SASRec", dataset=dataset, config_dict={**QUIET, **base})
    ensure_prepared(config)  # ml-100k: converted into dataset_atomic/ml-100k, data_path updated
    # config["data_path"] is <root>/<dataset>; a config_dict takes the root.
    return {**base, "data_path": os.path.dirname(os.path.normpath(config["data_path"]))}


def build(model: str, dataset: str, config_dict: Dict[str, Any]):
    """Config, train loader and model exactly as run_recbole builds them."""
    from recbole.utils import init_seed

    from recbole_llmesr.config import LLMESRConfig
    from recbole_llmesr.evaluation import data_preparation
    from recbole_llmesr.registry import create_dataset, get_model

    config = LLMESRConfig(model=model, dataset=dataset, config_dict={**QUIET, **config_dict})
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model_obj = get_model(model)(config, train._dataset)
    return config, model_obj, train


class Runner:
    """One variant: model, Adam optimiser, train loader; ``epoch()`` returns extrapolated seconds."""

    def __init__(self, model: str, dataset: str, config_dict: Dict[str, Any], max_batches: Optional[int]):
        self.config, self.model, self.train = build(model, dataset, config_dict)
        self.device = self.config["device"]
        self.model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.config["learning_rate"])
        self.batches = len(self.train)
        self.timed = min(self.batches, max_batches) if max_batches else self.batches
        # As the trainer does (recbole_llmesr.trainer): autocast in amp_dtype, the GradScaler for float16.
        self.amp = bool(self.config["enable_amp"])
        self.amp_dtype = getattr(torch, self.config["amp_dtype"] or "bfloat16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16
                                           and self.device.type == "cuda")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def epoch(self) -> float:
        self.model.train()
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start()
        # A memory-bank refresh costs once per epoch: timed apart, so that --max-batches does not
        # extrapolate it as if every batch paid it.
        refresh = 0.0
        model = self.model
        teacher = getattr(model, "teacher", None)
        if teacher is not None and teacher.mode == "memory_bank" and not teacher.fresh:
            self._sync()
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                teacher.refresh(model)
            self._sync()
            refresh = time.perf_counter() - start
        start = time.perf_counter()
        for i, inter in enumerate(self.train):
            if i >= self.timed:
                break
            inter = inter.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                loss = self.model.calculate_loss(inter)
            if isinstance(loss, tuple):  # RecBole allows a tuple of losses
                loss = sum(loss)
            self.opt.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        self._sync()
        return refresh + (time.perf_counter() - start) * self.batches / self.timed


def peak_rss_mb(name: str, dataset: str, base: Dict[str, Any], max_batches: Optional[int],
                spec: Optional[tuple] = None) -> float:
    """Max RSS of a fresh process that builds the variant (``spec``: its (model, overrides), default
    ``VARIANTS[name]``) and trains one (possibly truncated) epoch."""
    return peak_memory_mb(name, dataset, base, max_batches, spec)[0]


def peak_memory_mb(name: str, dataset: str, base: Dict[str, Any], max_batches: Optional[int],
                   spec: Optional[tuple] = None) -> tuple:
    """(peak RSS, peak CUDA memory allocated or None) of one epoch of the variant in a fresh process."""
    # VmHWM (peak RSS of this process image), not ru_maxrss: Linux carries ru_maxrss across fork+exec, so
    # a child of a large parent would report the parent's peak.
    code = ("import json,re,sys,torch; from benchmarks.train_cost import Runner; "
            "a=json.loads(sys.argv[1]); m,o=a['spec']; "
            "r=Runner(m,a['dataset'],{**a['base'],**o},a['max_batches']); r.epoch(); "
            "g=torch.cuda.max_memory_allocated(r.device) if r.device.type=='cuda' else -1; "
            "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1), g)")
    spec = list(spec or VARIANTS[name])
    arg = json.dumps({"name": name, "dataset": dataset, "base": base, "max_batches": max_batches, "spec": spec})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, env=env, check=True)
    rss, gpu = out.stdout.strip().splitlines()[-1].split()
    return round(int(rss) / 1024, 1), (None if int(gpu) < 0 else round(int(gpu) / 2**20, 1))  # VmHWM is in kB


def run(dataset: str = "ml-100k", epochs: int = 3, max_batches: Optional[int] = None, seed: int = 2020,
        threads: Optional[int] = 2, memory: bool = True, variants: Optional[List[str]] = None,
        config_dict: Optional[Dict[str, Any]] = None, device: str = "cpu",
        amp: Optional[str] = None) -> Dict[str, Any]:
    """Time every variant's epochs round-robin in this process; optionally peak RSS per subprocess.

    ``device``: ``cpu`` or ``cuda`` (GPU 0); ``amp``: an ``amp_dtype`` that adds an ``<variant>_amp`` row per variant.
    """
    if threads:
        torch.set_num_threads(threads)
    names = variants or list(VARIANTS)
    specs = {n: VARIANTS[n] for n in names}
    if amp:
        specs.update(amp_variants(names, amp))
    base = prepare(dataset, {"seed": seed, **(config_dict or {}), **DEVICES[device]})
    runners = {n: Runner(m, dataset, {**base, **o}, max_batches) for n, (m, o) in specs.items()}
    times: Dict[str, List[float]] = {n: [] for n in specs}
    for e in range(epochs + 1):  # epoch 0 is warm-up (allocator, lazy init), not reported
        for n, r in runners.items():
            t = r.epoch()
            if e > 0:
                times[n].append(t)
    rows = {}
    for n, r in runners.items():
        rows[n] = {"model": specs[n][0], "overrides": specs[n][1], "device": str(r.device),
                   "train_mode": r.config["train_mode"] or "prefix", "batch_size": r.config["train_batch_size"],
                   "batches_per_epoch": r.batches, "batches_timed": r.timed,
                   "extrapolated": r.timed < r.batches, "sec_per_epoch": statistics.median(times[n]),
                   "epoch_times": times[n]}
        if memory:
            rss, gpu = peak_memory_mb(n, dataset, base, max_batches, specs[n])
            rows[n]["peak_rss_mb"] = rss
            if gpu is not None:
                rows[n]["peak_cuda_mb"] = gpu
    pairs = RATIOS + [(f"{n}: AMP ({amp}) / float32", f"{n}_amp", n, "-") for n in names if amp]
    ratios = [{"ratio": lbl, "value": rows[a]["sec_per_epoch"] / rows[b]["sec_per_epoch"], "target": tgt}
              for lbl, a, b, tgt in pairs if a in rows and b in rows]
    return {"dataset": dataset, "epochs": epochs, "seed": seed, "threads": threads, "max_batches": max_batches,
            "device": device, "amp": amp,
            "variants": rows, "ratios": ratios,
            "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def table(res: Dict[str, Any]) -> str:
    lines = ["| variant | model | train_mode | batch | s/epoch | batches timed / epoch | peak RSS (MB) "
             "| peak CUDA (MB) |", "|---|---|---|---|---|---|---|---|"]
    for n, v in res["variants"].items():
        note = " (extrapolated)" if v["extrapolated"] else ""
        lines.append(f"| {n} | {v['model']} | {v['train_mode']} | {v['batch_size']} | {v['sec_per_epoch']:.2f}{note} "
                     f"| {v['batches_timed']} / {v['batches_per_epoch']} | {v.get('peak_rss_mb', '-')} "
                     f"| {v.get('peak_cuda_mb', '-')} |")
    lines += ["", "| ratio (s/epoch) | value | target |", "|---|---|---|"]
    lines += [f"| {r['ratio']} | {r['value']:.2f}x | {r['target']} |" for r in res["ratios"]]
    if any(v["extrapolated"] for v in res["variants"].values()):
        lines.append(f"\nExtrapolated: only the first {res['max_batches']} batches of those epochs were timed.")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch (median reported)")
    p.add_argument("--max-batches", type=int, default=None, help="time only N batches per epoch, extrapolate")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: all")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--json", help="write results here")
    p.add_argument("--device", choices=list(DEVICES), default="cpu", help="cuda: train on GPU 0")
    p.add_argument("--amp", choices=["bfloat16", "float16"], help="also time each variant under enable_amp")
    p.add_argument("extra", nargs="*", metavar="KEY=VALUE",
                   help="RecBole settings for every variant, e.g. data_path=...")
    a = p.parse_args(argv)
    from recbole_llmesr.compare import parse_overrides

    extra = parse_overrides(a.extra)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    res = run(a.dataset, a.epochs, a.max_batches, a.seed, a.threads, not a.no_memory, a.variants, extra,
              device=a.device, amp=a.amp)
    res["settings"] = extra
    print(table(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
