"""Hyperparameter search over RecBole settings, for plugin and RecBole models alike (issue 19).

Every trial is one :func:`~recbole_llmesr.quick_start.run_recbole` run (RecBole's own ``run_hyper.py`` knows
only recbole's models, and imports ray). The space comes from a RecBole params file; ``exhaustive`` walks the
grid, ``random`` and ``bayes`` (TPE) ask hyperopt. Finished trials go to a journal that a rerun continues from.
"""
from __future__ import annotations

import ast
import itertools
import json
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml
from tqdm import tqdm

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import atomic_write, write_error

ALGOS = ("exhaustive", "random", "bayes")
TOOLS = ("Hyperopt",)
DEFAULT_MAX_EVALS = 100
DEFAULT_EARLY_STOP = 10
#: Seed of hyperopt's suggestions: fixed, so that a resumed random or bayes search continues where it stopped.
HYPER_SEED = 2020
KINDS = {"choice": 1, "uniform": 2, "loguniform": 2, "quniform": 3}  # kind -> number of comma-separated values
JOURNAL_VERSION = 1


class TuningError(LLMESRError, ValueError):
    """A search that cannot run as asked (params file, algorithm, journal)."""


@dataclass(frozen=True)
class Param:
    """One line of a params file: ``name kind values``."""
    name: str
    kind: str
    values: Tuple[Any, ...]  # the choices, or (low, high) / (low, high, q)
    where: str = ""  # "file:line", for messages

    def spec(self) -> list:
        return _canonical([self.name, self.kind, list(self.values)])

    def first(self) -> Any:
        """A value inside the space: the first choice, or the low end of the range."""
        low = math.exp(self.values[0]) if self.kind == "loguniform" else self.values[0]
        return self.values[0] if self.kind == "choice" else self.value(low)

    def value(self, raw) -> Any:
        """The setting for hyperopt's raw value (a choice's index, a number)."""
        if self.kind == "choice":
            return self.values[int(raw)]
        if self.kind == "quniform" and all(float(v).is_integer() for v in self.values):
            return int(round(float(raw)))
        return float(raw)

    def raw(self, value) -> Any:
        """Hyperopt's raw value for a setting (inverse of :meth:`value`)."""
        return _canonical(list(self.values)).index(_canonical(value)) if self.kind == "choice" else float(value)

    def hyperopt(self):
        from hyperopt import hp

        args = [list(self.values)] if self.kind == "choice" else [float(v) for v in self.values]
        return getattr(hp, self.kind)(self.name, *args)


def _canonical(value) -> Any:
    """JSON's view of a value (tuples become lists), so that journal and space compare alike."""
    return json.loads(json.dumps(value))


def params_key(params: Dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# ------------------------------------------------------------------------------------------ params file
def read_params_file(path) -> List[Param]:
    """RecBole's params file: ``name choice [a,b]``, ``name uniform|loguniform low,high`` or ``name quniform
    low,high,q`` per line; blanks and ``#`` comments skipped, a bad line is a :class:`TuningError` naming file:line."""
    params: Dict[str, Param] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        text = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment: the whole line, or after a space
        if not text:
            continue
        where = f"{path}:{number}"
        param = _parse_line(text, where)
        if param.name in params:
            raise TuningError(f"{where}: '{param.name}' is already searched at {params[param.name].where}")
        params[param.name] = param
    if not params:
        raise TuningError(f"{path}: no parameters to search (write lines like 'learning_rate choice [0.001,0.01]')")
    return list(params.values())


def _parse_line(text: str, where: str) -> Param:
    parts = text.split()
    if len(parts) < 3:
        raise TuningError(f"{where}: '{text}': expected 'name kind values', e.g. 'learning_rate choice [0.001,0.01]'")
    name, kind, raw = parts[0], parts[1], "".join(parts[2:])
    if kind not in KINDS:
        raise TuningError(f"{where}: '{text}': unknown kind '{kind}' (one of {', '.join(KINDS)})")
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise TuningError(f"{where}: '{text}': cannot read '{raw}' as Python literals") from None
    if kind == "choice":
        if not isinstance(parsed, (list, tuple)) or not parsed:
            raise TuningError(f"{where}: '{text}': a choice takes a non-empty list, e.g. [0.001,0.01]")
        return Param(name, kind, tuple(parsed), where)
    values = parsed if isinstance(parsed, tuple) else (parsed,)
    if len(values) != KINDS[kind] or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in values):
        form = "low,high,q" if kind == "quniform" else "low,high"
        raise TuningError(f"{where}: '{text}': {kind} takes {KINDS[kind]} numbers {form}")
    if values[0] >= values[1] or (kind == "quniform" and values[2] <= 0):
        raise TuningError(f"{where}: '{text}': needs low < high" + (" and q > 0" if kind == "quniform" else ""))
    return Param(name, kind, tuple(values), where)


