"""Bad input met by ``run_recbole`` after preparation: RecBole's filters, missing files, model names and
model settings, each an error naming the setting at fault (and a one-line message from the command)."""
from __future__ import annotations

import pytest
from conftest import FAST
from prep_helpers import run_recbole_cli_error

from recbole_llmesr.model.options import ModelConfigError, ModelConfigTypeError
from recbole_llmesr.prep.readers import EmptyDatasetError
from recbole_llmesr.registry import UnknownModelError


def test_empty_after_recbole_filtering(tiny, capsys):
    # RecBole's own filters, applied when the dataset loads: its message named neither dataset nor setting.
    from recbole_llmesr.quick_start import run_recbole

    cfg = {**tiny["config"], "user_inter_num_interval": "[1000,inf)"}
    match = r"dataset 'tiny' in .*: no interactions .*'user_inter_num_interval': '\[1000,inf\)'"
    with pytest.raises(EmptyDatasetError, match=match):
        run_recbole("LLMESR_SASRec", "tiny", config_dict=cfg)
    line = run_recbole_cli_error(capsys, "--model=SASRec", "--dataset=tiny", f"--data_path={cfg['data_path']}",
                                 "--user_inter_num_interval=[1000,inf)")
    assert "no interactions" in line


def test_missing_inter_file(tmp_path):
    from recbole_llmesr.quick_start import run_recbole

    cfg = {**FAST, "data_path": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match=r"nowhere/tiny/tiny\.inter: file not found"):
        run_recbole("LLMESR_SASRec", "tiny", config_dict=cfg)


# ------------------------------------------------------------------------------------ configuration


def test_unknown_model_name(tiny, capsys):
    from recbole_llmesr.quick_start import run_recbole

    with pytest.raises(UnknownModelError, match=r"Unknown model 'LLMESR_SASRex'\. Did you mean: LLMESR_SASRec"):
        run_recbole("LLMESR_SASRex", "tiny", config_dict=tiny["config"])
    assert "Unknown model 'GRU4Recc'" in run_recbole_cli_error(capsys, "--model=GRU4Recc", "--dataset=tiny")


@pytest.mark.parametrize("yaml_text,error,match", [
    ('alpha: "0.1"\n', ModelConfigTypeError, r"'alpha' must be a number, got '0\.1'"),
    ("sim_user_num: 2.5\n", ModelConfigTypeError, r"'sim_user_num' must be an integer, got 2\.5"),
    ("use_distillation: 'yes'\n", ModelConfigTypeError, r"'use_distillation' must be True or False, got 'yes'"),
    ("teacher_mode: bank\n", ModelConfigError, r"'teacher_mode' must be one of memory_bank, online; got 'bank'"),
])
def test_yaml_value_of_the_wrong_type(yaml_text, error, match, tiny, tmp_path):
    from recbole_llmesr.quick_start import run_recbole

    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(error, match=match):
        run_recbole("LLMESR_SASRec", "tiny", config_file_list=[str(config_file)], config_dict=tiny["config"])


def test_pca_hidden_size_above_llm_dimension(tiny):
    from recbole_llmesr.quick_start import run_recbole

    match = r"id_init=pca needs hidden_size \(32\) <= min\(#items, LLM dimension\) = 16"
    with pytest.raises(ModelConfigError, match=match):
        run_recbole("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], "hidden_size": 32})
