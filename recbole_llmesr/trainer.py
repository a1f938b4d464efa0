"""RecBole trainer with checkpoints that load under ``torch.load(weights_only=True)``.

Stock RecBole pickles its whole ``Config`` into every checkpoint. torch >= 2.6 refuses to load that by
default, so stock ``run_recbole`` trains and then crashes when it reloads the best model. Here a
checkpoint holds only tensors and plain Python data (the config as a plain dict), so loading it can
never execute code, and a file that carries arbitrary pickled objects is refused.

Checkpoint files themselves (names, loading, resuming): :mod:`recbole_llmesr.checkpoints`. The mixin also
installs the long-tail group metrics' collector and the fast sampled-evaluation path
(``recbole_llmesr.evaluation``).
"""
import os
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import EvaluatorType, set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_llmesr.checkpoints import (
    RUN_ONLY_KEYS, ResumeError, decode_plain, encode_plain, last_checkpoint_name, load_checkpoint, rng_state,
    set_rng_state,
)
from recbole_llmesr.compat import disable_anomaly_mode
from recbole_llmesr.fileio import atomic_write, stale_temporaries
from recbole_llmesr.evaluation import GroupCollector, sampled_scores, scores_by_dot_product


@contextmanager
def autocast_dtype(device_type: str, dtype: Optional[torch.dtype]):
    """Within the block ``torch.autocast(device_type)`` without a dtype (RecBole's) computes in ``dtype``."""
    if dtype is None:
        yield
        return
    before = torch.get_autocast_dtype(device_type)
    torch.set_autocast_dtype(device_type, dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype(device_type, before)


class SafeCheckpointMixin:
    """Checkpoint saving, resuming and best-model loading without pickled objects.

    Mixed into RecBole's generic ``Trainer`` and into model-specific trainers alike. Also keeps autograd
    anomaly detection off and runs CPU DDP over gloo (RecBole's wrapper passes CUDA ``device_ids``).

    Under DDP (gloo or NCCL) only global rank 0 writes checkpoints (its name is every rank's), reloads the
    best model and scores the final test alone on the whole split (:meth:`evaluate_on_rank0`). The config
    key ``save_rank_states: True`` makes every rank write its final parameters to
    ``<checkpoint_dir>/rank<k>-final.pt``, to check that the ranks stayed in sync.
    """

    def __init__(self, config, model):
        distributed = not config["single_spec"]
        device = config["device"]
        # RecBole's wrapper passes device_ids=[local_rank]: wrong on CPU, and under a launcher that bound one GPU
        # to each process (every process then uses cuda:0).
        own_ddp = distributed and (device.type == "cpu" or device.index != config["local_rank"])
        if distributed:
            # RecBole's check-then-create of the folder races between ranks (FileExistsError).
            os.makedirs(config["checkpoint_dir"], exist_ok=True)
        if own_ddp:
            config["single_spec"] = True  # skip the parent's DDP wrapper, then wrap for this device
        try:
            super().__init__(config, model)
        finally:
            if own_ddp:
                config["single_spec"] = False
        if own_ddp:
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=None if device.type == "cpu" else [device.index])
        if distributed:
            # Each rank names the checkpoint after its own clock, but only rank 0 writes it: every rank names
            # rank 0's file (in its log, and when resuming from the per-epoch checkpoint beside it).
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]
        disable_anomaly_mode()
        # enable_amp: RecBole's autocast takes the device's default dtype (float16 on CUDA); amp_dtype picks it.
        # float16 needs the GradScaler, which is CUDA-only (RecBole would also enable it on a CPU run beside a GPU).
        self.amp_dtype = getattr(torch, config["amp_dtype"] or "bfloat16")
        on_cuda = self.device.type == "cuda"
        self.enable_scaler = on_cuda and (self.enable_scaler or (self.enable_amp and self.amp_dtype == torch.float16))
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
        with autocast_dtype(self.device.type, self.amp_dtype if self.enable_amp else None):
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
        model = getattr(self.model, "module", self.model)  # DDP wraps it
        grid = getattr(model, "transition_grid", None)
        valid_data = args[1] if len(args) > 1 else kwargs.get("valid_data")
        if grid and valid_data is not None:
            result = self._choose_transition_weight(model, valid_data, grid)
        if self.config["save_rank_states"]:
            self._save_rank_state()
        # Finished: the checkpoint for resuming has done its job, and resume=auto must not find this run. A kill
        # during an earlier write (of either checkpoint) leaves a temporary that nothing else removes.
        if self._is_rank0():
            stale = [*stale_temporaries(self.last_checkpoint_file), *stale_temporaries(self.saved_model_file)]
            for path in [self.last_checkpoint_file, *stale]:
                if os.path.isfile(path):
                    os.unlink(path)
        return result

    def _choose_transition_weight(self, model, valid_data, grid) -> tuple:
        """``transition_weight: auto``: score the best model's validation split at each weight of ``grid`` and keep
        the best (ties: the smaller), also in the best checkpoint's config, so that testing, serving and
        ``llmesr-recommend`` use it. Training never sees the term, so no weight needs a model of its own."""
        if self._saving and os.path.isfile(self.saved_model_file):  # the best epoch's weights, not the last's
            checkpoint = load_checkpoint(self.saved_model_file, map_location=self.device)
            model.load_state_dict(checkpoint["state_dict"])
        bigger = self.config["valid_metric_bigger"]
        scores = {}
        for weight in grid:
            model.transition_weight = weight
            scores[weight] = super()._valid_epoch(valid_data)  # not a training validation: no history entry
        best = max(grid, key=lambda w: ((scores[w][0] if bigger else -scores[w][0]), -w))
        model.transition_weight = best
        self.logger.info(
            set_color("transition_weight: auto", "blue") + f": chosen {best:g} on validation "
            f"{self.config['valid_metric']} (" + ", ".join(f"{w:g}: {s:.4f}" for w, (s, _) in scores.items()) + ")"
        )
        if self._saving and self._is_rank0() and os.path.isfile(self.saved_model_file):
            state = load_checkpoint(self.saved_model_file)
            state["config"]["transition_weight"] = best
            state["transition_validation"] = {str(w): float(s) for w, (s, _) in scores.items()}
            atomic_write(self.saved_model_file, lambda f: torch.save(state, f))
        self.best_valid_score, self.best_valid_result = scores[best]
        return scores[best]

    def _is_rank0(self) -> bool:
        """One process, or the DDP rank that writes files: global rank 0, not each node's local rank 0
        (RecBole's test), so that nodes sharing a file system do not write the same checkpoint at once."""
        return self.config["single_spec"] or dist.get_rank() == 0

    def _save_last_checkpoint(self, train_data) -> None:
        if not self._is_rank0():
            return
        state = self._checkpoint_state(self._epoch)
        state.update({
            "kind": "last",
            "best_model_file": self.saved_model_file,
            "best_valid_result": None if self.best_valid_result is None
            else {k: float(v) for k, v in self.best_valid_result.items()},
            "history": [dict(h) for h in self.history],
            "train_seconds": float(self.train_seconds),
            "rng": rng_state(),
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
        set_rng_state(saved["rng"])
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
        if not self._is_rank0():
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
        changed = sorted(k for k in set(trained) & set(current) if k not in RUN_ONLY_KEYS and trained[k] != current[k])
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
            if self._is_rank0():  # only rank 0 tests: other nodes need not share rank 0's file system
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
