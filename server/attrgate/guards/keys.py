"""The HMAC key that hashes phone numbers, users and callers, kept apart from the hashes.

The key never enters the store: with it, every counter key in the state file (or Redis) could be
reversed by enumerating phone numbers. It comes from --hmac-key-file, or, for an embedded store
without one, from a file attrgate generates once beside the state (`state.sqlite` ->
`state.key`, mode 0600). The store keeps only the key's fingerprint, so a start with another key
than the one the counts were made with is refused instead of silently starting from zero.

A key file holds the key as text (surrounding white space ignored), or `base64:` and the key in
base64 (how a binary key of an older attrgate is moved out of its state file).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from attrgate.config import ConfigError
from attrgate.store.base import KEY_MISMATCH, Store, StoreUnavailable

log = logging.getLogger("attrgate.sms")
FINGERPRINT = "key-fingerprint"
LEGACY_KEY = "hmac-key"  # where attrgate before 0.2 kept a generated key: in the state file
MIN_KEY_BYTES = 16
_BASE64 = b"base64:"


def key_path_for(state: str) -> Path:
    """Beside the state, named like it with the suffix .key: `state.sqlite` -> `state.key`
    (so `rm state.sqlite*` leaves it, and the next start can tell the counts are gone)."""
    path = Path(state)
    if path.suffix and path.suffix != ".key":
        return path.with_suffix(".key")
    return path.with_name(path.name + ".key")


def fingerprint(key: bytes) -> str:
    """Names the key without revealing it."""
    return hmac.new(key, b"attrgate key fingerprint v1", hashlib.sha256).hexdigest()


def read_key(path: str | Path) -> bytes:
    try:
        text = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the HMAC key {path}: {exc.strerror}") from None
    if text.startswith(_BASE64):
        try:
            text = base64.b64decode(text[len(_BASE64) :], validate=True)
        except binascii.Error:
            raise ConfigError(f"{path}: the HMAC key after base64: is not base64") from None
    if len(text) < MIN_KEY_BYTES:
        raise ConfigError(f"{path}: the HMAC key needs {MIN_KEY_BYTES} bytes or more")
    return text


def create_key(path: Path, key: bytes) -> bytes:
    """Write `key` to `path` unless it exists, atomically and readable by its owner only; the
    key the file holds afterwards (another process starting on the same state may win)."""
    text = key if _plain(key) else _BASE64 + base64.b64encode(key)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # Written whole under a private name (O_EXCL: never through someone else's file), then
    # published with link(2), which fails when the name exists: no process ever reads a key
    # half written, and none replaces another's.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(text + b"\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(path.parent)
    return read_key(path)


def _plain(key: bytes) -> bool:
    """Whether the key reads back as itself from a text file."""
    return (
        key.isascii()
        and key.decode().isprintable()
        and key == key.strip()
        and not key.startswith(_BASE64)
    )


def _sync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def marker_path_for(state: str) -> Path:
    """Beside the state like its key: `state.sqlite` -> `state.fingerprint`, the fingerprint of
    the key counting in it (so a lost state is noticed with --hmac-key-file too)."""
    path = Path(state)
    if path.suffix and path.suffix != ".fingerprint":
        return path.with_suffix(".fingerprint")
    return path.with_name(path.name + ".fingerprint")


def mark_counting(state: str, key: bytes) -> None:
    """Leave the key's fingerprint beside the state (not secret: it names the key only)."""
    marker = marker_path_for(state)
    text = fingerprint(key) + "\n"
    with contextlib.suppress(OSError):  # a read-only folder: only the loud restart is lost
        if not marker.exists() or marker.read_text() != text:
            temporary = marker.with_name(f".{marker.name}.{os.getpid()}")
            temporary.write_text(text)
            temporary.replace(marker)


def counts_lost(state: str, holds_counts: bool) -> str | None:
    """An error line when the state holds no counts (missing, emptied, replaced by a new one)
    although the key or the fingerprint of the key that counted in it lies beside it: counts
    existed and are gone."""
    if holds_counts:
        return None
    for beside in (marker_path_for(state), key_path_for(state)):
        if beside.exists():
            return (
                f"the SMS state {state} holds no counts (missing, emptied or new) but {beside} "
                "exists: the SMS counts made before are gone, and every SMS limit and budget "
                "starts again from zero"
            )
    return None


