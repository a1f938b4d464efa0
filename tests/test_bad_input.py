"""Issue 7, part 1: the bad-input matrix.

One test per kind of bad input, each through a public entry point (``prepare``, the ``llmesr-prepare`` and
``run_recbole`` commands' ``main``, ``run_recbole``, or the dataset loader that ``run_recbole`` uses), each
asserting an error that names the file and line, the item or the setting at fault, and, where something
was computed before, that it is still there: existing atomic files, artefacts, manifest and embedding cache
are byte for byte unchanged.

Policies where the input is not wrong but incomplete (asserted below):

* items with no text (no row in ``.item``, or only empty / whitespace fields) are embedded like any other
  item with every text field rendered as "unknown" (the paper's missing-field handling), and a warning
  names how many and which; the written ``.item`` holds ``[UNK]`` for them;
* a text longer than ``text_max_chars`` (1 MB here) is cut to ``text_max_chars`` characters (user texts to
  their last ``user_text_max_chars``), never sent whole;
* an unreadable embedding-cache chunk is moved aside with a warning naming it, and only its texts are
  embedded again.

Many cases are also covered closer to the code in test_readers / test_preprocess / test_embedders /
test_models / test_runner; this file is the one list of them all.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import math
import shutil
import socket
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FAST, build, write_tiny_dataset  # noqa: E402
from openai_stub_server import StubEmbeddingServer  # noqa: E402

from recbole_llmesr import artifacts  # noqa: E402
from recbole_llmesr.artifacts import ArtifactError  # noqa: E402
from recbole_llmesr.embedders import (  # noqa: E402
    EmbeddingAPIError,
    EmbeddingCache,
    EmbeddingConfigError,
    build_embedder,
    embed_texts,
    identity_slug,
)
from recbole_llmesr.model.dual_view import ModelConfigError, ModelConfigTypeError  # noqa: E402
from recbole_llmesr.preprocess import prepare  # noqa: E402
from recbole_llmesr.readers import DataFormatError, EmptyDatasetError  # noqa: E402
from recbole_llmesr.registry import UnknownModelError  # noqa: E402

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ST_IDENTITY = {"kind": "sentence-transformers", "model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384,
               "normalized": True}
FAKE_KEY = "sk-test-FAKE-bad-input-0123456789"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Dict[str, Path]:
    """A dataset prepared once with the real offline model: raw input, output root and embedding cache."""
    base = tmp_path_factory.mktemp("prepared")
    raw = write_tiny_dataset(base / "raw", "tiny", n_users=30, n_items=25, seed=3)
    prepare("tiny", inputs={"inter": str(raw / "tiny.inter")}, out_root=str(base / "out"),
            cache_dir=str(base / "cache"), top_k=10, show_progress=False)
    return {"raw": raw, "out": base / "out", "cache": base / "cache"}


@pytest.fixture
def outputs(prepared, tmp_path) -> Dict[str, Path]:
    """This test's own copy of the prepared outputs and cache, and of the raw input to spoil."""
    paths = {k: tmp_path / f"copy-{k}" for k in prepared}
    for k, src in prepared.items():
        shutil.copytree(src, paths[k])
    return paths


def snapshot(*roots: Path) -> Dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def run_prepare(inter: Path, outputs: Dict[str, Path], **kw) -> dict:
    return prepare("tiny", inputs={"inter": str(inter)}, out_root=str(outputs["out"]), cache_dir=str(outputs["cache"]),
                   top_k=10, show_progress=False, **kw)


def assert_prepare_fails(inter: Path, outputs: Dict[str, Path], error: type, match: str, **kw) -> None:
    """The error, and nothing already built (atomic files, artefacts, manifest, cache) touched."""
    before = snapshot(outputs["out"], outputs["cache"])
    with pytest.raises(error, match=match):
        run_prepare(inter, outputs, **kw)
    assert snapshot(outputs["out"], outputs["cache"]) == before


