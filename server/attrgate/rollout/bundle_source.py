"""A signed policy bundle in S3 as a policy source: fetched when its ETag changes, verified
(manifest always; signature against --bundle-public-key unless --allow-unsigned-bundles), and
loaded through the bundle reader `attrgate bundle verify` uses."""

from __future__ import annotations

import logging

from attrgate.bundle.reader import download_limit, load_bundle
from attrgate.bundle.signing import key_id, load_public_keys
from attrgate.config import ConfigError, Settings
from attrgate.policy.compile import PolicySet
from attrgate.rollout.s3 import S3Object
from attrgate.rollout.status import POLL

log = logging.getLogger("attrgate")


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
        # The ETag last fetched and why it was refused ("" when it loaded): a poll that finds
        # it again (304) repeats the refusal without downloading it again.
        self._etag: str | None = None
        self._refusal = ""

    @property
    def source(self) -> str:
        return self._url

    def load(self, max_bytes: int, pause_gc: bool, force: bool) -> PolicySet | None:
        fetched = self._object.fetch(None if force else self._etag, download_limit(max_bytes))
        if fetched is None:
            if self._refusal:
                raise ConfigError(self._refusal)
            return None
        try:
            _, policy_set = load_bundle(fetched.body, self._url, max_bytes, self._keys, pause_gc)
        except ConfigError as exc:
            self._etag, self._refusal = fetched.etag, f"{self._url}: refused: {exc}"
            raise ConfigError(self._refusal) from None
        self._etag, self._refusal = fetched.etag, ""
        return policy_set