def grid(space: List[Param]) -> List[Dict[str, Any]]:
    """Every combination of the choices, in file order; a range cannot be walked as a grid."""
    for p in space:
        if p.kind != "choice":
            raise TuningError(f"{p.where}: '{p.name} {p.kind}': --algo=exhaustive walks a grid of 'choice' "
                              f"parameters only; write it as a choice or use --algo=random or --algo=bayes")
    combos = (_canonical(dict(zip((p.name for p in space), c))) for c in itertools.product(*(p.values for p in space)))
    return list({params_key(point): point for point in combos}.values())  # a repeated choice: one point


# ------------------------------------------------------------------------------------------ trials, journal
@dataclass
class Trial:
    number: int
    params: Dict[str, Any]
    status: str = "ok"  # "ok" | "failed"
    score: Optional[float] = None
    valid_result: Dict[str, float] = field(default_factory=dict)
    test_result: Dict[str, float] = field(default_factory=dict)
    error: str = ""
    vals: Dict[str, Any] = field(default_factory=dict)  # hyperopt's raw values
    reused: bool = False  # a random/bayes repeat of a finished point: its result, no new training

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_TRIAL_FIELDS = set(Trial.__dataclass_fields__)


class Journal:
    """``<output_file>.journal.jsonl``: a header line naming the search, then one line per finished trial."""

    def __init__(self, path, identity: dict, fresh: bool = False):
        self.path = Path(path)
        self.trials: List[Trial] = []
        if self.path.exists() and not fresh:
            self._load(identity)
        else:
            header = json.dumps({"journal": JOURNAL_VERSION, **identity}) + "\n"
            atomic_write(self.path, lambda f: f.write(header), text=True)

    def _load(self, identity: dict) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        header = _json(lines[0] if lines else "")
        if not isinstance(header, dict) or header.get("journal") != JOURNAL_VERSION:
            raise TuningError(f"{self.path}: not a run_hyper journal; remove it, pick another --output_file or "
                              f"pass --fresh to start again")
        differ = [k for k in identity if header.get(k) != _canonical(identity[k])]
        if differ:
            raise TuningError(f"{self.path}: this journal belongs to another search (different {', '.join(differ)}); "
                              f"pick another --output_file, or pass --fresh to discard its trials")
        for number, line in enumerate(lines[1:], start=2):
            entry = _json(line)
            if isinstance(entry, dict) and set(entry) <= _TRIAL_FIELDS and {"number", "params"} <= set(entry):
                self.trials.append(Trial(**entry))
            elif number < len(lines):  # (the last line may be cut off by a kill mid-write: that trial runs again)
                raise TuningError(f"{self.path}:{number}: unreadable journal line; pass --fresh to start again")

    def append(self, trial: Trial) -> None:
        self.trials.append(trial)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(trial)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise write_error(self.path, err) from err


# ------------------------------------------------------------------------------------------ the search
@dataclass
class SearchResult:
    trials: List[Trial]
    best: Optional[Trial]
    new: int  # trials trained by this call
    skipped: int  # trials found in the journal
    stopped_early: bool
    valid_metric: str
    files: Tuple[Path, Path, Path]  # see output_paths


def output_paths(output_file) -> Tuple[Path, Path, Path]:
    """The table, the best trial's YAML and the journal of ``output_file``."""
    out = Path(output_file)
    return out, out.with_name(f"{out.stem}.best.yaml"), out.with_name(f"{out.name}.journal.jsonl")


