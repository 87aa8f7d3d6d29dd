"""Atomic file writes: a file is either the old one or the complete new one, never half of each.

A writer that opens its destination directly truncates it first; if it then fails (an
exception while writing, a full disk, a killed process), the previous file is gone and what is
left is a fragment. :func:`atomic_write` writes to a temporary file in the destination's
folder instead, flushes it to the disk (``fsync``) and only then renames it over the
destination with ``os.replace``, which POSIX and Windows both perform atomically within one
file system. Every writer in jaxprune goes through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO


def _temporary(folder: str, name: str) -> tuple[int, str]:
    # os.open with 0o666 lets the umask set the permissions, as open(path, "wb") would do;
    # tempfile.mkstemp would leave a private 0o600 file behind the rename.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover (48 random bits)
            continue
    raise FileExistsError(f"no free temporary file name in {folder!r}")  # pragma: no cover


def _sync_folder(folder: str) -> None:
    # The rename itself lives in the folder's entries: without this fsync a power cut just
    # after the rename may bring the old file back. Not every system can open a folder.
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover (some file systems refuse fsync on folders)
        pass
    finally:
        os.close(fd)


def _keep_mode(path: str, fd: int) -> None:
    # open(path, "wb") on an existing file keeps its permissions; so does the replacement.
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if hasattr(os, "fchmod"):  # pragma: no branch (POSIX; Windows from Python 3.13)
        os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Opens a binary file that replaces ``path`` atomically when the ``with`` block succeeds.

    The block writes to a new temporary file ``.<name>.<random>.tmp`` in the folder of
    ``path``. When it ends normally the file is flushed, ``os.fsync``-ed and renamed onto
    ``path`` with ``os.replace`` (the folder is fsync-ed too, so the rename survives a power
    cut), so readers see either the previous file or the whole new one. When the block raises
    (any exception, ``KeyboardInterrupt`` included), the temporary file is deleted and ``path``
    is left as it was. A process killed outside Python's control (``SIGKILL``, power loss)
    cannot clean up: ``path`` is still intact, and a stray ``.tmp`` file may remain beside it.

    The file gets the permissions ``open(path, "wb")`` would give it: those of the file it
    replaces, or ``0o666`` less the umask for a new one (the owner is the writing user). A
    symbolic link at ``path`` is replaced by the file, not followed.

    Args:
      path: the file to create or replace. Its folder must exist.

    Returns:
      A context manager that yields the temporary file, open for writing in binary mode.

    Raises:
      OSError: if the temporary file cannot be created, written, synced or renamed (e.g. the
        folder does not exist, the disk is full, ``path`` is a folder). The temporary file is
        removed first.

    Examples:
      >>> import os, pathlib, tempfile
      >>> folder = tempfile.mkdtemp()
      >>> target = os.path.join(folder, "data.bin")
      >>> with atomic_write(target) as f:
      ...     _ = f.write(b"version 1")
      >>> try:
      ...     with atomic_write(target) as f:
      ...         _ = f.write(b"half of vers")
      ...         raise RuntimeError("the writer failed")
      ... except RuntimeError:
      ...     pass
      >>> pathlib.Path(target).read_bytes(), os.listdir(folder)
      (b'version 1', ['data.bin'])
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = _temporary(folder, name)
    try:
        _keep_mode(path, fd)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(folder)


__all__ = ["atomic_write"]
