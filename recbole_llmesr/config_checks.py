"""Checks of a merged RecBole configuration, before any data is loaded.

:func:`check_config` validates the RecBole keys that training depends on and the plugin's own keys (types
and ranges), so that ``MAX_ITEM_LIST_LENGTH=0`` or ``train_batch_size=0`` fails with the key's name instead of
an ``IndexError`` several layers down. :func:`warn_unknown_keys` warns about keys given on the command line,
in a YAML file or in ``config_dict`` that neither RecBole nor the plugin reads, with the closest known names.
:func:`recbole_error` turns the ``ValueError``s & co. that RecBole's ``Config`` raises into :class:`ConfigError`.
"""
from __future__ import annotations

import codecs
import difflib
import functools
import glob
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import FrozenSet, Iterable, List, Optional, Tuple

import yaml

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.launch import LAUNCH_CONFIG_KEYS, RECBOLE_DERIVED_KEYS
from recbole_llmesr.model.options import ModelConfigError, choice, flag, number

#: Keys that RecBole sets itself, and the command-line flags of ``run_recbole`` (RecBole reads them too).
_DERIVED_KEYS = {*RECBOLE_DERIVED_KEYS, "valid_metric_bigger", "group_offset", *LAUNCH_CONFIG_KEYS}
_LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")
_EVAL_MODE = re.compile(r"^(full|(uni|pop|paper)\d+)$")
_POSITIVE_INTS = ("MAX_ITEM_LIST_LENGTH", "train_batch_size", "eval_batch_size", "stopping_step", "hidden_size",
                  "embedding_size", "inner_size", "n_layers", "n_heads", "num_layers", "gru_hidden_size")
_PROBABILITIES = ("hidden_dropout_prob", "attn_dropout_prob", "dropout_prob", "mask_ratio", "ft_ratio")
#: ``amp_dtype`` values: the torch dtypes autocast computes in under ``enable_amp``.
AMP_DTYPES = ("bfloat16", "float16")


class ConfigError(LLMESRError, ValueError):
    """A setting is out of range, of the wrong type, or rejected by RecBole."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting has the wrong type (``epochs: ten``)."""


class UnknownKeyWarning(UserWarning):
    """A key was given that neither RecBole nor the plugin reads: it has no effect."""


def _present(config, key: str) -> bool:
    return config[key] is not None


def _ints(config, keys: Iterable[str], minimum: int) -> None:
    for key in keys:
        if _present(config, key):
            number(config, key, int, minimum=minimum)


def check_config(config, uses_dual_view: bool = False, uses_llm_artifacts: bool = False) -> None:
    """Raise :class:`ConfigError` for the first setting out of range (see the module docstring), or for the
    LLM-ESR mechanism's keys (``uses_dual_view``) the model's own
    :class:`~recbole_llmesr.model.options.ModelConfigError`; ``uses_llm_artifacts``: the preparation keys too."""
    try:
        _check_general_keys(config)
    except ModelConfigError as err:  # the model's value checks, applied here to RecBole's keys
        raise (ConfigTypeError if isinstance(err, TypeError) else ConfigError)(str(err)) from None
    if uses_dual_view:
        from recbole_llmesr.model.options import DualViewOptions

        DualViewOptions.from_config(config)
    if uses_llm_artifacts:
        _check_preparation_keys(config)


def _check_general_keys(config) -> None:
    _ints(config, _POSITIVE_INTS, 1)
    _ints(config, ("epochs", "eval_step", "worker"), 0)
    for key in ("seed", "paper_neg_seed"):
        if _present(config, key):
            number(config, key, int)
    for key in ("learning_rate", "layer_norm_eps"):
        if _present(config, key) and number(config, key, float) <= 0:
            raise ConfigError(f"Config key '{key}' must be > 0; got {config[key]!r}")
    for key in ("weight_decay", "initializer_range"):
        if _present(config, key):
            number(config, key, float, minimum=0)
    for key in _PROBABILITIES:
        if _present(config, key):
            number(config, key, float, minimum=0, below=1)
    for key in ("reproducibility", "show_progress", "use_gpu", "group_metrics", "item_pop_all_splits",
                "fast_sampled_eval", "save_rank_states", "enable_amp", "enable_scaler"):
        if _present(config, key):
            flag(config, key)
    _check_amp_keys(config)
    if _present(config, "n_heads") and _present(config, "hidden_size") and config["hidden_size"] % config["n_heads"]:
        raise ConfigError(f"hidden_size ({config['hidden_size']}) must be a multiple of n_heads ({config['n_heads']})")
    if _present(config, "learner") and str(config["learner"]).lower() not in _LEARNERS:
        # RecBole would warn and train with Adam instead.
        raise ConfigError(f"Config key 'learner' must be one of {', '.join(_LEARNERS)}; got {config['learner']!r}")
    _check_topk_and_valid_metric(config)
    _check_evaluation_keys(config)
    if _present(config, "encoding"):
        try:
            codecs.lookup(str(config["encoding"]))
        except LookupError:
            raise ConfigError(f"Config key 'encoding': unknown encoding {config['encoding']!r} "
                              f"(e.g. utf-8-sig)") from None
    if _present(config, "resume") and not isinstance(config["resume"], str):
        raise ConfigError(f"Config key 'resume' must be a checkpoint path or 'auto'; got {config['resume']!r}")


