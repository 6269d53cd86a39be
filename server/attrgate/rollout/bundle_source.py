"""A signed policy bundle in S3 as a policy source: fetched when its ETag changes, verified
(manifest always; signature against --bundle-public-key unless --allow-unsigned-bundles, signed
for this server's target, and not signed before the bundle this source serves: no rollback),
and loaded through the bundle reader `attrgate bundle verify` uses."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from attrgate.bundle.reader import Bundle, download_limit, load_bundle
from attrgate.bundle.signing import key_id, load_public_keys, utc
from attrgate.config import ConfigError, Settings
from attrgate.rollout.s3 import S3Object
from attrgate.rollout.source import Loaded, Refused
from attrgate.rollout.status import POLL

log = logging.getLogger("attrgate")


@dataclass(frozen=True)
class _Version:
    etag: str
    # What the signature vouches for (None: unsigned, not checked): (signed_at, manifest SHA-256).
    signed: tuple[int, str] | None = None


class BundleSource:
    follows = POLL

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._keys = None
        self._target: str | None = None  # None: any (not checked without a signature)
        if settings.bundle_public_key:
            self._keys = load_public_keys(settings.bundle_public_key)
            if settings.allow_unsigned_bundles:
                log.warning(
                    "--allow-unsigned-bundles is ignored: with --bundle-public-key every "
                    "bundle must be signed"
                )
            # The source's own URL by default: a bundle signed for another bucket or key (another
            # environment) is refused, unless --bundle-target names what it was signed for.
            self._target = url if settings.bundle_target is None else settings.bundle_target
            log.info(
                "%s: bundles must be signed by %s for target %s",
                url,
                ", ".join(key_id(k) for k in self._keys),
                json.dumps(self._target),
            )
        elif settings.allow_unsigned_bundles:
            log.warning(
                "%s: bundle signatures are not checked (--allow-unsigned-bundles): anyone who "
                "can write to the bucket changes the policies, and neither targets nor signing "
                "times are checked (no protection against another environment's or an older "
                "bundle)",
                url,
            )
            if settings.bundle_target is not None:
                log.warning("--bundle-target is ignored: without --bundle-public-key")
        else:
            raise ConfigError(
                f"{url}: an S3 policy bundle needs --bundle-public-key to check its signature "
                "(or --allow-unsigned-bundles to serve it unchecked)"
            )
        self._object = S3Object(url, settings.region)
        # The signature's (signed_at, manifest SHA-256) of the last bundle that served from here:
        # one signed before it is refused (a rollback). Forgotten at restart. Written only by
        # `settle`, as below.
        self._serving: tuple[int, str] | None = None
        # The version last settled (installed, found serving, or refused for what it holds) and
        # why it was refused ("" when it serves): a poll that finds it again (304) repeats the
        # refusal without downloading it again. Written only by `settle`, on the event loop,
        # never by a load (whose result may be given up).
        self._settled: _Version | None = None
        self._refusal = ""

    @property
    def source(self) -> str:
        return self._url

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> Loaded:
        settled = self._settled
        known = None if force or settled is None else settled.etag
        fetched = self._object.fetch(known, download_limit(max_bytes))
        if fetched is None:
            if self._refusal:
                raise Refused(self._refusal, settled)
            return Loaded(None, settled)
        try:
            bundle, policy_set = load_bundle(
                fetched.body, self._url, max_bytes, self._keys, self._target, pause_gc
            )
        except ConfigError as exc:
            raise Refused(f"{self._url}: refused: {exc}", _Version(fetched.etag)) from None
        version = _Version(fetched.etag, _signed(bundle))
        why = _rollback(version.signed, self._serving)
        if why:
            raise Refused(f"{self._url}: refused: {why}", version)
        return Loaded(policy_set, version)

    def settle(self, version: object, refusal: str = "") -> None:
        if isinstance(version, _Version):
            self._settled, self._refusal = version, refusal
            if not refusal and version.signed is not None:
                self._serving = version.signed


def _signed(bundle: Bundle) -> tuple[int, str] | None:
    if bundle.signed is None:
        return None
    return bundle.signed.statement.signed_at, bundle.signed.statement.manifest_sha256


def _rollback(fresh: tuple[int, str] | None, serving: tuple[int, str] | None) -> str:
    """Why a bundle signed at `fresh` must not replace the one signed at `serving` ("" when it
    may): signed before it, or at the same second over another manifest (two bundles that
    cannot be told apart in time: the older could be put back). The same bundle signed again
    later, or the serving one found again, may."""
    if fresh is None or serving is None:
        return ""
    (at, digest), (serving_at, serving_digest) = fresh, serving
    if at < serving_at:
        return (
            f"signed at {utc(at)}, older than the serving bundle signed at {utc(serving_at)}: "
            "a rollback? (to go back on purpose, sign the older bundle again)"
        )
    if at == serving_at and digest != serving_digest:
        return (
            f"signed at {utc(at)}, the same second as the serving bundle, over another "
            "manifest: a rollback? (sign it again, later)"
        )
    return ""
