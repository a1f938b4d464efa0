"""RecBole dataset that carries the frozen LLM item embeddings and the similar-user lists."""
from logging import getLogger

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.freshness import changed_file


class LLMESRDataset(SequentialDataset):
    """``SequentialDataset`` plus the LLM artefacts, aligned to RecBole's internal ids by original token.

    Attributes set after loading (only what the model's configuration needs):

    - ``llm_item_emb``: float32 tensor ``[item_num, d]``, row 0 ([PAD]) zero.
    - ``sim_users``: int64 tensor ``[user_num, k]`` of internal user ids, most similar first, 0 for none.
    - ``repeat_share`` (training split only, after ``build``): the share of training targets that repeat an
      item of their own input sequence (0 when users never consume an item twice).
    - ``item_counts`` (training split only, after ``build``): int64 tensor ``[item_num]``, each item's
      training interactions.

    Embeddings are deliberately not loaded through ``.item`` ``float_seq`` columns (RecBole then drops
    the interactions of items missing from ``.item``) nor ``preload_weight`` (tokens absent from the
    interactions become phantom items).

    ``train_mode: sequence`` keeps one training row per user, its longest prefix, for the paper's
    loss at every position; ``prefix`` keeps RecBole's one row per prefix.
    """

    def __init__(self, config):
        super().__init__(config)
        self.llm_item_emb = None
        self.sim_users = None
        data_dir, name = config["data_path"], self.dataset_name
        manifest = artifacts.read_manifest(data_dir, name) or {}
        if self._needs_item_embeddings(config):
            path = artifacts.artifact_path(data_dir, name, artifacts.ITEM_EMB)
            _check_hash(path, manifest, name)
            tokens, emb = artifacts.load_embeddings(path, expected_dim=manifest.get("dim"))
            aligned = artifacts.align_rows(tokens, emb, self.field2id_token[self.iid_field], "item", path)
            self.llm_item_emb = torch.from_numpy(aligned)
        if config["use_distillation"]:
            self.sim_users = self._load_sim_users(data_dir, name, manifest)

    @staticmethod
    def _needs_item_embeddings(config) -> bool:
        return bool(config["use_semantic_view"]) or config["id_init"] == "pca" or bool(config["transition_weight"])

    def _load_sim_users(self, data_dir, name, manifest) -> torch.Tensor:
        path = artifacts.artifact_path(data_dir, name, artifacts.SIM_USERS)
        _check_hash(path, manifest, name)
        tokens, neighbors = artifacts.load_neighbors(path)
        id2token = self.field2id_token[self.uid_field]
        token2id = {t: i for i, t in enumerate(id2token)}
        # Map stored row indices to internal user ids; users filtered out of the dataset become 0 (none).
        row2id = np.array([token2id.get(t, 0) for t in tokens.tolist()] + [0], dtype=np.int64)
        row_of = {t: i for i, t in enumerate(tokens.tolist())}
        missing = [t for t in id2token[1:] if t not in row_of]
        if missing:
            raise artifacts.ArtifactError(
                f"{path}: {len(missing)} users have no similar-user list (no user embedding), e.g. "
                f"{', '.join(missing[:10])}. Rebuild with `llmesr-prepare`."
            )
        table = np.zeros((len(id2token), neighbors.shape[1]), dtype=np.int64)
        rows = np.array([row_of[t] for t in id2token[1:]], dtype=np.int64)
        table[1:] = row2id[neighbors[rows]]  # -1 indexes the trailing 0
        # Keep neighbours that survived filtering, in order, packed to the left.
        order = np.argsort(table == 0, axis=1, kind="stable")
        return torch.from_numpy(np.take_along_axis(table, order, axis=1))

    def build(self):
        datasets = super().build()
        counts = self._training_item_counts(datasets[0])
        inter = datasets[0].inter_feat
        repeats = (inter[self.item_id_list_field] == inter[self.iid_field].unsqueeze(1)).any(1)
        if self.config["train_mode"] == "sequence":
            datasets[0] = self._longest_prefix_per_user(datasets[0])
        datasets[0].item_counts = counts
        datasets[0].repeat_share = float(repeats.float().mean()) if len(repeats) else 0.0
        return datasets

    def _training_item_counts(self, train) -> torch.Tensor:
        """``counts[item]``: the item's interactions in the training split.

        Read from the one-row-per-prefix split before ``sequence`` mode drops rows: every training
        interaction but a user's first is the target of one row, and the first heads the length-1 row.
        """
        inter = train.inter_feat
        first = inter[self.item_id_list_field][inter[self.item_list_length_field] == 1, 0]
        return torch.bincount(torch.cat([inter[self.iid_field], first]), minlength=self.item_num)

    def _longest_prefix_per_user(self, train):
        uid = train.inter_feat[self.uid_field].numpy()
        rows = longest_prefix_rows(uid, train.inter_feat[self.item_list_length_field].numpy())
        getLogger().info(f"train_mode=sequence: {len(uid)} prefix rows -> {len(rows)} user sequences")
        return train.copy(train.inter_feat[torch.from_numpy(rows)])


def _check_hash(path, manifest: dict, name: str) -> None:
    """Refuse an artefact that is not the file its manifest describes (the runner rebuilds such files first;
    this catches the ones it did not see, e.g. swapped after preparation)."""
    digest = (manifest.get("files") or {}).get(path.name)
    if digest is not None and path.is_file() and changed_file(path.parent, {path.name: digest}) is not None:
        raise artifacts.ArtifactError(
            f"{path} is not the file its manifest {artifacts.artifact_path(path.parent, name, artifacts.MANIFEST)} "
            f"describes (its sha256 differs: edited, or copied in from another dataset); rebuild it with "
            f"`llmesr-prepare --force`, or run run_recbole again, which rebuilds it")


def longest_prefix_rows(uid: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Row index of each user's longest sequence, in row order."""
    order = np.lexsort((length, uid))
    last = order[np.r_[uid[order][1:] != uid[order][:-1], True]]
    return np.sort(last)
