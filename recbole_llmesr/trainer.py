"""RecBole trainer with checkpoints that load under ``torch.load(weights_only=True)``.

Stock RecBole pickles its whole ``Config`` into every checkpoint. torch >= 2.6 refuses to load that by
default, so stock ``run_recbole`` trains and then crashes when it reloads the best model. Here a
checkpoint holds only tensors and plain Python data (the config as a plain dict), so loading it can
never execute code, and a file that carries arbitrary pickled objects is refused.

The mixin also installs the long-tail group metrics' collector and the fast sampled-evaluation path
(``recbole_llmesr.evaluation``).
"""
import glob
import os
import pickle
import random
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import EvaluatorType, set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_llmesr.compat import disable_anomaly_mode
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import atomic_write, stale_temporaries
from recbole_llmesr.evaluation import GroupCollector, sampled_scores, scores_by_dot_product


class UnsafeCheckpointError(LLMESRError, RuntimeError):
    """A checkpoint holds objects other than tensors and plain data."""


class ResumeError(LLMESRError, ValueError):
    """A checkpoint cannot be resumed by this run (missing, another model, other shapes)."""


#: Suffix of the per-epoch checkpoint beside the best one (``saved/<Model>-<time>.pth``): not ``.pth``, so
#: that globs for best models never pick it up.
LAST_SUFFIX = ".last.pt"
#: Settings that may differ between an interrupted run and its resumption without changing what is trained.
_RUN_ONLY_KEYS = {"resume", "epochs", "show_progress", "state", "gpu_id", "use_gpu", "device", "checkpoint_dir",
                  "data_path", "eval_batch_size", "worker", "local_rank", "single_spec", "log_wandb", "nproc",
                  "world_size", "ip", "port", "offset", "config_files", "stopping_step", "extra_test_modes"}


def last_checkpoint_name(best_file: str) -> str:
    """The per-epoch checkpoint that goes with the best checkpoint ``best_file``."""
    stem = best_file[: -len(".pth")] if best_file.endswith(".pth") else best_file
    return stem + LAST_SUFFIX


