"""Train and test a model end to end, the plugin's way.

Mirrors ``recbole.quick_start`` (same arguments, same result dict) without importing it: that module
imports ray, which breaks on current setuptools and numpy.
"""
import logging
import os
import sys
from collections.abc import MutableMapping
from logging import getLogger
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch.distributed as dist
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_llmesr.config import LLMESRConfig
from recbole_llmesr.evaluation import data_preparation
from recbole_llmesr.launch import DEFAULT_IP, DEFAULT_PORT, check_flags, detect_launch
from recbole_llmesr.prep.embedders.redact import redact_url
from recbole_llmesr.prep.from_config import ensure_prepared
from recbole_llmesr.prep.readers import EmptyDatasetError
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.registry import DatasetLoadError, create_dataset, get_model, get_trainer
from recbole_llmesr.checkpoints import resume_file


def run(
    model: Union[str, type],
    dataset: str,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = DEFAULT_IP,
    port: str = DEFAULT_PORT,
    group_offset: int = 0,
) -> Optional[dict]:
    """Run one process, or spawn ``nproc`` DDP workers (gloo on CPU, NCCL on GPU).

    A process started by torchrun or srun (:func:`~recbole_llmesr.launch.detect_launch`) is instead the one DDP
    rank that the launcher's environment describes, and spawns nothing: the spawn arguments must then be left
    at their defaults or agree with the launch (:class:`~recbole_llmesr.launch.LaunchError` otherwise).
    """
    launch = detect_launch()
    if launch is not None:
        check_flags(launch, nproc=nproc, world_size=world_size, ip=ip, port=port, group_offset=group_offset)
        config_dict = {**(config_dict or {}), **launch.config_keys()}
        _make_shared_folders(config_dict)
        return run_recbole(model, dataset, config_file_list, config_dict, saved)
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved)

    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset})
    _make_shared_folders(config_dict)
    queue = mp.get_context("spawn").SimpleQueue()
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    # The spawned target lives in this package so each worker imports the plugin (models, numpy shim).
    mp.spawn(run_recboles, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _make_shared_folders(config_dict: dict) -> None:
    # The ranks race to create these folders (RecBole checks, then creates): make them up front. Launched
    # processes all do it, hence exist_ok.
    for folder in (config_dict.get("checkpoint_dir", "saved"), "log", "log_tensorboard"):
        os.makedirs(folder, exist_ok=True)


def run_recbole(
    model: Union[str, type, None] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    queue=None,
) -> dict:
    """Train ``model`` on ``dataset``, reload the best checkpoint and test it.

    Config key ``resume`` (a checkpoint path, or ``auto`` for the newest interrupted run of this model and
    dataset) continues an earlier training instead of starting afresh.

    Returns RecBole's result dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``
    and ``test_result``, plus ``history``: one ``{epoch, train_s, valid_score}`` per validation, with
    cumulative training seconds (validation time excluded).
    """
    config = LLMESRConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info([redact_url(arg) for arg in sys.argv])  # a --embedder_base_url can carry credentials
    logger.info(config)

    if getattr(config.model_class, "uses_llm_artifacts", False):
        ensure_prepared(config)  # may point config["data_path"] at a prepared copy (ml-100k)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = split_dataset(config, dataset)

    # Per global rank: the local ranks 0 of two nodes must not draw the same dropout and negatives.
    init_seed(config["seed"] + config["local_rank"] + (config["offset"] or 0), config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    resume = resume_file(config)
    if resume is not None:
        trainer.resume_checkpoint(resume)
    elif config["resume"]:
        logger.info(f"resume={config['resume']}: no interrupted run of {config['model']} on {config['dataset']} in "
                    f"{config['checkpoint_dir']}; training from the start")
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    # The best model is loaded now: test it under further protocols without training again.
    for mode in config["extra_test_modes"] or []:
        extra = evaluate_with_mode(config, trainer, mode)
        test_result.update({f"{mode}:{k}": v for k, v in extra.items()})

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")

    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        # Per validation: epoch, cumulative training seconds, score (benchmarks' time to best).
        "history": getattr(trainer, "history", []),
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    close_log_handlers()
    return result


def split_dataset(config, dataset) -> tuple:
    """:func:`~recbole_llmesr.evaluation.data_preparation`, with an :class:`EmptyDatasetError` naming the split
    setting and the users' history lengths when a split comes out empty (RecBole fails on an empty training
    split with ``num_samples=0`` and tests an empty test split as ``None``)."""
    uid = np.asarray(dataset.inter_feat[dataset.uid_field], dtype=np.int64)  # a DataFrame until build()
    lengths = np.bincount(uid)[np.unique(uid)] if len(uid) else np.zeros(1, dtype=np.int64)

    def empty(which: str) -> EmptyDatasetError:
        return EmptyDatasetError(
            f"dataset {config['dataset']!r} in {config['data_path']}: the {which} split is empty "
            f"(eval_args.split={config['eval_args']['split']}; {len(lengths)} users with {int(lengths.min())} to "
            f"{int(lengths.max())} interactions each). Leave-one-out needs users with at least 3 interactions "
            f"(4 for sequential models, whose first item is never a target): add data, or use a ratio split "
            f"such as eval_args.split={{'RS': [0.8, 0.1, 0.1]}}")

    try:
        splits = data_preparation(config, dataset)
    except ValueError as err:
        if isinstance(err, LLMESRError):
            raise
        if "num_samples" not in str(err):
            raise DatasetLoadError(f"dataset {config['dataset']!r}: RecBole could not split it with eval_args="
                                   f"{config['eval_args']}: {err}") from err
        raise empty("training") from err
    for which, loader in zip(("training", "validation", "test"), splits):
        if loader is not None and len(loader._dataset) == 0:
            raise empty(which)
    return splits


def evaluate_with_mode(config, trainer, mode: str) -> dict:
    """Test the trainer's current model with test ``eval_args.mode`` set to ``mode`` (e.g. ``full``).

    The dataset is loaded again: RecBole's ``build`` converts it in place and cannot run twice. Internal
    ids depend only on the files, so they match the model's.
    """
    with config.test_mode(mode):
        _, _, test_data = split_dataset(config, create_dataset(config))
        if not config["single_spec"]:  # DDP: rank 0 scores the whole split, as for the main test
            return trainer.evaluate_on_rank0(test_data, config["show_progress"])
        return trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])


def run_recboles(rank: int, *args) -> None:
    """``torch.multiprocessing.spawn`` target: one DDP worker."""
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"The last argument of run_recboles must be a dict, got {type(kwargs)}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    run_recbole(*args[:3], **kwargs)


def close_log_handlers() -> None:
    # init_logger adds a file handler per run; close them so repeated runs in one process (tests,
    # comparisons) neither leak file descriptors nor write into the previous run's log.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            root.removeHandler(handler)
