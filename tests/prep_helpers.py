"""Helpers shared by the preparation tests (no ``test_`` prefix: pytest does not collect it)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from recbole_llmesr.prep.embedders import identity_slug
from recbole_llmesr.prep.pipeline import prepare

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ST_IDENTITY = {"kind": "sentence-transformers", "model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384,
               "normalized": True}


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(*roots: Path) -> Dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def chunks(cache_root: Path, identity=ST_IDENTITY):
    return sorted((Path(cache_root) / identity_slug(identity)).glob("chunk-*.npz"))


def chunk_sizes(paths):
    out = []
    for p in paths:
        with np.load(p) as z:
            out.append(len(z["keys"]))
    return out


def settings_of(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("embedder", "template_hash", "max_chars", "user_max_chars", "holdout",
                                     "top_k", "data_hash")}


def run_tiny(raw, out, cache, **kw):
    return prepare("tiny", inputs={"inter": str(raw)}, out_root=str(out), cache_dir=str(cache),
                   show_progress=False, **kw)


def run_prepare(inter: Path, outputs: Dict[str, Path], **kw) -> dict:
    """Prepare the ``outputs`` fixture's dataset again from ``inter``."""
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
    from recbole_llmesr.cli.prepare import main

    assert main(["--dataset", "tiny", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmesr-prepare: error: "), err
    return err[0]


def run_recbole_cli_error(capsys, *args: str) -> str:
    """Run ``run_recbole``; it must exit 2 with a one-line error (no traceback), which is returned."""
    from recbole_llmesr.cli.run_recbole import main

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
