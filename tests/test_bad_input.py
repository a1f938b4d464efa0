"""Bad input as a new user meets it (issue 18): atomic files RecBole would misread, settings out of range or
misspelt, RecBole's own complaints, too little data and swapped artefacts. Every case ends in one line that
names the file and line or the key (exit status 2), or in a warning; none in a traceback, none silently.

The command-line cases run ``run_recbole``'s ``main`` in this process: it stops before any training, so each
costs about a second. Disk faults are in ``tests/test_faults.py``, crash-resume in ``tests/test_resume.py``.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, build, write_tiny_dataset
from prep_helpers import HEADER, run_recbole_cli_error

from recbole_llmesr.config import LLMESRConfig
from recbole_llmesr.config_checks import ConfigError, UnknownKeyWarning
from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.readers import DataFormatError, EmptyDatasetError
from recbole_llmesr.quick_start import run_recbole


@pytest.fixture
def data(tmp_path):
    """A tiny atomic dataset for RecBole's own SASRec; ``spoil(text)`` rewrites its ``.inter``."""
    root = tmp_path / "dataset_atomic"
    folder = write_tiny_dataset(root)
    inter = folder / "tiny.inter"

    def spoil(edit) -> Path:
        inter.write_bytes(edit(inter.read_bytes()))
        return inter

    return {"root": root, "folder": folder, "inter": inter, "spoil": spoil,
            "args": ["--model=SASRec", "--dataset=tiny", f"--data_path={root}", "--show_progress=False"]}


def lines_of(path: Path) -> list:
    return path.read_bytes().split(b"\n")


def replace_line(n: int, new: bytes):
    """An edit that replaces line ``n`` (1-based) of a file."""
    def edit(blob: bytes) -> bytes:
        rows = blob.split(b"\n")
        rows[n - 1] = new
        return b"\n".join(rows)
    return edit


def cli_error(capsys, data, *extra: str) -> str:
    return run_recbole_cli_error(capsys, *data["args"], *extra)


# ------------------------------------------------------------------------------------------ input files


def test_utf8_byte_order_mark_is_read(data):
    # RecBole read it as part of 'user_id' (KeyError: 'user_id'); encoding: utf-8-sig is the plugin's default.
    plain = build("SASRec", {**FAST, "data_path": str(data["root"])})[0]
    assert plain["encoding"] == "utf-8-sig"
    data["spoil"](lambda b: b"\xef\xbb\xbf" + b)
    config, _, (train, _, _) = build("SASRec", {**FAST, "data_path": str(data["root"])})
    assert train._dataset.uid_field == "user_id" and train._dataset.user_num == 41


def test_byte_order_mark_with_plain_utf8_encoding(data, capsys):
    data["spoil"](lambda b: b"\xef\xbb\xbf" + b)
    line = cli_error(capsys, data, "--encoding=utf-8")
    assert f"{data['inter']}, line 1: the file starts with a UTF-8 byte-order mark" in line
    assert "encoding: utf-8-sig" in line


def test_windows_line_endings_read_like_unix_ones(data, tmp_path):
    _, _, (lf, _, _) = build("SASRec", {**FAST, "data_path": str(data["root"])})
    crlf_root = tmp_path / "crlf"
    shutil.copytree(data["root"], crlf_root)
    for path in (crlf_root / "tiny").iterdir():
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    _, _, (crlf, _, _) = build("SASRec", {**FAST, "data_path": str(crlf_root)})
    a, b = lf._dataset.inter_feat, crlf._dataset.inter_feat
    assert lf._dataset.field2id_token["item_id"].tolist() == crlf._dataset.field2id_token["item_id"].tolist()
    assert all(np.array_equal(a[f].numpy(), b[f].numpy()) for f in ("user_id", "item_id", "timestamp"))


def test_duplicated_header_field(data, capsys):
    data["spoil"](replace_line(1, b"user_id:token\titem_id:token\titem_id:token"))
    assert f"{data['inter']}, line 1: header fields 2 and 3 are both named 'item_id'" in cli_error(capsys, data)