def prepare_cli_error(capsys, *args: str) -> str:
    """Run ``llmesr-prepare``; it must exit 2 with exactly one error line, which is returned."""
    from recbole_llmesr.prepare_cli import main

    assert main(["--dataset", "tiny", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmesr-prepare: error: "), err
    return err[0]


def run_recbole_cli_error(capsys, *args: str) -> str:
    """Run ``run_recbole``; it must exit 2 with a one-line error (no traceback), which is returned."""
    from recbole_llmesr.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("run_recbole: error: ")]
    return line


def spoil(outputs: Dict[str, Path], text: str) -> Path:
    """Replace the raw .inter with ``text``; returns its path."""
    path = outputs["raw"] / "tiny.inter"
    path.write_text(text, encoding="utf-8")
    return path


def good_rows(n: int = 6) -> list:
    return [f"u{u}\ti{(u + k) % 5}\t{k}" for u in range(3) for k in range(n)]


# ------------------------------------------------------------------------------------------ input files
def test_inter_wrong_column_count(outputs, capsys):
    inter = spoil(outputs, "\n".join([HEADER, "u1\ti1\t1", "u1\ti2"]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 3: expected 3 tab-separated fields, found 2")
    line = prepare_cli_error(capsys, "--inter", str(inter), "--out", str(outputs["out"]))
    assert line.endswith(f"{inter}, line 3: expected 3 tab-separated fields, found 2")


def test_inter_header_without_types(outputs):
    inter = spoil(outputs, "\n".join(["user_id\titem_id:token\ttimestamp:float", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 1: header field 'user_id' is not 'name:type'")


def test_inter_header_without_item_column(outputs):
    inter = spoil(outputs, "\n".join(["user_id:token\titem:token\ttimestamp:float", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError, r"tiny\.inter, line 1: no 'item_id' column in header")


@pytest.mark.parametrize("file", ["inter", "item"])
def test_non_utf8_bytes(file, outputs):
    path = outputs["raw"] / f"tiny.{file}"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3][:4] + b"\xff\xfe caf\xe9" + lines[3][4:]  # Latin-1 bytes in a UTF-8 file
    path.write_bytes(b"\n".join(lines))
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         rf"tiny\.{file}, line 4: not valid UTF-8")


@pytest.mark.parametrize("file", ["inter", "item"])
def test_empty_file(file, outputs):
    (outputs["raw"] / f"tiny.{file}").write_bytes(b"")
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         rf"tiny\.{file}, line 1: empty file \(no header\)")


def test_inter_with_header_only(outputs):
    inter = spoil(outputs, HEADER + "\n")
    assert_prepare_fails(inter, outputs, EmptyDatasetError, r"tiny\.inter: no interactions were read")


def test_bad_timestamp(outputs):
    inter = spoil(outputs, "\n".join([HEADER, "u1\ti1\tyesterday", *good_rows()]) + "\n")
    assert_prepare_fails(inter, outputs, DataFormatError,
                         r"tiny\.inter, line 2: timestamp is neither a number nor a date: 'yesterday'")


def test_truncated_gzip(outputs):
    data = gzip.compress("\n".join([HEADER, *good_rows(400)]).encode())
    (outputs["raw"] / "tiny.inter").unlink()
    gz = outputs["raw"] / "tiny.inter.gz"
    gz.write_bytes(data[: len(data) // 2])
    assert_prepare_fails(gz, outputs, DataFormatError, r"tiny\.inter\.gz, line \d+: cannot read compressed data")


def test_duplicate_item_ids_in_item_file(outputs, capsys):
    item = outputs["raw"] / "tiny.item"
    lines = item.read_text().splitlines()
    lines.insert(5, "i3\ta second title for item 3")  # line 6; i3 is on line 5
    item.write_text("\n".join(lines) + "\n")
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, DataFormatError,
                         r"tiny\.item, line 6: duplicate item_id 'i3' \(first on line 5\)")
    line = prepare_cli_error(capsys, "--inter", str(outputs["raw"]), "--out", str(outputs["out"]))
    assert "duplicate item_id 'i3'" in line


def test_empty_after_filtering(outputs, capsys):
    inter = outputs["raw"] / "tiny.inter"
    assert_prepare_fails(inter, outputs, EmptyDatasetError,
                         r"dataset 'tiny': kcore\(user_k=50, item_k=5\) removed every interaction \(before: \d+ inter",
                         filters={"mode": "kcore", "user_k": 50})
    line = prepare_cli_error(capsys, "--inter", str(inter), "--out", str(outputs["out"]), "--filter", "kcore",
                             "--user-k", "50")
    assert "removed every interaction" in line


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


# ------------------------------------------------------------------------------------------ item texts
def items_unknown(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "have no text" in r.getMessage()]
    return line


def test_items_without_text(outputs, caplog):
    # Policy: embedded, every field "unknown", with a warning naming them (here: no row in .item).
    item = outputs["raw"] / "tiny.item"
    lines = [ln for ln in item.read_text().splitlines() if not ln.startswith(("i3\t", "i17\t"))]
    item.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        m = run_prepare(item.with_suffix(".inter"), outputs)
    assert "2 of 25 items have no text" in items_unknown(caplog) and "i17, i3" in items_unknown(caplog)
    assert m["counts"]["items"] == 25  # nothing dropped (RecBole alone would drop their interactions)
    written = (outputs["out"] / "tiny" / "tiny.item").read_text().splitlines()
    assert "i3\t[UNK]" in written and "i17\t[UNK]" in written
    tokens, _ = artifacts.load_embeddings(outputs["out"] / "tiny" / "tiny.item_emb.npz", expected_dim=384)
    assert {"i3", "i17"} <= set(tokens.tolist())
    cache = EmbeddingCache(outputs["cache"], ST_IDENTITY)
    assert cache.get_many(["The item has following attributes: title is unknown."])


def test_empty_or_whitespace_titles(outputs, caplog):
    item = outputs["raw"] / "tiny.item"
    text = item.read_text().replace("i4\titem number 4\n", "i4\t\n")
    item.write_text(text.replace("i5\titem number 5\n", "i5\t   \n"))
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        run_prepare(item.with_suffix(".inter"), outputs)
    assert "2 of 25 items have no text" in items_unknown(caplog) and "i4, i5" in items_unknown(caplog)
    written = (outputs["out"] / "tiny" / "tiny.item").read_text().splitlines()
    assert "i4\t[UNK]" in written and "i5\t[UNK]" in written


def test_text_of_one_megabyte_is_truncated(outputs, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    item = outputs["raw"] / "tiny.item"
    huge = "word " * 200_000  # 1 MB
    item.write_text(item.read_text().replace("i7\titem number 7\n", f"i7\t{huge}\n"))
    with StubEmbeddingServer() as srv:  # shows exactly what was sent
        m = run_prepare(item.with_suffix(".inter"), outputs, embedder="openai", base_url=srv.base_url, dim=16)
        sent = srv.inputs_sent()
    assert m["counts"]["items"] == 25 and (m["max_chars"], m["user_max_chars"]) == (2048, 8000)
    big = [t for t in sent if "word word" in t]
    item_text = [t for t in big if t.startswith("The item has following attributes: title is word")]
    assert len(item_text) == 1 and len(item_text[0]) == 2048
    assert max(map(len, sent)) <= 8000 + 100  # user texts: the last 8000 characters, plus prefix and suffix


# ------------------------------------------------------------------------------------------ LLM artefacts
def artefact_error(tiny, match: str, error: type = ArtifactError) -> None:
    """Loading the dataset fails with ``match``, and leaves every artefact as it was."""
    before = snapshot(tiny["folder"])
    with pytest.raises(error, match=match):
        build("LLMESR_SASRec", tiny["config"])
    assert snapshot(tiny["folder"]) == before


def item_emb_path(tiny) -> Path:
    return artifacts.artifact_path(tiny["folder"], "tiny", artifacts.ITEM_EMB)


@pytest.mark.parametrize("what", ["rows", "tokens"])
def test_embedding_rows_disagree(what, tiny):
    items, emb = tiny["items"], tiny["item_emb"]
    if what == "rows":  # 30 tokens, 29 vectors: written by something other than save_embeddings
        np.savez(item_emb_path(tiny), tokens=np.asarray(items), embeddings=emb[:-1])
        artefact_error(tiny, r"tiny\.item_emb\.npz: 30 tokens but embeddings of shape \(29, 16\)")
    else:  # fewer rows than the manifest's 30 items: the missing one is named
        artifacts.save_embeddings(item_emb_path(tiny), items[1:], emb[1:])
        artifacts.write_manifest(tiny["folder"], "tiny", {"dim": 16, "counts": {"items": 30}})
        artefact_error(tiny, rf"tiny\.item_emb\.npz: 1 of 30 items in the dataset have no vector, e\.g\. {items[0]}")


def test_embedding_dimension_disagrees_with_manifest(tiny):
    artifacts.write_manifest(tiny["folder"], "tiny", {"dim": 17})
    artefact_error(tiny, r"tiny\.item_emb\.npz: embeddings have dimension 16, the manifest says 17")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_vectors(bad, tiny, capsys):
    emb = tiny["item_emb"].copy()
    emb[3, 2] = bad
    artifacts.save_embeddings(item_emb_path(tiny), tiny["items"], emb)
    artefact_error(tiny, rf"tiny\.item_emb\.npz: 1 rows hold NaN or inf, e\.g\. for tokens {tiny['items'][3]}")
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--dataset=tiny",
                                 f"--data_path={tiny['config']['data_path']}")
    assert "NaN or inf" in line and tiny["items"][3] in line


@pytest.mark.parametrize("index", [40, -2])
def test_similar_user_index_out_of_range(index, tiny):
    path = artifacts.artifact_path(tiny["folder"], "tiny", artifacts.SIM_USERS)
    neighbors = tiny["neighbors"].copy()
    neighbors[5, 0] = index
    artifacts.save_neighbors(path, tiny["users"], neighbors)
    artefact_error(tiny, r"tiny\.sim_users\.npz: neighbour indices must lie in \[-1, 39\], found \[")


def test_users_without_similar_user_lists(tiny):
    # Users with no user embedding have no similar-user list either: the teacher would have no target.
    path = artifacts.artifact_path(tiny["folder"], "tiny", artifacts.SIM_USERS)
    keep = [i for i, u in enumerate(tiny["users"]) if u not in ("u7", "u8", "u9")]
    remap = -np.ones(len(tiny["users"]) + 1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    neighbors = remap[tiny["neighbors"][keep]]
    artifacts.save_neighbors(path, [tiny["users"][i] for i in keep], neighbors)
    artefact_error(tiny, r"tiny\.sim_users\.npz: 3 users have no similar-user list \(no user embedding\), "
                         r"e\.g\. u7, u8, u9")


@pytest.mark.parametrize("kind,what", [(artifacts.ITEM_EMB, "embedding"), (artifacts.SIM_USERS, "similar-user")])
def test_truncated_artefact_file(kind, what, tiny):
    path = artifacts.artifact_path(tiny["folder"], "tiny", kind)
    path.write_bytes(path.read_bytes()[:300])
    artefact_error(tiny, rf"tiny\.{kind.replace('.', '[.]')} is not a valid {what} file")


def test_corrupt_manifest(tiny):
    (tiny["folder"] / "tiny.llmesr.json").write_text('{"dim": 16, ')
    artefact_error(tiny, r"tiny\.llmesr\.json is not valid JSON")


def test_corrupt_cache_chunk_is_set_aside_and_nothing_else_is_lost(outputs, caplog):
    chunks = sorted((outputs["cache"] / identity_slug(ST_IDENTITY)).glob("chunk-*.npz"))
    assert len(chunks) == 2  # item texts, then user texts
    folder = outputs["out"] / "tiny"
    vectors = {k: artifacts.load_embeddings(artifacts.artifact_path(folder, "tiny", k))[1]
               for k in (artifacts.ITEM_EMB, artifacts.USER_EMB)}
    kept = chunks[0].read_bytes()
    blob = chunks[1].read_bytes()
    chunks[1].write_bytes(blob[: len(blob) // 2])  # as a crash in the middle of a copy would leave it
    with caplog.at_level(logging.WARNING, logger="recbole_llmesr"):
        run_prepare(outputs["raw"] / "tiny.inter", outputs, force=True)
    assert chunks[1].name in caplog.text and "re-embedded" in caplog.text
    assert chunks[1].with_name(chunks[1].name + ".corrupt").is_file()
    assert chunks[0].read_bytes() == kept  # the item texts were not embedded again
    new = sorted(set((outputs["cache"] / identity_slug(ST_IDENTITY)).glob("chunk-*.npz")) - set(chunks))
    assert len(new) == 1 and len(np.load(new[0])["keys"]) == 30  # just the 30 user texts
    for k, v in vectors.items():
        rebuilt = artifacts.load_embeddings(artifacts.artifact_path(folder, "tiny", k))[1]
        np.testing.assert_allclose(rebuilt, v, atol=1e-5)


# ------------------------------------------------------------------------------------------ configuration
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


# ------------------------------------------------------------------------------------------ embedders
def test_missing_openai_api_key(outputs, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert_prepare_fails(outputs["raw"] / "tiny.inter", outputs, EmbeddingConfigError,
                         "OPENAI_API_KEY is not set", embedder="openai")
    line = prepare_cli_error(capsys, "--inter", str(outputs["raw"]), "--out", str(outputs["out"]), "--embedder",
                             "openai")
    assert "OPENAI_API_KEY is not set" in line


def test_unreachable_base_url_keeps_what_was_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    texts = [f"item {i}" for i in range(6)]
    with StubEmbeddingServer() as srv:
        url, port = srv.base_url, srv.port
        emb = build_embedder("openai", base_url=url, dim=16, batch_size=3, max_retries=1, backoff_base=0.01,
                             timeout=2.0)
        embed_texts(emb, texts[:3], EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the server is gone: nothing listens there now
    with pytest.raises(EmbeddingAPIError, match=rf"could not reach {url}.*3 of 6 unique texts are cached") as err:
        embed_texts(emb, texts, EmbeddingCache(tmp_path, emb.identity()), show_progress=False)
    assert err.value.cached_texts == 3 and len(EmbeddingCache(tmp_path, emb.identity())) == 3
