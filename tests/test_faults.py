"""Disk faults (issue 18): a full or read-only disk during ``llmesr-prepare``, ``run_recbole``, the embedding
cache and checkpoint writes. Each gives one clear line, leaves no half-written file and keeps the earlier
artefacts; the rerun after the fault is fixed finishes without paying for any embedding twice (the texts
sent to the OpenAI stub server are the bill).

The tests run as root, for whom ``chmod`` protects nothing, so the faults are injected where the operating
system reports them: ``os.fdopen``'d files that hit ENOSPC after some bytes, and ``mkstemp`` / ``os.open`` /
``os.mkdir`` refusing a folder with EROFS or EACCES.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST
from openai_stub_server import StubEmbeddingServer
from prep_helpers import prepare_cli_error, run_recbole_cli_error, run_tiny, settings_of, snapshot

from recbole_llmesr import fileio
from recbole_llmesr.fileio import WriteError, atomic_write, staged_files
from recbole_llmesr.prep.embedders import CacheWriteError
from recbole_llmesr.prep.freshness import is_fresh

FAKE_KEY = "sk-test-faults-0123456789"


class _FullFile:
    """A file on a disk with ``room`` bytes left: the write that passes it fails with ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data):
        size = memoryview(data).nbytes if not isinstance(data, str) else len(data)
        if size > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= size
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class Disk:
    """Fault injection for one test (see the module docstring)."""

    def __init__(self) -> None:
        self.patches = monkeypatch = pytest.MonkeyPatch()
        self.read_only = []
        real_mkstemp, real_open, real_mkdir = tempfile.mkstemp, os.open, os.mkdir

        def mkstemp(*args, dir=None, **kwargs):
            self._refuse(dir)
            return real_mkstemp(*args, dir=dir, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                self._refuse(os.path.dirname(os.fspath(path)))
            return real_open(path, flags, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            self._refuse(os.path.dirname(os.path.abspath(os.fspath(path))))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "mkdir", mkdir)

    def _refuse(self, folder) -> None:
        for ro, code in self.read_only:
            if folder is not None and Path(folder).resolve() == ro:
                raise OSError(code, os.strerror(code), str(folder))

    def make_read_only(self, folder: Path, code: int = errno.EROFS) -> None:
        self.read_only.append((Path(folder).resolve(), code))

    def fill_up(self, pattern: str, room: int = 100, skip: int = 0) -> None:
        """Writes of files named like ``pattern`` (after ``skip`` of them) get ``room`` bytes, then ENOSPC."""
        real_fdopen = os.fdopen
        seen = [0]

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            target = name[1:].rsplit(".", 2)[0] if name.startswith(".") and name.endswith(".tmp") else name
            if fnmatch.fnmatch(target, pattern):
                seen[0] += 1
                if seen[0] > skip:
                    return _FullFile(f, room)
            return f

        self.patches.setattr(os, "fdopen", fdopen)

    def repair(self) -> None:
        """The fault is fixed: the disk has room and every folder is writable again."""
        self.patches.undo()


@pytest.fixture
def disk():
    faults = Disk()
    yield faults
    faults.repair()


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    with StubEmbeddingServer() as srv:
        yield srv


def openai_settings(srv) -> dict:
    return {"embedder": "openai", "embedder_model": "text-embedding-3-small", "base_url": srv.base_url, "dim": 16}


def temporaries(*roots: Path) -> list:
    return [p for root in roots for p in Path(root).rglob("*.tmp")]


# ------------------------------------------------------------------------------------------ fileio


def test_full_disk_in_the_middle_of_an_npz_is_one_error_and_no_noise(tmp_path, disk, capfd):
    # np.savez's zipfile used to add "ValueError: seek of closed file" when it was collected.
    path = tmp_path / "x.npz"
    atomic_write(path, lambda f: np.savez(f, a=np.arange(3)))
    before = path.read_bytes()
    disk.fill_up("x.npz", room=1000)
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left on the device; free some space"):
        atomic_write(path, lambda f: np.savez(f, a=np.zeros(100_000)))
    import gc

    gc.collect()
    assert path.read_bytes() == before and not temporaries(tmp_path)
    assert "seek of closed file" not in capfd.readouterr().err


def test_staged_files_are_all_or_nothing(tmp_path, disk):
    for name in "abc":
        (tmp_path / name).write_text("old")
    disk.fill_up("c", room=2)
    with pytest.raises(WriteError, match="cannot write .*/c: no space left"):
        with staged_files() as stage:
            for name in "abc":
                stage.write(tmp_path / name, lambda f: f.write("new content"), text=True)
    assert [(tmp_path / n).read_text() for n in "abc"] == ["old"] * 3 and not temporaries(tmp_path)


@pytest.mark.parametrize("code,reason", [(errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_unwritable_folder(code, reason, tmp_path, disk):
    disk.make_read_only(tmp_path, code)
    with pytest.raises(WriteError, match=rf"cannot write {tmp_path}/x: {reason}; make {tmp_path} writable"):
        atomic_write(tmp_path / "x", lambda f: f.write(b"1"))


# ------------------------------------------------------------------------------------------ llmesr-prepare


def test_full_disk_while_prepare_writes_artefacts(raw, tmp_path, stub, disk, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_tiny(raw, out, cache, top_k=10, **openai_settings(stub))
    before = snapshot(out)
    stub.reset_log()
    # A new template: 25 item texts to embed and pay for; then the disk fills up at the user embeddings.
    disk.fill_up("tiny.user_emb.npz", room=500)
    line = prepare_cli_error(capsys, "--inter", str(raw), "--out", str(out), "--cache-dir", str(cache),
                             "--top-k", "10", "--template", "Item: {title}", "--embedder", "openai",
                             "--model", "text-embedding-3-small", "--base-url", stub.base_url, "--dim", "16")
    assert f"cannot write {out / 'tiny' / 'tiny.user_emb.npz'}: no space left on the device" in line
    assert snapshot(out) == before and not temporaries(out, cache)  # the previous build, whole
    paid = stub.inputs_sent()
    assert len(paid) == 25 and all(t.startswith("Item: ") for t in paid)

    disk.repair()
    stub.reset_log()
    m = run_tiny(raw, out, cache, top_k=10, template="Item: {title}", **openai_settings(stub))
    assert stub.request_count == 0  # the new item texts were cached before the fault, the user texts long ago
    assert m["template"] == "Item: {title}" and is_fresh(out / "tiny", "tiny", settings_of(m))


def test_read_only_output_folder_fails_before_anything_is_paid(raw, tmp_path, stub, disk, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_tiny(raw, out, cache, top_k=10, **openai_settings(stub))
    before = snapshot(out, cache)
    stub.reset_log()
    disk.make_read_only(out / "tiny")
    line = prepare_cli_error(capsys, "--inter", str(raw), "--out", str(out), "--cache-dir", str(cache),
                             "--top-k", "7", "--embedder", "openai", "--model", "text-embedding-3-small",
                             "--base-url", stub.base_url, "--dim", "16")
    assert f"cannot write {out / 'tiny' / '.llmesr.lock'}: read-only file system" in line
    assert "llmesr-prepare --out" in line
    assert stub.request_count == 0 and snapshot(out, cache) == before


def test_full_disk_while_caching_keeps_what_was_cached(raw, tmp_path, stub, disk):
    out, cache = tmp_path / "out", tmp_path / "cache"
    disk.fill_up("chunk-*.npz", room=300, skip=1)  # item texts are cached, the user texts' chunk is not
    with pytest.raises(CacheWriteError, match=r"embedding cache: cannot write .*chunk-.*\.npz: no space left "
                                              r"on the device.*RECBOLE_LLMESR_CACHE.*0 of 30 unique texts are cached"):
        run_tiny(raw, out, cache, top_k=10, **openai_settings(stub))
    item_texts = set(stub.inputs_sent()[:25])
    assert not (out / "tiny" / "tiny.llmesr.json").exists() and not temporaries(out, cache)
    assert len(list(cache.rglob("chunk-*.npz"))) == 1

    disk.repair()
    stub.reset_log()
    m = run_tiny(raw, out, cache, top_k=10, **openai_settings(stub))
    resent = stub.inputs_sent()
    assert len(resent) == 30 and not item_texts & set(resent)  # only the user texts whose chunk was lost
    assert is_fresh(out / "tiny", "tiny", settings_of(m))


def test_read_only_cache_fails_before_any_request(raw, tmp_path, stub, disk):
    cache = tmp_path / "cache"
    cache.mkdir()
    disk.make_read_only(cache, errno.EACCES)
    with pytest.raises(CacheWriteError, match=rf"cannot write {cache}/openai__.*: permission denied; make {cache} "
                                              r"writable.*--cache-dir"):
        run_tiny(raw, tmp_path / "out", cache, top_k=10, **openai_settings(stub))
    assert stub.request_count == 0


# ------------------------------------------------------------------------------------------ run_recbole


@pytest.fixture
def prepared_copy(prepared, tmp_path):
    root = tmp_path / "dataset_atomic"
    shutil.copytree(prepared["out"], root)
    shutil.copytree(prepared["cache"], tmp_path / "cache")
    return {"root": root, "folder": root / "tiny",
            "config": {**FAST, "epochs": 1, "data_path": str(root), "embedding_cache_dir": str(tmp_path / "cache"),
                       "sim_top_k": 10, "checkpoint_dir": str(tmp_path / "saved")}}


def test_read_only_dataset_folder_with_fresh_artefacts_trains(prepared_copy, disk):
    from recbole_llmesr.quick_start import run_recbole

    before = snapshot(prepared_copy["folder"])
    disk.make_read_only(prepared_copy["folder"], errno.EACCES)
    result = run_recbole("LLMESR_SASRec", "tiny", config_dict=prepared_copy["config"])
    assert result["test_result"] and snapshot(prepared_copy["folder"]) == before


def test_read_only_dataset_folder_that_needs_a_build(prepared_copy, disk, capsys):
    disk.make_read_only(prepared_copy["folder"], errno.EACCES)
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--dataset=tiny",
                                 f"--data_path={prepared_copy['root']}", "--sim_top_k=20",
                                 f"--embedding_cache_dir={prepared_copy['config']['embedding_cache_dir']}")
    assert f"cannot write {prepared_copy['folder'] / '.llmesr.lock'}: permission denied" in line
    assert "point data_path at it" in line


def test_full_disk_while_writing_a_checkpoint(tiny, tmp_path, disk, capsys):
    from recbole_llmesr.cli.run_recbole import main
    from recbole_llmesr.checkpoints import load_checkpoint

    saved = tmp_path / "saved"
    args = ["--model=SASRec", "--dataset=tiny", f"--data_path={tiny['config']['data_path']}", "--epochs=3",
            "--show_progress=False", f"--checkpoint_dir={saved}", "--hidden_size=8", "--inner_size=16"]
    disk.fill_up("*.last.pt", room=1000)  # the per-epoch checkpoint, written as epoch 1 starts
    line = run_recbole_cli_error(capsys, *args)
    assert "cannot write " in line and ".last.pt: no space left on the device" in line
    (best,) = saved.glob("*.pth")
    assert load_checkpoint(best)["epoch"] == 0 and not temporaries(saved)  # epoch 0's best model, whole

    disk.repair()
    assert main(args) == 0
    assert {p.suffix for p in saved.iterdir()} == {".pth"}  # a finished run leaves nothing to resume


def test_checkpoints_are_plain_data(tiny, tmp_path):
    from recbole_llmesr.registry import get_trainer

    from conftest import build

    config, model, (train, valid, _) = build("SASRec", tiny["config"])
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer._save_last_checkpoint(train)
    state = torch.load(trainer.last_checkpoint_file, weights_only=True)
    assert state["kind"] == "last" and state["rng"]["numpy"]["keys"].dtype == torch.int64
    assert state["best_model_file"] == trainer.saved_model_file and "train_generator" in state


def test_write_error_message_is_the_whole_message(tmp_path, disk):
    disk.make_read_only(tmp_path)
    with pytest.raises(WriteError) as err:
        atomic_write(tmp_path / "f", lambda f: None)
    assert str(err.value).startswith(f"cannot write {tmp_path / 'f'}") and err.value.errno == errno.EROFS
    assert fileio.disk_error(ValueError("seek of closed file")) is None
