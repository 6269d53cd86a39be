"""The bundle's container: a gzip-compressed tar, written the same way every time (so the same
files give the same bytes), and read back within bounds (so no archive can take memory, escape
a path or smuggle in anything but regular files)."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Sequence

from attrgate.bundle import BundleError

MAX_ENTRIES = 10_000
MAX_NAME = 1024
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a folder",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def write_archive(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """A tar.gz of `entries` in the order given, with nothing of the machine or the moment in
    it: fixed mtime, owner and mode in the tar; no mtime and no file name in the gzip header."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as out:
        out.write(raw.getvalue())
    return packed.getvalue()


def read_archive(data: bytes, limit: int) -> list[tuple[str, bytes]]:
    """The regular files of a tar.gz, by name, in archive order; BundleError when it is not one
    complete gzip stream, decompresses to more than `limit` bytes, or holds anything but
    regular files at safe relative paths, each once."""
    tar_bytes = gunzip_bounded(data, limit)
    entries: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                if len(entries) >= MAX_ENTRIES:
                    raise BundleError(f"more than {MAX_ENTRIES} entries in the archive")
                name = _checked_name(member.name)
                if member.type not in _REGULAR:
                    kind = _KINDS.get(member.type, "not a regular file")
                    raise BundleError(f"entry {name!r} is {kind}: only regular files are allowed")
                if name in seen:
                    raise BundleError(f"entry {name!r} appears twice in the archive")
                seen.add(name)
                handle = tar.extractfile(member)
                body = handle.read() if handle is not None else b""
                if len(body) != member.size:
                    raise BundleError(f"entry {name!r} is truncated")
                entries.append((name, body))
    except tarfile.TarError as exc:
        raise BundleError(f"not a readable tar archive: {exc}") from None
    return entries


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """One whole gzip stream, decompressed piece by piece so that no more than `limit + 1`
    bytes are ever held (a gzip bomb stops at the limit, not at the end of memory)."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
    out = bytearray()
    pending = data
    try:
        while pending and not inflate.eof:
            out += inflate.decompress(pending, limit + 1 - len(out))  # max_length >= 1
            if len(out) > limit:
                raise BundleError(f"decompresses to more than {limit} bytes")
            pending = inflate.unconsumed_tail
    except zlib.error as exc:
        raise BundleError(f"not a gzip archive, or a corrupted one: {exc}") from None
    if not inflate.eof:
        raise BundleError("truncated: the gzip stream ends early")
    if inflate.unused_data:
        raise BundleError("unexpected bytes after the end of the gzip stream")
    return bytes(out)


def _checked_name(name: str) -> str:
    """A relative path inside the bundle: no root, no `..`, nothing a file system would read
    as anything else."""
    if not name or len(name) > MAX_NAME or "\0" in name or "\\" in name:
        raise BundleError(f"entry {name[:MAX_NAME]!r} has an unsafe name")
    if name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise BundleError(f"entry {name!r} escapes the bundle (absolute, or . or .. in it)")
    return name
