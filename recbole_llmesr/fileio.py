"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file."""
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[IO], None], text: bool = False) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Renames within one folder are atomic on POSIX, so concurrent writers of the same file leave one
    complete version; an interrupted writer leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


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
