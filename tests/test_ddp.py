"""Issue 7, part 6: multi-process (DDP) training on CPU over gloo.

Each test spawns two real worker processes on the tiny dataset. ``save_rank_states`` makes every rank write
its final parameters to ``<checkpoint_dir>/rank<k>-final.pt`` (only rank 0 writes checkpoints), so the test
can check that the ranks ended with identical parameters.
"""
import socket
from pathlib import Path

import torch

from recbole_llmesr.checkpoints import load_checkpoint


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def rank_states(checkpoint_dir: Path) -> list:
    files = sorted(Path(checkpoint_dir).glob("rank*-final.pt"))
    assert [f.name for f in files] == ["rank0-final.pt", "rank1-final.pt"]
    return [torch.load(f, weights_only=True) for f in files]


def assert_ranks_in_sync(checkpoint_dir: Path) -> dict:
    first, second = rank_states(checkpoint_dir)
    assert (first["rank"], second["rank"]) == (0, 1)
    a, b = first["state_dict"], second["state_dict"]
    assert a.keys() == b.keys() and "item_embedding.weight" in a
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"parameters differ between ranks: {unequal}"
    return a


def single_process_test(config_dict: dict, checkpoint: Path) -> dict:
    """The test metrics of ``checkpoint`` evaluated by one ordinary process on the whole test split."""
    from recbole.utils import init_seed

    from recbole_llmesr.config import LLMESRConfig
    from recbole_llmesr.evaluation import data_preparation
    from recbole_llmesr.registry import create_dataset, get_model, get_trainer

    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = data_preparation(config, create_dataset(config))
    model = get_model("LLMESR_SASRec")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "LLMESR_SASRec")(config, model)
    return dict(trainer.evaluate(test, load_best_model=True, model_file=str(checkpoint)))


def test_two_process_training_keeps_ranks_identical(tiny, tmp_path):
    from recbole_llmesr.quick_start import run

    # use_gpu False: gloo on CPU even where CUDA exists.
    cfg = {**tiny["config"], "epochs": 2, "use_gpu": False, "save_rank_states": True}
    result = run("LLMESR_SASRec", "tiny", config_dict=cfg, nproc=2, port=free_port())

    final = assert_ranks_in_sync(tmp_path / "saved")
    (checkpoint,) = (tmp_path / "saved").glob("LLMESR_SASRec-*.pth")  # one name for all ranks, written by rank 0
    best = load_checkpoint(checkpoint)
    assert best["config"]["world_size"] == 2 and best["config"]["nproc"] == 2
    if best["epoch"] == 1:  # the last epoch was the best: the checkpoint is the final state
        assert all(torch.equal(best["state_dict"][k], v) for k, v in final.items())

    # The result is rank 0's, and its test metrics are those of one process over the whole test split, not
    # RecBole's per-shard average (padded shards, per-shard long-tail groups).
    assert set(result) == {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result", "history"}
    expected = single_process_test({**tiny["config"], "checkpoint_dir": str(tmp_path / "eval")}, checkpoint)
    assert dict(result["test_result"]) == expected
    assert "ndcg@10" in expected and "share_tail_user" in expected


def test_cli_nproc_2(tiny, tmp_path, capsys):
    from recbole_llmesr.cli.run_recbole import main

    cfg = tiny["config"]
    saved = tmp_path / "cli_saved"
    code = main(["--model=LLMESR_SASRec", "--dataset=tiny", "--nproc=2", f"--port={free_port()}",
                 f"--data_path={cfg['data_path']}", f"--checkpoint_dir={saved}", "--epochs=1", "--hidden_size=8",
                 "--inner_size=16", "--train_batch_size=64", "--show_progress=False", "--use_gpu=False",
                 "--save_rank_states=True"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert_ranks_in_sync(saved)
    assert len(list(saved.glob("LLMESR_SASRec-*.pth"))) == 1
    # Both ranks logged to ./log; rank 1 at error level only, so a single "test result" line.
    logs = "".join(p.read_text() for p in Path("log").rglob("*.log"))
    assert logs.count("test result") == 1


def test_rank_states_are_off_by_default(tiny, tmp_path):
    # save_rank_states is a debugging aid: an ordinary run writes only its checkpoint.
    from recbole_llmesr.quick_start import run_recbole

    run_recbole("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], "epochs": 1})
    assert not list((tmp_path / "saved").glob("rank*"))
