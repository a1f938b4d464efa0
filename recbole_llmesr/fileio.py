"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

A write that fails because the disk is full or the folder cannot be written (read-only file system,
permissions, quota) raises :class:`WriteError`, which names the file and what to do; the previous file
is left as it was and no temporary file stays behind.
"""
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Dict, Iterator, List, Optional, Tuple, Union

from recbole_llmesr.errors import LLMESRError

#: errno values that mean "this folder or disk cannot take the file", not a bug.
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


class WriteError(LLMESRError, OSError):
    """A file could not be written: disk full, read-only file system or no permission."""


def disk_error(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` with a :data:`DISK_ERRNOS` errno in ``err`` or what it was raised from, else None.

    A failed write inside a library (``zipfile`` under ``np.savez``) is often reported as a follow-up error
    (``ValueError: seek of closed file``); the disk error is then its ``__context__``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def write_error(path: Union[str, Path], err: OSError, hint: str = "") -> WriteError:
    """A :class:`WriteError` for ``path`` from the disk error ``err``, with what to do about it."""
    reason = DISK_ERRNOS.get(err.errno, err.strerror or str(err))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space on the disk holding {Path(path).parent}"
    else:
        fix = f"make {Path(path).parent} writable"
    out = WriteError(f"cannot write {path}: {reason}; {fix}{' ' + hint if hint else ''}. Nothing was "
                     f"half-written: the previous file, if any, is unchanged")
    out.errno, out.path = err.errno, str(path)  # errno without strerror: str() stays the message above
    return out


class _Guarded:
    """The file handed to a writer: after a failed write every further call is a quiet no-op.

    A library that fails mid-file (``zipfile`` under ``np.savez``) tries to finish it again when it is
    garbage-collected, after the file was closed, and prints ``Exception ignored ... seek of closed file``
    on top of the real error. The temporary file is discarded anyway."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self._failed = False

    def _call(self, name: str, *args):
        if self._failed or self._f.closed:
            return 0
        try:
            return getattr(self._f, name)(*args)
        except OSError:
            self._failed = True
            raise

    def write(self, data) -> int:
        return self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    def seek(self, *args) -> int:
        return self._call("seek", *args)

    def tell(self) -> int:
        return self._call("tell")

    def __getattr__(self, name: str):
        return getattr(self._f, name)


class StagedFiles:
    """Several files written to temporary names beside their targets and renamed into place together,
    only when every one of them was written (:func:`staged_files`)."""

    def __init__(self) -> None:
        self._staged: List[Tuple[str, Path]] = []

    def write(self, path: Union[str, Path], write: Callable[[IO], None], text: bool = False) -> None:
        """Call ``write`` on a temporary file beside ``path`` and fsync it; renamed at commit."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as err:
            raise _translated(path, err) from err
        self._staged.append((tmp, path))
        try:
            with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
                write(_Guarded(f))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        except BaseException as err:
            found = disk_error(err)
            if found is not None:
                raise write_error(path, found) from err
            raise

    def written(self, path: Union[str, Path]) -> Path:
        """Where the staged content of ``path`` is until commit (``path`` itself if it is not staged)."""
        for tmp, target in self._staged:
            if target == Path(path):
                return Path(tmp)
        return Path(path)

    def commit(self) -> None:
        folders: Dict[Path, None] = {}
        while self._staged:
            tmp, path = self._staged[0]
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise _translated(path, err) from err
            self._staged.pop(0)
            folders[path.parent] = None
        for folder in folders:
            _fsync_dir(folder)

    def discard(self) -> None:
        for tmp, _ in self._staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._staged.clear()


def _translated(path: Path, err: OSError) -> OSError:
    return write_error(path, err) if err.errno in DISK_ERRNOS else err


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """``with staged_files() as stage: stage.write(a, ...); stage.write(b, ...)``: when the block ends
    normally every file is renamed into place; if any write (or the block) fails, none is, the temporary
    files are removed and the previous files stay as they were. Renames within one folder are atomic on
    POSIX, so concurrent writers of one file leave one complete version."""
    stage = StagedFiles()
    try:
        yield stage
        stage.commit()
    finally:
        stage.discard()


def atomic_write(path: Union[str, Path], write: Callable[[IO], None], text: bool = False) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    An interrupted or failed writer leaves the previous file untouched; a full or read-only disk is a
    :class:`WriteError` naming ``path``.
    """
    with staged_files() as stage:
        stage.write(path, write, text=text)


def stale_temporaries(path: Union[str, Path]) -> Iterator[Path]:
    """Temporary files of :func:`atomic_write` for ``path`` left by a process that was killed mid-write."""
    path = Path(path)
    return path.parent.glob(f".{path.name}.*.tmp")


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
