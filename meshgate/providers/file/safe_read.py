"""Read a file only if it is a regular file of bounded size, without ever blocking on it.

A path in a config file can name anything: a directory, ``/dev/zero`` (endless), a FIFO (blocks
until a writer comes), a socket. Reading those with ``open().read()`` raises a traceback, fills
memory, or hangs the process. `read_regular_file` checks what it opened before reading.
"""

from __future__ import annotations

import errno
import os
import stat

from meshgate.errors import FileReadError

__all__ = ["DEFAULT_MAX_FILE_BYTES", "FileReadError", "clip_value", "read_regular_file"]

DEFAULT_MAX_FILE_BYTES = 16 * 2**20

_KINDS = (
    (stat.S_ISDIR, "is a directory"),
    (stat.S_ISFIFO, "is not a regular file (FIFO)"),
    (stat.S_ISSOCK, "is not a regular file (socket)"),
    (stat.S_ISCHR, "is not a regular file (character device)"),
    (stat.S_ISBLK, "is not a regular file (block device)"),
)


def _size_words(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


def _not_regular(mode: int) -> str:
    for test, reason in _KINDS:
        if test(mode):
            return reason
    return "is not a regular file"


def read_regular_file(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """
    The content of `path`, which must be a regular file (a symlink to one is fine) of at most
    `max_bytes` bytes. Raises `FileReadError` otherwise, and for any OS error (its reason is
    the OS's words, e.g. "No such file or directory"). Never blocks on a FIFO or device.
    """
    too_large = f"is larger than {_size_words(max_bytes)}"
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket (or a device without driver) cannot be opened
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = None
            if mode is not None and not stat.S_ISREG(mode):
                raise FileReadError(path, _not_regular(mode)) from None
        raise FileReadError(path, exc.strerror or str(exc)) from None
    try:
        # fstat, not stat: checks the file we actually opened, even if the path was swapped.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileReadError(path, _not_regular(st.st_mode))
        if st.st_size > max_bytes:
            raise FileReadError(path, too_large)
        # Read one byte past the cap: a file growing while read (or a size-0 /proc file) is
        # still caught, and never more than the cap is held in memory.
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise FileReadError(path, too_large)
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(path, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def clip_value(text: str, limit: int = 80, *, quote: bool = False) -> str:
    """`text` cut to `limit` characters for an error message, saying how long it was; with
    `quote`, in Python quotes (``'abc'``)."""
    if len(text) <= limit:
        return repr(text) if quote else text
    head = repr(text[:limit]) if quote else text[:limit]
    return f"{head}… ({len(text)} characters)"