def test_unsupported_field_type(data, capsys):
    data["spoil"](replace_line(1, b"user_id:str\titem_id:token\ttimestamp:float"))
    line = cli_error(capsys, data)
    assert f"{data['inter']}, line 1: header field 'user_id:str' has type 'str'" in line and "token_seq" in line


def test_header_field_without_type(data, capsys):
    data["spoil"](replace_line(1, b"user_id\titem_id:token\ttimestamp:float"))
    assert f"{data['inter']}, line 1: header field 'user_id' is not 'name:type'" in cli_error(capsys, data)


def test_comma_separated_file(data, capsys):
    data["spoil"](lambda b: b.replace(b"\t", b","))
    line = cli_error(capsys, data)
    assert "line 1: header field 'user_id:token,item_id:token,timestamp:float' is not 'name:type'" in line
    assert "field_separator" in line


@pytest.mark.parametrize("stamp", [b"2020-01-01T10:00:00", b"2020-01-01 10:00:00+02:00", b"2020-01-01"])
def test_iso_timestamps_in_a_float_column(stamp, data, capsys):
    data["spoil"](replace_line(4, b"u0\ti3\t" + stamp))
    line = cli_error(capsys, data)
    assert f"{data['inter']}, line 4: timestamp '{stamp.decode()}' is a date, not a number" in line
    assert "llmesr-prepare" in line and "UTC" in line


def test_iso_timestamps_are_converted_by_llmesr_prepare(tmp_path):
    # The documented conversion: written to another folder as seconds since the epoch, naive dates as UTC.
    from recbole_llmesr.prep.readers import read_atomic, write_atomic

    raw = tmp_path / "raw" / "dates.inter"
    raw.parent.mkdir()
    raw.write_text(f"{HEADER}\nu1\ti1\t2020-01-01T00:00:00\nu1\ti2\t2020-01-01T01:00:00+01:00\nu1\ti3\t1577840400\n")
    write_atomic(read_atomic(raw), tmp_path / "out")
    assert (tmp_path / "out" / "dates.inter").read_text().splitlines()[1:] == [
        "u1\ti1\t1577836800", "u1\ti2\t1577836800", "u1\ti3\t1577840400"]


def test_not_a_number_in_a_float_column(data, capsys):
    data["spoil"](replace_line(3, b"u0\ti2\tyesterday"))
    assert f"{data['inter']}, line 3: timestamp 'yesterday' is not a number" in cli_error(capsys, data)


def test_empty_timestamp(data, capsys):
    # RecBole would fill in the column's mean: the interaction would move to the middle of the history.
    data["spoil"](replace_line(3, b"u0\ti2\t"))
    assert f"{data['inter']}, line 3: empty 'timestamp'" in cli_error(capsys, data)


@pytest.mark.parametrize("row,shown", [(b"u0 \ti2\t1", "user_id 'u0 '"), (b"u0\t i2\t1", "item_id ' i2'")])
def test_ids_with_stray_whitespace(row, shown, data, capsys):
    # RecBole keeps the spaces: 'u0 ' would silently be a second user.
    data["spoil"](replace_line(3, row))
    line = cli_error(capsys, data)
    assert f"{data['inter']}, line 3: {shown} has whitespace around it" in line and "remove the spaces" in line


def test_ids_with_stray_whitespace_are_stripped_by_llmesr_prepare_with_a_warning(tmp_path):
    from recbole_llmesr.prep.readers import read_atomic

    raw = tmp_path / "ws.inter"
    raw.write_text(f"{HEADER}\nu1\ti1\t1\nu1 \ti2\t2\nu1\ti3 \t3\n")
    with pytest.warns(UserWarning, match=r"ws\.inter, line 3: id 'u1 ' has whitespace around it; 2 such lines"):
        ds = read_atomic(raw)
    assert ds.counts() == {"users": 1, "items": 3, "interactions": 3}


@pytest.mark.parametrize("row,message", [
    (b"\ti2\t1", "empty 'user_id'"),
    (b"u0\tNA\t1", "item_id 'NA' is read by pandas (and so RecBole) as a missing value"),
    (b"u0\ti2", "expected 3 tab-separated fields, found 2"),
    (b"u0\ti2\t1\t5", "expected 3 tab-separated fields, found 4"),
])
def test_bad_lines_that_pandas_would_misread(row, message, data, capsys):
    data["spoil"](replace_line(5, row))
    assert f"{data['inter']}, line 5: {message}" in cli_error(capsys, data)