def interrupted_runs(checkpoint_dir: str, model: str, dataset: str) -> List[str]:
    """The per-epoch checkpoints of unfinished runs of ``model`` on ``dataset`` in ``checkpoint_dir``, newest
    first (a run that finishes removes its own)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(checkpoint_dir), f"{glob.escape(model)}-*{LAST_SUFFIX}")):
        try:
            config = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["config"]
        except Exception:  # noqa: BLE001 - an unreadable file is not a run to resume
            continue
        if config.get("model") == model and config.get("dataset") == dataset:
            found.append(path)
    return sorted(found, key=os.path.getmtime, reverse=True)


def resume_file(config) -> Optional[str]:
    """The checkpoint that config key ``resume`` names: None (start afresh), a path, or ``auto`` = the newest
    interrupted run of this model and dataset (None when there is none)."""
    value = config["resume"]
    if value is None or value == "":
        return None
    if str(value).lower() == "auto":
        runs = interrupted_runs(config["checkpoint_dir"], config["model"], config["dataset"])
        return runs[0] if runs else None
    if not os.path.isfile(value):
        raise ResumeError(f"resume={value}: file not found; an interrupted run leaves "
                          f"{os.path.join(config['checkpoint_dir'], config['model'] + '-<time>' + LAST_SUFFIX)}, "
                          f"and resume=auto finds the newest")
    return str(value)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error if it carries pickled objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it contains pickled Python objects, not only tensors and plain data "
            f"(written by stock RecBole or tampered with). Retrain with recbole_llmesr, or load it yourself "
            f"with torch.load(weights_only=False) only if you trust where it came from. Detail: {err}"
        ) from err


def encode_plain(value):
    """``other_parameter`` values as tensors and plain data, so that ``weights_only`` loading accepts them.

    RecBole models keep numpy arrays and scipy sparse matrices there (ItemKNN, EASE, SLIMElastic);
    ``nn.Module`` values (FDSA, DIN) are dropped because their weights are already in the state dict.
    """
    import numpy as np
    import scipy.sparse as sp

    if isinstance(value, dict):
        return {k: encode_plain(v) for k, v in value.items() if not isinstance(v, torch.nn.Module)}
    if isinstance(value, (list, tuple)):
        return type(value)(encode_plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
    if sp.issparse(value):
        coo = value.tocoo()
        return {
            "__sparse__": value.format,
            "row": torch.from_numpy(coo.row.astype(np.int64)),
            "col": torch.from_numpy(coo.col.astype(np.int64)),
            "data": torch.from_numpy(coo.data),
            "shape": list(coo.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_plain(value):
    """Inverse of ``encode_plain``."""
    import scipy.sparse as sp

    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy()
        if "__sparse__" in value:
            coo = sp.coo_matrix(
                (value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())), shape=tuple(value["shape"])
            )
            return coo.asformat(value["__sparse__"])
        return {k: decode_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode_plain(v) for v in value)
    return value


class SafeCheckpointMixin:
    """Checkpoint saving, resuming and best-model loading without pickled objects.

    Mixed into RecBole's generic ``Trainer`` and into model-specific trainers alike. Also keeps autograd
    anomaly detection off and runs CPU DDP over gloo (RecBole's wrapper passes CUDA ``device_ids``).

    Under DDP (gloo or NCCL) every rank uses rank 0's checkpoint name and waits for rank 0 to finish
    writing it before reloading the best model, and the final test is scored by rank 0 alone on the whole
    split (:meth:`evaluate_on_rank0`). The config key ``save_rank_states: True`` makes every rank write
    its final parameters to ``<checkpoint_dir>/rank<k>-final.pt``, to check that the ranks stayed in sync.
    """

    def __init__(self, config, model):
        distributed = not config["single_spec"]
        cpu_ddp = distributed and config["device"].type == "cpu"
        if distributed:
            # RecBole's check-then-create of the folder races between ranks (FileExistsError).
            os.makedirs(config["checkpoint_dir"], exist_ok=True)
        if cpu_ddp:
            config["single_spec"] = True  # skip the parent's CUDA-only DDP wrapper, then wrap for CPU
        try:
            super().__init__(config, model)
        finally:
            if cpu_ddp:
                config["single_spec"] = False
        if cpu_ddp:
            self.distributed_model = DistributedDataParallel(self.model)
        if distributed:
            # Each rank names the checkpoint after its own clock, but only rank 0 writes it and every rank
            # reloads it for testing: all ranks must use rank 0's name.
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
        disable_anomaly_mode()
        #: One entry per validation: epoch, cumulative training seconds, validation score.
        self.history: List[dict] = []
        self.train_seconds = 0.0
        self._epoch = -1
        #: Written at the start of every epoch after the first with the state at the end of the one before
        #: (model, optimizer, early stopping, history, random generators): a killed run loses one epoch at most.
        self.last_checkpoint_file = last_checkpoint_name(self.saved_model_file)
        self._saving = True
        self._resumed_rng: Optional[Dict] = None
        self.eval_collector = GroupCollector(config)
        # One encoder pass per user instead of one per candidate, where the scores allow it.
        self.fast_sampled_eval = (
            config["fast_sampled_eval"] is not False
            and config["eval_type"] == EvaluatorType.RANKING
            and scores_by_dot_product(model)
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self._resumed_rng is not None:
            self._restore_generators(train_data)
        elif self._saving and epoch_idx > self.start_epoch:
            self._save_last_checkpoint(train_data)
        start = time.perf_counter()
        # Models with per-epoch state (the LLM-ESR teacher memory bank) refresh it here.
        hook = getattr(self.model, "on_epoch_start", None)
        if hook is not None:
            hook()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.train_seconds += time.perf_counter() - start
        self._epoch = epoch_idx
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        # Training time only (validation excluded), so that time-to-best compares training modes.
        self.history.append(
            {"epoch": self._epoch, "train_s": round(self.train_seconds, 3), "valid_score": float(score)}
        )
        return score, result

    def fit(self, *args, **kwargs):
        # *args: model-specific trainers (KG, pretraining, ...) take their own fit arguments.
        self._saving = kwargs.get("saved", True)
        result = super().fit(*args, **kwargs)
        if self.config["save_rank_states"]:
            self._save_rank_state()
        # Finished: the checkpoint for resuming has done its job, and resume=auto must not find this run.
        if self.config["single_spec"] or self.config["local_rank"] == 0:
            for path in [self.last_checkpoint_file, *stale_temporaries(self.last_checkpoint_file)]:
                if os.path.isfile(path):
                    os.unlink(path)
        return result

    def _save_last_checkpoint(self, train_data) -> None:
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        state = self._checkpoint_state(self._epoch)
        state.update({
            "kind": "last",
            "best_model_file": self.saved_model_file,
            "best_valid_result": None if self.best_valid_result is None
            else {k: float(v) for k, v in self.best_valid_result.items()},
            "history": [dict(h) for h in self.history],
            "train_seconds": float(self.train_seconds),
            "rng": _rng_state(),
            # Buffers outside the state dict (the teacher's memory bank under teacher_update: batch).
            "buffers": {k: v.detach().cpu() for k, v in self.model.named_buffers()
                        if k not in self.model.state_dict()},
        })
        generator = getattr(train_data, "generator", None)
        if generator is not None:
            state["train_generator"] = generator.get_state()
        atomic_write(self.last_checkpoint_file, lambda f: torch.save(state, f))

    def _restore_generators(self, train_data) -> None:
        saved, self._resumed_rng = self._resumed_rng, None
        if not self.config["single_spec"]:
            return  # each DDP rank has its own streams; rank 0's would make them all alike
        _set_rng_state(saved["rng"])
        generator = getattr(train_data, "generator", None)
        if generator is not None and saved.get("train_generator") is not None:
            generator.set_state(saved["train_generator"])

    def _save_rank_state(self) -> None:
        """Write this rank's final parameters to ``<checkpoint_dir>/rank<k>-final.pt`` (``save_rank_states``).

        Only rank 0 writes checkpoints, so this is the one way to see that DDP ranks ended in sync."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        path = os.path.join(self.checkpoint_dir, f"rank{rank}-final.pt")
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        atomic_write(path, lambda f: torch.save({"rank": rank, "state_dict": state}, f))

    def _checkpoint_state(self, epoch: int) -> dict:
        to_dict = getattr(self.config, "to_dict", None)
        config = to_dict() if to_dict else {k: str(v) for k, v in self.config.final_config_dict.items()}
        return {
            "config": config,
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": encode_plain(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        # Write then rename: an interrupted save never leaves a truncated best model behind.
        atomic_write(saved_model_file, lambda f: torch.save(self._checkpoint_state(epoch), f))
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        """Continue training from ``resume_file``: a per-epoch checkpoint (:data:`LAST_SUFFIX`, everything of the
        interrupted run, random generators included) or a best checkpoint (model, optimizer and early stopping
        only; its later best models overwrite it, as in RecBole)."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        trained = checkpoint.get("config") or {}
        if str(trained.get("model", "")).lower() != str(self.config["model"]).lower():
            raise ResumeError(f"{resume_file} was trained with model {trained.get('model')}, not "
                              f"{self.config['model']}: resume it with --model={trained.get('model')}")
        current = self.config.to_dict() if hasattr(self.config, "to_dict") else {}
        changed = sorted(k for k in set(trained) & set(current) if k not in _RUN_ONLY_KEYS and trained[k] != current[k])
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            shown = ", ".join(f"{k}: {trained[k]!r} then, {current[k]!r} now" for k in changed[:5])
            raise ResumeError(f"{resume_file} does not fit this model ({shown or 'same settings'}); resume with the "
                              f"settings it was trained with. Detail: {' '.join(str(err).split())[:300]}") from err
        if changed:
            self.logger.warning(f"Resuming {resume_file} with settings that differ from its run: {', '.join(changed)}")
        self.model.load_other_parameter(decode_plain(checkpoint.get("other_parameter")))
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint.get("kind") == "last":
            self.last_checkpoint_file = resume_file
            self.saved_model_file = checkpoint["best_model_file"]
            self.best_valid_result = checkpoint["best_valid_result"]
            self.history = list(checkpoint["history"])
            self.train_seconds = checkpoint["train_seconds"]
            self._epoch = checkpoint["epoch"]
            buffers = dict(self.model.named_buffers())
            for name, value in checkpoint.get("buffers", {}).items():
                if name in buffers and buffers[name].shape == value.shape:
                    buffers[name].copy_(value)
            self._resumed_rng = {"rng": checkpoint["rng"], "train_generator": checkpoint.get("train_generator")}
        else:
            self.saved_model_file = resume_file
            self.last_checkpoint_file = last_checkpoint_name(resume_file)
        self.logger.info(f"Checkpoint {resume_file} loaded. Resume training from epoch {self.start_epoch}")

    def _neg_sample_batch_eval(self, batched_data):
        if not self.fast_sampled_eval:
            return super()._neg_sample_batch_eval(batched_data)
        interaction, row_idx, positive_u, positive_i = batched_data
        interaction = interaction.to(self.device)
        scores = sampled_scores(
            self.model, interaction, row_idx, positive_u, self.tot_item_num, self.config["ITEM_ID_FIELD"]
        )
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data:
            self.eval_collector.start_evaluation(eval_data)  # this phase's user lengths (and, if not fit, item counts)
        if eval_data and load_best_model:
            if not self.config["single_spec"]:
                dist.barrier()  # rank 0 may still be writing the best model the other ranks are about to read
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(decode_plain(checkpoint.get("other_parameter")))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
            if not self.config["single_spec"]:
                return self.evaluate_on_rank0(eval_data, show_progress)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def evaluate_on_rank0(self, eval_data, show_progress=False):
        """The final test under DDP: rank 0 scores the whole split alone; every rank returns its result.

        RecBole's DDP evaluation averages per-rank metrics weighted by sample counts, but the
        DistributedSampler pads the shards by repeating users and the long-tail groups are split per
        shard, so that average is only approximate. Validation during training keeps it (every rank
        must agree on early stopping); the reported test metrics do not.
        """
        result = [None]
        if dist.get_rank() == 0:
            self.config["single_spec"] = True  # no collectives, no sharding while rank 0 works alone
            try:
                # The same loader without the DistributedSampler (RecBole builds it only when single_spec is off).
                whole = type(eval_data)(self.config, eval_data._dataset, eval_data._sampler, shuffle=False)
                self.eval_collector.start_evaluation(whole)
                result[0] = super().evaluate(whole, load_best_model=False, show_progress=show_progress)
            finally:
                self.config["single_spec"] = False
        dist.broadcast_object_list(result, src=0)
        return result[0]


class Trainer(SafeCheckpointMixin, RecBoleTrainer):
    """RecBole's ``Trainer`` with safe checkpoints; used for the plugin's models and RecBole baselines."""