def _check_amp_keys(config) -> None:
    """``enable_amp`` / ``amp_dtype`` / ``enable_scaler`` against the device the run trains on."""
    if _present(config, "amp_dtype"):
        choice(config, "amp_dtype", AMP_DTYPES)
    if not config["enable_amp"]:
        return
    device = config["device"]
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    if config["amp_dtype"] == "float16" and not on_cuda:
        raise ConfigError("enable_amp with amp_dtype: float16 needs a CUDA device (float16 training needs the "
                          "GradScaler, which is CUDA-only, and CPU autocast is meant for bfloat16); this run is "
                          f"on {device}: use amp_dtype: bfloat16, or train on a GPU")
    scaled = on_cuda and (config["amp_dtype"] == "float16" or config["enable_scaler"])
    if scaled and config["clip_grad_norm"]:
        raise ConfigError("clip_grad_norm with the GradScaler (enable_amp with amp_dtype: float16, or enable_scaler) "
                          "would clip the scaled gradients (RecBole 1.2.1's trainer does not unscale them first): "
                          "use amp_dtype: bfloat16 with enable_scaler: False, or drop clip_grad_norm")
    if config["enable_scaler"] and not on_cuda:
        warnings.warn(f"enable_scaler is ignored on {device}: the GradScaler is CUDA-only (and bfloat16 does not "
                      f"need one)", UserWarning, stacklevel=3)


def _check_preparation_keys(config) -> None:
    from recbole_llmesr.prep.from_config import CONFIG_KEYS, settings_from_config

    try:
        settings_from_config(config)
    except LLMESRError as err:
        # The preparation settings speak of their own field names (max_chars); the user wrote the config key.
        key = next((k for k, field in CONFIG_KEYS.items() if str(err).startswith(f"{field} ")), None)
        if key is None:
            raise
        raise ConfigError(f"Config key '{key}': {err}") from err


def _check_topk_and_valid_metric(config) -> None:
    topk = config["topk"]
    ks = [topk] if isinstance(topk, int) and not isinstance(topk, bool) else topk
    if not isinstance(ks, list) or not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"Config key 'topk' must be a positive integer or a list of them; got {topk!r}")
    metric = config["valid_metric"]
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"Config key 'valid_metric' must be a metric name such as NDCG@10; got {metric!r}")
    metrics = [str(m).lower() for m in config["metrics"] or []]
    base, at, rest = metric.lower().partition("@")
    k = re.match(r"\d+", rest)
    computed = [f"{m}@{k}" for m in metrics if m in _topk_metrics() for k in ks]
    computed += [m for m in metrics if m not in _topk_metrics()]
    known = base in metrics and (at == "" if base not in _topk_metrics() else bool(k) and int(k.group()) in ks)
    if not known:
        # RecBole would train a whole epoch, then fail with KeyError: 'ndcg@20'.
        raise ConfigError(f"Config key 'valid_metric' is {metric!r}, which is not computed with metrics="
                          f"{config['metrics']} and topk={topk}; pick one of {', '.join(computed)}, or add the "
                          f"metric to metrics (and its k to topk)")


def _check_evaluation_keys(config) -> None:
    if _present(config, "group_split"):
        choice(config, "group_split", ("pareto", "threshold"))
    if _present(config, "head_ratio") and not 0 < number(config, "head_ratio", float) < 1:
        raise ConfigError(f"Config key 'head_ratio' must be > 0 and < 1; got {config['head_ratio']!r}")
    _ints(config, ("ts_user", "ts_item"), 0)
    modes = config["extra_test_modes"]
    if modes is not None:
        if isinstance(modes, str) or not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise ConfigError(f"Config key 'extra_test_modes' must be a list of eval modes such as [full]; "
                              f"got {modes!r}")
        bad = [m for m in modes if not _EVAL_MODE.match(m)]
        if bad:
            raise ConfigError(f"Config key 'extra_test_modes': unknown eval modes {bad}; use full, uniN, popN "
                              f"or paperN")


@functools.lru_cache(maxsize=1)
def _topk_metrics() -> FrozenSet[str]:
    from recbole.evaluator import metrics
    from recbole.evaluator.base_metric import TopkMetric

    return frozenset(name.lower() for name, cls in inspect.getmembers(metrics, inspect.isclass)
                     if issubclass(cls, TopkMetric) and cls is not TopkMetric)


# ------------------------------------------------------------------------------------- unknown keys