def test_non_utf8_bytes_for_recbole(data, capsys):
    data["spoil"](replace_line(6, b"u0\tcaf\xe9\t1"))
    assert f"{data['inter']}, line 6: not valid UTF-8" in cli_error(capsys, data)


def test_bad_item_file(data, capsys):
    item = data["folder"] / "tiny.item"
    item.write_text("item_id:token\ttitle:token\ttitle:token\ni1\ta\tb\n")
    assert f"{item}, line 1: header fields 2 and 3 are both named 'title'" in cli_error(capsys, data)


def test_llm_model_refuses_bad_files_before_embedding_anything(tiny, capsys, monkeypatch):
    # The plugin's model builds LLM artefacts from the files in place first: the check must come before that.
    from recbole_llmesr.prep import pipeline

    monkeypatch.setattr(pipeline, "_build", lambda *a, **k: pytest.fail("artefacts were built from a bad file"))
    inter = tiny["folder"] / "tiny.inter"
    inter.write_bytes(replace_line(2, b"u0\ti1\t2021-05-01T00:00:00")(inter.read_bytes()))
    (tiny["folder"] / "tiny.llmesr.json").write_text("{}")  # a manifest: the artefacts would be rebuilt
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--dataset=tiny",
                                 f"--data_path={tiny['config']['data_path']}")
    assert f"{inter}, line 2: timestamp '2021-05-01T00:00:00' is a date" in line


def test_llmesr_prepare_in_place_refuses_what_recbole_would_misread(tmp_path, capsys):
    from prep_helpers import prepare_cli_error

    folder = write_tiny_dataset(tmp_path / "dataset_atomic")
    inter = folder / "tiny.inter"
    inter.write_bytes(replace_line(3, b"u0\ti1 \t5")(inter.read_bytes()))
    line = prepare_cli_error(capsys, "--inter", str(folder), "--out", str(tmp_path / "dataset_atomic"))
    assert f"{inter}, line 3: item_id 'i1 ' has whitespace around it" in line
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.inter", "tiny.item"]  # nothing built


# ------------------------------------------------------------------------------------- too little data


def test_every_user_too_short_for_leave_one_out(data, capsys):
    # RecBole failed with num_samples=0 here, or tested an empty split as `test result: None` and exited 0.
    data["inter"].write_text(f"{HEADER}\n" + "".join(f"u{u}\ti{u}\t1\n" for u in range(6)))
    line = cli_error(capsys, data)
    assert "dataset 'tiny'" in line and "split is empty" in line and "6 users with 1 to 1 interactions" in line
    assert "at least 3 interactions" in line


