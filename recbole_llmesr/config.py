"""RecBole ``Config`` that knows the plugin's models, property files and data folder."""
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from recbole.config import Config

from recbole_llmesr.compat import apply_numpy_shim
from recbole_llmesr.config_checks import RECBOLE_CONFIG_ERRORS, check_config, recbole_error, warn_unknown_keys
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.evaluation import add_group_metrics, paper_sample_num, register_metrics
from recbole_llmesr.launch import LAUNCH_CONFIG_KEYS, cuda_device_index, gpu_ids
from recbole_llmesr.prep.embedders.redact import redact_url
from recbole_llmesr.prep.readers import ml100k_dir
from recbole_llmesr.registry import get_model

register_metrics()  # before any Config: it validates `metrics` against RecBole's metric registry

_PACKAGE_DIR = Path(__file__).resolve().parent
RECBOLE_ML100K_DIR = Path(ml100k_dir()).resolve()


def properties_dir() -> Path:
    """Where the plugin's YAML defaults live.

    A regular install maps the repository's ``properties/`` into the package; an editable install
    leaves it beside the package.
    """
    for candidate in (_PACKAGE_DIR / "properties", _PACKAGE_DIR.parent / "properties"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"recbole_llmesr's properties/ folder is missing beside {_PACKAGE_DIR}")