def search(model: str, dataset: str, params_file, config_file_list: Optional[List[str]] = None,
           overrides: Optional[Dict[str, Any]] = None, algo: str = "exhaustive", max_evals: Optional[int] = None,
           early_stop: int = DEFAULT_EARLY_STOP, output_file="hyper_example.result", fresh: bool = False,
           tool: str = "Hyperopt", show_progress: bool = True) -> SearchResult:
    """Search ``params_file``'s space for ``model`` on ``dataset``; every trial trains with
    ``config_dict={**overrides, **trial_params}``. ``max_evals``: trials in all, journal included (default
    :data:`DEFAULT_MAX_EVALS`; for ``exhaustive`` the whole grid). ``early_stop``: stop after this many
    trials without a better validation score (0: never)."""
    from recbole_llmesr.config import LLMESRConfig, without_command_line
    from recbole_llmesr.registry import get_model

    if tool.lower() != "hyperopt":
        raise TuningError(f"--tool={tool}: only {', '.join(TOOLS)} is supported here (RecBole's Ray Tune "
                          f"driver imports ray, which does not load in this environment)")
    if algo not in ALGOS:
        raise TuningError(f"--algo={algo}: one of {', '.join(ALGOS)}")
    if max_evals is not None and max_evals < 1 or early_stop < 0:
        raise TuningError("--max_evals must be at least 1 and --early_stop at least 0")
    get_model(model)  # an unknown model fails before any training
    space = read_params_file(params_file)
    points = grid(space) if algo == "exhaustive" else None
    total = (max_evals or DEFAULT_MAX_EVALS) if points is None else min(len(points), max_evals or len(points))
    overrides = dict(overrides or {})
    with without_command_line():  # the settings as every trial sees them, checked before the first one trains
        probe = LLMESRConfig(model=model, dataset=dataset, config_file_list=config_file_list,
                             config_dict={**overrides, **{p.name: p.first() for p in space}})
    metric, bigger = probe["valid_metric"].lower(), bool(probe["valid_metric_bigger"])
    table, best_file, journal_path = output_paths(output_file)
    title = f"{model} on {dataset}, algo={algo}"
    identity = {"model": model, "dataset": dataset, "params": [p.spec() for p in space], "algo": algo,
                "config_files": list(config_file_list or []), "overrides": overrides}
    journal = Journal(journal_path, identity, fresh=fresh)
    skipped = len(journal.trials)
    if skipped:
        failed = sum(not t.ok for t in journal.trials)
        tqdm.write(f"resuming from {journal_path}: {skipped} finished trial{'s' * (skipped != 1)} skipped"
                   + (f" ({failed} failed; --fresh runs everything again)" if failed else ""))
    bar = tqdm(total=total, initial=min(skipped, total), desc="run_hyper", unit="trial", file=sys.stderr,
               disable=not show_progress, dynamic_ncols=True)
    suggester = None if points is not None else _Suggester(space, algo, journal.trials, bigger)
    done = {params_key(t.params) for t in journal.trials}
    pending = iter([point for point in points if params_key(point) not in done]) if points is not None else None
    new, stopped = 0, False
    try:
        while len(journal.trials) < total:
            if early_stop and _progress(journal.trials, bigger)[1] >= early_stop:
                stopped = True
                break
            if pending is not None:
                params = next(pending, None)
                if params is None:
                    break
                vals = {p.name: p.raw(params[p.name]) for p in space}
            else:
                vals = suggester.ask()
                params = _canonical({p.name: p.value(vals[p.name]) for p in space})
            trial = _run_trial(len(journal.trials) + 1, model, dataset, config_file_list, overrides, params, vals,
                               journal.trials)
            journal.append(trial)
            new += not trial.reused
            if suggester is not None:
                suggester.tell(trial)
            _write_outputs(journal.trials, table, best_file, title, metric, bigger)
            best = _progress(journal.trials, bigger)[0]
            bar.set_postfix_str(f"best {metric}={best.score:.4f}" if best else "no trial succeeded yet")
            bar.update(1)
    finally:
        bar.close()
    _write_outputs(journal.trials, table, best_file, title, metric, bigger)
    best = _progress(journal.trials, bigger)[0]
    result = SearchResult(journal.trials, best, new, skipped, stopped, metric, (table, best_file, journal_path))
    if best is None and journal.trials:
        first = next(t for t in journal.trials if not t.ok)
        raise TuningError(f"all {len(journal.trials)} trials failed (see {table}); the first: {first.error}")
    return result


def _progress(trials: List[Trial], bigger: bool) -> Tuple[Optional[Trial], int]:
    """The best trial so far, and how many trials came after it without beating it."""
    best, stale = None, 0
    for t in trials:
        if t.ok and (best is None or (t.score > best.score if bigger else t.score < best.score)):
            best, stale = t, 0
        else:
            stale += 1
    return best, stale


