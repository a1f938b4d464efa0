"""LLM-ESR's retrieval-augmented self-distillation teacher: the mean representation of each user's most
similar users, found offline from LLM embeddings of their training histories.

The official code encodes the similar users' sequences with every training batch (``teacher_mode: online``,
about 12x the work of a plain step). The default keeps every user's representation in a memory bank and
re-encodes it in eval mode once per epoch (``teacher_update: epoch``), every K steps
(``teacher_refresh_steps``), or, with ``teacher_update: batch``, once, after which each trained user's
student state replaces its entry.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_llmesr.dataset import longest_prefix_rows
from recbole_llmesr.model.options import DualViewOptions, ModelConfigError


class SimilarUserTeacher(nn.Module):
    """Distillation target of each user: the mean representation of its ``sim_user_num`` similar users.

    A user's own teacher input is its longest training prefix (its training history without the last
    item), never a validation or test item. The model that owns the teacher is passed to the methods that
    encode (``encoder.forward(item_seq, item_seq_len) -> [B, width]``), rather than stored, so that the
    module tree has no cycle.
    """

    def __init__(self, sim_users: torch.Tensor, teacher_seq: torch.Tensor, teacher_len: torch.Tensor, width: int,
                 options: DualViewOptions):
        super().__init__()
        # Rebuilt from the dataset whenever the model is: nothing here is saved with it.
        self.register_buffer("sim_users", sim_users[:, : options.sim_user_num].clone(), persistent=False)
        self.register_buffer("teacher_seq", teacher_seq, persistent=False)
        self.register_buffer("teacher_len", teacher_len, persistent=False)
        self.register_buffer("user_bank", torch.zeros(len(teacher_len), width), persistent=False)
        self.mode = options.teacher_mode
        self.update = options.teacher_update
        self.refresh_steps = options.teacher_refresh_steps
        self.fresh = False
        self.steps_since_refresh = 0

    @classmethod
    def from_dataset(cls, dataset, fields: Tuple[str, str, str], n_users: int, width: int,
                     options: DualViewOptions) -> "SimilarUserTeacher":
        """``fields``: the user id, item sequence and sequence length fields of the training split."""
        if dataset.sim_users is None:
            raise ModelConfigError("use_distillation needs the similar-user lists (<dataset>.sim_users.npz)")
        user_field, seq_field, len_field = fields
        inter = dataset.inter_feat
        uid, seq, length = inter[user_field], inter[seq_field], inter[len_field]
        rows = torch.from_numpy(longest_prefix_rows(uid.numpy(), length.numpy()))
        teacher_seq = torch.zeros(n_users, seq.size(1), dtype=torch.long)
        teacher_len = torch.zeros(n_users, dtype=torch.long)
        teacher_seq[uid[rows]] = seq[rows]
        teacher_len[uid[rows]] = length[rows]
        return cls(dataset.sim_users, teacher_seq, teacher_len, width, options)

    def on_epoch_start(self) -> None:
        if self.update == "epoch":
            self.fresh = False

    @torch.no_grad()
    def refresh(self, encoder: nn.Module, batch_size: int = 1024) -> None:
        """Recompute every user's representation (the memory bank) with ``encoder`` in eval mode."""
        was_training = encoder.training
        encoder.eval()
        tables = encoder.view_tables()
        users = torch.nonzero(self.teacher_len > 0).squeeze(1)
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            reps = encoder.forward(self.teacher_seq[batch], self.teacher_len[batch], tables)
            self.user_bank[batch] = reps.to(self.user_bank.dtype)  # half precision under autocast
        encoder.train(was_training)
        self.fresh = True
        self.steps_since_refresh = 0

    def target(self, user_ids: torch.Tensor, encoder: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean representation of each user's similar users ``[B, width]``, and which users have any."""
        neighbors = self.sim_users[user_ids]  # [B, N], 0 = none
        valid = (neighbors > 0) & (self.teacher_len[neighbors] > 0)
        if self.mode == "memory_bank":
            if not self.fresh or 0 < self.refresh_steps <= self.steps_since_refresh:
                # epoch: every epoch; batch: once at the start (then the students keep it current)
                self.refresh(encoder)
            self.steps_since_refresh += 1
            reps = self.user_bank[neighbors]
        else:  # the official code's online teacher: encode the N similar users with every batch
            with torch.no_grad():
                flat = neighbors.reshape(-1)
                reps = encoder.forward(
                    self.teacher_seq[flat], self.teacher_len[flat].clamp(min=1)
                ).view(*neighbors.shape, -1)
        weights = valid.unsqueeze(-1).float()
        mean = (reps * weights).sum(1) / weights.sum(1).clamp(min=1)
        return mean.detach(), valid.any(1)

    def loss(self, user_ids: torch.Tensor, student: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        """MSE between each user's representation and its teacher target (users with a teacher only)."""
        target, has_teacher = self.target(user_ids, encoder)
        if not has_teacher.any():
            return student.new_zeros(())
        # In float32: under autocast the student (and an online teacher) may be half precision.
        return F.mse_loss(student[has_teacher].float(), target[has_teacher].float())

    def record(self, user_ids: torch.Tensor, item_seq_len: torch.Tensor, student: torch.Tensor) -> None:
        """``teacher_update: batch``: the student just encoded these users; where its input is the teacher's
        (the user's longest training prefix), its state replaces the stored one, with no extra pass."""
        if self.mode == "memory_bank" and self.update == "batch":
            same = item_seq_len == self.teacher_len[user_ids]
            self.user_bank[user_ids[same]] = student[same].detach().to(self.user_bank.dtype)
