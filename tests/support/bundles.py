"""Policy bundles for tests: keys, policy folders, and hostile archives written with tarfile and
zlib directly (never with attrgate's own writer, which would refuse to write most of them)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attrgate.cli import main
from support.policies import svc_policy


def write_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """An Ed25519 key pair as `openssl genpkey -algorithm ed25519` writes it: (private, public)."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def policy_folder(folder: Path, allow: str = "[{attribute: given_name}]") -> Path:
    """A policy set for the caller `svc` (one file in a subfolder too, and a test suite and
    fixture beside them that a bundle must leave out)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "svc.yaml").write_text(svc_policy(allow))
    (folder / "team").mkdir(exist_ok=True)
    (folder / "team" / "other.yaml").write_text(svc_policy("[]").replace("{name: p}", "{name: q}"))
    (folder / "svc_test.yaml").write_text("not: read\n")
    (folder / "testdata").mkdir(exist_ok=True)
    (folder / "testdata" / "pool.yaml").write_text("not: read\n")
    return folder


def build(
    folder: Path,
    out: Path,
    key: Path | None = None,
    target: str = "",
    signed_at: int | None = None,
) -> bytes:
    """`attrgate bundle build` (and `sign` with `key`, for `target`, at `signed_at` or now), in
    process; the bundle's bytes."""
    assert main(["bundle", "build", str(folder), "-o", str(out)]) == 0
    if key is not None:
        sign = ["bundle", "sign", str(out), "--key", str(key), "--target", target]
        if signed_at is not None:
            sign += ["--signed-at", str(signed_at)]
        assert main(sign) == 0
    return out.read_bytes()


def entries(bundle: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        found = []
        for member in tar:
            handle = tar.extractfile(member)
            found.append((member, handle.read() if handle else b""))
        return found


def repack(items: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            copy = tarfile.TarInfo(info.name)
            copy.type, copy.linkname, copy.size = info.type, info.linkname, len(data)
            copy.mode = 0o644
            tar.addfile(copy, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def replaced(bundle: bytes, name: str, data: bytes) -> bytes:
    return repack([(m, data if m.name == name else d) for m, d in entries(bundle)])


def manifest_of(bundle: bytes) -> dict[str, object]:
    found: dict[str, object] = json.loads(
        dict((m.name, d) for m, d in entries(bundle))[".manifest.json"]
    )
    return found


def gzip_bomb(size: int) -> bytes:
    """A gzip stream of a tar whose one file holds `size` zero bytes, in about size/1000 bytes:
    the same fully flushed deflate block repeated (quick to make, whatever `size`)."""
    header = tarfile.TarInfo("svc.yaml")
    header.size = size
    head = header.tobuf(tarfile.PAX_FORMAT)
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = size // len(chunk)
    body = first + block * count + deflate.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    total = len(head) + count * len(chunk)
    trailer = crc.to_bytes(4, "little") + (total & 0xFFFFFFFF).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + trailer