def _run_trial(number, model, dataset, config_file_list, overrides, params, vals, finished) -> Trial:
    from recbole_llmesr.config import without_command_line
    from recbole_llmesr.quick_start import close_log_handlers, run_recbole

    same = next((t for t in finished if params_key(t.params) == params_key(params)), None)
    if same is not None:  # random/bayes drew a finished point again: its result stands, nothing retrains
        return Trial(number, params, same.status, same.score, same.valid_result, same.test_result, same.error,
                     vals=vals, reused=True)
    tqdm.write(f"trial {number}: {params}")
    try:
        with without_command_line():
            result = run_recbole(model=model, dataset=dataset, config_file_list=config_file_list,
                                 config_dict={**overrides, **params}, saved=True)
    except LLMESRError as err:  # a value the model or RecBole refuses: record it, search on
        close_log_handlers()
        message = " ".join(str(err).split()) or type(err).__name__
        tqdm.write(f"trial {number} failed: {message}")
        return Trial(number, params, "failed", error=message, vals=vals)
    valid = {k: float(v) for k, v in (result["best_valid_result"] or {}).items()}
    test = {k: float(v) for k, v in (result["test_result"] or {}).items()}
    return Trial(number, params, "ok", float(result["best_valid_score"]), valid, test, vals=vals)


class _Suggester:
    """hyperopt's ``rand``/``tpe`` asked one point at a time, with the journal's trials fed back in."""

    def __init__(self, space: List[Param], algo: str, finished: List[Trial], bigger: bool):
        from hyperopt import Trials, rand, tpe
        from hyperopt.base import Domain

        logging.getLogger("hyperopt").setLevel(logging.WARNING)
        self.space, self.bigger = space, bigger
        self.domain = Domain(lambda _: None, {p.name: p.hyperopt() for p in space})
        self.trials = Trials()
        self.suggest = rand.suggest if algo == "random" else tpe.suggest
        self.rng = np.random.default_rng(HYPER_SEED)
        for trial in finished:
            self.rng.integers(2 ** 31 - 1)  # the seed that trial's suggestion used
            self.tell(trial)

    def ask(self) -> Dict[str, Any]:
        ids = self.trials.new_trial_ids(1)
        doc = self.suggest(ids, self.domain, self.trials, int(self.rng.integers(2 ** 31 - 1)))[0]
        vals = doc["misc"]["vals"]
        return {p.name: int(vals[p.name][0]) if p.kind == "choice" else float(vals[p.name][0]) for p in self.space}

    def tell(self, trial: Trial) -> None:
        from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK

        vals = trial.vals or {p.name: p.raw(trial.params[p.name]) for p in self.space}
        tid = self.trials.new_trial_ids(1)[0]
        misc = {"tid": tid, "cmd": self.domain.cmd, "workdir": self.domain.workdir,
                "idxs": {k: [tid] for k in vals}, "vals": {k: [v] for k, v in vals.items()}}
        result = ({"status": STATUS_OK, "loss": -trial.score if self.bigger else trial.score} if trial.ok
                  else {"status": STATUS_FAIL})
        doc = self.trials.new_trial_docs([tid], [None], [result], [misc])[0]
        doc["state"] = JOB_STATE_DONE
        self.trials.insert_trial_docs([doc])
        self.trials.refresh()


# ------------------------------------------------------------------------------------------ outputs
def ranked(trials: List[Trial], bigger: bool) -> List[Trial]:
    """Finished trials best first (ties: the earlier trial), failed ones last; repeats left out."""
    ok = sorted((t for t in trials if t.ok and not t.reused),
                key=lambda t: (-t.score if bigger else t.score, t.number))
    return ok + [t for t in trials if not t.ok and not t.reused]


def _metrics(result: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in result.items())


def format_table(trials: List[Trial], title: str, metric: str, bigger: bool) -> str:
    """The results as a Markdown table, best validation score first; parameter values are JSON."""
    names = list(trials[0].params) if trials else []
    head = ["rank", "trial", *names, f"valid {metric}", "status", "valid result", "test result"]
    rows = [[str(rank), str(t.number), *(json.dumps(t.params.get(n)) for n in names), f"{t.score:.4f}" if t.ok else "",
             "ok" if t.ok else f"failed: {t.error}", _metrics(t.valid_result), _metrics(t.test_result)]
            for rank, t in enumerate(ranked(trials, bigger), start=1)]
    lines = [f"# run_hyper: {title}, sorted by valid {metric} ({'bigger' if bigger else 'smaller'} is better)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]) + "\n"


def _write_outputs(trials, table, best_file, title, metric, bigger) -> None:
    text = format_table(trials, title, metric, bigger)
    atomic_write(table, lambda f: f.write(text), text=True)
    best = next((t for t in ranked(trials, bigger) if t.ok), None)
    if best is not None:
        dumped = yaml.safe_dump(best.params, sort_keys=False, default_flow_style=None)
        atomic_write(best_file, lambda f: f.write(dumped), text=True)

