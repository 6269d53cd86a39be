"""A signed policy bundle in S3 as a policy source: fetched when its ETag changes, verified
(manifest always; signature against --bundle-public-key unless --allow-unsigned-bundles), and
loaded through the bundle reader `attrgate bundle verify` uses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from attrgate.bundle.reader import download_limit, load_bundle
from attrgate.bundle.signing import key_id, load_public_keys
from attrgate.config import ConfigError, Settings
from attrgate.rollout.s3 import S3Object
from attrgate.rollout.source import Loaded, Refused
from attrgate.rollout.status import POLL

log = logging.getLogger("attrgate")


@dataclass(frozen=True)
class _Version:
    etag: str


class BundleSource:
    follows = POLL

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._keys = None
        if settings.bundle_public_key:
            self._keys = load_public_keys(settings.bundle_public_key)
            if settings.allow_unsigned_bundles:
                log.warning(
                    "--allow-unsigned-bundles is ignored: with --bundle-public-key every "
                    "bundle must be signed"
                )
            log.info(
                "%s: bundles must be signed by %s",
                url,
                ", ".join(key_id(k) for k in self._keys),
            )
        elif settings.allow_unsigned_bundles:
            log.warning(
                "%s: bundle signatures are not checked (--allow-unsigned-bundles): anyone who "
                "can write to the bucket changes the policies",
                url,
            )
        else:
            raise ConfigError(
                f"{url}: an S3 policy bundle needs --bundle-public-key to check its signature "
                "(or --allow-unsigned-bundles to serve it unchecked)"
            )
        self._object = S3Object(url, settings.region)
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
        version = _Version(fetched.etag)
        try:
            _, policy_set = load_bundle(fetched.body, self._url, max_bytes, self._keys, pause_gc)
        except ConfigError as exc:
            raise Refused(f"{self._url}: refused: {exc}", version) from None
        return Loaded(policy_set, version)

    def settle(self, version: object, refusal: str = "") -> None:
        if isinstance(version, _Version):
            self._settled, self._refusal = version, refusal
