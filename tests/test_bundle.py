"""`attrgate bundle build | sign | verify | keygen`: deterministic bundles with the folder's
revision, and every kind of tampering refused in one line (exit 1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from attrgate.cli import main
from attrgate.policy.load import load_policy_set
from support.bundles import (
    build,
    entries,
    gzip_bomb,
    manifest_of,
    member,
    policy_folder,
    repack,
    replaced,
    write_keys,
)
from support.environment import clean_env
from test_cli import ATTRGATE, attrgate


@pytest.fixture
def signed(tmp_path: Path) -> tuple[bytes, Path, Path]:
    """A signed bundle of a small set, its trusted public key, and another key pair's private
    key (a signer the server does not trust)."""
    private, public = write_keys(tmp_path, "trusted")
    stranger, _ = write_keys(tmp_path, "stranger")
    data = build(policy_folder(tmp_path / "policies"), tmp_path / "bundle.tar.gz", private)
    return data, public, stranger


def verify(
    path: Path, public: Path, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, str]:
    code = main(["bundle", "verify", str(path), "--public-key", str(public), *flags])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def test_build_is_deterministic_and_gives_the_folders_revision(tmp_path: Path) -> None:
    folder = policy_folder(tmp_path / "policies")
    first = build(folder, tmp_path / "a.tar.gz")
    (folder / "svc.yaml").touch()  # a new mtime changes nothing
    second = build(folder, tmp_path / "b.tar.gz")
    assert first == second
    revision = load_policy_set(folder).revision
    manifest = manifest_of(first)
    assert manifest["revision"] == revision
    # Exactly the files the loader reads: no suites, no fixtures; in the loader's order.
    assert [f["path"] for f in manifest["files"]] == ["svc.yaml", "team/other.yaml"]  # type: ignore[attr-defined]
    names = [m.name for m, _ in entries(first)]
    assert names == [".manifest.json", "svc.yaml", "team/other.yaml"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m, _ in entries(first))
    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert not first[3] & 0x08  # no file name in the gzip header
    checked = attrgate("check", str(folder))
    assert checked.stdout.strip().endswith(f"revision {revision}")


def test_signing_twice_gives_the_same_bytes_and_replaces_the_signature(tmp_path: Path) -> None:
    private, public = write_keys(tmp_path, "k")
    other, other_public = write_keys(tmp_path, "other")
    folder = policy_folder(tmp_path / "policies")
    once = build(folder, tmp_path / "a.tar.gz", private, "t", 1700000000)
    # Ed25519 is deterministic: the same time and target give the same bytes.
    assert build(folder, tmp_path / "b.tar.gz", private, "t", 1700000000) == once
    assert main(["bundle", "sign", str(tmp_path / "a.tar.gz"), "--key", str(other)]) == 0
    resigned = entries((tmp_path / "a.tar.gz").read_bytes())
    assert [m.name for m, _ in resigned].count(".signature") == 1
    assert main(["bundle", "verify", str(tmp_path / "a.tar.gz"), "--public-key", str(public)]) == 1
    assert (
        main(["bundle", "verify", str(tmp_path / "a.tar.gz"), "--public-key", str(other_public)])
        == 0
    )


def test_build_refuses_an_invalid_set_with_the_errors_check_prints(tmp_path: Path) -> None:
    folder = policy_folder(tmp_path / "policies")
    (folder / "team" / "other.yaml").write_text("apiVersion: attrgate/v1\nkind: Nope\n")
    built = attrgate("bundle", "build", str(folder), "-o", str(tmp_path / "b.tar.gz"))
    checked = attrgate("check", str(folder))
    assert built.returncode == checked.returncode == 1
    assert built.stderr == checked.stderr
    assert "other.yaml:2: " in built.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_verify_prints_the_revision_and_the_signer(
    signed: tuple[bytes, Path, Path], tmp_path: Path
) -> None:
    data, public, _ = signed
    (tmp_path / "b.tar.gz").write_bytes(data)
    done = attrgate("bundle", "verify", str(tmp_path / "b.tar.gz"), "--public-key", str(public))
    revision = load_policy_set(tmp_path / "policies").revision
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: revision {revision}, 2 files, signed by ed25519:")


def test_sign_at_a_time_for_a_target_and_verify_prints_and_checks_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = write_keys(tmp_path, "k")
    path = tmp_path / "b.tar.gz"
    target = "s3://policies-prod/attrgate/bundle.tar.gz"
    build(policy_folder(tmp_path / "policies"), path, private, target, 1700000000)
    statement = json.loads(json.loads(_body(path.read_bytes(), ".signature"))["statement"])
    assert statement["signed_at"] == 1700000000
    assert statement["target"] == target
    for flags in ([], ["--target", target]):
        code, output = verify(path, public, capsys, *flags)
        assert code == 0, output
        assert output.endswith(f'at 2023-11-14T22:13:20Z for target "{target}"'), output
    staging = "s3://policies-staging/attrgate/bundle.tar.gz"
    code, output = verify(path, public, capsys, "--target", staging)
    assert code == 1
    assert output == (
        f'attrgate bundle verify: refused: signed for target "{target}", not for "{staging}": '
        "a bundle meant for another place"
    )
    # Signed without a target: only an empty --target takes it.
    build(policy_folder(tmp_path / "policies"), path, private)
    assert verify(path, public, capsys, "--target", target)[0] == 1
    assert verify(path, public, capsys, "--target", "")[0] == 0


def _body(data: bytes, name: str) -> bytes:
    return dict((m.name, d) for m, d in entries(data))[name]


def _changed(data: bytes, stranger: Path, tmp: Path) -> bytes:
    return replaced(data, "svc.yaml", b"# more\n" + _body(data, "svc.yaml"))


def _added(data: bytes, stranger: Path, tmp: Path) -> bytes:
    return repack([*entries(data), (member("extra.yaml"), b"{}\n")])


def _removed(data: bytes, stranger: Path, tmp: Path) -> bytes:
    return repack([(m, d) for m, d in entries(data) if m.name != "team/other.yaml"])


def _manifest_edited(data: bytes, stranger: Path, tmp: Path) -> bytes:
    """A file changed and the manifest updated to match it: only the signature tells."""
    body = b"# more\n" + _body(data, "svc.yaml")
    changed = replaced(data, "svc.yaml", body)
    manifest = manifest_of(changed)
    for entry in manifest["files"]:  # type: ignore[attr-defined]
        if entry["path"] == "svc.yaml":
            entry["size"], entry["sha256"] = len(body), hashlib.sha256(body).hexdigest()
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n"
    return replaced(changed, ".manifest.json", text.encode())


def _unsigned(data: bytes, stranger: Path, tmp: Path) -> bytes:
    return repack([(m, d) for m, d in entries(data) if m.name != ".signature"])


def _other_key(data: bytes, stranger: Path, tmp: Path) -> bytes:
    path = tmp / "other.tar.gz"
    path.write_bytes(data)
    assert main(["bundle", "sign", str(path), "--key", str(stranger)]) == 0
    return path.read_bytes()


def _signature(data: bytes) -> dict[str, str]:
    found: dict[str, str] = json.loads(_body(data, ".signature"))
    return found


def _with_signature(data: bytes, document: dict[str, str]) -> bytes:
    text = json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n"
    return replaced(data, ".signature", text.encode())


def _resigned(data: bytes, tmp: Path, *flags: str) -> bytes:
    """`data` signed again by the trusted key (the `signed` fixture's, in `tmp`)."""
    path = tmp / "resigned.tar.gz"
    path.write_bytes(data)
    assert main(["bundle", "sign", str(path), "--key", str(tmp / "trusted.pem"), *flags]) == 0
    return path.read_bytes()


def _other_statement(data: bytes, stranger: Path, tmp: Path) -> bytes:
    """The trusted key's signature over another statement (another target), beside this one."""
    document = _signature(data)
    document["signature"] = _signature(_resigned(data, tmp, "--target", "s3://b/k"))["signature"]
    return _with_signature(data, document)


def _statement_edited(data: bytes, stranger: Path, tmp: Path) -> bytes:
    """The statement made later after signing (what a rollback would need)."""
    document = _signature(data)
    statement = json.loads(document["statement"])
    statement["signed_at"] += 1
    document["statement"] = json.dumps(statement, sort_keys=True, separators=(",", ":"))
    return _with_signature(data, document)


def _other_manifest(data: bytes, stranger: Path, tmp: Path) -> bytes:
    """A valid signature of the trusted key, taken from another bundle: its statement names
    that bundle's manifest."""
    other = build(policy_folder(tmp / "other", "[]"), tmp / "other.tar.gz", tmp / "trusted.pem")
    return replaced(data, ".signature", _body(other, ".signature"))


def _truncated(data: bytes, stranger: Path, tmp: Path) -> bytes:
    return data[: len(data) * 2 // 3]


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Callable[..., bytes]:
    def tamper(data: bytes, stranger: Path, tmp: Path) -> bytes:
        return repack([*entries(data), (member(name, kind, link), b"{}\n")])

    return tamper


TAMPERING = {
    "a file changed": (_changed, "'svc.yaml' does not match its size or digest"),
    "a file added": (_added, "'extra.yaml' is in the archive but not in the manifest"),
    "a file removed": (_removed, "'team/other.yaml' is in the manifest but not in the archive"),
    "the manifest edited": (_manifest_edited, "the signature is for another manifest"),
    "a signature over another statement": (_other_statement, "does not verify with any trusted"),
    "the statement edited": (_statement_edited, "does not verify with any trusted key"),
    "a statement naming another manifest": (_other_manifest, "the signature is for another"),
    "the signature removed": (_unsigned, "unsigned: the bundle has no signature"),
    "signed by another key": (_other_key, "the signature does not verify with any trusted key"),
    "truncated": (_truncated, "truncated: the gzip stream ends early"),
    "trailing bytes": (lambda d, s, t: d + b"x", "unexpected bytes after the end of the gzip"),
    "not gzip": (lambda d, s, t: b"PK\x03\x04" + d, "not a gzip archive"),
    "path traversal": (_entry("../escape.yaml"), "escapes the bundle"),
    "absolute path": (_entry("/etc/escape.yaml"), "escapes the bundle"),
    "symlink": (_entry("link.yaml", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    "hard link": (_entry("hard.yaml", tarfile.LNKTYPE, "svc.yaml"), "is a hard link"),
    "device": (_entry("dev.yaml", tarfile.CHRTYPE), "is a character device"),
    "fifo": (_entry("fifo.yaml", tarfile.FIFOTYPE), "is a FIFO"),
    "folder": (_entry("team2", tarfile.DIRTYPE), "is a folder"),
}


@pytest.mark.parametrize("kind", TAMPERING)
def test_verify_refuses_tampering_in_one_line(
    kind: str,
    signed: tuple[bytes, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, public, stranger = signed
    path = tmp_path / "tampered.tar.gz"
    path.write_bytes(data)
    assert verify(path, public, capsys)[0] == 0  # the untouched bundle verifies
    tamper, expected = TAMPERING[kind]
    path.write_bytes(tamper(data, stranger, tmp_path))
    capsys.readouterr()  # what signing with the stranger's key printed
    code, output = verify(path, public, capsys)
    assert code == 1
    assert output.startswith("attrgate bundle verify: refused: ")
    assert expected in output
    assert "\n" not in output


def test_verify_holds_files_to_policy_max_bytes(
    signed: tuple[bytes, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, public, _ = signed
    path = tmp_path / "b.tar.gz"
    path.write_bytes(data)
    code = main(
        ["bundle", "verify", str(path), "--public-key", str(public), "--policy-max-bytes", "1024"]
    )
    assert code == 0
    big = replaced(data, "svc.yaml", b"#" * 2000 + b"\n")
    path.write_bytes(big)
    code = main(
        ["bundle", "verify", str(path), "--public-key", str(public), "--policy-max-bytes", "1024"]
    )
    assert code == 1
    assert "over --policy-max-bytes 1024" in capsys.readouterr().err


def test_a_gzip_bomb_is_refused_within_a_memory_limit(
    signed: tuple[bytes, Path, Path], tmp_path: Path
) -> None:
    """2 GiB of zeros in about 2 MB: decompressing it whole would need more address space than
    the process has; the reader stops at its bound instead."""
    _, public, _ = signed
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_bomb(2 << 30))
    assert path.stat().st_size < 4 << 20
    done = subprocess.run(
        [
            "prlimit",
            "--as=1000000000",
            *ATTRGATE,
            "bundle",
            "verify",
            str(path),
            "--public-key",
            str(public),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("attrgate bundle verify: refused: decompresses to more than")


def test_usage_errors_exit_2(signed: tuple[bytes, Path, Path], tmp_path: Path) -> None:
    data, _, _ = signed
    path = tmp_path / "b.tar.gz"
    path.write_bytes(data)
    assert main(["bundle", "verify", str(path)]) == 2  # no key
    (tmp_path / "rsa.pem").write_text("not a key\n")
    assert main(["bundle", "verify", str(path), "--public-key", str(tmp_path / "rsa.pem")]) == 2
    assert main(["bundle", "sign", str(path), "--key", str(tmp_path / "rsa.pem")]) == 2
    key, _ = write_keys(tmp_path, "k")
    later = str(int(time.time()) + 3600)  # would make every bundle signed until then a rollback
    assert main(["bundle", "sign", str(path), "--key", str(key), "--signed-at", later]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["bundle", "verify"])
    assert exited.value.code == 2


def test_a_key_file_that_is_not_a_regular_file_is_refused_without_blocking(
    signed: tuple[bytes, Path, Path], tmp_path: Path
) -> None:
    """A FIFO (or a device) where the public key should be: refused in one line at once; an
    open() would block `serve` (which reads the key at start) until something writes to it."""
    data, _, _ = signed
    path = tmp_path / "b.tar.gz"
    path.write_bytes(data)
    fifo = tmp_path / "key.pub"
    os.mkfifo(fifo)
    done = attrgate("bundle", "verify", str(path), "--public-key", str(fifo))
    assert done.returncode == 2, done.stderr
    assert f"{fifo}: not a regular file" in done.stderr


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub"
    done = attrgate("bundle", "keygen", "--key", str(private), "--public-key", str(public))
    assert done.returncode == 0, done.stderr
    assert private.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    again = attrgate("bundle", "keygen", "--key", str(private), "--public-key", str(public))
    assert again.returncode == 2  # never overwrites a key
    data = build(policy_folder(tmp_path / "p"), tmp_path / "b.tar.gz", private)
    assert data
    assert main(["bundle", "verify", str(tmp_path / "b.tar.gz"), "--public-key", str(public)]) == 0
