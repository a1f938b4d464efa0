"""RecBole trainer with checkpoints that load under ``torch.load(weights_only=True)``.

Stock RecBole pickles its whole ``Config`` into every checkpoint. torch >= 2.6 refuses to load that by
default, so stock ``run_recbole`` trains and then crashes when it reloads the best model. Here a
checkpoint holds only tensors and plain Python data (the config as a plain dict), so loading it can
never execute code, and a file that carries arbitrary pickled objects is refused.

The mixin also installs the long-tail group metrics' collector and the fast sampled-evaluation path
(``recbole_llmesr.evaluation``).
"""
import os
import pickle
import time
from typing import List

import torch
import torch.distributed as dist
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import EvaluatorType, set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_llmesr.compat import disable_anomaly_mode
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.fileio import atomic_write
from recbole_llmesr.evaluation import GroupCollector, sampled_scores, scores_by_dot_product


class UnsafeCheckpointError(LLMESRError, RuntimeError):
    """A checkpoint holds objects other than tensors and plain data."""


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
        self.eval_collector = GroupCollector(config)
        # One encoder pass per user instead of one per candidate, where the scores allow it.
        self.fast_sampled_eval = (
            config["fast_sampled_eval"] is not False
            and config["eval_type"] == EvaluatorType.RANKING
            and scores_by_dot_product(model)
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
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
        result = super().fit(*args, **kwargs)
        if self.config["save_rank_states"]:
            self._save_rank_state()
        return result

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
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"Checkpoint {resume_file} was trained with model {checkpoint['config']['model']}, "
                f"not {self.config['model']}; loading its state_dict may fail."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(decode_plain(checkpoint.get("other_parameter")))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

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