def test_empty_test_split_is_not_a_result(data):
    # Two interactions each: training rows exist, but leave-one-out has nothing left to test.
    data["inter"].write_text(f"{HEADER}\n" + "".join(f"u{u}\ti{u}\t1\nu{u}\ti{u + 1}\t2\n" for u in range(6)))
    with pytest.raises(EmptyDatasetError, match=r"split is empty .*2 to 2 interactions"):
        run_recbole("SASRec", "tiny", config_dict={**FAST, "data_path": str(data["root"])})


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("setting,message", [
    ("--MAX_ITEM_LIST_LENGTH=0", "'MAX_ITEM_LIST_LENGTH' must be >= 1; got 0"),
    ("--MAX_ITEM_LIST_LENGTH=-3", "'MAX_ITEM_LIST_LENGTH' must be >= 1; got -3"),
    ("--train_batch_size=0", "'train_batch_size' must be >= 1; got 0"),
    ("--eval_batch_size=-1", "'eval_batch_size' must be >= 1; got -1"),
    ("--epochs=-1", "'epochs' must be >= 0; got -1"),
    ("--epochs=ten", "'epochs' must be an integer, got 'ten'"),
    ("--stopping_step=0", "'stopping_step' must be >= 1; got 0"),
    ("--learning_rate=0", "'learning_rate' must be > 0; got 0"),
    ("--learning_rate=-0.01", "'learning_rate' must be > 0; got -0.01"),
    ("--weight_decay=-1", "'weight_decay' must be >= 0; got -1"),
    ("--hidden_dropout_prob=1.5", "'hidden_dropout_prob' must be >= 0 and < 1; got 1.5"),
    ("--hidden_size=65", "hidden_size (65) must be a multiple of n_heads (2)"),
    ("--n_layers=0", "'n_layers' must be >= 1; got 0"),
    ("--learner=adamm", "'learner' must be one of adam, adamw, sgd"),
    ("--valid_metric=NDCG@20", "'valid_metric' is 'NDCG@20', which is not computed"),
    ("--valid_metric=AUC", "'valid_metric' is 'AUC', which is not computed"),
    ("--topk=[10,0]", "topk must be a positive integer or a list of positive integers, but get `0`"),
    ("--group_split=quantile", "'group_split' must be one of pareto, threshold; got 'quantile'"),
    ("--head_ratio=1.5", "'head_ratio' must be > 0 and < 1; got 1.5"),
    ("--extra_test_modes=['fulll']", "unknown eval modes ['fulll']"),
    ("--extra_test_modes=full", "'extra_test_modes' must be a list of eval modes such as [full]"),
    ("--encoding=utf-9", "unknown encoding 'utf-9'"),
    ("--seed=1.5", "'seed' must be an integer, got 1.5"),
    ("--reproducibility=maybe", "'reproducibility' must be True or False, got 'maybe'"),
])
def test_recbole_settings_out_of_range(setting, message, data, capsys):
    assert message in cli_error(capsys, data, setting)


@pytest.mark.parametrize("setting,message", [
    ("--alpha=-0.1", "'alpha' must be >= 0; got -0.1"),
    ("--sim_user_num=-2", "'sim_user_num' must be >= 1; got -2"),
    ("--sim_user_num=0", "'sim_user_num' must be >= 1; got 0"),
    ("--cross_attention_heads=0", "'cross_attention_heads' must be >= 1; got 0"),
    ("--train_mode=prefixes", "'train_mode' must be one of prefix, sequence; got 'prefixes'"),
    ("--sim_top_k=0", "'sim_top_k': top_k must be a positive integer, got 0"),
    ("--text_max_chars=-5", "'text_max_chars': max_chars must be a positive integer, got -5"),
    ("--embedder=word2vec", "unknown embedder kind"),
])
def test_plugin_settings_out_of_range_fail_before_any_data_is_read(setting, message, tiny, capsys, monkeypatch):
    from recbole_llmesr import registry

    monkeypatch.setattr(registry, "create_dataset", lambda config: pytest.fail("the dataset was loaded"))
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--dataset=tiny",
                                 f"--data_path={tiny['config']['data_path']}", setting)
    assert message in line


@pytest.mark.parametrize("setting,message", [
    ("--metrics=['Recal','NDCG']", "There is no metric named 'Recal'. Did you mean: recall"),
    ("--topk=0", "topk must be a positive integer or a list of positive integers"),
    ("--topk=ten", "The topk [ten] must be a integer, list"),
    ("--metrics=['NDCG','RMSE']", "Ranking metrics and value metrics can not be used at the same time"),
])
def test_recbole_own_errors_are_translated(setting, message, data, capsys):
    line = cli_error(capsys, data, setting)
    assert "RecBole rejected the configuration: " in line and message in line


def test_recbole_error_while_splitting_is_translated(data, capsys):
    line = cli_error(capsys, data, "--eval_args={'split':{'XX':1}}")
    assert "dataset 'tiny': RecBole could not split it with eval_args=" in line and "'TO'" in line


def test_duplicated_command_line_setting(data, capsys):
    assert "duplicate" in cli_error(capsys, data, "--epochs=2", "--epochs=3")


