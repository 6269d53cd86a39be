"""Reading a file an operator controls (policies, certificates) without letting what is put in
its place harm the server: a FIFO must not block the open, a device must not flood memory."""

from __future__ import annotations

import os
import stat


class NotRegularFile(Exception):
    """What the path names is not a regular file (a FIFO, a device, a socket, a folder)."""


def read_regular(
    path: str, max_bytes: int, *, follow_links: bool = True
) -> tuple[os.stat_result, bytes]:
    """The file's fstat and at most `max_bytes + 1` of its bytes (one more than allowed tells the
    caller it is too large, whatever it grew to since a stat). Opened without blocking and
    checked with fstat on the open file, so what is read is what was checked. Raises
    NotRegularFile, or OSError."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    handle = os.open(path, flags)
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path)
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(handle, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(handle)
    return info, b"".join(chunks)


class FileRefused(Exception):
    """Why a small file an operator names (a key, a certificate, a fixture, a bundle) cannot be
    used: one line that names it."""


def read_small_file(path: str, max_bytes: int) -> bytes:
    """All of a regular file of at most `max_bytes`, read as read_regular does (a FIFO cannot
    block, a device cannot flood), or FileRefused."""
    try:
        _, data = read_regular(path, max_bytes)
    except NotRegularFile:
        raise FileRefused(f"{path}: not a regular file") from None
    except OSError as exc:
        raise FileRefused(f"{path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FileRefused(f"{path}: larger than {max_bytes} bytes")
    return data