def known_key(state: str, key_file: str | None, why: StoreUnavailable) -> bytes:
    """The key of an embedded store that cannot be opened now: --hmac-key-file's or the one
    beside the state. Without either this is a first start on a store that does not work:
    refuse (a key generated now could not be checked against the state)."""
    path = Path(key_file) if key_file else key_path_for(state)
    if key_file or path.exists():
        return read_key(path)
    raise ConfigError(f"cannot open the SMS state {state}: {why}")


async def embedded_key(store: Store, state: str, key_file: str | None) -> bytes:
    """The key of an embedded store: --hmac-key-file's, else the file beside the state, created
    on first use. An older state file holding its generated key has it moved out here (and its
    copy in the database deleted), so its counts stay valid; with --hmac-key-file, that old key
    was not the one counting, and is deleted."""
    try:
        legacy = await store.secret(LEGACY_KEY)
    except StoreUnavailable as exc:
        raise ConfigError(f"cannot read the SMS state {state}: {exc}") from None
    path = Path(key_file) if key_file else key_path_for(state)
    if key_file or legacy is None:
        if path.exists():
            key = read_key(path)
        else:
            key = create_key(path, secrets.token_hex(32).encode())
            log.info("generated the HMAC key %s (keep it with the state; back it up apart)", path)
        _check_private(path)
        if legacy is not None:
            await _forget_legacy_key(store, state)
            log.warning(
                "removed the HMAC key an older attrgate kept in %s (--hmac-key-file is used)",
                state,
            )
        return key
    key = read_key(path) if path.exists() else create_key(path, legacy)
    if key != legacy:
        raise ConfigError(
            f"{state} still holds the HMAC key of an older attrgate and {path} holds another: "
            "the counts were made with the one in the state; remove the key file to move it out"
        )
    await _forget_legacy_key(store, state)
    log.warning(
        "moved the HMAC key out of the SMS state %s into %s (mode 0600); counts stay valid",
        state,
        path,
    )
    return key


async def _forget_legacy_key(store: Store, state: str) -> None:
    try:
        await store.delete_secret(LEGACY_KEY)
    except StoreUnavailable as exc:
        raise ConfigError(f"cannot remove the old HMAC key from {state}: {exc}") from None


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the HMAC key %s is readable by others (mode %o): chmod 600 it", path, mode)


class KeyCheck:
    """The store must hold the fingerprint of this key (written on first use). Run at start;
    when the store does not answer then (a Redis restarting), before the first SMS-triggering
    request it serves, and until it passes."""

    def __init__(self, store: Store, key: bytes, where: str) -> None:
        self._store = store
        self._fingerprint = fingerprint(key)
        self._where = where
        self.passed = False

    async def __call__(self) -> None:
        """Raise StoreUnavailable (KEY_MISMATCH when the store's counts belong to another key)."""
        raw = await self._store.get_or_create_secret(FINGERPRINT, self._fingerprint.encode())
        stored = raw.decode(errors="replace")
        if stored != self._fingerprint:
            raise StoreUnavailable(
                f"the SMS counts in {self._where} were made with another HMAC key (fingerprint "
                f"{stored[:12]}..., this key's {self._fingerprint[:12]}...): start with that "
                "key, or move the state aside to count from zero",
                KEY_MISMATCH,
            )
        self.passed = True

    async def still_held(self) -> None:
        """After the check passed: the fingerprint must still be in the store. Gone, the store
        lost everything it held (a Redis restarted without its append-only file, flushed, or
        evicting): say so, loudly, and store it again. Raise StoreUnavailable."""
        stored = await self._store.secret(FINGERPRINT)
        if stored == self._fingerprint.encode():
            return
        # Until the check passes again, every reservation fails closed: counting on with a key
        # the store does not hold would split a fleet's counts between two keys.
        self.passed = False
        if stored is None:
            log.error(
                "the SMS counts in %s are gone (the key's fingerprint with them: restarted "
                "without appendonly, flushed or evicting?): every SMS limit and budget starts "
                "again from zero",
                self._where,
            )
        await self()
