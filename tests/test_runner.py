"""Issue 2: the runner trains RecBole baselines and plugin models, with safe checkpoints."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_llmesr.config import RECBOLE_ML100K_DIR, LLMESRConfig
from recbole_llmesr.quick_start import run_recbole
from recbole_llmesr.registry import UnknownModelError, get_model
from recbole_llmesr.checkpoints import UnsafeCheckpointError, load_checkpoint


def _checkpoint(tmp_path) -> Path:
    (path,) = (tmp_path / "saved").glob("*.pth")
    return path


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_recbole_baselines_train_reload_and_test(model, tiny, tmp_path):
    result = run_recbole(model=model, dataset="tiny", config_dict=tiny["config"])
    assert set(result) == {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result", "history"}
    # One history entry per validated epoch; the best score is one of them.
    assert [h["epoch"] for h in result["history"]] == list(range(tiny["config"]["epochs"]))
    assert result["best_valid_score"] in [h["valid_score"] for h in result["history"]]
    assert {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"} <= set(result["test_result"])
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    checkpoint = torch.load(_checkpoint(tmp_path), weights_only=True)
    assert checkpoint["config"]["model"] == model
    assert isinstance(checkpoint["config"], dict) and isinstance(checkpoint["best_valid_score"], float)


def test_resume_from_checkpoint(tiny, tmp_path):
    from conftest import build
    from recbole_llmesr.registry import get_trainer

    run_recbole(model="SASRec", dataset="tiny", config_dict=tiny["config"])
    config, model, (train, valid, _) = build("SASRec", {**tiny["config"], "epochs": 3})
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer.resume_checkpoint(_checkpoint(tmp_path))
    assert trainer.start_epoch >= 1
    saved = load_checkpoint(trainer.saved_model_file)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    trainer.fit(train, valid, saved=True, show_progress=False)


def test_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}, "payload": Path("/etc/passwd")}, bad)  # any non-allowlisted object
    with pytest.raises(UnsafeCheckpointError, match="bad.pth"):
        load_checkpoint(bad)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as err:
        get_model("SASrec2")
    assert "SASRec" in str(err.value) and "lightgbm" not in str(err.value)


def test_cli_unknown_model_exits_with_message():
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_llmesr.cli.run_recbole", "--model=GRU4Recc", "--dataset=ml-100k"],
        capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Unknown model 'GRU4Recc'" in proc.stderr and "GRU4Rec" in proc.stderr


def test_cli_trains_with_overrides(tiny, tmp_path):
    cfg = tiny["config"]
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_llmesr.cli.run_recbole", "--model=SASRec", "--dataset=tiny",
         f"--data_path={cfg['data_path']}",
         "--epochs=1", "--show_progress=False", f"--checkpoint_dir={cfg['checkpoint_dir']}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test result" in proc.stdout + proc.stderr
    assert "epoch 1 training" not in proc.stdout + proc.stderr  # --epochs=1 reached RecBole's Config


def test_anomaly_mode_stays_off():
    get_model("SASRec")  # importing RecBole's sequential models switches it on (sine.py)
    assert not torch.is_anomaly_enabled()


def test_yaml_precedence(tmp_path, monkeypatch):
    # plugin YAML < config file < config_dict < command line, and plugin YAML beats RecBole's defaults.
    config = LLMESRConfig(model="LLMESR_SASRec", dataset="tiny")
    assert config["alpha"] == 0.1 and config["train_batch_size"] == 128  # RecBole's own default is 2048
    assert Path(config["data_path"]) == Path("dataset_atomic") / "tiny"
    file = tmp_path / "my.yaml"
    file.write_text("alpha: 0.2\nsim_user_num: 5\nlearning_rate: 0.01\n")
    config = LLMESRConfig(
        model="LLMESR_SASRec", dataset="tiny", config_file_list=[str(file)], config_dict={"sim_user_num": 7}
    )
    assert (config["alpha"], config["sim_user_num"], config["learning_rate"]) == (0.2, 7, 0.01)
    monkeypatch.setattr(sys, "argv", ["run_recbole", "--sim_user_num=9", "--alpha=0.4"])
    config = LLMESRConfig(
        model="LLMESR_SASRec", dataset="tiny", config_file_list=[str(file)], config_dict={"sim_user_num": 7}
    )
    assert (config["alpha"], config["sim_user_num"]) == (0.4, 9)


def test_ml100k_uses_wheel_copy_unless_prepared(tmp_path):
    assert Path(LLMESRConfig(model="SASRec", dataset="ml-100k")["data_path"]) == RECBOLE_ML100K_DIR
    prepared = tmp_path / "dataset_atomic" / "ml-100k"
    prepared.mkdir(parents=True)
    (prepared / "ml-100k.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    assert Path(LLMESRConfig(model="SASRec", dataset="ml-100k")["data_path"]) == Path("dataset_atomic") / "ml-100k"


def _readme_baselines():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| any RecBole model")]
    import re

    return re.findall(r"`(\w+)`", row)


@pytest.mark.parametrize("model", _readme_baselines())
def test_every_baseline_named_in_readme_runs(model, tiny):
    result = run_recbole(model=model, dataset="tiny", config_dict={**tiny["config"], "epochs": 1})
    assert "ndcg@10" in result["test_result"]


def test_runner_never_imports_recbole_quick_start(tiny, tmp_path):
    # recbole.quick_start imports ray, which breaks on current setuptools and numpy.
    code = (
        "import sys; from recbole_llmesr.quick_start import run_recbole; "
        f"run_recbole(model='SASRec', dataset='tiny', config_dict={dict(tiny['config'], epochs=1)!r}); "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'recbole.quick_start'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_cli_reports_configuration_errors_in_one_line(tiny, tmp_path):
    # The tiny artefacts are 16-d: PCA cannot initialise the default 64-d ID table.
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_llmesr.cli.run_recbole", "--model=LLMESR_SASRec", "--dataset=tiny",
         f"--data_path={tiny['config']['data_path']}", "--hidden_size=64", "--show_progress=False"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("run_recbole: error: id_init=pca needs hidden_size (64)")