def test_invalid_yaml_file(data, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n  alpha: [0.1\n")
    line = cli_error(capsys, data, f"--config_files={bad}")
    assert f"{bad}, line 2, column 8: not valid YAML (mapping values are not allowed here)" in line


def test_missing_yaml_file(data, capsys, tmp_path):
    assert str(tmp_path / "absent.yaml") in cli_error(capsys, data, f"--config_files={tmp_path / 'absent.yaml'}")


@pytest.mark.parametrize("args,message", [
    (["--alpha", "0.1"], "'--alpha 0.1': settings are written --key=value"),
    (["--epochs"], "'--epochs': settings are written --key=value"),
    (["epochs=3"], "'epochs=3': not a setting"),
    (["--a=b=c"], "'--a=b=c': not a setting"),
])
def test_settings_recbole_would_ignore_on_the_command_line(args, message, data, capsys):
    # RecBole logs "will not be used" and trains with the defaults.
    assert message in cli_error(capsys, data, *args)


# ------------------------------------------------------------------------------------------ unknown keys


def test_misspelt_key_on_the_command_line_warns_with_the_close_match(data, capsys, monkeypatch):
    from recbole_llmesr.cli.run_recbole import main

    seen = []
    monkeypatch.setattr("recbole_llmesr.quick_start.run", lambda *a, **k: seen.append(LLMESRConfig(*a[:2])))
    assert main([*data["args"], "--alpah=0.1"]) == 0 and seen
    err = capsys.readouterr().err
    assert ("run_recbole: warning: unknown setting 'alpah' (from the command line): neither RecBole nor "
            "recbole-llmesr reads it, so it has no effect. Did you mean: alpha?") in err


def test_misspelt_key_in_a_yaml_file_names_the_file(data, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("learing_rate: 0.01\nepochs: 2\n")
    with pytest.warns(UnknownKeyWarning, match=rf"'learing_rate' \(from {cfg}\).*Did you mean: learning_rate"):
        LLMESRConfig("SASRec", "tiny", config_file_list=[str(cfg)], config_dict={"data_path": str(data["root"])})


def test_misspelt_key_in_config_dict(data):
    with pytest.warns(UnknownKeyWarning, match=r"'trian_batch_size' \(from config_dict\).*train_batch_size"):
        LLMESRConfig("SASRec", "tiny", config_dict={"data_path": str(data["root"]), "trian_batch_size": 8})


def test_a_key_nothing_resembles_gets_no_suggestion(data):
    with pytest.warns(UnknownKeyWarning) as caught:
        LLMESRConfig("SASRec", "tiny", config_dict={"data_path": str(data["root"]), "zzqx": 1})
    assert "Did you mean" not in str(caught[0].message)


@pytest.mark.parametrize("model", ["LLMESR_SASRec", "LLMESR_BERT4Rec", "SASRec", "BPR", "LightGCN", "FPMC"])
def test_every_key_a_checkpoint_stores_is_known(model, tmp_path):
    # llmesr-recommend rebuilds the config from the checkpoint's copy: that must never warn.
    from recbole_llmesr.recommend import _rebuilt_config

    saved = LLMESRConfig(model, "ml-100k").to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownKeyWarning)
        assert _rebuilt_config(saved, None, None)["model"] == model


def test_keys_read_by_recbole_code_without_a_yaml_default_are_known(data):
    # 'benchmark_filename' and 'alias_of_item_id' have RecBole YAML defaults; 'nproc' is a run_recbole flag.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownKeyWarning)
        LLMESRConfig("SASRec", "tiny", config_dict={"data_path": str(data["root"]), "nproc": 1, "resume": None,
                                                    "alias_of_item_id": None, "encoding": "utf-8"})


# ------------------------------------------------------------------------------------------ the boundary


def test_unexpected_error_prints_traceback_and_asks_for_a_report(capsys):
    from recbole_llmesr.cli.common import BUG_STATUS, run_tool

    def body() -> int:
        return {}["missing"]

    assert run_tool("some-tool", body) == BUG_STATUS == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert err.strip().splitlines()[-1].startswith("some-tool: internal error (KeyError): this is a bug in "
                                                   "recbole-llmesr")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_of_known_errors(how, data, capsys, monkeypatch):
    from recbole_llmesr.cli.run_recbole import main

    data["spoil"](replace_line(1, b"user_id:str\titem_id:token\ttimestamp:float"))
    if how == "environment":
        monkeypatch.setenv("RECBOLE_LLMESR_DEBUG", "1")
    assert main([*data["args"], *(["--debug"] if how == "flag" else [])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "DataFormatError" in err
    assert err.strip().splitlines()[-1].startswith("run_recbole: error: ")
    assert "will not be used" not in err  # --debug is the tool's own flag: RecBole never sees it


@pytest.mark.parametrize("tool", ["prepare", "compare", "recommend"])
def test_every_tool_has_the_debug_flag(tool, capsys):
    import importlib

    module = importlib.import_module(f"recbole_llmesr.cli.{tool}")
    assert "--debug" in module.build_parser().format_help()


def test_disk_error_outside_our_writes_is_one_line(capsys):
    import errno

    from recbole_llmesr.cli.common import run_tool

    def body() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "log/SASRec/run.log")

    assert run_tool("run_recbole", body) == 2
    assert capsys.readouterr().err == ("run_recbole: error: no space left on the device (log/SASRec/run.log): "
                                       "free some space or make the folder writable, then run the command again\n")


def test_ctrl_c_during_training_says_how_to_resume(data, capsys, monkeypatch):
    from recbole_llmesr.cli.run_recbole import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recbole_llmesr.quick_start.run", interrupted)
    assert main(data["args"]) == 130
    assert "--resume=auto" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ artefacts


def test_swapped_embedding_file_is_rebuilt_with_a_warning(prepared, tmp_path, caplog):
    # Another dataset's file with the same item ids but other texts: the manifest's hash tells them apart.
    from prep_helpers import settings_of

    from recbole_llmesr.prep.freshness import is_fresh

    root, cache = tmp_path / "dataset_atomic", tmp_path / "cache"
    shutil.copytree(prepared["out"], root)
    shutil.copytree(prepared["cache"], cache)
    folder = root / "tiny"
    tokens, emb = artifacts.load_embeddings(folder / "tiny.item_emb.npz")
    artifacts.save_embeddings(folder / "tiny.item_emb.npz", tokens, np.roll(emb, 1, axis=0))
    cfg = {**FAST, "epochs": 1, "data_path": str(root), "embedding_cache_dir": str(cache), "sim_top_k": 10}
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        run_recbole("LLMESR_SASRec", "tiny", config_dict=cfg)
    assert "tiny.item_emb.npz was modified since it was built" in caplog.text
    rebuilt_tokens, rebuilt = artifacts.load_embeddings(folder / "tiny.item_emb.npz")
    assert rebuilt_tokens.tolist() == tokens.tolist() and np.allclose(rebuilt, emb, atol=1e-5)
    assert is_fresh(folder, "tiny", settings_of(artifacts.read_manifest(folder, "tiny")))


@pytest.mark.parametrize("kind", [artifacts.ITEM_EMB, artifacts.SIM_USERS])
def test_swapped_artefact_is_refused_where_it_is_loaded(kind, prepared, tmp_path):
    root = tmp_path / "dataset_atomic"
    shutil.copytree(prepared["out"], root)
    path = root / "tiny" / f"tiny.{kind}"
    blob = bytearray(path.read_bytes())
    blob[-30] ^= 1  # one bit of the zip's directory: still loads, but is not the file that was built
    path.write_bytes(bytes(blob))
    with pytest.raises(artifacts.ArtifactError, match=rf"tiny\.{kind.split('.')[0]}\.npz is not the file its "
                                                     r"manifest .*tiny\.llmesr\.json describes"):
        build("LLMESR_SASRec", {**FAST, "data_path": str(root)})


def test_check_stops_at_the_first_bad_line_and_names_it(tmp_path):
    from recbole_llmesr.prep.readers import check_atomic_file

    path = tmp_path / "x.inter"
    path.write_text(f"{HEADER}\nu1\ti1\t1\nu1\ti2\tlater\nu1\t\t3\n")
    with pytest.raises(DataFormatError) as err:
        check_atomic_file(path, id_fields=("user_id", "item_id"), time_field="timestamp")
    assert (err.value.path, err.value.line) == (str(path), 3)


def test_config_error_is_a_value_error_and_a_package_error():
    from recbole_llmesr.errors import LLMESRError

    with pytest.raises(ConfigError) as err:
        LLMESRConfig("SASRec", "ml-100k", config_dict={"train_batch_size": 0})
    assert isinstance(err.value, ValueError) and isinstance(err.value, LLMESRError)