def _yaml_keys(pattern: str) -> set:
    keys = set()
    for path in glob.glob(pattern, recursive=True):
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=yaml.FullLoader)
        if isinstance(data, dict):
            keys.update(str(k) for k in data)
    return keys


@functools.lru_cache(maxsize=2)
def _documented_keys(properties: Path) -> FrozenSet[str]:
    """Every key in RecBole's YAML defaults, the plugin's (in ``properties``) and RecBole's argument lists."""
    import recbole
    from recbole.utils import argument_list

    keys = set(_DERIVED_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name))
    keys |= _yaml_keys(os.path.join(os.path.dirname(recbole.__file__), "properties", "**", "*.yaml"))
    keys |= _yaml_keys(str(properties / "**" / "*.yaml"))
    return frozenset(keys)


@functools.lru_cache(maxsize=1)
def _keys_in_code() -> FrozenSet[str]:
    """Keys that RecBole's or the plugin's code reads as ``config["key"]`` without a YAML default."""
    import recbole

    found = set()
    pattern = re.compile(r"""config\[\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\]""")
    for root in (Path(recbole.__file__).parent, Path(__file__).parent):
        for path in root.rglob("*.py"):
            found.update(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(found)


def is_known_key(key: str, properties: Path) -> bool:
    """Whether RecBole or the plugin (whose YAML defaults are in ``properties``) reads ``key``."""
    return key in _documented_keys(properties) or key in _keys_in_code()


def close_matches(key: str, properties: Path) -> List[str]:
    names = sorted(_documented_keys(properties) | _keys_in_code())
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.7)
    return close + [n for n in names if n.lower() == key.lower() and n not in close]


def _sources(config, key: str, config_files: Optional[List[str]]) -> List[str]:
    out = []
    if key in config.cmd_config_dict:
        out.append("the command line")
    if key in (config.variable_config_dict or {}):
        out.append("config_dict")
    if key in config.file_config_dict:
        for path in config_files or []:
            try:
                with open(path, encoding="utf-8") as f:
                    data = yaml.load(f, Loader=config.yaml_loader)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and key in data:
                out.append(str(path))
    return out


def warn_unknown_keys(config, properties: Path, config_files: Optional[List[str]] = None) -> List[str]:
    """Warn (:class:`UnknownKeyWarning`) about every given key that nothing reads; returns them.
    ``properties``: the plugin's YAML defaults folder."""
    given = {**config.file_config_dict, **(config.variable_config_dict or {}), **config.cmd_config_dict}
    unknown = [k for k in given if not is_known_key(str(k), properties)]
    for key in unknown:
        close = close_matches(str(key), properties)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        where = " and ".join(_sources(config, key, config_files)) or "the settings"
        warnings.warn(UnknownKeyWarning(f"unknown setting '{key}' (from {where}): neither RecBole nor recbole-llmesr "
                                        f"reads it, so it has no effect.{hint}"), stacklevel=3)
    return unknown


# ------------------------------------------------------------------------------------- RecBole's errors

#: What RecBole's ``Config`` raises for a bad setting (a duplicated command-line flag is a SyntaxError).
RECBOLE_CONFIG_ERRORS: Tuple[type, ...] = (ValueError, TypeError, KeyError, SyntaxError, NotImplementedError,
                                           RuntimeError, yaml.YAMLError)


def recbole_error(err: BaseException, config_files: Optional[List[str]] = None) -> ConfigError:
    """A :class:`ConfigError` for an error raised while RecBole built the configuration."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, yaml.YAMLError):
        return _yaml_error(err, config_files or [])
    match = re.search(r"no metric named '([^']*)'", message)
    if match:
        from recbole.evaluator import metric_types

        close = difflib.get_close_matches(match.group(1).lower(), sorted(metric_types), n=3, cutoff=0.6)
        message += f". Did you mean: {', '.join(close)}?" if close else f"; known: {', '.join(sorted(metric_types))}"
    return ConfigError(f"RecBole rejected the configuration: {message}")


def _yaml_error(err: yaml.YAMLError, config_files: List[str]) -> ConfigError:
    # RecBole parses the files' text, so the error names no file: find the one that does not parse.
    for path in config_files:
        try:
            with open(path, encoding="utf-8") as f:
                yaml.load(f, Loader=yaml.FullLoader)
        except yaml.YAMLError as bad:
            mark = getattr(bad, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(bad, "problem", None) or " ".join(str(bad).split())
            return ConfigError(f"{path}{where}: not valid YAML ({problem})")
        except OSError:
            continue
    return ConfigError(f"a config file is not valid YAML: {' '.join(str(err).split())}")


__all__ = ["ConfigError", "ConfigTypeError", "UnknownKeyWarning", "check_config",
           "warn_unknown_keys", "recbole_error", "is_known_key", "close_matches", "RECBOLE_CONFIG_ERRORS"]
