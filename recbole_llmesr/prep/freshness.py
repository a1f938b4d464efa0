"""Whether a dataset's outputs are fresh (manifest, hashes), and the lock that serialises their builds.

Fresh (:func:`stale_reason`): the manifest exists, every file it lists (atomic files and artefacts) exists
with the recorded sha256, and the embedder, template hash, ``max_chars``, ``user_max_chars``, ``holdout``,
``top_k`` and the hash of the atomic data all match the requested settings.

Concurrency: a build holds an exclusive ``fcntl.flock`` on ``<out>/<name>/.llmesr.lock`` (:func:`dataset_lock`)
and re-checks freshness once it has the lock, so concurrent runs on one dataset (several terminals, DDP
ranks) build once and the others reuse the result.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from recbole_llmesr.fileio import DISK_ERRNOS, write_error
from recbole_llmesr.prep import artifacts
from recbole_llmesr.prep.embedders import redact_url
from recbole_llmesr.prep.settings import PrepareSettings

logger = logging.getLogger(__name__)

FORMAT = 1
LOCK_NAME = ".llmesr.lock"
#: Keys of the manifest that :func:`stale_reason` compares with the requested settings.
FRESH_KEYS = ("embedder", "embedder_request", "template_hash", "max_chars", "user_max_chars", "holdout",
              "top_k", "data_hash")
ARTEFACT_KINDS = (artifacts.ITEM_EMB, artifacts.USER_EMB, artifacts.SIM_USERS)


def _hash_file_into(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    _hash_file_into(h, path)
    return h.hexdigest()


def data_hash(inter_path: Path, item_path: Optional[Path]) -> str:
    """sha256 over the .inter bytes, then the .item bytes (if any)."""
    h = hashlib.sha256()
    for tag, path in ((b"inter", inter_path), (b"item", item_path)):
        h.update(b"\0" + tag + b"\0")
        if path is not None and path.is_file():
            _hash_file_into(h, path)
    return h.hexdigest()


def canon(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, sorted keys), for comparing with a manifest."""
    return json.loads(json.dumps(value, sort_keys=True))


def embedder_request(settings: PrepareSettings) -> Dict[str, Any]:
    """What was asked for (a cheap stand-in for the identity, so a fresh dataset needs no model load).
    ``base_url`` is stored only as a hash, and without its ``user:password@``: a fast hash of a URL that
    holds a password would let anyone with the manifest test guesses of it."""
    kind, model, base_url = settings.kind, settings.embedder_model, settings.base_url
    if kind == "sentence-transformers" and model is not None and os.path.isdir(os.path.expanduser(model)):
        model = str(Path(model).expanduser().resolve())
    url_hash = None if not base_url else hashlib.sha256(redact_url(base_url).encode("utf-8")).hexdigest()[:16]
    return {"kind": kind, "model": model, "dim": settings.dim, "base_url_sha256": url_hash}


def stale_reason(data_dir: Any, name: str, settings: Mapping[str, Any]) -> Optional[str]:
    """Why the outputs in ``data_dir`` are not fresh for ``settings`` (None when they are).

    Fresh = the manifest exists and has this format, every file it lists exists with the recorded
    sha256, the three artefacts are among them, and each key of ``settings`` (see :data:`FRESH_KEYS`)
    equals the manifest's value.
    """
    data_dir = Path(data_dir)
    try:
        manifest = artifacts.read_manifest(data_dir, name)
    except (artifacts.ArtifactError, OSError) as err:
        return f"unreadable manifest ({err})"
    if manifest is None:
        return "no manifest"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'} != {FORMAT}"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest lists no files"
    for kind in ARTEFACT_KINDS:
        if f"{name}.{kind}" not in files:
            return f"manifest lacks {name}.{kind}"
    for key, value in settings.items():
        if key not in FRESH_KEYS:
            raise ValueError(f"is_fresh: unknown setting {key!r}; expected some of {FRESH_KEYS}")
        if canon(manifest.get(key)) != canon(value):
            return f"{key} changed ({manifest.get(key)!r} -> {value!r})"
    return changed_file(data_dir, files)


#: How :func:`changed_file` ends its answer for a file whose bytes are not the ones the manifest hashed.
MODIFIED = "was modified"


def changed_file(data_dir: Any, files: Mapping[str, str]) -> Optional[str]:
    """The first of ``files`` (manifest ``{file name: sha256}``) that is missing from ``data_dir`` or whose
    bytes have another sha256, as ``"<name> is missing"`` / ``"<name> was modified"``; None if all match."""
    for fname, digest in files.items():
        path = Path(data_dir) / fname
        if Path(fname).name != fname or not path.is_file():
            return f"{fname} is missing"
        if sha256_file(path) != digest:
            return f"{fname} {MODIFIED}"
    return None


def is_fresh(data_dir: Any, name: str, settings: Mapping[str, Any]) -> bool:
    """True if the artefacts in ``data_dir`` are complete, unmodified and built with ``settings``."""
    return stale_reason(data_dir, name, settings) is None


@contextlib.contextmanager
def dataset_lock(folder: Any) -> Iterator[Path]:
    """Exclusive ``flock`` on ``<folder>/.llmesr.lock`` (created if needed, never deleted: deleting a
    lock file races with processes waiting on it). Released when the block exits or the process dies."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        # Only a build takes the lock: fresh artefacts in a read-only folder are used without it.
        raise write_error(path, err, hint="(the LLM artefacts of this dataset must be built there), or build "
                                          "them elsewhere with `llmesr-prepare --out <writable folder>` and "
                                          "point data_path at it") from err
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        os.close(fd)
        logger.warning("no fcntl on this platform: concurrent prepare runs on %s are not serialised", folder)
        yield path
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is preparing %s; waiting for its lock (%s)", folder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