@contextmanager
def without_command_line() -> Iterator[None]:
    """Within the block, RecBole's ``Config`` sees no command line: it reads every ``--key=value`` of
    ``sys.argv`` and ranks it above ``config_dict``, so a tool's own flags would become settings and a run's
    ``config_dict`` could be overridden."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


class LLMESRConfig(Config):
    """RecBole's Config with the plugin's model lookup and YAML defaults.

    Precedence is RecBole's: command line > ``config_dict`` > ``config_file_list`` > plugin YAML
    (``properties/overall.yaml``, ``properties/model/<Model>.yaml``, ``properties/dataset/<dataset>.yaml``)
    > RecBole's own YAML.

    Every setting is checked before any data is loaded (:mod:`recbole_llmesr.config_checks`): a value out of
    range is a :class:`~recbole_llmesr.config_checks.ConfigError` naming the key, RecBole's own complaints are
    reported as one too, and a key that nothing reads gets an ``UnknownKeyWarning`` with the close matches.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        try:
            super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
        except LLMESRError:
            raise
        except RECBOLE_CONFIG_ERRORS as err:
            raise recbole_error(err, config_file_list) from err
        self._hide_url_credentials()
        warn_unknown_keys(self, properties_dir(), config_file_list)
        from recbole_llmesr.model.dual_view import DualViewRecommender

        check_config(self, uses_dual_view=isinstance(self.model_class, type)
                     and issubclass(self.model_class, DualViewRecommender),
                     uses_llm_artifacts=bool(getattr(self.model_class, "uses_llm_artifacts", False)))

    def _hide_url_credentials(self) -> None:
        """Keep the ``user:password@`` of URL values (``embedder_base_url``) out of ``final_config_dict``:
        RecBole logs it, tensorboard records it and checkpoints store it. :meth:`unredacted` gives the
        real value to the code that connects."""
        self._credentialed = {}
        for key, value in self.final_config_dict.items():
            if isinstance(value, str) and redact_url(value) != value:
                self._credentialed[key] = value
                self.final_config_dict[key] = redact_url(value)

    def unredacted(self, key: str):
        """``self[key]``, with URL credentials that were hidden from dumps put back."""
        value = self[key]
        real = getattr(self, "_credentialed", {}).get(key)
        return real if real is not None and isinstance(value, str) and redact_url(real) == value else value

    def compatibility_settings(self):
        apply_numpy_shim()  # RecBole's version assumes numpy < 2
        super().compatibility_settings()

    def _get_model_and_dataset(self, model, dataset):
        if model is None and "model" in self.external_config_dict:
            model = self.external_config_dict["model"]
        if isinstance(model, str):
            # Resolve here so that the plugin's classes win and unknown names get a helpful error.
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        props = properties_dir()
        # A model may name shared property files (the LLM-ESR mechanism's keys) to load before its own.
        shared = [props / "model" / f"{name}.yaml" for name in getattr(model_class, "property_files", ())]
        files = [
            props / "overall.yaml", *shared, props / "model" / f"{model}.yaml", props / "dataset" / f"{dataset}.yaml"
        ]
        for file in files:
            if file.is_file():
                loaded = self._update_internal_config_dict(str(file))
                if loaded and file.parent.name == "dataset":
                    self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        data_root = self.final_config_dict["data_path"]
        if self.final_config_dict.get("loss_type") == "CE" and "train_neg_sample_args" not in self.external_config_dict:
            # RecBole's default (1 uniform negative) is rejected for CE models, so stock
            # `run_recbole --model=SASRec` fails unless the user adds --train_neg_sample_args=None.
            self.final_config_dict["train_neg_sample_args"] = None
        super()._set_default_parameters()
        if self.dataset == "ml-100k":
            # RecBole always reads its bundled ml-100k; prefer a prepared copy under data_path if present.
            prepared = Path(data_root) / "ml-100k"
            has_copy = (prepared / "ml-100k.inter").is_file()
            self.final_config_dict["data_path"] = str(prepared if has_copy else RECBOLE_ML100K_DIR)
        add_group_metrics(self.final_config_dict)

    @contextmanager
    def test_mode(self, mode: str) -> Iterator[None]:
        """Within the block the test phase uses eval mode ``mode`` (e.g. ``full``), samplers included."""
        eval_args = self.final_config_dict["eval_args"]
        original = eval_args["mode"]["test"]
        eval_args["mode"] = {**eval_args["mode"], "test": mode}
        try:
            self._set_eval_neg_sample_args("test")
            yield
        finally:
            eval_args["mode"] = {**eval_args["mode"], "test": original}
            self._set_eval_neg_sample_args("test")

    def _set_eval_neg_sample_args(self, phase):
        num = paper_sample_num(self.final_config_dict["eval_args"]["mode"][phase])
        if num is None:
            return super()._set_eval_neg_sample_args(phase)
        # RecBole's loaders treat paperN like uniN; our data_preparation then swaps in the paper's sampler.
        self.final_config_dict[f"{phase}_neg_sample_args"] = {"distribution": "uniform", "sample_num": num}

    def _merge_external_config_dict(self):
        super()._merge_external_config_dict()
        if "launcher" in self.variable_config_dict:
            # RecBole reads every --key=value of the command line, the spawn flags included, and lets them win;
            # under torchrun or srun an explicit --port=5678 (the default) must not replace MASTER_PORT.
            self.external_config_dict.update({k: self.variable_config_dict[k] for k in LAUNCH_CONFIG_KEYS})

    def _init_device(self):
        cfg = self.final_config_dict
        distributed = "local_rank" in cfg
        if distributed and not cfg.get("launcher") and cfg.get("use_gpu", True):
            # RecBole's nproc spawn path sets CUDA_VISIBLE_DEVICES=gpu_id, which CUDA reads only at its first call:
            # set it before torch.cuda.is_available() below makes that call.
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids(cfg["gpu_id"]))
        if distributed and not self._use_cuda():
            self._init_distributed("gloo", torch.device("cpu"))
        elif distributed and cfg.get("launcher"):
            # RecBole's spawn path sets CUDA_VISIBLE_DEVICES from gpu_id and wants one id per process; under
            # a launcher the visible devices are the launcher's (srun may bind one GPU to each task).
            index = cuda_device_index(cfg["local_rank"], cfg["nproc"], cfg["gpu_id"], torch.cuda.device_count())
            torch.cuda.set_device(index)
            self._init_distributed("nccl", torch.device("cuda", index))
        else:
            super()._init_device()
            if not distributed:
                cfg["device"] = _single_device(cfg)
        if distributed:
            # The ranks leave the rendezvous together and RecBole's init_logger then checks-then-creates
            # ./log/<model> in each of them: the loser of that race dies with FileExistsError.
            os.makedirs(os.path.join("log", str(self.final_config_dict["model"])), exist_ok=True)

    def _use_cuda(self) -> bool:
        gpu_id = self.final_config_dict["gpu_id"]
        return self.final_config_dict.get("use_gpu", True) and len(str(gpu_id)) > 0 and torch.cuda.is_available()

    def _init_distributed(self, backend: str, device: torch.device) -> None:
        """Join the process group over ``backend``: gloo on CPU (RecBole hard-codes NCCL and CUDA devices), or
        NCCL on the device :func:`~recbole_llmesr.launch.cuda_device_index` chose for a launched process."""
        cfg = self.final_config_dict
        cfg["gpu_id"] = ",".join(gpu_ids(cfg["gpu_id"]))  # as RecBole writes it to CUDA_VISIBLE_DEVICES
        rank = cfg["local_rank"] + cfg["offset"]
        torch.distributed.init_process_group(
            backend=backend, rank=rank, world_size=cfg["world_size"], init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
        cfg["device"] = device
        cfg["single_spec"] = False
        if rank != 0:  # the global rank: each node has a local rank 0, but one process logs for the job
            cfg["state"] = "error"
            cfg["show_progress"] = False
            cfg["verbose"] = False

    def to_dict(self) -> dict:
        """The final configuration as plain Python data (safe for JSON and ``weights_only`` loading)."""
        return {k: _plain(v) for k, v in self.final_config_dict.items()}


def _single_device(cfg) -> torch.device:
    """The device of a single-process run: RecBole's choice, with ``use_gpu: False`` honoured (RecBole looks
    only at ``gpu_id``) and ``gpu_id`` kept when CUDA started before RecBole set CUDA_VISIBLE_DEVICES (every
    GPU is then still visible, and RecBole's ``cuda`` would be GPU 0)."""
    device = cfg["device"]
    if device.type != "cuda":
        return device
    if not cfg.get("use_gpu", True):
        return torch.device("cpu")
    ids = gpu_ids(cfg["gpu_id"])
    if ids and ids[0].isdigit() and torch.cuda.device_count() > len(ids) and int(ids[0]) < torch.cuda.device_count():
        return torch.device("cuda", int(ids[0]))
    return device


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return str(value)

