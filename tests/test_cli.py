"""Tests of the command-line tools (recbole_llmesr.cli): ``llmesr-prepare`` builds, reports and fails in one
line; and neither it nor ``run_recbole`` writes a secret anywhere.

Secrets: a recognisable fake API key (and, separately, a base URL carrying ``user:password``) goes through a
full ``llmesr-prepare`` run and a ``run_recbole`` training run whose automatic preparation embeds through the
local OpenAI stub (tests/openai_stub_server.py). Then every file either run wrote (logs, tensorboard
events, checkpoints raw and as loaded, manifests, atomic files, artefacts, the embedding cache) and
everything printed is searched for the secret.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List

import pytest
import torch
import yaml
from conftest import FAST, write_tiny_dataset
from openai_stub_server import StubEmbeddingServer
from prep_helpers import settings_of

from recbole_llmesr.cli.common import run_tool
from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.freshness import is_fresh

FAKE_KEY = "sk-test-LEAKCANARY-7f3a9c2e1b-DO-NOT-WRITE"
URL_USER, URL_PASSWORD = "alice", "LEAKCANARY-url-pw-41d7"


# ------------------------------------------------------------------------------------- shared catch


def test_every_package_error_is_one_line_and_status_2(capsys):
    def fail(error: BaseException):
        def body() -> int:
            raise error
        return body

    assert run_tool("some-tool", fail(LLMESRError("bad input\n  on two lines"))) == 2
    assert capsys.readouterr().err == "some-tool: error: bad input on two lines\n"
    assert run_tool("some-tool", fail(RuntimeError("bug"))) == 1  # anything else is a bug: its traceback is shown
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: bug" in err and "please report" in err.lower()


# ----------------------------------------------------------------------------------- llmesr-prepare


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "recbole_llmesr.cli.prepare", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_builds_and_reports(raw, tmp_path, shared_cache):
    out = tmp_path / "out"
    r = cli("--dataset", "tiny", "--source", "atomic", "--inter", str(raw), "--out", str(out),
            "--cache-dir", str(shared_cache), "--top-k", "7", "--template", "Item called {title}.", "--quiet",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "30 users, 25 items" in r.stdout and "384-d" in r.stdout and str(out / "tiny") in r.stdout
    m = artifacts.read_manifest(out / "tiny", "tiny")
    assert m["top_k"] == 7 and m["template"] == "Item called {title}."
    assert is_fresh(out / "tiny", "tiny", settings_of(m))


def test_cli_bad_input_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n")
    r = cli("--dataset", "bad", "--source", "atomic", "--inter", str(bad), "--out", str(tmp_path / "out"),
            "--quiet", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"llmesr-prepare: error: {bad}, line 3: expected 3 tab-separated "
                                             f"fields, found 2"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing_file", "missing_args", "bad_template", "bad_columns", "empty"])
def test_cli_errors_are_one_line(case, tmp_path, capsys, monkeypatch):
    from recbole_llmesr.cli.prepare import main

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # what --quiet sets; restored afterwards

    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    csv = tmp_path / "x.csv"
    csv.write_text("u,i,t\n1,2,3\n")
    args, expected = {
        "missing_file": (["--inter", str(tmp_path / "absent.inter")], f"{tmp_path / 'absent.inter'}: file not found"),
        "missing_args": (["--source", "amazon2014", "--reviews", str(inter)], "needs --reviews and --meta"),
        "bad_template": (["--inter", str(inter), "--template", "nonsense"], "unknown item text template 'nonsense'"),
        "bad_columns": (["--source", "csv", "--inter", str(csv), "--columns", "user_id=u,item_id=i,timestamp=ts"],
                        f"{csv}, line 1: column 'ts' (for timestamp) is not in the header"),
        "empty": (["--inter", str(inter), "--filter", "kcore"], "removed every interaction"),
    }[case]
    assert main(["--dataset", "x", "--out", str(tmp_path / "out"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmesr-prepare: error: ") and expected in err[0], err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ secrets


def written_files(*roots: Path) -> List[Path]:
    return [p for root in roots for p in Path(root).rglob("*") if p.is_file()]


def assert_nowhere(secrets: Iterable[str], files: List[Path], *texts: str) -> None:
    secrets = [s for s in secrets if s]
    for path in files:
        blob = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in blob, f"{secret!r} in {path}"
        if path.suffix in (".pth", ".pt"):
            # Tensors are stored apart from the pickled structure; render what loading yields as well.
            rendered = str(torch.load(path, map_location="cpu", weights_only=True))
            for secret in secrets:
                assert secret not in rendered, f"{secret!r} in the loaded {path}"
    for text in texts:
        for secret in secrets:
            assert secret not in text


def prepare_then_train(tmp_path: Path, kind: str, model: str, base_url: str, dim: int) -> str:
    """``llmesr-prepare`` on one dataset, then the ``run_recbole`` command on another whose artefacts its
    automatic preparation must build; returns what the command printed.

    Training runs as a subprocess because under pytest RecBole's log file stays empty (its
    ``logging.basicConfig`` is a no-op while pytest's handlers sit on the root logger). Its settings come
    from a YAML file, as a user would keep a URL out of the shell history (RecBole logs ``sys.argv``).
    The openai-compatible kind is not told ``dim``: it probes the server (a logged request of its own)."""
    from recbole_llmesr.cli.prepare import main as prepare_main

    raw = write_tiny_dataset(tmp_path / "raw", "tiny", n_users=30, n_items=25, seed=3) / "tiny.inter"
    code = prepare_main(["--dataset", "tiny", "--inter", str(raw), "--out", str(tmp_path / "prepared"),
                         "--embedder", kind, "--model", model, "--base-url", base_url,
                         *(["--dim", str(dim)] if kind == "openai" else []),
                         "--cache-dir", str(tmp_path / "cache-prepare"), "--top-k", "10"])
    assert code == 0
    assert artifacts.read_manifest(tmp_path / "prepared" / "tiny", "tiny")["dim"] == dim

    root = tmp_path / "dataset_atomic"
    write_tiny_dataset(root, "tiny")
    cfg = {**FAST, "epochs": 1, "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"),
           "embedder": kind, "embedder_model": model, "embedder_base_url": base_url,
           "embedder_dim": dim if kind == "openai" else None,
           "embedding_cache_dir": str(tmp_path / "cache-train"), "sim_top_k": 10}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "recbole_llmesr.cli.run_recbole", "--model=LLMESR_SASRec",
                           "--dataset=tiny",
                           f"--config_files={tmp_path / 'train.yaml'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert artifacts.read_manifest(root / "tiny", "tiny")["dim"] == dim  # built by the automatic preparation
    return proc.stdout + proc.stderr


def test_api_key_never_written(tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # the openai and httpx clients' debug output too
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with StubEmbeddingServer(expected_key=FAKE_KEY) as srv:  # 401 unless the key really is sent
        printed = prepare_then_train(tmp_path, "openai", "text-embedding-3-small", srv.base_url, 16)
        requests = srv.requests
    assert "test result" in printed
    # Both runs embedded through the stub, with the key (one request per batch of <= 512 texts).
    assert len(requests) >= 2 and {r["answer"] for r in requests} == {200}
    assert {r["authorization"] for r in requests} == {f"Bearer {FAKE_KEY}"}

    files = written_files(tmp_path)
    assert {".log", ".pth", ".json", ".npz", ".inter", ".item", ".yaml"} <= {p.suffix for p in files}
    assert any("tfevents" in p.name for p in files)  # RecBole's tensorboard hparams: a config dump
    assert any(p.match("cache-*/*/chunk-*.npz") for p in files)
    (log,) = [p for p in files if p.suffix == ".log"]
    assert "embedder_base_url" in log.read_text()  # the config dump is there, and was searched
    captured = capsys.readouterr()
    assert_nowhere([FAKE_KEY, FAKE_KEY[len("sk-"):]], files, printed, captured.out, captured.err, caplog.text)


def test_credentials_in_base_url_never_written(tmp_path, monkeypatch, capsys, caplog):
    # A self-hosted server behind a basic-auth proxy: openai-compatible, no API key, user:password in the
    # URL (sent as Basic auth).
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with StubEmbeddingServer() as srv:
        url = srv.base_url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@")
        printed = prepare_then_train(tmp_path, "openai-compatible", "stub-embedder", url, srv.default_dim)
        requests, port = srv.requests, srv.port
    assert "test result" in printed
    basic = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
    assert requests and {r["authorization"] for r in requests} == {f"Basic {basic}"}

    files = [p for p in written_files(tmp_path) if p.name != "train.yaml"]  # the user's own file
    # Manifests keep a hash of the URL to notice a change of server; of the URL with a password, that
    # hash would let anyone holding the manifest test password guesses.
    for folder in (tmp_path / "prepared" / "tiny", tmp_path / "dataset_atomic" / "tiny"):
        stored = artifacts.read_manifest(folder, "tiny")["embedder_request"]["base_url_sha256"]
        assert stored and stored != hashlib.sha256(url.encode()).hexdigest()[:16]
    captured = capsys.readouterr()
    assert_nowhere([URL_PASSWORD, basic], files, printed, captured.out, captured.err, caplog.text)
    # The config dump in the training log still says which server was used, minus the credentials.
    (log,) = [p for p in files if p.suffix == ".log"]
    assert f"http://***@127.0.0.1:{port}/v1" in log.read_text()
